"""``asynchy check``: the preflight on its own, one line per check (docs/cli.md, docs/failures.md).

Every check that walk, sync, watch and alert make before they start is made here without
changing anything (no claim, no row, no file left behind): the configuration, the local rsync,
the server (reachable, its host key, our login), the remote rsync and ``src_prefix``, a sample
of EPN folder names against ``epn_pattern``, ``dest``, the database, SMTP and the portal.  A check
that cannot be made because an earlier one failed is skipped.

The exit code is the worst failure's: 2 for a setup problem (a fix in the configuration or on this
host), 1 for a server or service that cannot be reached now, 0 when nothing failed (warnings
included).
"""

from __future__ import annotations

import os
import posixpath
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from asynchy.config import Settings, SshTarget
from asynchy.errors import AsynchyError, ExitCode

State = Literal["ok", "warn", "fail", "skip"]
SAMPLE = 200  # folder names under src_prefix read against epn_pattern


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    state: State
    detail: str
    exit_code: int = 0  # of a failure: 2 setup, 1 cannot be reached now

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.name, "state": self.state, "detail": self.detail}


def _failed(name: str, exc: AsynchyError) -> Check:
    code = int(exc.exit_code) if exc.exit_code in (ExitCode.USAGE, ExitCode.ERROR) else 1
    return Check(name, "fail", str(exc), code)


def exit_code(checks: list[Check]) -> int:
    """2 if any setup check failed, else 1 if something could not be reached, else 0."""
    codes = {c.exit_code for c in checks if c.state == "fail"}
    return 2 if 2 in codes else (1 if codes else 0)


def run_checks(
    settings: Settings, env: Mapping[str, str], *, on_check: Callable[[Check], None] | None = None
) -> list[Check]:
    """Every check, in order; ``on_check`` sees each one as soon as it is made."""
    done: list[Check] = []

    def add(check: Check) -> Check:
        done.append(check)
        if on_check is not None:
            on_check(check)
        return check

    add(_config(settings))
    rsync_ok = add(_rsync(settings)).state != "fail"
    target, server = _server(settings)
    for check in server:
        add(check)
    reached = all(c.state in ("ok", "warn") for c in server)
    for check in _source(settings, target, reached=reached, rsync_ok=rsync_ok):
        add(check)
    add(_dest(settings))
    add(_database(settings))
    add(_smtp(settings, env))
    add(_portal(settings, env))
    return done


# ------------------------------------------------------------------ the checks
def _config(settings: Settings) -> Check:
    if settings.config_exists:
        return Check("config", "ok", f"config file {settings.config_path}")
    return Check(
        "config",
        "warn",
        f"no config file at {settings.config_path}: settings from the environment and options "
        "only (asynchy init writes one)",
    )


def _rsync(settings: Settings) -> Check:
    from asynchy.rsync import SAFE_VERSION, rsync_version

    try:
        version, _line = rsync_version(settings.rsync)
    except AsynchyError as exc:
        return _failed("rsync", exc)
    shown = ".".join(map(str, version))
    if version < SAFE_VERSION:
        return Check(
            "rsync",
            "warn",
            f"{settings.rsync}: version {shown}, below 3.5.0: a symlink race in the receiver's "
            "working folder (CVE-2026-53796) is fixed only there; upgrade rsync",
        )
    return Check("rsync", "ok", f"{settings.rsync}: version {shown}")


def _server(settings: Settings) -> tuple[SshTarget | None, list[Check]]:
    """server, host key and login (paramiko, as the walk connects); nothing for a local source."""
    from asynchy.errors import AuthenticationError, ConfigError, HostKeyChanged, HostKeyUnknown

    if settings.is_local:
        return None, []
    try:
        target = settings.ssh_target()
    except AsynchyError as exc:
        return None, [_failed("login", exc)]
    from asynchy.remote.ssh import connect

    reachable = _reachable(target)
    if reachable.state == "fail":
        return target, [reachable]
    try:
        client = connect(target)
    except (HostKeyUnknown, HostKeyChanged) as exc:
        return target, [reachable, _failed("host key", exc)]
    except (AuthenticationError, ConfigError) as exc:
        host_key = Check("host key", "ok", f"matches {target.known_hosts}")
        return target, [reachable, host_key, _failed("login", exc)]
    except AsynchyError as exc:
        return target, [_failed("server", exc)]
    try:
        transport = client.get_transport()
        banner = transport.remote_version if transport is not None else ""
    finally:
        client.close()
    name = target.known_hosts_name
    return target, [
        Check("server", "ok", f"{name} answers ({banner})" if banner else f"{name} answers"),
        Check("host key", "ok", f"matches {target.known_hosts}"),
        Check("login", "ok", f"user {target.user!r} logged in"),
    ]


def _reachable(target: SshTarget) -> Check:
    """A TCP connection to the server, worded as the walk words a failed one."""
    import socket

    from asynchy.remote.ssh import no_answer, unreachable, unresolved

    name = target.known_hosts_name
    try:
        socket.create_connection((target.host, target.port), timeout=target.timeout).close()
    except socket.gaierror as exc:
        return Check("server", "fail", unresolved(target.host, exc.strerror or str(exc)), 1)
    except TimeoutError:
        return Check("server", "fail", unreachable(name, no_answer(target.timeout)), 1)
    except OSError as exc:
        return Check("server", "fail", unreachable(name, exc.strerror or str(exc)), 1)
    return Check("server", "ok", f"{name} answers")


def _source(
    settings: Settings, target: SshTarget | None, *, reached: bool, rsync_ok: bool
) -> list[Check]:
    """The remote rsync and src_prefix (the small rsync sync's preflight runs), then the names."""
    prefix = settings.src_prefix
    if not prefix:
        what = (
            "src_prefix is not set: add 'src_prefix: ...' to the config file or pass --src-prefix"
        )
        return [Check("src_prefix", "fail", what, 2), Check("EPN names", "skip", "no src_prefix")]
    if not reached:
        why = "the server cannot be used"
        names = ("remote rsync", "src_prefix", "EPN names") if target is not None else ()
        return [Check(n, "skip", why) for n in names]
    checks = []
    if rsync_ok:
        checks += _probe(settings, target, prefix)
    if any(c.state == "fail" for c in checks):
        return [*checks, Check("EPN names", "skip", "src_prefix cannot be listed")]
    return [*checks, _names(settings)]


def _probe(settings: Settings, target: SshTarget | None, prefix: str) -> list[Check]:
    from asynchy.preflight import error_for, probe
    from asynchy.rsync import RsyncOptions

    result = probe(target, prefix, RsyncOptions(rsync=settings.rsync))
    where = target.known_hosts_name if target is not None else "the local source"
    if result.kind == "ok":
        remote = [Check("remote rsync", "ok", f"answers on {where}")] if target else []
        return [*remote, Check("src_prefix", "ok", f"{prefix} can be listed")]
    error = error_for(result, target, prefix, where)
    if result.exit_code == 127:
        return [_failed("remote rsync", error), Check("src_prefix", "skip", "no remote rsync")]
    remote = [Check("remote rsync", "ok", f"answers on {where}")] if target else []
    if result.exit_code in (3, 23):
        return [*remote, _failed("src_prefix", error)]
    return [_failed("remote rsync" if target else "src_prefix", error)]


def _names(settings: Settings) -> Check:
    """A sample of the folders under src_prefix against epn_pattern (as the walk reads them)."""
    from asynchy.names import encode_name, epn_regex, likely_fix, unexpected_names
    from asynchy.remote.factory import open_tree

    regex = epn_regex(settings.epn_pattern)
    tree = open_tree(settings, workers=1)
    try:
        top, _issues = tree.list_epns()
    except AsynchyError as exc:
        return _failed("EPN names", exc)
    finally:
        tree.close()
    names = sorted(encode_name(t.name) for t in top if t.is_dir)
    if not names:
        base = posixpath.basename((settings.src_prefix or "").rstrip("/"))
        if regex is not None and regex.search(base):
            parent = posixpath.dirname((settings.src_prefix or "").rstrip("/")) or "/"
            return Check(
                "EPN names",
                "fail",
                f"src_prefix may be one level too low: it looks like an EPN folder itself "
                f"({base!r}) and holds no folders; try src_prefix {parent}",
                2,
            )
        return Check("EPN names", "warn", f"no folders under {settings.src_prefix} yet")
    sample = names[:SAMPLE]
    of = f"{len(sample):,} of {len(names):,}" if len(sample) < len(names) else f"all {len(names):,}"
    if regex is None:
        return Check("EPN names", "ok", f"{len(names):,} folders (epn_pattern off)")
    odd = unexpected_names(sample, regex)
    if not odd:
        return Check("EPN names", "ok", f"{of} folders match epn_pattern {regex.pattern}")
    shown = ", ".join(repr(n) for n in odd[:5]) + (" ..." if len(odd) > 5 else "")
    fix = likely_fix(settings.src_prefix or "", odd, len(sample), regex, _inside(settings, odd))
    detail = f"{len(odd)} of {len(sample)} folders do not match epn_pattern ({shown}): {fix}"
    if len(odd) == len(sample):  # nothing looks like an EPN: src_prefix is wrong
        return Check("EPN names", "fail", detail, 2)
    return Check("EPN names", "warn", detail)


def _inside(settings: Settings, odd: list[str], most: int = 5) -> dict[str, list[str]]:
    """The folders inside a few of the odd ones (EPN folders there: src_prefix is one level too
    high); one that cannot be listed is left out."""
    from dataclasses import replace

    from asynchy.names import decode_name, encode_name
    from asynchy.remote.factory import open_tree

    inside: dict[str, list[str]] = {}
    for name in odd[:most]:
        folder = posixpath.join(settings.src_prefix or "", os.fsdecode(decode_name(name)))
        tree = open_tree(replace(settings, src_prefix=folder), workers=1)
        try:
            top, _ = tree.list_epns()
        except AsynchyError:
            continue
        finally:
            tree.close()
        inside[name] = [encode_name(t.name) for t in top if t.is_dir]
    return inside


def _dest(settings: Settings) -> Check:
    from asynchy.errors import ConfigError
    from asynchy.preflight import check_dest

    if not settings.dest:
        return Check(
            "dest", "fail", "dest is not set: add 'dest: ...' or pass --dest (sync needs it)", 2
        )
    dest = Path(settings.dest).expanduser().absolute()
    try:
        check_dest(dest, write=True)
    except ConfigError as exc:
        return _failed("dest", exc)
    free = shutil.disk_usage(dest).free
    from asynchy.render import human_bytes

    return Check("dest", "ok", f"{dest} is writable, {human_bytes(free)} free")


def _database(settings: Settings) -> Check:
    from asynchy.db import is_url, schema_status

    if not is_url(settings.db) and not Path(settings.db).expanduser().exists():
        return Check(
            "database", "warn", f"{settings.db} does not exist yet: asynchy walk creates it"
        )
    try:
        status = schema_status(settings.db)
    except AsynchyError as exc:
        return _failed("database", exc)
    state = status.state
    if state == "current":
        return Check("database", "ok", f"{status.display}, schema {status.revision} (current)")
    if state == "empty":
        return Check("database", "warn", f"{status.display} is empty: asynchy walk sets it up")
    if state == "older":
        return Check(
            "database",
            "warn",
            f"{status.display} has schema {status.revision}: the next command upgrades it to "
            f"{status.head} (a backup is made first), or run asynchy db upgrade",
        )
    return Check(
        "database",
        "fail",
        f"{status.display} has schema {status.revision}, newer than this asynchy "
        f"({status.head}): upgrade asynchy",
        2,
    )


def _smtp(settings: Settings, env: Mapping[str, str]) -> Check:
    """Connect, greet, STARTTLS and log in as an alert would; no message is sent."""
    import smtplib
    import ssl

    from asynchy.alert import options_from_settings

    if not settings.alert_to:
        return Check("smtp", "skip", "alert_to is not set: no alert e-mails")
    try:
        opts = options_from_settings(settings, env, "")
        assert opts is not None
        smtp = opts.smtp
        smtp.check()
    except AsynchyError as exc:
        return _failed("smtp", exc)
    where = f"{smtp.host}:{smtp.port}"
    try:
        with smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout) as conn:
            conn.ehlo()
            if smtp.starttls:
                conn.starttls(context=ssl.create_default_context())
                conn.ehlo()
            if smtp.user:
                conn.login(smtp.user, smtp.password or "")
    except smtplib.SMTPAuthenticationError:
        return Check(
            "smtp",
            "fail",
            f"{where} refused smtp_user {smtp.user!r}: check smtp_user and the password "
            "(ASYNCHY_SMTP_PASSWORD or smtp_password_file)",
            2,
        )
    except (smtplib.SMTPException, ssl.SSLError) as exc:
        return Check(
            "smtp", "fail", f"{where}: {exc}: check smtp_host, smtp_port, smtp_starttls", 2
        )
    except OSError as exc:
        return Check("smtp", "fail", f"cannot reach {where}: {exc.strerror or exc}", 1)
    how = (", STARTTLS" if smtp.starttls else "") + (
        f", logged in as {smtp.user}" if smtp.user else ""
    )
    return Check("smtp", "ok", f"{where} answers{how}; no mail sent")


def _portal(settings: Settings, env: Mapping[str, str]) -> Check:
    """Log in to the portal for each equipment (the first request an alert makes)."""
    from asynchy.portal import Portal

    if not settings.portal:
        return Check("portal", "skip", "portal is not configured")
    portal = Portal(settings.portal, env)
    try:
        for entry in portal.equipment:
            portal.login(entry)
    except AsynchyError as exc:
        return _failed("portal", exc)
    n = len(portal.equipment)
    return Check("portal", "ok", f"{portal.base_url}: logged in for {n} equipment")
