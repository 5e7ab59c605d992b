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
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asynchy.errors import ConfigError
from asynchy.keys import ENV_PREFIX, KEYS, LOG_LEVELS, KeySpec, parse_duration
from asynchy.legacy import MERC_KEYS, from_older_tools

__all__ = [
    "ENV_PREFIX",
    "KEYS",
    "LOG_LEVELS",
    "KeySpec",
    "Settings",
    "SshTarget",
    "load_settings",
    "parse_duration",
]
CONFIG_ENV = "ASYNCHY_CONFIG"
DEFAULT_CONFIG = "~/.as.yaml"


# Secrets that must never sit in the config file or on a command line.
SECRET_ENV = {"smtp_password": ENV_PREFIX + "SMTP_PASSWORD"}


@dataclass(frozen=True, slots=True)
class SshTarget:
    """Where and how to reach the facility's ssh server."""

    host: str
    port: int
    user: str
    keypath: Path | None
    known_hosts: Path
    timeout: float
    agent: str | None = None  # the ssh-agent socket the connection may use; None: no agent
    ssh_config: Path | None = None  # read by rsync's ssh; None: no ssh config file at all

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
    ssh_agent: str
    ssh_config: str | None
    db: str
    src_prefix: str | None
    dest: str | None
    log_file: str | None
    log_level: str
    timeout: float
    db_timeout: float
    epn_pattern: str
    strict_names: bool
    destinations: Mapping[str, str] | None
    rsync: str
    layout: str | None
    copy_unmapped: bool
    exclude: tuple[str, ...] | None
    include: tuple[str, ...] | None
    exclude_from: str | None
    include_from: str | None
    chmod: str | None
    fixity: bool
    checksum_algo: str
    ignore_file: str | None
    comment: str | None
    metrics_file: str | None
    threads: int
    bwlimit: str | None
    history_days: float
    every: float
    audit_every: float | None
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

    def ssh_target(self, environ: Mapping[str, str] | None = None) -> SshTarget:
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
        if keypath is not None and _is_public_key(keypath):
            private = keypath.with_suffix("") if keypath.suffix == ".pub" else None
            hint = f" ({private}?)" if private is not None and private.is_file() else ""
            raise ConfigError(
                f"key file {keypath} (keypath, from {self.where('keypath')}) is a public key: "
                f"give the private one{hint}"
            )
        environ = os.environ if environ is None else environ
        wants_agent = self.ssh_agent == "yes" or (self.ssh_agent == "auto" and keypath is None)
        return SshTarget(
            host=host.strip(),
            port=self.port,
            user=self.user or getpass.getuser(),
            keypath=keypath,
            known_hosts=Path(self.known_hosts).expanduser(),
            timeout=self.timeout,
            agent=(environ.get("SSH_AUTH_SOCK") or None) if wants_agent else None,
            ssh_config=Path(self.ssh_config).expanduser() if self.ssh_config else None,
        )


_PUBLIC_KEY_STARTS = (
    b"ssh-",
    b"ecdsa-sha2-",
    b"sk-ssh-",
    b"sk-ecdsa-",
    b"---- BEGIN SSH2 PUBLIC KEY",
)


def _is_public_key(path: Path) -> bool:
    """An OpenSSH (or RFC 4716) public key file, given where ssh needs the private one."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64).lstrip()
    except OSError:
        return False
    return head.startswith(_PUBLIC_KEY_STARTS)


def default_config_path(env: Mapping[str, str]) -> tuple[Path, bool]:
    """The config path to use and whether the user chose it explicitly."""
    chosen = env.get(CONFIG_ENV)
    if chosen:
        return Path(chosen).expanduser(), True
    return Path(DEFAULT_CONFIG).expanduser(), False


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
    data, notes = from_older_tools(data, path)
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
    if _readable_by_others(path):
        if _holds_passwords(values.get("portal")):
            notes.append(
                (
                    logging.WARNING,
                    f"config file {path} holds portal passwords and can be read by other users: "
                    f"chmod 600 {path}, or use password_file / password_env",
                )
            )
        if _url_password(values.get("db")):
            notes.append(
                (
                    logging.WARNING,
                    f"config file {path} holds a database password and can be read by other "
                    f"users: chmod 600 {path}, or set ASYNCHY_DB or use ~/.pgpass",
                )
            )
    if given == {"host", "port"}:  # MeRC asynchy's config without its user, keypath and db
        values["merc_missing"] = tuple(k for k in MERC_KEYS if k not in given)
    return values, notes


def _url_password(db: Any) -> bool:
    """A database URL with a password in it (postgresql://user:secret@host/db)."""
    if not isinstance(db, str) or "://" not in db:
        return False
    userinfo = db.split("://", 1)[1].rpartition("@")[0]
    return ":" in userinfo and bool(userinfo.partition(":")[2])


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
    host = values.get("host")
    if values.get("src_prefix") and (host is None or str(host).strip() in ("", "local")):
        # A local source is entered by rsync from each EPN's destination folder: a relative
        # src_prefix means the folder it names from here (as walk reads it), so it is made absolute.
        values["src_prefix"] = os.path.abspath(os.path.expanduser(values["src_prefix"]))
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


MASK = "********"


def effective(settings: Settings, env: Mapping[str, str]) -> list[tuple[str, Any, str]]:
    """``asynchy config``: every key's value and where it came from (default, config file,
    environment variable, option), in the documented order; secrets masked.  The SMTP password,
    which is no key, is shown as set or not, with where it comes from."""
    rows: list[tuple[str, Any, str]] = []
    for name in KEYS:
        value = getattr(settings, name)
        if name == "db" and isinstance(value, str):
            value = _masked_url(value)
        elif name == "portal" and value:
            value = _masked_portal(value)
        rows.append((name, value, settings.where(name)))
    env_name = SECRET_ENV["smtp_password"]
    if env.get(env_name):
        rows.append(("smtp_password", MASK, f"environment variable {env_name}"))
    elif settings.smtp_password_file:
        rows.append(("smtp_password", MASK, f"smtp_password_file {settings.smtp_password_file}"))
    else:
        rows.append(("smtp_password", None, "default"))
    return rows


def _masked_url(url: str) -> str:
    """A database URL without its password."""
    if "://" not in url or "@" not in url.split("://", 1)[1]:
        return url
    scheme, rest = url.split("://", 1)
    userinfo, _, host = rest.rpartition("@")
    user, colon, _password = userinfo.partition(":")
    return f"{scheme}://{user}{':' + MASK if colon else ''}@{host}"


def _masked_portal(portal: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(portal)
    out["equipment"] = [
        {k: (MASK if k in ("password", "client_password") and v else v) for k, v in e.items()}
        for e in portal.get("equipment", [])
    ]
    return out


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
    local = str(values.get("host") or "").strip() in ("", "local")
    paths = ("keypath", "known_hosts", "dest", *(("src_prefix",) if local else ()))
    for key in paths:  # as docs/configuration.md says: absolute, so any folder may run asynchy
        if values.get(key):
            values[key] = os.path.abspath(os.path.expanduser(str(values[key])))
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
