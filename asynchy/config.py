"""Settings: YAML file < environment < command-line option < (nothing else).

Every key can be written in the config file (default ``~/.as.yaml``), set by
an environment variable ``ASYNCHY_<KEY>`` or by the command-line option of the
same name.  Precedence: option > environment > file > default.

This module knows nothing of click, the database or the network; it turns
text into typed, frozen values and explains what is wrong when it cannot.
"""

from __future__ import annotations

import getpass
import os
import tempfile
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


def _as_level(value: Any) -> str:
    text = _as_str(value).upper()
    if text not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
    return text


@dataclass(frozen=True, slots=True)
class KeySpec:
    name: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    kind: str = "text"

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
        ),
        KeySpec("port", _as_port, 22, "ssh port", "integer"),
        KeySpec("user", _as_str, None, "ssh user name (default: your login name)"),
        KeySpec(
            "keypath", _as_str, None, "private key file for ssh (default: ssh-agent only)", "path"
        ),
        KeySpec(
            "known_hosts",
            _as_str,
            "~/.ssh/known_hosts",
            "known_hosts file that holds the server's host key",
            "path",
        ),
        KeySpec(
            "db", _as_str, "files.db", "inventory database: a SQLite file path or a SQLAlchemy URL"
        ),
        KeySpec(
            "src_prefix",
            _as_str,
            None,
            "folder on the source whose sub-folders are EPNs, e.g. /data/mx",
        ),
        KeySpec("dest", _as_str, None, "local folder the EPNs are copied into", "path"),
        KeySpec("log_file", _as_str, None, "also write the log to this file (rotated)", "path"),
        KeySpec(
            "log_level", _as_level, "INFO", "level of the log file: DEBUG, INFO, WARNING or ERROR"
        ),
        KeySpec(
            "timeout",
            _as_seconds,
            30.0,
            "seconds before a silent connection or request counts as dead",
            "seconds",
        ),
        KeySpec(
            "destinations",
            _as_destinations,
            None,
            "EPN number -> folder under dest (the HPC ASSyncy epn_cap_map)",
            "mapping",
        ),
        KeySpec("rsync", _as_str, "rsync", "the rsync program (>= 3.4.1)", "path"),
    )
}


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
    host: str | None = None
    port: int = 22
    user: str | None = None
    keypath: str | None = None
    known_hosts: str = "~/.ssh/known_hosts"
    db: str = "files.db"
    src_prefix: str | None = None
    dest: str | None = None
    log_file: str | None = None
    log_level: str = "INFO"
    timeout: float = 30.0
    destinations: Mapping[str, str] | None = None
    rsync: str = "rsync"
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


def read_config_file(path: Path, *, must_exist: bool) -> dict[str, Any]:
    """Parse and validate the YAML file; returns {} for an absent optional file."""
    import yaml  # deferred: only commands that read the config pay for it

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if must_exist:
            raise ConfigError(
                f"config file {path} does not exist: create it with `asynchy init --config_path {path}`"
            ) from None
        return {}
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a folder, not a file") from None
    except PermissionError:
        raise ConfigError(f"config file {path} is not readable: check its permissions") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        raise ConfigError(f"config file {path} is not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold 'key: value' lines, not a {type(data).__name__}"
        )
    values: dict[str, Any] = {}
    for key, raw in data.items():
        name = str(key)
        if name not in KEYS:
            import difflib

            hint = difflib.get_close_matches(name, list(KEYS), n=1)
            advice = f"did you mean '{hint[0]}'?" if hint else f"known keys: {', '.join(KEYS)}"
            raise ConfigError(f"config file {path}: unknown key '{name}' ({advice})")
        if raw is None:
            continue
        values[name] = _parse(KEYS[name], raw, f"config file {path}: key '{name}'")
    return values


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
    file_values = read_config_file(path, must_exist=explicit)
    values: dict[str, Any] = {}
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
    return Settings(**values, config_path=path, config_exists=path.is_file(), origin=origin)


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
    text = render_config(checked)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".asynchy-config-", dir=path.parent)
    except OSError as exc:
        raise ConfigError(f"cannot write config file {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
