"""The source moves on while it is copied (docs/failures.md, changed), and a source prefix that cannot
be entered (setup): never charged to an EPN, never stuck.

Real sshd, real rsync, real SQLite; each test is one of the fault campaign's findings (issue 18).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import FIXED_MTIME, rows, write_file
from test_split import big_epn
from test_sync import env as env
from test_sync import own_server as own_server
from test_sync import rsyncs_into, spawn_sync, statuses, sync, tree_digest, wait_until, walk

from asynchy.failures import classify_exit
from asynchy.rsync import RsyncOptions, files_from, rsync_argv
from asynchy.rsyncrun import run_rsync

MiB = 2**20


def _failures(env: dict[str, Path]) -> dict[str, int]:
    return dict(rows(env["db"], "SELECT epn, failures FROM epns"))


def test_a_file_deleted_from_a_split_epn_is_a_change_not_a_charge(
    cli: Any, env: dict[str, Path]
) -> None:
    """Each part's rsync names its files: one deleted on the source is rsync exit 23 (link_stat ...
    No such file), which is the source moving on; the EPN is listed again, split again and copied."""
    big_epn(env["src"], "61000a", files=4, mib=4)
    walk(cli, env)
    (env["src"] / "61000a" / "d1" / "f1.raw").unlink()
    for _ in range(3):
        result = sync(cli, env, "--threads", "4", "--split-min", "1M", "--retry", "1")
        if statuses(env) == {"61000a": "complete"}:
            break
    assert result.exit_code == 0, result.stdout + result.stderr
    assert statuses(env) == {"61000a": "complete"}
    assert _failures(env) == {"61000a": 0}
    assert tree_digest(env["dest"] / "61000a") == tree_digest(env["src"] / "61000a")
    attempts = rows(env["db"], "SELECT classification, outcome, parts FROM transfers ORDER BY id")
    assert [a[:2] for a in attempts] == [("changed", "retry"), ("ok", "complete")]
    first = json.loads(attempts[0][2])
    assert "changed" in {p["classification"] for p in first}
    # the second attempt's split is of the inventory as it is now: notes.txt and three raws
    assert sum(p["files"] for p in first) == 5
    assert rows(env["db"], "SELECT file_count FROM epns") == [(4,)]
    second = json.loads(attempts[1][2])
    assert sum(p["files"] for p in second) == 4


def test_a_file_truncated_while_rsync_reads_it_is_a_change(cli: Any, env: dict[str, Path]) -> None:
    """rsync's sender says "read errors mapping ...: No data available (61)" (exit 23) when a file
    shrinks under it: the source changed, not the EPN's data."""
    path = env["src"] / "62000a" / "shrinks.raw"
    path.parent.mkdir()
    path.write_bytes(os.urandom(24 * MiB))
    os.utime(path, (FIXED_MTIME, FIXED_MTIME))
    write_file(env["src"] / "62000a" / "small.txt", b"s")
    walk(cli, env)
    proc = spawn_sync(env, "--bwlimit", "2M", "--retry", "1", "--threads", "1")
    wait_until(lambda: any(env["dest"].rglob("*shrinks.raw*")), what="bytes to arrive")
    os.truncate(path, 1 * MiB)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, out + err
    first = rows(env["db"], "SELECT classification, reason FROM transfers ORDER BY id")[0]
    assert first[0] == "changed", first
    assert statuses(env) == {"62000a": "complete"}
    assert _failures(env) == {"62000a": 0}
    assert (env["dest"] / "62000a" / "shrinks.raw").stat().st_size == 1 * MiB


def test_a_changed_epn_whose_relist_failed_is_listed_first_by_the_next_run(
    cli: Any, own_server: Any
) -> None:
    """The copy saw the source move on; listing it again met a link fault (here the server's SFTP
    subsystem is gone, rsync still runs).  That left changed_at after walked_at for good: every
    later sync said "changed, not listed again".  Now the next run lists it first, then copies."""
    server, env = own_server
    write_file(env["src"] / "63000a" / "grows.txt", b"first")
    write_file(env["src"] / "63000a" / "other.txt", b"other")
    walk(cli, env)
    # The database keeps whole seconds: the walk is put two seconds back, so the change comes after it.
    rows(env["db"], "UPDATE epns SET walked_at = datetime(walked_at, '-2 seconds')")
    server.stop()
    server.subsystem = "/nonexistent-sftp-server"
    server._write_config()
    server.restart()
    with open(env["src"] / "63000a" / "grows.txt", "ab") as fh:
        fh.write(b" and more")
    result = sync(cli, env)
    assert result.exit_code == 3, result.stdout + result.stderr
    assert statuses(env) == {"63000a": "changed"}
    assert _failures(env) == {"63000a": 0}
    stuck = rows(env["db"], "SELECT walked_at < changed_at FROM epns")
    assert stuck == [(1,)]
    server.stop()
    server.subsystem = "internal-sftp"
    server._write_config()
    server.restart()
    result = sync(cli, env)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "not listed again" not in result.stdout
    assert statuses(env) == {"63000a": "complete"}
    assert (env["dest"] / "63000a" / "grows.txt").read_bytes() == b"first and more"


def test_temporary_folders_go_once_a_killed_split_epn_completes(
    cli: Any, env: dict[str, Path]
) -> None:
    """kill -9 of a split `--partial` run leaves .asynchy-tmp/<hash>.partial.pN and <hash>.pN;
    the run that completes the EPN removes every one of them (docs/sync.md)."""
    big_epn(env["src"], "64000a", files=4, mib=8)
    walk(cli, env)
    proc = spawn_sync(env, "--threads", "4", "--split-min", "1M", "--partial", "--bwlimit", "2M")
    wait_until(lambda: len(rsyncs_into(env["dest"])) >= 4, what="four parts")
    wait_until(
        lambda: any(p.stat().st_size > 0 for p in (env["dest"] / ".asynchy-tmp").rglob("*f*.raw*")),
        what="partial bytes",
    )
    proc.kill()
    proc.wait()
    wait_until(lambda: not rsyncs_into(env["dest"]), timeout=15, what="orphan rsyncs to die")
    left = sorted(p.name for p in (env["dest"] / ".asynchy-tmp").iterdir())
    assert any(".partial.p" in name for name in left), left
    result = sync(cli, env, "--partial")  # copied whole this time: the parts' folders stay idle
    assert result.exit_code == 0, result.stdout + result.stderr
    assert statuses(env) == {"64000a": "complete"}
    assert not (env["dest"] / ".asynchy-tmp").exists(), list((env["dest"]).rglob("*"))


# ------------------------------------------------------------------ the source prefix itself
def _rsync_like_asynchy(prefix: str, epn: str, cwd: Path) -> tuple[int, str]:
    argv = rsync_argv(target=None, prefix=prefix, opts=RsyncOptions())
    run = run_rsync(
        tuple(argv), files_from(epn.encode()), cwd=bytes(cwd), stall_timeout=None, cancel=None
    )
    assert run.exit_code is not None
    return run.exit_code, run.stderr


def test_a_prefix_rsync_cannot_enter_is_setup_an_epn_it_cannot_is_not(tmp_path: Path) -> None:
    """docs/failures.md: src_prefix itself missing is the same for every EPN (setup, never
    charged); an EPN folder gone inside an existing prefix is the source moving on (changed)."""
    src = tmp_path / "fac" / "mx"
    write_file(src / "10000a" / "f", b"x")
    cwd = tmp_path / "vault" / "10000a"
    cwd.mkdir(parents=True)
    for prefix in (str(tmp_path / "fac" / "gone"), "../fac/mx", "../../fac/gone/"):
        code, stderr = _rsync_like_asynchy(prefix, "10000a", cwd)
        assert code in (3, 23), stderr
        assert classify_exit(code, stderr, prefix=prefix, cwd=str(cwd)) == "setup", stderr
    code, stderr = _rsync_like_asynchy(str(src), "10001b", cwd)
    assert code == 23, stderr
    assert classify_exit(code, stderr, prefix=str(src), cwd=str(cwd)) == "changed", stderr
    code, stderr = _rsync_like_asynchy(str(src), "10000a", cwd)
    assert code == 0, stderr


def _asynchy(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    child = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCHY_")}
    child["HOME"] = str(cwd)
    return subprocess.run(
        [sys.executable, "-m", "asynchy", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=child,
        timeout=120,
    )


def test_a_relative_local_src_prefix_is_the_folder_it_names_from_here(tmp_path: Path) -> None:
    """`--src-prefix ../fac/mx` works for walk, and now for sync too (rsync runs in each EPN's
    destination folder, where the relative path named nothing: every EPN was charged)."""
    write_file(tmp_path / "fac" / "mx" / "10000a" / "frames" / "img.cbf", b"data")
    write_file(tmp_path / "fac" / "mx" / "10001b" / "notes.txt", b"notes")
    work = tmp_path / "work"
    (work / "vault").mkdir(parents=True)
    base = ("--db", "inv.db", "--host", "local")
    walked = _asynchy(work, *base, "walk", "--src-prefix", "../fac/mx")
    assert walked.returncode == 0, walked.stderr
    synced = _asynchy(work, *base, "sync", "--src-prefix", "../fac/mx", "--dest", "vault")
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert (work / "vault" / "10000a" / "frames" / "img.cbf").read_bytes() == b"data"
    assert rows(work / "inv.db", "SELECT epn, status, failures FROM epns ORDER BY epn") == [
        ("10000a", "complete", 0),
        ("10001b", "complete", 0),
    ]


def test_init_writes_absolute_paths_for_a_local_source(tmp_path: Path) -> None:
    """docs/configuration.md: `asynchy init` writes absolute paths (src_prefix of a local source
    and dest too), so that the config works from any folder."""
    import yaml

    work = tmp_path / "work"
    work.mkdir()
    conf = work / "as.yaml"
    result = _asynchy(
        work,
        "init",
        "--config-path",
        str(conf),
        "--no-interactive",
        "--host",
        "local",
        "--src-prefix",
        "../fac/mx",
        "--dest",
        "./vault",
        "--db",
        "inv.db",
    )
    assert result.returncode == 0, result.stderr
    written = yaml.safe_load(conf.read_text())
    assert written["src_prefix"] == str(tmp_path / "fac" / "mx")
    assert written["dest"] == str(work / "vault")
    assert written["db"] == str(work / "inv.db")


@pytest.mark.parametrize("remote", ["data/mx", "/data/mx"])
def test_a_remote_src_prefix_is_left_as_given(remote: str) -> None:
    """On a server, a relative src_prefix is relative to the login's home there: not resolved here."""
    from asynchy.config import load_settings

    settings = load_settings(
        config_path=None, env={}, options={"host": "sftp.example.org", "src_prefix": remote}
    )
    assert settings.src_prefix == remote
