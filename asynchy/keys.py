"""The settings' keys, each declared once (``KEYS``): its parser, default, help, options' doc,
doc line and init prompt.  config.py reads them from the file, the environment and the options;
Settings, the validation, docs/configuration.md's table and ``asynchy init`` derive from here.

Every parser turns a raw value (YAML, environment text, option) into a typed one or raises
ValueError with the end of a sentence ("must be ...").
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

ENV_PREFIX = "ASYNCHY_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _as_str(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError("must be a string")
    return str(value)


def _as_port(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("must be an integer from 1 to 65535")
    try:
        port = int(str(value).strip()) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        raise ValueError("must be an integer from 1 to 65535") from None
    if isinstance(value, float) and not value.is_integer():
        raise ValueError("must be an integer from 1 to 65535")
    if not 1 <= port <= 65535:
        raise ValueError("must be an integer from 1 to 65535")
    return port


def _as_seconds(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("must be a number of seconds greater than 0")
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError("must be a number of seconds greater than 0") from None
    if not seconds > 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError("must be a number of seconds greater than 0")
    return seconds


def _as_destinations(value: Any) -> dict[str, str]:
    """``{"12282": "ny79"}``: EPN number (the digits before the letters) -> folder under dest, or absolute.

    In an environment variable or option: YAML (``{12282: ny79}``) or ``12282=ny79,12283=ab12``.
    """
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return {}
        if "=" in text and not text.startswith("{"):
            pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
            if any(len(p) != 2 for p in pairs):
                raise ValueError("must be NUMBER=FOLDER pairs separated by commas")
            value = {k.strip(): v.strip() for k, v in pairs}
        else:
            import yaml

            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError:
                raise ValueError("must be a mapping of EPN numbers to folders") from None
    if not isinstance(value, dict):
        raise ValueError('must be a mapping of EPN numbers to folders, e.g. {"12282": ny79}')
    out: dict[str, str] = {}
    for key, folder in value.items():
        number = str(key).strip()
        if not number.isdigit():
            raise ValueError(f"has key {key!r}, which is not an EPN number (digits only)")
        if not isinstance(folder, str) or not folder.strip():
            raise ValueError(f"maps {number} to {folder!r}, which is not a folder name")
        parts = folder.strip().split("/")
        if ".." in parts:
            raise ValueError(f"maps {number} to {folder!r}: '..' is not allowed")
        out[number] = folder.strip()
    return out


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)", re.IGNORECASE)
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: Any) -> float:
    """``90``, ``90s``, ``30m``, ``1h``, ``1h30m``, ``2d`` -> seconds (>= 0)."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 90s, 30m, 1h or 2d")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().replace(" ", "")
        pos, seconds = 0, 0.0
        for m in _DURATION_PART.finditer(text):
            if m.start() != pos:
                break
            seconds += float(m.group(1)) * _DURATION_UNITS[m.group(2).lower()]
            pos = m.end()
        if not text or pos != len(text):
            raise ValueError("must be a duration such as 90s, 30m, 1h or 2d")
    if seconds != seconds or seconds < 0 or seconds == float("inf"):
        raise ValueError("must be a duration such as 90s, 30m, 1h or 2d")
    return seconds


def _as_interval(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds < 1:
        raise ValueError("must be at least 1 second, e.g. 30m or 1h")
    return seconds


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def _as_count(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("must be a whole number from 1 to 64")
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ValueError("must be a whole number from 1 to 64") from None
    if not 1 <= number <= 64:
        raise ValueError("must be a whole number from 1 to 64")
    return number


def _as_days(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("must be a number of days (0 or more)")
    try:
        days = float(value)
    except (TypeError, ValueError):
        raise ValueError("must be a number of days (0 or more)") from None
    if days != days or days < 0 or days == float("inf"):
        raise ValueError("must be a number of days (0 or more)")
    return days


def _as_line(value: Any) -> str:
    text = _as_str(value)
    if "\n" in text or "\r" in text:
        raise ValueError("must be one line")
    return text.strip()


def _as_address(value: Any) -> str:
    from email.utils import parseaddr

    text = _as_line(value)
    _, address = parseaddr(text)
    if "@" not in address or " " in address:
        raise ValueError("must be an e-mail address such as asynchy@example.org")
    return text


def _as_addresses(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    out = tuple(_as_address(item) for item in items if str(item).strip())
    if not out:
        raise ValueError("must name at least one e-mail address")
    return out


def is_loopback(host: str) -> bool:
    """This machine's own address: nothing sent there crosses a network."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _as_portal(value: Any) -> dict[str, Any]:
    """The facility portal: ``{base_url, equipment: [{id, username, password, client_name,
    client_password}], visit_days, timeout}``; passwords may instead be ``*_file`` or ``*_env``."""
    if isinstance(value, str):
        import yaml

        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ValueError("must be a mapping (YAML) with base_url and equipment") from None
    if not isinstance(value, dict):
        raise ValueError("must be a mapping with base_url and equipment")
    known = {"base_url", "equipment", "visit_days", "timeout", "token_in"}
    unknown = set(value) - known
    if unknown:
        raise ValueError(
            f"has unknown entries {sorted(unknown)} (known: {', '.join(sorted(known))})"
        )
    token_in = str(value.get("token_in", "query")).strip().lower()
    if token_in not in ("query", "header"):
        raise ValueError("token_in must be query or header")
    base = value.get("base_url")
    if not isinstance(base, str) or not base.startswith(("http://", "https://")):
        raise ValueError("needs base_url, e.g. https://portal.example.org")
    if base.startswith("http://") and not is_loopback(urlsplit(base).hostname or ""):
        raise ValueError(
            "base_url must be https:// (plain http:// only to this machine: localhost, "
            "127.0.0.1, ::1): the portal's passwords and token would cross the network in clear"
        )
    equipment = value.get("equipment")
    if not isinstance(equipment, list) or not equipment:
        raise ValueError("needs a list of equipment entries {id, username, password, ...}")
    items = []
    for n, item in enumerate(equipment, 1):
        if not isinstance(item, dict):
            raise ValueError(f"equipment entry {n} must be a mapping")
        entry = {str(k): v for k, v in item.items()}
        for key in ("id", "username", "client_name"):
            if entry.get(key) in (None, ""):
                raise ValueError(f"equipment entry {n} needs {key}")
        for secret in ("password", "client_password"):
            given = [k for k in (secret, secret + "_file", secret + "_env") if entry.get(k)]
            if len(given) != 1:
                raise ValueError(
                    f"equipment entry {n} needs exactly one of {secret}, {secret}_file, {secret}_env"
                )
        items.append(entry)
    return {
        "base_url": base.rstrip("/"),
        "equipment": items,
        "visit_days": _as_days(value.get("visit_days", 30)),
        "timeout": _as_seconds(value.get("timeout", 30)),
        "token_in": token_in,
    }


def _as_level(value: Any) -> str:
    text = _as_str(value).strip().upper()
    text = text.removeprefix("LOGGING.")  # HPC ASSyncy wrote logging.DEBUG, logging.INFO, ...
    if text not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
    return text


LAYOUT_FIELDS = ("project", "epn", "number")


def _as_layout(value: Any) -> str:
    """Where an EPN goes below dest: a template of {project}, {epn}, {number}, e.g. {project}/{epn}/data."""
    import string

    text = _as_line(value).strip().strip("/")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
    except ValueError:
        raise ValueError("must be a template such as {project}/{epn} or {epn}") from None
    unknown = [f for f in fields if f not in LAYOUT_FIELDS]
    if unknown:
        raise ValueError(
            f"has an unknown field {{{unknown[0]}}} (known: {{project}}, {{epn}}, {{number}})"
        )
    if "epn" not in fields:
        raise ValueError("must hold {epn}, so that every EPN has a folder of its own")
    parts = text.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError("must be a relative path without '..', '.' or empty parts")
    if "{epn}" not in parts:
        raise ValueError("must have {epn} as a whole folder name, e.g. {project}/{epn}/data")
    return text


def _as_patterns(value: Any) -> tuple[str, ...]:
    """rsync filter patterns: a list, or one pattern per line."""
    items = value if isinstance(value, (list, tuple)) else str(value).splitlines()
    out = tuple(str(i).strip() for i in items if str(i).strip())
    for pattern in out:
        if any(ord(c) < 32 for c in pattern):
            raise ValueError(f"pattern {pattern!r} holds a control character")
    return out


def _as_agent(value: Any) -> str:
    """auto, yes or no (a YAML boolean reads as yes or no)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = _as_line(value).lower()
    if text not in ("auto", "yes", "no"):
        raise ValueError("must be auto, yes or no")
    return text


def _as_regex(value: Any) -> str:
    """A regular expression (Python's re), or ``off``."""
    text = _as_line(value)
    if text.lower() == "off":
        return "off"
    try:
        re.compile(text)
    except re.error as exc:
        raise ValueError(f"must be a regular expression or off ({exc})") from None
    return text


def _as_chmod(value: Any) -> str:
    import re

    text = _as_line(value)
    item = r"[DF]?[ugoa]*[-+=][rwxXst]*|[DF]?[0-7]{3,4}"
    if not re.fullmatch(rf"(?:{item})(?:,(?:{item}))*", text):
        raise ValueError("must be rsync --chmod rules such as Dg+s,ug+w,o-wx,ug+X")
    return text


@dataclass(frozen=True, slots=True)
class KeySpec:
    """One setting, declared once: Settings' defaults, the validation, the environment variable,
    the options' help, `asynchy init`'s prompts and docs/configuration.md's table come from here."""

    name: str
    parse: Callable[[Any], Any]  # raw value (YAML, environment text, option) -> typed; ValueError
    default: Any
    help: str  # one line: option help and init's prompt
    kind: str = "text"  # the metavar of its options (path -> PATH)
    option_doc: str = ""  # docs/configuration.md: which options set it
    default_doc: str = ""  # docs/configuration.md: the default, in words
    doc: str = ""  # docs/configuration.md: what it means, in full
    init: bool = False  # asked by `asynchy init`

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")


# The keys of the original MeRC asynchy (host, port, user, keypath, db) keep their meaning.
KEYS: dict[str, KeySpec] = {
    spec.name: spec
    for spec in (
        KeySpec(
            "host",
            _as_str,
            None,
            "SFTP/ssh host of the facility; empty or 'local' for a local folder",
            option_doc="`--host`",
            default_doc="*(none)*",
            doc="the facility's SFTP/ssh host; empty or `local` means `src_prefix` is a local folder",
            init=True,
        ),
        KeySpec(
            "port",
            _as_port,
            22,
            "ssh port",
            "integer",
            option_doc="`--port`",
            default_doc="`22`",
            doc="ssh port (1-65535)",
            init=True,
        ),
        KeySpec(
            "user",
            _as_str,
            None,
            "ssh user name (default: your login name)",
            option_doc="`--user`",
            default_doc="your login name",
            doc="ssh user",
            init=True,
        ),
        KeySpec(
            "keypath",
            _as_str,
            None,
            "private key file for ssh (default: ssh-agent only)",
            "path",
            option_doc="`--keypath`",
            default_doc="*(none: ssh-agent only)*",
            doc="private key file; a key with a passphrase must be loaded into ssh-agent instead",
            init=True,
        ),
        KeySpec(
            "known_hosts",
            _as_str,
            "~/.ssh/known_hosts",
            "known_hosts file that holds the server's host key",
            "path",
            option_doc="`--known-hosts`",
            default_doc="`~/.ssh/known_hosts`",
            doc="the only file used to check the server's host key",
            init=True,
        ),
        KeySpec(
            "ssh_agent",
            _as_agent,
            "auto",
            "use ssh-agent's keys: auto (only when keypath is unset), yes or no",
            option_doc="-",
            default_doc="`auto`",
            doc="whether the facility connection may use ssh-agent's keys: `auto` only when `keypath` is unset (the agent is then the only way in), `yes`, `no`. The agent is never forwarded to the server ([security.md](security.md#ssh))",
        ),
        KeySpec(
            "ssh_config",
            _as_str,
            None,
            "an ssh config file for rsync's ssh (default: none is read)",
            "path",
            option_doc="-",
            default_doc="*(none: no ssh config file is read)*",
            doc="an ssh_config(5) file that rsync's ssh reads (e.g. for a `ProxyJump`); without it ssh reads none, not even `~/.ssh/config`. asynchy's own options come first and win ([security.md](security.md#ssh))",
        ),
        KeySpec(
            "db",
            _as_str,
            "files.db",
            "inventory database: a SQLite file path or a SQLAlchemy URL",
            option_doc="`--db`",
            default_doc="`files.db` (in the current folder)",
            doc="inventory database: a SQLite file path, or a SQLAlchemy URL such as `postgresql+psycopg://user@dbhost/asynchy`",
            init=True,
        ),
        KeySpec(
            "src_prefix",
            _as_str,
            None,
            "folder on the source whose sub-folders are EPNs, e.g. /data/mx",
            option_doc="`walk`/`sync --src-prefix` (alias `--src_prefix`)",
            default_doc="*(none; required by walk)*",
            doc="folder on the source whose sub-folders are EPNs, e.g. `/data/mx`",
            init=True,
        ),
        KeySpec(
            "dest",
            _as_str,
            None,
            "local folder the EPNs are copied into",
            "path",
            option_doc="`sync --dest`",
            default_doc="*(none; required by sync)*",
            doc="local folder the EPNs are copied into (must exist)",
            init=True,
        ),
        KeySpec(
            "log_file",
            _as_str,
            None,
            "also write the log to this file (rotated)",
            "path",
            option_doc="`--log-file`",
            default_doc="*(none)*",
            doc="also write the log to this file (rotated at 20 MiB, 5 kept)",
        ),
        KeySpec(
            "log_level",
            _as_level,
            "INFO",
            "level of the log file: DEBUG, INFO, WARNING or ERROR",
            option_doc="`--log-level`",
            default_doc="`INFO`",
            doc="level of the log file: `DEBUG`, `INFO`, `WARNING`, `ERROR`",
        ),
        KeySpec(
            "timeout",
            _as_seconds,
            30.0,
            "seconds before a silent connection or request counts as dead",
            "seconds",
            option_doc="`walk`/`sync --timeout`",
            default_doc="`30`",
            doc="seconds before a connection step or an SFTP request with no answer counts as a dead link; ssh's `ConnectTimeout` for rsync",
        ),
        KeySpec(
            "db_timeout",
            _as_seconds,
            60.0,
            "seconds a command waits for a database another process holds locked",
            "seconds",
            option_doc="-",
            default_doc="`60`",
            doc="seconds a command waits for a database that another process holds locked, then stops with one line ([failures.md](failures.md#database-faults))",
        ),
        KeySpec(
            "epn_pattern",
            _as_regex,
            r"^\d{5,6}[a-z]?$",
            "what an EPN folder name looks like (a regular expression, or off)",
            "regex",
            option_doc="-",
            default_doc="`^\\d{5,6}[a-z]?$`",
            doc="what the name of an EPN folder looks like, as a regular expression (`off`: any name). A walk warns once about the folders under `src_prefix` that do not match, with the likely fix (`src_prefix` one level too high or too low); with `strict_names` (or `walk --strict-names`) they are not recorded",
        ),
        KeySpec(
            "strict_names",
            _as_bool,
            False,
            "walk: do not record folders whose names do not match epn_pattern",
            "boolean",
            option_doc="`walk --strict-names`",
            default_doc="`false`",
            doc="a walk (and a watch's walk) leaves out the folders under `src_prefix` whose names do not match `epn_pattern`, instead of recording them with a warning",
        ),
        KeySpec(
            "destinations",
            _as_destinations,
            None,
            "EPN number -> folder under dest (the HPC ASSyncy epn_cap_map)",
            "mapping",
            option_doc="`sync --destinations`",
            default_doc="*(none)*",
            doc='EPN number -> folder (relative to `dest`, or absolute): `12282a` goes to `dest/ny79/12282a` with `{"12282": ny79}`; the HPC ASSyncy `epn_cap_map`. In the environment or option: `12282=ny79,12283=ab12` or YAML `{12282: ny79}`',
        ),
        KeySpec(
            "rsync",
            _as_str,
            "rsync",
            "the rsync program (>= 3.4.1)",
            "path",
            option_doc="`--rsync` (global)",
            default_doc="`rsync`",
            doc="the rsync program; must be >= 3.4.1",
        ),
        KeySpec(
            "layout",
            _as_layout,
            None,
            "where an EPN goes below dest: {project}/{epn} (default with destinations), {epn} "
            "(default without), {project}/{epn}/data (default for an HPC ASSyncy config)",
            "template",
            option_doc="-",
            default_doc="`{project}/{epn}` with `destinations`, else `{epn}`; `{project}/{epn}/data` for an HPC ASSyncy config",
            doc="where an EPN goes below `dest`: a template of `{project}` (its `destinations` folder), `{epn}` (a whole folder name, required) and `{number}`; parts after `{epn}` are folders inside it that receive the EPN's content. Unknown fields, `..`, `.` and empty parts are refused. An unmapped EPN goes to `dest/{epn}` plus the parts that need no project. `asynchy destinations` shows where each EPN goes",
        ),
        KeySpec(
            "copy_unmapped",
            _as_bool,
            False,
            "with destinations: also copy EPNs whose number has no entry (to dest/{epn}, plus the layout's parts that need no project)",
            "boolean",
            option_doc="`sync`/`watch --include-unmapped`",
            default_doc="`false`",
            doc="with `destinations`: also copy EPNs whose number has no entry. Without it (as mxsync), only mapped EPNs are copied; the others are counted in the summary and in `status`, and named by the alert",
        ),
        KeySpec(
            "exclude",
            _as_patterns,
            None,
            "rsync exclude patterns (checked in order, after include)",
            "list",
            option_doc="`sync`/`watch --exclude`",
            default_doc="*(none)*",
            doc='rsync exclude patterns; verification leaves out what they leave out (an excluded file is not "missing")',
        ),
        KeySpec(
            "include",
            _as_patterns,
            None,
            "rsync include patterns, checked before exclude",
            "list",
            option_doc="`sync`/`watch --include`",
            default_doc="*(none)*",
            doc="rsync include patterns (a YAML list, or one per line), given to rsync before the excludes",
        ),
        KeySpec(
            "exclude_from",
            _as_str,
            None,
            "file of rsync exclude patterns, one a line (as rsync --exclude-from)",
            "path",
            option_doc="`sync`/`watch --exclude-from`",
            default_doc="*(none)*",
            doc="a file of exclude patterns, one a line; blank lines and lines starting with `#` or `;` are left out, as rsync reads `--exclude-from`. Its patterns come after `exclude`'s. Read when the command starts",
        ),
        KeySpec(
            "include_from",
            _as_str,
            None,
            "file of rsync include patterns, one a line (as rsync --include-from)",
            "path",
            option_doc="`sync`/`watch --include-from`",
            default_doc="*(none)*",
            doc="a file of include patterns, read as `exclude_from`; its patterns come after `include`'s, before every exclude",
        ),
        KeySpec(
            "chmod",
            _as_chmod,
            None,
            "rsync --chmod rules (with --perms), e.g. Dg+s,ug+w",
            "rules",
            option_doc="`sync`/`watch --chmod`",
            default_doc="*(none)*",
            doc="rsync `--chmod` rules, passed with `--perms`, e.g. `Dg+s,ug+w,o-wx,ug+X` (mxsync's)",
        ),
        KeySpec(
            "ignore_file",
            _as_str,
            None,
            "an HPC ASSyncy ignore.yml: its previouslySynched EPNs count as already copied",
            "path",
            option_doc="-",
            default_doc="*(none)*",
            doc="an HPC ASSyncy `ignore.yml`: before every sync (and watch cycle) its `previouslySynched` EPNs are recorded as already copied (the same rule as `asynchy merge ignore.yml`; read again each time, idempotent). A missing file is a one-line configuration error",
        ),
        KeySpec(
            "comment",
            _as_str,
            None,
            "free text, ignored (HPC ASSyncy's comment)",
            option_doc="-",
            default_doc="*(none)*",
            doc="free text, ignored (HPC ASSyncy's sample has one)",
        ),
        KeySpec(
            "metrics_file",
            _as_str,
            None,
            "Prometheus text-format metrics, rewritten after every sync run and watch cycle",
            "path",
            option_doc="`sync`/`watch --metrics-file`",
            default_doc="*(none)*",
            doc="Prometheus text-format metrics, rewritten atomically after every sync run and watch cycle (for node_exporter's textfile collector; [operations.md](operations.md#metrics))",
        ),
        KeySpec(
            "threads",
            _as_count,
            2,
            "EPNs copied at once by sync and watch",
            "integer",
            option_doc="`sync`/`watch --threads`",
            default_doc="`2`",
            doc="EPNs copied at once (1-64); HPC ASSyncy's `max-tasks`",
        ),
        KeySpec(
            "bwlimit",
            _as_str,
            None,
            "the host's total rate for sync and watch, shared by the running rsyncs",
            "rate",
            option_doc="`sync`/`watch --bwlimit`",
            default_doc="*(no limit)*",
            doc="the total rate of one sync run (or watch cycle), shared by its running rsyncs: "
            "each starts with an equal share of what is left, so the sum stays at or under it. "
            "rsync units (`500` is KiB/s; `50M`, `1.5G`; `off`), or a timetable in rclone's form, "
            "`'08:00,20M 18:00,off Sat-00:00,off'` (from each time on, that rate; a time without a "
            "day applies every day); a change applies to rsyncs started after it ([sync.md](sync.md#filling-the-link))",
        ),
        KeySpec(
            "history_days",
            _as_days,
            90.0,
            "a watch deletes walks older than this that no EPN refers to (0: keep all)",
            "number",
            option_doc="-",
            default_doc="`90`",
            doc="how long a watch keeps the `walks` rows (and their walk errors) that no EPN refers to any more; `0` keeps them all. Quiet cycles (a walk that found nothing new, changed or wrong, and a sync that took nothing) fold into one row whatever this says ([operations.md](operations.md#history)). Transfers are always kept",
        ),
        KeySpec(
            "every",
            _as_interval,
            3600.0,
            "time between two watch cycles",
            "duration",
            option_doc="`watch --every`",
            default_doc="`1h`",
            doc="time from the start of one watch cycle to the next: a duration (`90s`, `30m`, `1h`, `1h30m`, `2d`; a plain number is seconds)",
        ),
        KeySpec(
            "settle",
            parse_duration,
            3600.0,
            "watch copies an EPN once its newest file is this old",
            "duration",
            option_doc="`watch --settle` (also `sync --settle`)",
            default_doc="`1h`",
            doc="a watch copies an EPN only once its newest file is at least this old (an empty EPN: once it was first seen this long ago)",
        ),
        KeySpec(
            "alert_to",
            _as_addresses,
            None,
            "who gets the alert e-mails",
            "addresses",
            option_doc="-",
            default_doc="*(none: no alerts)*",
            doc="who gets the alert e-mails: a YAML list, or addresses separated by commas",
        ),
        KeySpec(
            "alert_from",
            _as_address,
            None,
            "sender of the alert e-mails",
            "address",
            option_doc="-",
            default_doc="`asynchy@<this host>`",
            doc="the sender of the alert e-mails",
        ),
        KeySpec(
            "alert_subject",
            _as_line,
            "Unknown ownership of EPNs",
            "subject of the alert e-mails",
            option_doc="-",
            default_doc="`Unknown ownership of EPNs`",
            doc="the subject of the alert e-mails",
        ),
        KeySpec(
            "alert_templates",
            _as_str,
            None,
            "folder with alert.txt.j2 / alert.html.j2 replacing the shipped ones",
            "path",
            option_doc="-",
            default_doc="*(the shipped ones)*",
            doc="a folder whose `alert.txt.j2` and/or `alert.html.j2` replace the shipped templates (docs/operations.md)",
        ),
        KeySpec(
            "alert_template_text",
            _as_str,
            None,
            "file name of the text template in alert_templates (default alert.txt.j2)",
            option_doc="-",
            default_doc="`alert.txt.j2`",
            doc="file name of the text template (HPC ASSyncy: `epnalert-text.j2`)",
        ),
        KeySpec(
            "alert_template_html",
            _as_str,
            None,
            "file name of the HTML template in alert_templates (default alert.html.j2)",
            option_doc="-",
            default_doc="`alert.html.j2`",
            doc="file name of the HTML template (HPC ASSyncy: `epnalert-html.j2`)",
        ),
        KeySpec(
            "alert_only_with_details",
            _as_bool,
            False,
            "send an alert only when some unknown EPN has portal visit details (HPC ASSyncy's rule)",
            "boolean",
            option_doc="-",
            default_doc="`false`; `true` for an HPC ASSyncy config",
            doc="send an alert only when at least one of its EPNs has visit details from the portal (epnalert's rule); EPNs left out are named once details are known",
        ),
        KeySpec(
            "alert_log_file",
            _as_str,
            None,
            "also write the alert's log lines here",
            "path",
            option_doc="-",
            default_doc="*(none)*",
            doc="also write the alert's (and the portal's) log lines here; HPC ASSyncy's `log-files.epnalert`",
        ),
        KeySpec(
            "realert_days",
            _as_days,
            None,
            "alert about an EPN again after this many days (default: never)",
            "number",
            option_doc="`alert --realert-days`",
            default_doc="*(never)*",
            doc="name an EPN in an alert again when its last alert is older than this many days",
        ),
        KeySpec(
            "smtp_host",
            _as_line,
            "localhost",
            "SMTP server for alerts",
            option_doc="-",
            default_doc="`localhost`",
            doc="SMTP server for the alerts",
        ),
        KeySpec(
            "smtp_port",
            _as_port,
            25,
            "SMTP port",
            "integer",
            option_doc="-",
            default_doc="`25`",
            doc="its port (587 for submission with STARTTLS)",
        ),
        KeySpec(
            "smtp_starttls",
            _as_bool,
            False,
            "use STARTTLS (certificate checked)",
            "boolean",
            option_doc="-",
            default_doc="`false`",
            doc="upgrade the connection with STARTTLS; the server's certificate is checked against the system's CAs (or `SSL_CERT_FILE`)",
        ),
        KeySpec(
            "smtp_user",
            _as_line,
            None,
            "SMTP login (password: ASYNCHY_SMTP_PASSWORD or file)",
            option_doc="-",
            default_doc="*(no login)*",
            doc="SMTP login name. The password comes from the environment variable `ASYNCHY_SMTP_PASSWORD` or from `smtp_password_file`, never from the config file or the command line. A login needs `smtp_starttls: true` unless the server is on this host",
        ),
        KeySpec(
            "smtp_password_file",
            _as_str,
            None,
            "file holding the SMTP password (or set ASYNCHY_SMTP_PASSWORD)",
            "path",
            option_doc="-",
            default_doc="*(none)*",
            doc="a file (mode 0600) holding the SMTP password",
        ),
        KeySpec(
            "portal",
            _as_portal,
            None,
            "the facility portal, for visit details",
            "mapping",
            option_doc="-",
            default_doc="*(none)*",
            doc="the facility portal, for the visit details in alerts (in the environment: YAML); see below",
        ),
    )
}
