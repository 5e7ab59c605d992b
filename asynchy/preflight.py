"""Before the first claim: everything that would fail every EPN alike is checked once.

docs/failures.md: a setup or link problem is a property of the run, never of
an EPN.  ``check_run`` finds those problems while the database is still
untouched and raises the matching ``AsynchyError`` (exit 2 for the setup, 1
for an unreachable server or a changed host key); ``probe`` is also the
circuit breaker's question "does the server answer again?".
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from asynchy.config import SshTarget
from asynchy.errors import AsynchyError, ExitCode, LinkDown, SetupError, SourceNotFound
from asynchy.failures import classify_exit, main_complaint, ssh_refused
from asynchy.rsync import TEMP_DIR, RsyncOptions, child_env, probe_argv

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[^\s\-][^\s]*$")


@dataclass(frozen=True, slots=True)
class ProbeResult:
    kind: str  # ok, link or setup (docs/failures.md)
    message: str
    exit_code: int | None = None
    stderr: str = ""


def check_options(target: SshTarget | None, bwlimit: str | None) -> None:
    """Option values rsync or ssh would refuse, or misread, for every EPN."""
    if bwlimit is not None:
        from asynchy.schedule import Bandwidth

        try:
            Bandwidth.parse(bwlimit)  # a rate, or a timetable of rates
        except AsynchyError as exc:
            raise SetupError(str(exc)) from None
    if target is not None:
        for what, value in (("host", target.host), ("user", target.user)):
            if not _NAME.match(value) or any(ord(c) < 32 for c in value):
                raise SetupError(
                    f"{what} {value!r} cannot be given to ssh: it must not start with '-' or hold "
                    f"spaces or control characters; fix {what}"
                )


def check_dest(dest: Path, *, write: bool) -> None:
    """dest is a folder we can write into, and asynchy's own folder in it is not a planted symlink."""
    if not dest.is_dir():
        raise SetupError(f"dest {dest} is not an existing folder: create it or fix dest")
    own = dest / TEMP_DIR
    with contextlib.suppress(FileNotFoundError):
        st = os.lstat(own)
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            raise SetupError(
                f"{own} is {'a symlink' if stat.S_ISLNK(st.st_mode) else 'not a folder'}: asynchy keeps "
                "its temporary files there and will not follow it; remove it"
            )
    if not write:
        return
    probe = dest / f".asynchy-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise SetupError(
            f"dest {dest} is not writable ({exc.strerror}): fix its permissions or mount, or fix dest"
        ) from None


def probe(target: SshTarget | None, prefix: str, ropts: RsyncOptions) -> ProbeResult:
    """One small rsync over a fresh ssh connection: ok, link (no answer) or setup (refused)."""
    argv = probe_argv(target=target, prefix=prefix, opts=ropts)
    timeout = (target.timeout if target is not None else 30.0) * 2 + 30
    try:
        out = subprocess.run(
            argv,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
            env=child_env(os.environ),
        )
    except FileNotFoundError:
        return ProbeResult("setup", f"rsync ({ropts.rsync}) is not installed or not on PATH")
    except subprocess.TimeoutExpired:
        return ProbeResult("link", f"no answer within {timeout:g} s")
    stderr = out.stderr.decode("utf-8", "replace")
    said = main_complaint(stderr) or f"rsync exit {out.returncode}"
    if out.returncode == 0:
        return ProbeResult("ok", "", 0, stderr)
    if out.returncode in (3, 23) and ("change_dir" in stderr or "No such file" in stderr):
        return ProbeResult("setup", said, out.returncode, stderr)
    kind = classify_exit(out.returncode, stderr)
    return ProbeResult("setup" if kind == "setup" else "link", said, out.returncode, stderr)


def check_source(target: SshTarget | None, prefix: str, ropts: RsyncOptions) -> None:
    """The server answers, knows us, has rsync and src_prefix; else the one-line error of ``walk``."""
    result = probe(target, prefix, ropts)
    if result.kind == "link":  # one more look, a second later: a connection reset is not an outage
        time.sleep(1.0)
        result = probe(target, prefix, ropts)
    if result.kind == "ok":
        return
    where = target.known_hosts_name if target is not None else "the local source"
    raise error_for(result, target, prefix, where)


def error_for(
    result: ProbeResult, target: SshTarget | None, prefix: str, where: str
) -> AsynchyError:
    """The AsynchyError a failed probe stands for, worded as the walk words it."""
    if result.kind == "link":
        charged = "nothing was charged to any EPN"
        if target is not None:
            from asynchy.remote.ssh import worded_link

            return LinkDown(worded_link(target, result.message, charged))
        return LinkDown(
            f"cannot reach {where}: {result.message}; {charged}: run sync again once it answers"
        )
    if result.exit_code in (3, 23):
        return SourceNotFound(f"src_prefix {prefix} cannot be listed on {where}: {result.message}")
    if result.exit_code == 127:
        return SetupError(f"rsync is not installed on {where} ({result.message}): ask the facility")
    if target is not None and (result.exit_code == 255 or ssh_refused(result.stderr)):
        diagnosed = _ssh_diagnosis(target)
        if diagnosed is not None:
            return diagnosed
    return SetupError(f"{where} refused the transfer: {result.message}")


def _ssh_diagnosis(target: SshTarget) -> AsynchyError | None:
    """ssh refused: ask the walk's connection code why, so that both commands say the same line.

    Only a refusal counts (host key, login, key file); a connection that fails while asking
    (a busy server) is asked once more, then OpenSSH's own line is used."""
    from asynchy.errors import ConfigError, HostKeyChanged
    from asynchy.remote.ssh import connect

    for _ in range(2):
        try:
            connect(target).close()
        except (HostKeyChanged, ConfigError) as exc:
            return exc
        except AsynchyError as exc:
            if exc.exit_code != ExitCode.ERROR:
                return exc
            time.sleep(0.5)
            continue
        return None
    return None
