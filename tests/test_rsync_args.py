"""The pure parts of rsync handling: argument lists, ssh options, exit-code classes, stats."""

from __future__ import annotations

from pathlib import Path

import pytest

from asynchy.config import SshTarget
from asynchy.errors import ConfigError
from asynchy.rsync import (
    PARTIAL_DIR,
    RsyncOptions,
    classify,
    files_from,
    parse_stats,
    parse_version,
    progress_bytes,
    rsync_argv,
    ssh_command,
)

TARGET = SshTarget(
    "sftp.example.org", 2222, "mx user", Path("/keys/as key"), Path("/etc/asynchy/known_hosts"), 20
)


def test_argv_copies_the_listed_folder_with_times_and_links_over_strict_ssh() -> None:
    argv = rsync_argv(
        target=TARGET, prefix="/data/mx", dest_base=Path("/vault"), opts=RsyncOptions(retry=2)
    )
    assert argv[:7] == [
        "rsync",
        "-rlt",
        "--files-from=-",
        "--from0",
        "--mkpath",
        "--no-h",
        "--timeout=600",
    ]
    assert argv[-2:] == ["sftp.example.org:/data/mx/", "/vault/"]
    ssh = argv[argv.index("-e") + 1]
    for option in (
        "BatchMode=yes",
        "StrictHostKeyChecking=yes",
        "UserKnownHostsFile=/etc/asynchy/known_hosts",
        "ConnectTimeout=20",
        "ServerAliveInterval=15",
        "ConnectionAttempts=3",
    ):
        assert f"-o {option}" in ssh
    assert ssh.startswith("ssh -p 2222 ")
    assert '-i "/keys/as key" -o IdentitiesOnly=yes' in ssh
    assert ssh.endswith('-l "mx user"')
    assert "--stats" in argv and "--info=progress2" in argv
    assert (
        "-z" not in argv
        and "--dry-run" not in argv
        and not any(a.startswith("--partial") for a in argv)
    )


def test_options_reach_rsync() -> None:
    """The original tool accepted --partial and --compress but never passed them on; asynchy does."""
    opts = RsyncOptions(compress=True, partial=True, bwlimit="10M", dry_run=True, old_rsync=True)
    argv = rsync_argv(target=None, prefix="/data/mx/", dest_base=Path("/vault/ny79"), opts=opts)
    assert "-z" in argv
    assert f"--partial-dir={PARTIAL_DIR}" in argv
    assert "--bwlimit=10M" in argv
    assert "--dry-run" in argv and "--itemize-changes" in argv
    assert "--no-inc-recursive" in argv
    assert "-e" not in argv  # a local source: no ssh
    assert argv[-2:] == ["/data/mx/", "/vault/ny79/"]


def test_checks_are_dry_runs_that_itemize() -> None:
    argv = rsync_argv(
        target=TARGET, prefix="/d", dest_base=Path("/v"), opts=RsyncOptions(), check="checksum"
    )
    assert {"--dry-run", "--checksum", "--itemize-changes"} <= set(argv)
    assert "--stats" not in argv
    quick = rsync_argv(
        target=TARGET, prefix="/d", dest_base=Path("/v"), opts=RsyncOptions(), check="quick"
    )
    assert {"--dry-run", "--itemize-changes"} <= set(quick) and "--checksum" not in quick


def test_names_never_appear_in_the_argument_list() -> None:
    """The EPN goes on stdin, NUL-terminated: no shell or glob ever sees it."""
    hostile = b"$(touch PWNED) *?[x]\n-rf"
    argv = rsync_argv(target=TARGET, prefix="/data", dest_base=Path("/v"), opts=RsyncOptions())
    assert not any("PWNED" in a for a in argv)
    assert files_from(hostile) == hostile + b"\0"


def test_paths_ssh_cannot_take_are_refused() -> None:
    bad = SshTarget("h", 22, "u", None, Path("/my files/known_hosts"), 30)
    with pytest.raises(ConfigError, match="spaces or quotes"):
        ssh_command(bad, RsyncOptions())
    with pytest.raises(ConfigError, match="keypath"):
        ssh_command(SshTarget("h", 22, "u", Path("/a'b\"c"), Path("/kh"), 30), RsyncOptions())
    with pytest.raises(ConfigError, match="must not start with '-'"):
        rsync_argv(
            target=SshTarget("-oProxyCommand=x", 22, "u", None, Path("/kh"), 30),
            prefix="/d",
            dest_base=Path("/v"),
            opts=RsyncOptions(),
        )


def test_ipv6_host_is_bracketed() -> None:
    argv = rsync_argv(
        target=SshTarget("::1", 22, "u", None, Path("/kh"), 30),
        prefix="/d",
        dest_base=Path("/v"),
        opts=RsyncOptions(),
    )
    assert argv[-2] == "[::1]:/d/"


def test_relative_destination_refused() -> None:
    with pytest.raises(ValueError, match="absolute"):
        rsync_argv(target=None, prefix="/d", dest_base=Path("vault"), opts=RsyncOptions())


@pytest.mark.parametrize(
    ("code", "stderr", "expected"),
    [
        (0, "", "ok"),
        (1, "", "permanent"),
        (2, "", "permanent"),
        (3, "", "permanent"),
        (4, "", "permanent"),
        (5, "", "retryable"),
        (10, "", "retryable"),
        (11, "", "retryable"),
        (12, "", "retryable"),
        (20, "", "retryable"),
        (23, "", "partial"),
        (24, "", "partial"),
        (25, "", "permanent"),
        (30, "", "retryable"),
        (35, "", "retryable"),
        (127, "", "permanent"),
        (255, "ssh: connect to host x port 22: Connection refused", "retryable"),
        (255, "Host key verification failed.", "permanent"),
        (255, "user@host: Permission denied (publickey).", "permanent"),
        (-9, "", "retryable"),
        (None, "", "permanent"),
    ],
)
def test_classify(code: int | None, stderr: str, expected: str) -> None:
    assert classify(code, stderr) == expected


def test_cancel_wins() -> None:
    assert classify(20, "", cancelled=True) == "cancelled"


def test_parse_stats_and_progress() -> None:
    out = """
Number of files: 7 (reg: 5, dir: 2)
Number of created files: 7 (reg: 5, dir: 2)
Number of regular files transferred: 5
Total file size: 1048576 bytes
Total transferred file size: 1048000 bytes
"""
    stats = parse_stats(out)
    assert (
        stats.files_total,
        stats.regular_total,
        stats.files_transferred,
        stats.bytes_transferred,
        stats.total_size,
    ) == (7, 5, 5, 1048000, 1048576)
    assert parse_stats("Number of files: 1 (dir: 1)\n").regular_total == 0
    assert parse_stats("nothing here").regular_total is None
    assert (
        progress_bytes(b"     32768000  31%   31.25MB/s    0:00:02 (xfr#1, to-chk=3/7)") == 32768000
    )
    assert progress_bytes(b"sending incremental file list") is None
    assert parse_version("rsync  version 3.5.0  protocol version 32") == (3, 5, 0)
    assert parse_version("rsync  version v3.2.7  protocol version 31") == (3, 2, 7)
