"""rsync: the argument lists (pure), the version check, and reading what rsync says.

Everything here is a pure function except ``rsync_version``; ``transfer.py``
runs the processes.  Names never reach a shell: the EPN folder is sent on
rsync's stdin (``--files-from=- --from0``), NUL-terminated, and rsync reads
that list exactly (no globbing, no quoting); the remote source argument only
holds ``src_prefix`` from the configuration.

Exit codes and their classes follow ../shared/reliability-notes.md (1.1) and
docs/sync.md.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from asynchy.config import SshTarget
from asynchy.errors import ConfigError

log = logging.getLogger(__name__)

MIN_VERSION = (3, 4, 1)
SAFE_VERSION = (3, 5, 0)  # fixes CVE-2026-53796 (receiver chdir symlink race) and 32 more
# asynchy's own folder in each destination folder: rsync's temp files (<hash>/) and, with --partial,
# kept partial files (<hash>.partial/).  EPN names starting with names.RESERVED_PREFIX are refused by
# the walk, so no EPN folder can ever be this folder.
TEMP_DIR = ".asynchy-tmp"


@dataclass(frozen=True, slots=True)
class RsyncOptions:
    """What the user chose for this run (frozen; crosses process boundaries)."""

    rsync: str = "rsync"
    compress: bool = False
    partial: bool = False
    bwlimit: str | None = None
    dry_run: bool = False
    retry: int = 0  # also ssh ConnectionAttempts = retry + 1
    io_timeout: int = 600  # rsync --timeout (the watchdog is the real guard)
    old_rsync: bool = False  # < 3.4.3: add --no-inc-recursive (CVE-2026-43620 workaround)
    control_dir: str | None = None  # ssh connection sharing: one master connection per pool worker
    repair: bool = False  # --checksum: compare content, not size and mtime (a copy found bad)
    include: tuple[
        str, ...
    ] = ()  # rsync filter rules, includes first (as mxsync's --include .info)
    exclude: tuple[str, ...] = ()
    chmod: str | None = None  # --chmod=... --perms (HPC ASSyncy: Dg+s,ug+w,o-wx,ug+X)
    # fixity (docs/fixity.md): the checksum rsync is pinned to (--checksum-choice), and each copied
    # regular file's source-side checksum printed as it ends (SUM_FORMAT); None: fixity off
    checksum_algo: str | None = None
    sums_dir: str | None = None  # the run's private folder for the attempts' checksum spools


SUM_FORMAT = (
    "--out-format=%C %n"  # one line per logged file: hex (blanks if not a regular file), name
)

SLOT = "@slot@"  # replaced by each pool worker with its own name (see transfer.with_slot)
CONTROL_PERSIST = 30  # seconds an idle shared ssh connection stays up


def _version_output(binary: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary, "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=child_env(os.environ),
    )


def checksum_algo(choice: str, binary: str) -> str:
    """Fixity's algorithm: the one chosen, or for ``auto`` xxh128 when this rsync has it (its
    ``--version`` lists its checksums), else md5."""
    if choice != "auto":
        return choice
    try:
        out = _version_output(binary).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    listed = out.split("Checksum list:", 1)[1].split(":", 1)[0] if "Checksum list:" in out else ""
    return "xxh128" if "xxh128" in listed.split() else "md5"


def parse_version(text: str) -> tuple[int, int, int] | None:
    m = re.search(r"rsync\s+version\s+v?(\d+)\.(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


def rsync_version(binary: str) -> tuple[tuple[int, int, int], str]:
    """(version, first line) of the rsync binary; ConfigError when missing or too old."""
    try:
        out = _version_output(binary)
    except FileNotFoundError:
        raise ConfigError(
            f"rsync ({binary}) is not installed or not on PATH: install rsync >= 3.4.1"
        ) from None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"cannot run {binary} --version: {exc}") from None
    first = (out.stdout or "").splitlines()[0] if out.stdout else ""
    version = parse_version(first)
    if version is None:
        raise ConfigError(f"{binary} --version did not print an rsync version: {first!r}")
    if version < SAFE_VERSION and version >= MIN_VERSION:
        log.warning(
            "%s is rsync %s: below 3.5.0 a receiver's working folder can be raced by a symlink "
            "(CVE-2026-53796), and asynchy runs rsync inside the destination; upgrade rsync to "
            ">= 3.5.0 (docs/security.md)",
            binary,
            ".".join(map(str, version)),
        )
    if version < MIN_VERSION:
        raise ConfigError(
            f"{binary} is rsync {'.'.join(map(str, version))}; asynchy needs >= 3.4.1 "
            "(CVE-2024-12084..12088 and CVE-2024-12747 are fixed there): upgrade rsync"
        )
    return version, first


def _rsh_quote(arg: str, what: str) -> str:
    """Quote one word of the -e command the way rsync splits it (quotes, no backslashes)."""
    if arg and not re.search(r"[\s'\"\\]", arg):
        return arg
    if '"' not in arg and "\\" not in arg:
        return f'"{arg}"'
    if "'" not in arg and "\\" not in arg:
        return f"'{arg}'"
    raise ConfigError(
        f"{what} {arg!r} cannot be passed to ssh by rsync: rename it without quotes or backslashes"
    )


def ssh_command(target: SshTarget, opts: RsyncOptions) -> str:
    """The value of rsync's -e: non-interactive ssh with strict host-key checking."""
    kh = str(target.known_hosts)
    if re.search(r"[\s'\"\\]", kh):
        raise ConfigError(
            f"known_hosts {kh!r}: ssh cannot take a file name with spaces or quotes; move the file"
        )
    timeout = max(1, int(target.timeout))
    words = [
        "ssh",
        "-p",
        str(target.port),
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={kh}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        f"ConnectTimeout={timeout}",
        "-o",
        "ServerAliveInterval=15",
        "-o",
        "ServerAliveCountMax=3",
        "-o",
        f"ConnectionAttempts={opts.retry + 1}",
        # Nothing of this host goes to the facility's server, whatever an ssh config says (the
        # first value ssh gets wins, and options come before any config file):
        "-a",
        "-x",
        "-o",
        "ForwardAgent=no",
        "-o",
        "ForwardX11=no",
        "-o",
        "ClearAllForwardings=yes",
        "-o",
        "PermitLocalCommand=no",
        "-o",
        "Tunnel=no",
        "-o",
        "IdentityAgent="
        + (_rsh_quote(target.agent, "SSH_AUTH_SOCK") if target.agent is not None else "none"),
        "-F",
        _rsh_quote(str(target.ssh_config), "ssh_config")
        if target.ssh_config is not None
        else "/dev/null",
    ]
    if opts.control_dir is not None:
        # One ssh connection per pool worker, reused by its transfers and their checks; it closes itself
        # when idle.  The socket lives in a private folder that sync creates and removes.
        words += [
            "-o",
            "ControlMaster=auto",
            "-o",
            f"ControlPersist={CONTROL_PERSIST}",
            "-o",
            f"ControlPath={_rsh_quote(opts.control_dir, 'control folder')}/{SLOT}",
        ]
    if target.keypath is not None:
        words += ["-i", _rsh_quote(str(target.keypath), "keypath"), "-o", "IdentitiesOnly=yes"]
    words += ["-l", _rsh_quote(target.user, "user")]
    return " ".join(words)


def close_master_argv(control_path: str) -> list[str]:
    """ssh -O exit: end a shared connection (after a failure, and when sync ends)."""
    return ["ssh", "-o", f"ControlPath={control_path}", "-O", "exit", "asynchy-shared-connection"]


def remote_base(target: SshTarget | None, prefix: str) -> str:
    """The source argument: ``host:/prefix/`` (or the local ``/prefix/``)."""
    base = prefix.rstrip("/") + "/"
    if target is None:
        return base
    host = f"[{target.host}]" if ":" in target.host else target.host
    if host.startswith("-"):
        raise ConfigError(f"host {target.host!r} must not start with '-'")
    return f"{host}:{base}"


def rsync_argv(
    *,
    target: SshTarget | None,
    prefix: str,
    opts: RsyncOptions,
    check: Literal["quick", "checksum", "sums"] | None = None,
    temp_dir: Path | None = None,
    partial_dir: Path | None = None,
) -> list[str]:
    """argv for copying the content of the EPN folder named on stdin (``files_from``) from prefix
    into the current folder: rsync runs in the EPN's destination folder, so that no EPN name is
    ever part of an argument list.

    ``check`` builds a verification run instead: a dry run that itemizes every
    file that differs between the source *now* and the local copy, by size and
    time (``quick``: did the source change during the transfer?) or also by
    content (``checksum``).  ``sums`` (fixity) is a dry run that prints the source's
    checksum of every regular file named on stdin (``-ii``: unchanged ones too).
    """
    for own in (temp_dir, partial_dir):
        if own is not None and not own.is_absolute():
            raise ValueError("asynchy's temporary folders must be absolute")
    argv = [
        opts.rsync,
        "-rlt",  # recursive, symlinks as symlinks, modification times (as the original asynchy)
        "--files-from=-",
        "--from0",
        "--mkpath",
        "--no-h",
        f"--timeout={opts.io_timeout}",
    ]
    if check == "sums":  # fixity: the source's checksum of each file named on stdin, nothing copied
        # %i in the format and -ii: unchanged files are logged too (ITEMIZE_WIDTH bytes of flags)
        argv += ["--dry-run", "--checksum", "-ii", "--out-format=%i %C %n"]
    elif check is not None:
        argv += ["--dry-run", "--itemize-changes", "--out-format=%i %n"]
        if check == "checksum":
            argv.append("--checksum")
    else:
        argv += ["--stats", "--info=progress2", "--outbuf=N"]
        if opts.dry_run:
            argv += ["--dry-run", "--itemize-changes", "--out-format=%i %n"]
        elif opts.checksum_algo is not None:
            argv.append(SUM_FORMAT)
        if opts.repair:
            argv.append("--checksum")
        if opts.partial and partial_dir is not None:
            # Absolute: kept outside the EPN's tree, so no data folder of that name is excluded.
            argv.append(f"--partial-dir={partial_dir}")
        if temp_dir is not None:
            argv.append(f"--temp-dir={temp_dir}")
        if opts.compress:
            argv.append("-z")
        if opts.bwlimit:
            argv.append(f"--bwlimit={parse_bwlimit(opts.bwlimit)}")
        if opts.chmod:
            argv += ["--perms", f"--chmod={opts.chmod}"]
    if opts.checksum_algo is not None:  # the copy, its checks and the source pass use one algorithm
        argv.append(f"--checksum-choice={opts.checksum_algo}")
    # The same filters for the copy and for its checks: an excluded file is not "missing".
    argv += [f"--include={p}" for p in opts.include]
    argv += [f"--exclude={p}" for p in opts.exclude]
    if opts.old_rsync:
        argv.append("--no-inc-recursive")
    if target is not None:
        argv += ["-e", ssh_command(target, opts)]
    argv += [remote_base(target, prefix), "./"]
    return argv


def temp_dir_for(dest_base: Path, epn: bytes) -> Path:
    """Where rsync builds files of this EPN before renaming them into place (outside the EPN's folder).

    Named by a hash of the EPN (never the name itself): the next attempt finds
    and removes what a killed rsync left there.
    """
    return dest_base / TEMP_DIR / hashlib.sha256(epn).hexdigest()[:20]


def partial_dir_for(dest_base: Path, epn: bytes) -> Path:
    """Where --partial keeps this EPN's interrupted files between attempts (removed once complete)."""
    return temp_dir_for(dest_base, epn).with_suffix(".partial")


def probe_argv(*, target: SshTarget | None, prefix: str, opts: RsyncOptions) -> list[str]:
    """A cheap rsync that proves the whole path works: ssh, host key, login, the remote rsync, src_prefix.

    It lists only ``src_prefix`` itself (everything inside is excluded), over a
    connection of its own (no shared ssh connection), so it also tells whether
    the server answers again after an outage.
    """
    probe = RsyncOptions(
        rsync=opts.rsync, retry=0, io_timeout=opts.io_timeout, old_rsync=opts.old_rsync
    )
    argv = [
        opts.rsync,
        "--list-only",
        "--dirs",
        "--exclude=*",
        "--no-h",
        f"--timeout={opts.io_timeout}",
    ]
    if target is not None:
        argv += ["-e", ssh_command(target, probe)]
    argv.append(remote_base(target, prefix))
    return argv


# ------------------------------------------------------------------ option values, as rsync reads them
def parse_bwlimit(value: str) -> str:
    """The --bwlimit value one rsync gets; ConfigError for one rsync would refuse.

    Read as rsync reads it (schedule.parse_rate): a number (fractions allowed) of KiB per second,
    or with a suffix B, K, M, G, T or P (``KB``, ``MB`` ... count in 1000s, ``K``, ``KiB`` ... in
    1024s); at least 512 bytes per second, or 0 for no limit."""
    from asynchy.schedule import parse_rate

    text = str(value).strip()
    if text.lower() == "off":
        raise ConfigError("--bwlimit 'off' is not an rsync rate: give 0 for no limit")
    parse_rate(text)
    return text


# ------------------------------------------------------------------ what rsync and ssh may see
# SSH_AUTH_SOCK is not passed: ssh gets the agent it may use as -o IdentityAgent (or none).
_ENV_KEEP = ("PATH", "HOME", "LANG", "TMPDIR", "USER", "LOGNAME", "TZ")
_ENV_SECRET = ("PASSWORD", "TOKEN", "SECRET", "PASSPHRASE", "CREDENTIAL")


def child_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of rsync and ssh: an allow-list (no secrets of ours or anyone's), C locale."""
    env = {
        k: v
        for k, v in environ.items()
        if (k in _ENV_KEEP or k.startswith("LC_")) and not any(s in k.upper() for s in _ENV_SECRET)
    }
    env["LC_ALL"] = "C"
    env["LANG"] = "C"
    return env


def files_from(epn: bytes) -> bytes:
    """stdin for rsync: the EPN folder, NUL-terminated (read exactly by --from0).

    ``EPN/./``: with --files-from's implied --relative, the ``/./`` marks where
    the copied path starts, so the *content* of the EPN folder lands in the
    destination folder (which may be ``<project>/<epn>/data``)."""
    return epn + b"/./\0"


# ------------------------------------------------------------------ reading rsync's output
_PROGRESS = re.compile(rb"^\s*(\d+)\s+\d+%")
_STATS = {
    "files_total": re.compile(r"^Number of files: (\d+)", re.M),
    "regular_total": re.compile(r"^Number of files: \d+ \(.*?reg: (\d+)", re.M),
    "files_transferred": re.compile(r"^Number of regular files transferred: (\d+)", re.M),
    "bytes_transferred": re.compile(r"^Total transferred file size: (\d+)", re.M),
    "total_size": re.compile(r"^Total file size: (\d+)", re.M),
}


def progress_bytes(chunk: bytes) -> int | None:
    """Bytes done so far from one --info=progress2 line, or None."""
    m = _PROGRESS.match(chunk)
    return int(m.group(1)) if m else None


@dataclass(frozen=True, slots=True)
class Stats:
    files_total: int | None = None
    regular_total: int | None = None
    files_transferred: int = 0
    bytes_transferred: int = 0
    total_size: int | None = None


def parse_stats(text: str) -> Stats:
    values: dict[str, int] = {}
    for key, pattern in _STATS.items():
        m = pattern.search(text)
        if m:
            values[key] = int(m.group(1).replace(",", ""))
    if "files_total" in values and "regular_total" not in values:
        values["regular_total"] = 0  # rsync leaves "reg:" out of the breakdown when there are none
    return Stats(**values)


# ------------------------------------------------------------------ exit codes
RSYNC_MEANINGS = {
    1: "syntax or usage error",
    2: "protocol incompatibility",
    3: "errors selecting input/output files, dirs",
    4: "requested action not supported",
    5: "error starting client-server protocol",
    10: "error in socket I/O",
    11: "error in file I/O",
    12: "error in rsync protocol data stream",
    13: "errors with program diagnostics",
    14: "error in IPC code",
    15: "sibling process crashed",
    16: "sibling process terminated abnormally",
    19: "received SIGUSR1",
    20: "received SIGINT, SIGTERM, or SIGHUP",
    21: "some error returned by waitpid()",
    22: "error allocating core memory buffers",
    23: "partial transfer due to error",
    24: "partial transfer due to vanished source files",
    25: "the --max-delete limit stopped deletions",
    30: "timeout in data send/receive",
    35: "timeout waiting for daemon connection",
    124: "remote shell failed",
    125: "remote shell killed",
    126: "remote command could not be run",
    127: "remote command not found",
    255: "ssh failed",
}


def describe_exit(exit_code: int | None) -> str:
    if exit_code is None:
        return "rsync could not be started"
    if exit_code < 0:
        return f"rsync killed by signal {-exit_code}"
    return f"rsync exit {exit_code}: {RSYNC_MEANINGS.get(exit_code, 'unknown error')}"
