"""The config files of the tools asynchy replaces, read as asynchy settings (docs/configuration.md,
"Switching from HPC ASSyncy, MeRC asynchy and as-walker"): HPC ASSyncy's keys (mxsync, epnalert)
and the defaults its sites had without saying so, as-walker's keys, MeRC asynchy's five.  Every
key read is noted, so ``-v`` and the log say what was done."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from asynchy.errors import ConfigError

Note = tuple[int, str]  # (log level, text)

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


class _Reading:
    """One file's values being turned into asynchy keys, with the notes of what was done."""

    def __init__(self, data: dict[str, Any], path: Path) -> None:
        self.out = {str(k): v for k, v in data.items()}
        self.notes: list[Note] = []
        self.path = path

    def take(self, old: str, new: str, value: Any, tool: str = "HPC ASSyncy") -> None:
        if new in self.out and self.out[new] is not None:
            raise ConfigError(
                f"config file {self.path}: both '{old}' ({tool}) and '{new}' are set: keep '{new}'"
            )
        self.out[new] = value
        self.note(logging.INFO, f"{tool} key '{old}' read as '{new}'")

    def note(self, level: int, text: str) -> None:
        self.notes.append((level, f"config file {self.path}: {text}"))


def from_older_tools(data: dict[str, Any], path: Path) -> tuple[dict[str, Any], list[Note]]:
    """The values of a config file with the older tools' keys as asynchy keys; notes say what was
    done (HPC ASSyncy, then as-walker: MeRC asynchy's keys are asynchy's own)."""
    r = _Reading(data, path)
    hpc = any(
        k in r.out for k in (*HPC_ASSYNCY_KEYS, "sync-frequency-hours", "log-files", "beamline")
    )
    for old, new in HPC_ASSYNCY_KEYS.items():
        if old in r.out:
            r.take(old, new, r.out.pop(old))
    _frequency(r)
    _log_files(r)
    _smtp(r)
    _source_and_portal(r)
    for old, why in HPC_ASSYNCY_IGNORED.items():
        if old in r.out:
            value = r.out.pop(old)
            r.note(
                logging.WARNING, f"HPC ASSyncy key '{old}' is not used: " + why.format(value=value)
            )
    if hpc:
        for key, value in HPC_ASSYNCY_DEFAULTS.items():
            if r.out.get(key) is None:
                r.out[key] = value
                r.note(logging.INFO, f"HPC ASSyncy site: {key} {value!r} (as HPC ASSyncy did)")
    _as_walker(r)
    return r.out, r.notes


def _frequency(r: _Reading) -> None:
    if "sync-frequency-hours" not in r.out:
        return
    hours = r.out.pop("sync-frequency-hours")
    try:
        r.take("sync-frequency-hours", "every", float(hours) * 3600)
    except (TypeError, ValueError):
        raise ConfigError(
            f"config file {r.path}: key 'sync-frequency-hours' must be a number of hours, "
            f"got {hours!r}"
        ) from None


def _log_files(r: _Reading) -> None:
    if "log-files" not in r.out:
        return
    files = r.out.pop("log-files")
    if not isinstance(files, dict):
        r.take("log-files", "log_file", files)
        return
    r.take("log-files.sync", "log_file", files.get("sync"))
    alert_log = files.get("epnalert") or files.get("email")
    if alert_log:
        r.take("log-files.epnalert", "alert_log_file", alert_log)
    if files.get("email") and files.get("email") != alert_log:
        r.note(
            logging.WARNING,
            f"HPC ASSyncy key 'log-files.email' is not used: the alert's e-mail lines go to "
            f"log-files.epnalert ({alert_log})",
        )


def _smtp(r: _Reading) -> None:
    for smtp_key in ("epnalert-email-smtp", "epnalert-smtp"):
        if smtp_key in r.out:
            server = str(r.out.pop(smtp_key))
            host, _, port = server.rpartition(":") if server.count(":") == 1 else (server, "", "")
            r.take(smtp_key, "smtp_host", host)
            if port:
                r.out.setdefault("smtp_port", port)


def _source_and_portal(r: _Reading) -> None:
    if "beamline" in r.out:
        beamline = str(r.out.pop("beamline")).strip("/")
        if r.out.get("src_prefix") is None:
            r.take("beamline", "src_prefix", f"/data/{beamline}")
    if "base-url" in r.out or "equipment" in r.out:
        portal = {
            "base_url": r.out.pop("base-url", None),
            "equipment": r.out.pop("equipment", None),
        }
        if "visit-day-range" in r.out:
            portal["visit_days"] = r.out.pop("visit-day-range")
        r.take("base-url/equipment", "portal", portal)


def _as_walker(r: _Reading) -> None:
    for old, new in ASWALKER_KEYS.items():
        if old in r.out:
            r.take(old, new, r.out.pop(old), tool="as-walker")
    for old, why in ASWALKER_IGNORED.items():
        if old in r.out:
            r.out.pop(old)
            r.note(logging.WARNING, f"as-walker key '{old}' is not used: {why}")
