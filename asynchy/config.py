"""Settings: YAML file < environment < command-line option < (nothing else).

Every key can be written in the config file (default ``~/.as.yaml``), set by
an environment variable ``ASYNCHY_<KEY>`` or by the command-line option of the
same name.  Precedence: option > environment > file > default.

This module knows nothing of click, the database or the network; it turns
text into typed, frozen values and explains what is wrong when it cannot.
"""

from __future__ import annotations

import getpass
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asynchy.errors import ConfigError

ENV_PREFIX = "ASYNCHY_"
CONFIG_ENV = "ASYNCHY_CONFIG"
DEFAULT_CONFIG = "~/.as.yaml"
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
    unknown = set(value) - {"base_url", "equipment", "visit_days", "timeout"}
    if unknown:
        raise ValueError(
            f"has unknown entries {sorted(unknown)} (known: base_url, equipment, visit_days, timeout)"
        )
    base = value.get("base_url")
    if not isinstance(base, str) or not base.startswith(("http://", "https://")):
        raise ValueError("needs base_url, e.g. https://portal.example.org")
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

# Secrets that must never sit in the config file or on a command line.
SECRET_ENV = {"smtp_password": ENV_PREFIX + "SMTP_PASSWORD"}

# HPC ASSyncy's config keys (mxsync / epnalert), read as asynchy keys.
HPC_ASSYNCY_KEYS = {
    "epn_cap_map": "destinations",
    "key-file": "keypath",
    "destination-root-path": "dest",
    "max-tasks": "threads",
    "log-level": "log_level",
    "epnalert-email-to": "alert_to",
    "epnalert-email-from": "alert_from",
    "epnalert-template-folder": "alert_templates",
    "epnalert-template-text": "alert_template_text",
    "epnalert-template-html": "alert_template_html",
    "ignore": "ignore_file",
}
# What an HPC ASSyncy site had without saying so (mxsync's rsync options, its layout, epnalert's rule);
# an asynchy key in the same file wins.
HPC_ASSYNCY_DEFAULTS: dict[str, Any] = {
    "layout": "{project}/{epn}/data",
    "include": (".info",),
    "exclude": (".*",),
    "chmod": "Dg+s,ug+w,o-wx,ug+X",
    "alert_only_with_details": True,
}
HPC_ASSYNCY_IGNORED: dict[str, str] = {}
# as-walker's config.yml (asfiles.py).
ASWALKER_KEYS = {"hostname": "host", "key_path": "keypath"}
ASWALKER_IGNORED = {
    "epns_path": "asynchy walks every EPN folder under src_prefix; to walk only the institution's "
    "EPNs, list them in a file (one a line) and pass `asynchy walk --epn-file FILE`",
}
MERC_KEYS = ("host", "port", "user", "keypath", "db")


@dataclass(frozen=True, slots=True)
class SshTarget:
    """Where and how to reach the facility's ssh server."""

    host: str
    port: int
    user: str
    keypath: Path | None
    known_hosts: Path
    timeout: float

    @property
    def known_hosts_name(self) -> str:
        """The name under which OpenSSH and paramiko look the host up in known_hosts."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


@dataclass(frozen=True, slots=True)
class Settings:
    """The settings of one command.  The key fields are KEYS' names (a test checks), given by
    load_settings from KEYS' defaults, the file, the environment and the options."""

    host: str | None
    port: int
    user: str | None
    keypath: str | None
    known_hosts: str
    db: str
    src_prefix: str | None
    dest: str | None
    log_file: str | None
    log_level: str
    timeout: float
    db_timeout: float
    destinations: Mapping[str, str] | None
    rsync: str
    layout: str | None
    copy_unmapped: bool
    exclude: tuple[str, ...] | None
    include: tuple[str, ...] | None
    chmod: str | None
    ignore_file: str | None
    comment: str | None
    metrics_file: str | None
    threads: int
    every: float
    settle: float
    alert_to: tuple[str, ...] | None
    alert_from: str | None
    alert_subject: str
    alert_templates: str | None
    alert_template_text: str | None
    alert_template_html: str | None
    alert_only_with_details: bool
    alert_log_file: str | None
    realert_days: float | None
    smtp_host: str
    smtp_port: int
    smtp_starttls: bool
    smtp_user: str | None
    smtp_password_file: str | None
    portal: Mapping[str, Any] | None
    notes: tuple[tuple[int, str], ...] = ()  # (log level, text): HPC ASSyncy keys read or ignored
    merc_missing: tuple[str, ...] = ()  # a MeRC asynchy config file without some of its five keys
    config_path: Path = field(default_factory=lambda: Path(DEFAULT_CONFIG).expanduser())
    config_exists: bool = False
    origin: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_local(self) -> bool:
        """True when the source is a local folder (host empty or ``local``)."""
        return self.host is None or self.host.strip() in ("", "local")

    def where(self, key: str) -> str:
        """Human description of where the value of ``key`` came from."""
        return self.origin.get(key, "default")

    def require(self, key: str) -> Any:
        """The value of ``key``; a ConfigError that says how to set it when it is unset."""
        value = getattr(self, key)
        if value is None or value == "":
            spec = KEYS[key]
            state = "" if self.config_exists else " (missing; `asynchy init` writes it)"
            raise ConfigError(
                f"{key} is not set: add '{key}: ...' to {self.config_path}{state}, "
                f"set {spec.env} or pass {spec.option}"
            )
        return value

    def ssh_target(self) -> SshTarget:
        if self.merc_missing:
            raise ConfigError(
                f"config file {self.config_path} lacks {', '.join(self.merc_missing)}: a MeRC asynchy "
                "config names host, port, user, keypath and db; add the missing ones"
            )
        host = self.require("host")
        keypath = Path(self.keypath).expanduser() if self.keypath else None
        if keypath is not None and not keypath.is_file():
            raise ConfigError(
                f"key file {keypath} (keypath, from {self.where('keypath')}) does not exist: "
                "fix keypath or create the key with ssh-keygen"
            )
        return SshTarget(
            host=host.strip(),
            port=self.port,
            user=self.user or getpass.getuser(),
            keypath=keypath,
            known_hosts=Path(self.known_hosts).expanduser(),
            timeout=self.timeout,
        )


def default_config_path(env: Mapping[str, str]) -> tuple[Path, bool]:
    """The config path to use and whether the user chose it explicitly."""
    chosen = env.get(CONFIG_ENV)
    if chosen:
        return Path(chosen).expanduser(), True
    return Path(DEFAULT_CONFIG).expanduser(), False


def _from_hpc_assyncy(
    data: dict[str, Any], path: Path
) -> tuple[dict[str, Any], list[tuple[int, str]]]:
    """HPC ASSyncy's keys as asynchy keys (docs/configuration.md lists them); notes say what was done."""
    out = {str(k): v for k, v in data.items()}
    notes: list[tuple[int, str]] = []
    hpc = any(
        k in out for k in (*HPC_ASSYNCY_KEYS, "sync-frequency-hours", "log-files", "beamline")
    )

    def take(old: str, new: str, value: Any) -> None:
        if new in out and out[new] is not None:
            raise ConfigError(
                f"config file {path}: both '{old}' (HPC ASSyncy) and '{new}' are set: keep '{new}'"
            )
        out[new] = value
        notes.append((logging.INFO, f"config file {path}: HPC ASSyncy key '{old}' read as '{new}'"))

    for old, new in HPC_ASSYNCY_KEYS.items():
        if old in out:
            take(old, new, out.pop(old))
    if "sync-frequency-hours" in out:
        hours = out.pop("sync-frequency-hours")
        try:
            take("sync-frequency-hours", "every", float(hours) * 3600)
        except (TypeError, ValueError):
            raise ConfigError(
                f"config file {path}: key 'sync-frequency-hours' must be a number of hours, got {hours!r}"
            ) from None
    if "log-files" in out:
        files = out.pop("log-files")
        if isinstance(files, dict):
            take("log-files.sync", "log_file", files.get("sync"))
            alert_log = files.get("epnalert") or files.get("email")
            if alert_log:
                take("log-files.epnalert", "alert_log_file", alert_log)
            if files.get("email") and files.get("email") != alert_log:
                notes.append(
                    (
                        logging.WARNING,
                        f"config file {path}: HPC ASSyncy key 'log-files.email' is not used: the "
                        f"alert's e-mail lines go to log-files.epnalert ({alert_log})",
                    )
                )
        else:
            take("log-files", "log_file", files)
    for smtp_key in ("epnalert-email-smtp", "epnalert-smtp"):
        if smtp_key in out:
            server = str(out.pop(smtp_key))
            host, _, port = server.rpartition(":") if server.count(":") == 1 else (server, "", "")
            take(smtp_key, "smtp_host", host)
            if port:
                out.setdefault("smtp_port", port)
    if "beamline" in out:
        beamline = str(out.pop("beamline")).strip("/")
        if out.get("src_prefix") is None:
            take("beamline", "src_prefix", f"/data/{beamline}")
    if "base-url" in out or "equipment" in out:
        portal = {"base_url": out.pop("base-url", None), "equipment": out.pop("equipment", None)}
        if "visit-day-range" in out:
            portal["visit_days"] = out.pop("visit-day-range")
        take("base-url/equipment", "portal", portal)
    for old, why in HPC_ASSYNCY_IGNORED.items():
        if old in out:
            value = out.pop(old)
            text = f"config file {path}: HPC ASSyncy key '{old}' is not used: "
            notes.append((logging.WARNING, text + why.format(value=value)))
    if hpc:
        for key, value in HPC_ASSYNCY_DEFAULTS.items():
            if out.get(key) is None:
                out[key] = value
                notes.append(
                    (
                        logging.INFO,
                        f"config file {path}: HPC ASSyncy site: {key} {value!r} (as HPC ASSyncy did)",
                    )
                )
    for old, new in ASWALKER_KEYS.items():
        if old in out:
            if out.get(new) is not None:
                raise ConfigError(
                    f"config file {path}: both '{old}' (as-walker) and '{new}' are set: keep '{new}'"
                )
            out[new] = out.pop(old)
            notes.append(
                (logging.INFO, f"config file {path}: as-walker key '{old}' read as '{new}'")
            )
    for old, why in ASWALKER_IGNORED.items():
        if old in out:
            out.pop(old)
            notes.append(
                (logging.WARNING, f"config file {path}: as-walker key '{old}' is not used: {why}")
            )
    return out, notes


def _read_config_file(
    path: Path, *, must_exist: bool
) -> tuple[dict[str, Any], list[tuple[int, str]]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if must_exist:
            raise ConfigError(
                f"config file {path} does not exist: create it with `asynchy init --config_path {path}`"
            ) from None
        return {}, []
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a folder, not a file") from None
    except PermissionError:
        raise ConfigError(f"config file {path} is not readable: check its permissions") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    import yaml  # deferred: only a config file that exists costs its import

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        raise ConfigError(f"config file {path} is not valid YAML{where}: {problem}") from None
    if data is None:
        return {}, []
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold 'key: value' lines, not a {type(data).__name__}"
        )
    given = {str(k) for k in data}
    data, notes = _from_hpc_assyncy(data, path)
    values: dict[str, Any] = {}
    for key, raw in data.items():
        name = str(key)
        if name in SECRET_ENV:
            raise ConfigError(
                f"config file {path}: key '{name}' is not allowed (a password in a config file is read by "
                f"anyone who can read the file): set {SECRET_ENV[name]} or {name}_file instead"
            )
        if name not in KEYS:
            import difflib

            hint = difflib.get_close_matches(name, list(KEYS), n=1)
            advice = f"did you mean '{hint[0]}'?" if hint else f"known keys: {', '.join(KEYS)}"
            raise ConfigError(f"config file {path}: unknown key '{name}' ({advice})")
        if raw is None:
            continue
        values[name] = _parse(KEYS[name], raw, f"config file {path}: key '{name}'")
    if _holds_passwords(values.get("portal")) and _readable_by_others(path):
        notes.append(
            (
                logging.WARNING,
                f"config file {path} holds portal passwords and can be read by other users: "
                f"chmod 600 {path}, or use password_file / password_env",
            )
        )
    if given == {"host", "port"}:  # MeRC asynchy's config without its user, keypath and db
        values["merc_missing"] = tuple(k for k in MERC_KEYS if k not in given)
    return values, notes


def _holds_passwords(portal: Any) -> bool:
    return bool(portal) and any(
        e.get("password") or e.get("client_password") for e in portal["equipment"]
    )


def _readable_by_others(path: Path) -> bool:
    try:
        return bool(path.stat().st_mode & 0o044)
    except OSError:
        return False


def _parse(spec: KeySpec, raw: Any, where: str) -> Any:
    try:
        return spec.parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{where} {exc}, got {raw!r}") from None


def load_settings(
    *,
    config_path: str | Path | None,
    env: Mapping[str, str],
    options: Mapping[str, Any],
) -> Settings:
    """Merge file, environment and options (options win) into Settings.

    ``config_path`` is the ``--config`` option; without it ``ASYNCHY_CONFIG``
    or ``~/.as.yaml`` is used.  A file named explicitly must exist.
    """
    if config_path is not None:
        path, explicit = Path(config_path).expanduser(), True
    else:
        path, explicit = default_config_path(env)
    file_values, notes = _read_config_file(path, must_exist=explicit)
    merc_missing = file_values.pop("merc_missing", ())
    values: dict[str, Any] = {name: spec.default for name, spec in KEYS.items()}
    origin: dict[str, str] = {}
    for name, spec in KEYS.items():
        if options.get(name) is not None:
            values[name] = _parse(spec, options[name], f"option {spec.option}")
            origin[name] = f"option {spec.option}"
        elif env.get(spec.env) is not None:
            values[name] = _parse(spec, env[spec.env], f"environment variable {spec.env}")
            origin[name] = f"environment variable {spec.env}"
        elif name in file_values:
            values[name] = file_values[name]
            origin[name] = f"config file {path}"
    if merc_missing:  # what the options and the environment give counts too
        merc_missing = tuple(k for k in merc_missing if k not in origin)
    return Settings(
        **values,
        notes=tuple(notes),
        merc_missing=merc_missing,
        config_path=path,
        config_exists=path.is_file(),
        origin=origin,
    )


def existing_values(path: Path) -> dict[str, Any]:
    """The settings an existing config file holds (for ``init --overwrite``, which keeps them)."""
    values = dict(_read_config_file(path, must_exist=True)[0])
    values.pop("merc_missing", None)
    return values


INIT_REQUIRED = ("host", "src_prefix", "dest", "db")


def missing_for_init(values: Mapping[str, Any]) -> list[str]:
    """The keys a config written by ``asynchy init`` must have (else walk and sync cannot run)."""
    return [k for k in INIT_REQUIRED if values.get(k) in (None, "")]


def render_config(values: Mapping[str, Any]) -> str:
    """YAML text for a config file, keys in the documented order, unset keys left out."""
    import yaml

    ordered = {name: values[name] for name in KEYS if values.get(name) not in (None, "")}
    header = "# asynchy configuration; every key is documented in docs/configuration.md\n"
    return header + yaml.safe_dump(ordered, sort_keys=False, default_flow_style=False)


def write_config(path: Path, values: Mapping[str, Any], *, overwrite: bool) -> None:
    """Write a config file atomically with mode 0600; never replaces a file silently."""
    checked = {
        name: _parse(KEYS[name], raw, f"value for '{name}'")
        for name, raw in values.items()
        if raw not in (None, "")
    }
    if path.exists() and not overwrite:
        raise ConfigError(f"config file {path} already exists: pass --overwrite to replace it")
    if not path.parent.is_dir():
        raise ConfigError(f"cannot write config file {path}: folder {path.parent} does not exist")
    from asynchy.files import write_atomically

    try:
        write_atomically(path, render_config(checked), 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot write config file {path}: {exc.strerror}") from None


INIT_KEYS = tuple(name for name, spec in KEYS.items() if spec.init)


def init_config(
    path: Path,
    given: Mapping[str, Any],
    *,
    overwrite: bool,
    ask: Callable[[str, str, Any], Any] | None = None,
    confirm: Callable[[str], bool] | None = None,
) -> str | None:
    """``asynchy init``: write the config file at path from the given values; returns a note
    for the user, if any.

    With ``ask(key, help, default)`` (a terminal) every INIT_KEYS key is asked for, and an
    existing file is replaced only if ``confirm(question)`` says so.  Without it an existing file
    needs ``overwrite``, which keeps the keys it is not given, and the keys walk and sync need
    (INIT_REQUIRED) must be given.
    """
    values: dict[str, Any] = {key: given.get(key) for key in INIT_KEYS}
    if ask is not None:
        for key in INIT_KEYS:
            spec = KEYS[key]
            default = values[key]
            if default is None:
                default = getpass.getuser() if key == "user" else spec.default
            answer = ask(key, spec.help, "" if default is None else default)
            values[key] = answer if answer != "" else None
        if path.exists() and not overwrite:
            overwrite = confirm is not None and confirm(f"{path} exists. Replace it?")
            if not overwrite:
                raise ConfigError(f"config file {path} left unchanged")
    if path.exists() and not overwrite:
        raise ConfigError(f"config file {path} already exists: pass --overwrite to replace it")
    if overwrite and path.is_file():  # what the file already says stays, unless given anew
        values = {**existing_values(path), **{k: v for k, v in values.items() if v is not None}}
    missing = missing_for_init(values)
    if missing and ask is None:
        raise ConfigError(
            f"not writing {path}: give {', '.join('--' + k.replace('_', '-') for k in missing)} "
            "(asynchy walk and sync need them)"
        )
    for key in ("keypath", "known_hosts", "dest"):
        if values.get(key):
            values[key] = str(Path(values[key]).expanduser())
    if values.get("db") and "://" not in values["db"]:
        values["db"] = str(Path(values["db"]).expanduser().resolve())
    write_config(path, values, overwrite=overwrite)
    kh = Path(values.get("known_hosts") or KEYS["known_hosts"].default).expanduser()
    host = values.get("host")
    if host and host != "local" and not kh.is_file():
        port = values.get("port") or KEYS["port"].default
        return (
            f"note: {kh} does not exist yet; add the server's host key after checking its "
            f"fingerprint, e.g. ssh-keyscan -p {port} {host} >> {kh}"
        )
    return None
