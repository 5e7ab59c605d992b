"""The pure parts of rsync handling: argument lists, ssh options, exit-code classes, stats."""

from __future__ import annotations

from pathlib import Path

import pytest

from asynchy.config import SshTarget
from asynchy.errors import ConfigError
from asynchy.failures import backoff, classify_exit, main_complaint
from asynchy.rsync import (
    RsyncOptions,
    child_env,
    files_from,
    parse_bwlimit,
    parse_stats,
    parse_version,
    probe_argv,
    progress_bytes,
    rsync_argv,
    ssh_command,
)

TARGET = SshTarget(
    "sftp.example.org", 2222, "mx user", Path("/keys/as key"), Path("/etc/asynchy/known_hosts"), 20
)


def test_argv_copies_the_listed_folder_with_times_and_links_over_strict_ssh() -> None:
    argv = rsync_argv(target=TARGET, prefix="/data/mx", opts=RsyncOptions(retry=2))
    assert argv[:7] == [
        "rsync",
        "-rlt",
        "--files-from=-",
        "--from0",
        "--mkpath",
        "--no-h",
        "--timeout=600",
    ]
    assert argv[-2:] == ["sftp.example.org:/data/mx/", "./"]  # rsync runs in the EPN's folder
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
    argv = rsync_argv(
        target=None,
        prefix="/data/mx/",
        opts=opts,
        partial_dir=Path("/vault/ny79/.asynchy-tmp/abc.partial"),
    )
    assert "-z" in argv
    # absolute, outside the EPN's tree: a data folder named like it is not excluded from the copy
    assert "--partial-dir=/vault/ny79/.asynchy-tmp/abc.partial" in argv
    assert "--checksum" not in argv
    assert "--bwlimit=10M" in argv
    assert "--dry-run" in argv and "--itemize-changes" in argv
    assert "--no-inc-recursive" in argv
    assert "-e" not in argv  # a local source: no ssh
    assert argv[-2:] == ["/data/mx/", "./"]
    repair = rsync_argv(target=None, prefix="/d", opts=RsyncOptions(repair=True))
    assert "--checksum" in repair  # a copy found bad is compared by content, not by size and mtime


def test_probe_lists_only_the_prefix_over_its_own_connection() -> None:
    opts = RsyncOptions(retry=3, control_dir="/tmp/asynchy-ssh-1-x")
    argv = probe_argv(target=TARGET, prefix="/data/mx", opts=opts)
    assert argv[:4] == ["rsync", "--list-only", "--dirs", "--exclude=*"]
    assert argv[-1] == "sftp.example.org:/data/mx/"
    ssh = argv[argv.index("-e") + 1]
    assert "ControlPath" not in ssh and "ConnectionAttempts=1" in ssh


@pytest.mark.parametrize(
    "value", ["50M", "500", "1.5G", "0", "10KB", "2MiB", "0.5", "100K+1", "1m"]
)
def test_bwlimit_values_rsync_takes(value: str) -> None:
    assert parse_bwlimit(value) == value


@pytest.mark.parametrize("value", ["fast", "-1", "50 M", "5b", "0.4", "", "1X"])
def test_bwlimit_values_rsync_refuses(value: str) -> None:
    with pytest.raises(ConfigError, match="--bwlimit"):
        parse_bwlimit(value)


def test_ssh_pins_what_reaches_the_server_whatever_an_ssh_config_says() -> None:
    """issue 19, 5: no agent forwarding, no X11, no LocalCommand, no forwardings, no ssh config
    file unless ssh_config names one, and the agent only when the settings allow it."""
    from dataclasses import replace

    words = ssh_command(TARGET, RsyncOptions()).split()
    for pinned in (
        "-a",
        "-x",
        "ForwardAgent=no",
        "ForwardX11=no",
        "ClearAllForwardings=yes",
        "PermitLocalCommand=no",
        "Tunnel=no",
        "IdentityAgent=none",
    ):
        assert pinned in words, pinned
    assert words[words.index("-F") + 1] == "/dev/null"
    agent = ssh_command(replace(TARGET, agent="/run/agent.sock"), RsyncOptions()).split()
    assert "IdentityAgent=/run/agent.sock" in agent
    own = ssh_command(replace(TARGET, ssh_config=Path("/etc/asynchy/ssh_config")), RsyncOptions())
    assert own.split()[own.split().index("-F") + 1] == "/etc/asynchy/ssh_config"


def test_child_environment_is_an_allow_list() -> None:
    env = child_env(
        {
            "PATH": "/usr/bin",
            "HOME": "/root",
            "LC_TIME": "en_AU",
            "SSH_AUTH_SOCK": "/run/agent",
            "ASYNCHY_SMTP_PASSWORD": "hunter2",
            "AWS_SECRET_ACCESS_KEY": "x",
            "GITHUB_TOKEN": "y",
            "LD_PRELOAD": "/evil.so",
            "LC_PASSWORD": "z",
        }
    )
    assert env == {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "LC_TIME": "en_AU",
        "LC_ALL": "C",
        "LANG": "C",
    }


def test_checks_are_dry_runs_that_itemize() -> None:
    argv = rsync_argv(target=TARGET, prefix="/d", opts=RsyncOptions(), check="checksum")
    assert {"--dry-run", "--checksum", "--itemize-changes"} <= set(argv)
    assert "--stats" not in argv
    quick = rsync_argv(target=TARGET, prefix="/d", opts=RsyncOptions(), check="quick")
    assert {"--dry-run", "--itemize-changes"} <= set(quick) and "--checksum" not in quick


def test_names_never_appear_in_the_argument_list() -> None:
    """The EPN goes on stdin, NUL-terminated: no shell or glob ever sees it."""
    hostile = b"$(touch PWNED) *?[x]\n-rf"
    argv = rsync_argv(target=TARGET, prefix="/data", opts=RsyncOptions())
    assert not any("PWNED" in a for a in argv)
    assert files_from(hostile) == hostile + b"/./\0"  # the EPN's content, into the current folder


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
            opts=RsyncOptions(),
        )


def test_ipv6_host_is_bracketed() -> None:
    argv = rsync_argv(
        target=SshTarget("::1", 22, "u", None, Path("/kh"), 30),
        prefix="/d",
        opts=RsyncOptions(),
    )
    assert argv[-2] == "[::1]:/d/"


def test_relative_temp_folder_refused() -> None:
    with pytest.raises(ValueError, match="absolute"):
        rsync_argv(target=None, prefix="/d", opts=RsyncOptions(), temp_dir=Path("vault/.t"))


def test_filters_reach_copy_and_check_alike_and_chmod_only_the_copy() -> None:
    opts = RsyncOptions(include=(".info",), exclude=(".*",), chmod="Dg+s,ug+w,o-wx,ug+X")
    copy = rsync_argv(target=None, prefix="/d", opts=opts)
    check = rsync_argv(target=None, prefix="/d", opts=opts, check="quick")
    for argv in (copy, check):
        assert argv.index("--include=.info") < argv.index("--exclude=.*")
    assert "--chmod=Dg+s,ug+w,o-wx,ug+X" in copy and "--perms" in copy
    assert "--perms" not in check


CHANGED_KEY_12 = """Offending ED25519 key in /k:1
  remove with:
  ssh-keygen -f "/k" -R "[127.0.0.1]:55139"
Host key for [127.0.0.1]:55139 has changed and you have requested strict checking.
Host key verification failed.
rsync: connection unexpectedly closed (0 bytes received so far) [Receiver]
rsync error: error in rsync protocol data stream (code 12) at io.c(285) [Receiver=3.5.0]
"""


@pytest.mark.parametrize(
    ("code", "stderr", "expected"),
    [  # docs/failures.md, "Classes"
        (0, "", "ok"),
        (1, "", "setup"),
        (2, "", "setup"),
        (4, "", "setup"),
        (25, "", "setup"),
        (126, "", "setup"),
        (127, "", "setup"),
        (None, "", "setup"),
        (255, "Host key verification failed.", "setup"),
        (255, "user@host: Permission denied (publickey).", "setup"),
        # rsync read the closed pipe before it reaped ssh: 12, not 255; still ssh's refusal
        (12, CHANGED_KEY_12, "setup"),
        (12, "u@h: Permission denied (publickey,password).\nrsync: connection unexpec", "setup"),
        (12, 'rsync: [sender] read errors mapping "/d/a": Permission denied (13)', "link"),
        (
            255,
            "No ED25519 host key is known for [127.0.0.1]:2222 and you have requested strict",
            "setup",
        ),
        (5, "", "link"),
        (10, "", "link"),
        (12, "", "link"),
        (20, "", "link"),
        (30, "", "link"),
        (35, "", "link"),
        (-9, "", "link"),
        (255, "ssh: connect to host x port 22: Connection refused", "link"),
        (255, "ssh: Could not resolve hostname nowhere: Name or service not known", "link"),
        (3, "", "partial"),
        (11, "", "partial"),
        (23, 'rsync: [sender] send_files failed to open "/d/a": Permission denied (13)', "partial"),
        (23, 'rsync: [receiver] mkstemp "/v/.a.XYZ" failed: Permission denied (13)', "setup"),
        (11, 'rsync: [receiver] write failed on "/v/a": No space left on device (28)', "setup"),
        (3, 'rsync: [Receiver] mkdir "/v/x" failed: Read-only file system (30)', "setup"),
        (24, "file has vanished: /d/a", "changed"),
    ],
)
def test_classify(code: int | None, stderr: str, expected: str) -> None:
    assert classify_exit(code, stderr) == expected


def test_the_complaint_is_the_cause_not_the_banner() -> None:
    changed = """@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!
Someone could be eavesdropping on you right now (man-in-the-middle attack)!
It is also possible that a host key has just been changed.
The fingerprint for the ED25519 key sent by the remote host is
SHA256:abc.
Please contact your system administrator.
Add correct host key in /k to get rid of this message.
Offending ED25519 key in /k:1
Host key for [127.0.0.1]:2222 has changed and you have requested strict checking.
Host key verification failed.
rsync: connection unexpectedly closed (0 bytes received so far) [Receiver]
rsync error: unexplained error (code 255) at io.c(232) [Receiver=3.5.0]
"""
    assert main_complaint(changed) == (
        "Host key for [127.0.0.1]:2222 has changed and you have requested strict checking."
    )
    refused = (
        "ssh: connect to host 127.0.0.1 port 1: Connection refused\n"
        "rsync: connection unexpectedly closed (0 bytes received so far) [Receiver]\n"
        "rsync error: unexplained error (code 255) at io.c(232) [Receiver=3.5.0]\n"
    )
    assert main_complaint(refused) == "ssh: connect to host 127.0.0.1 port 1: Connection refused"
    partial = (
        'rsync: [sender] send_files failed to open "/d/a": Permission denied (13)\n'
        "rsync error: some files/attrs were not transferred (code 23) at main.c(1338)\n"
    )
    assert main_complaint(partial).startswith("rsync: [sender] send_files failed to open")


def test_backoff_is_bounded_jittered_and_grows() -> None:
    import random

    rng = random.Random(7)
    delays = [backoff(n, 600, 6 * 3600, rng) for n in range(12)]
    for n, d in enumerate(delays):
        full = min(6 * 3600, 600 * 2**n)
        assert full / 2 <= d <= full
    assert max(delays) <= 6 * 3600 and delays[3] > delays[0]


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
