"""docs/failures.md end to end: internal folders, database faults, interrupts and the child environment.

Real sshd, real rsync, real SQLite files (damaged on purpose), a real tmpfs
that fills up; each test names the row of docs/failures.md it checks.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import rows, write_file
from sshd import Sshd
from test_sync import (
    big_epns,
    rsyncs_into,
    statuses,
    sync,
    tree_digest,
    wait_until,
    walk,
)
from test_sync import env as env
from trees import build_epns


def _asynchy(env: dict[str, Path], *args: str, extra_env: dict[str, str] | None = None) -> Any:
    """asynchy in its own process (so that a traceback would show on its stderr)."""
    child = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCHY_")}
    child.update(extra_env or {})
    return subprocess.run(
        [sys.executable, "-m", "asynchy", "--config", str(env["conf"]), *args],
        capture_output=True,
        text=True,
        env=child,
        timeout=120,
    )


# ------------------------------------------------------------------ asynchy's own folders
def test_epn_names_of_asynchys_folders_are_refused_at_walk(cli: Any, env: dict[str, Path]) -> None:
    """failures.md, "asynchy's own folders": .asynchy-tmp / .asynchy-partial are walk errors, nothing
    is written outside dest, and the other EPNs copy exactly (with --partial)."""
    build_epns(env["src"], 2, 3)
    write_file(env["src"] / ".asynchy-tmp" / "evil" / "x.dat", b"would land in the temp folder")
    write_file(env["src"] / ".asynchy-partial" / "y.dat", b"would be excluded")
    # a data folder named like the old partial folder, inside an EPN: copied like any other
    write_file(env["src"] / "20000a" / ".asynchy-partial" / "data.bin", b"real data")
    result = cli("--config", str(env["conf"]), "walk")
    assert result.exit_code == 3
    assert "reserved-name" in result.stdout and ".asynchy-tmp" in result.stdout
    assert sorted(statuses(env)) == ["20000a", "20001b"]

    def outside() -> list[str]:  # what lies beside dest (SQLite's -wal/-shm come and go)
        return sorted(p.name for p in env["tmp"].iterdir() if not p.name.endswith(("-wal", "-shm")))

    before = outside()
    done = sync(cli, env, "--partial")
    assert done.exit_code == 0, done.stdout + done.stderr
    for epn in ("20000a", "20001b"):
        assert tree_digest(env["dest"] / epn) == tree_digest(env["src"] / epn)
    assert sorted(p.name for p in env["dest"].iterdir()) == ["20000a", "20001b"]  # no leftovers
    assert outside() == before
    refused = cli("--config", str(env["conf"]), "walk", "--epn", ".asynchy-tmp")
    assert refused.exit_code == 2
    assert "is reserved" in refused.stderr


def test_a_planted_symlink_for_the_temp_folder_is_refused(cli: Any, env: dict[str, Path]) -> None:
    """failures.md, setup: dest/.asynchy-tmp as a symlink is never followed; nothing is claimed."""
    build_epns(env["src"], 1, 2)
    walk(cli, env)
    elsewhere = env["tmp"] / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, env["dest"] / ".asynchy-tmp")
    result = sync(cli, env)
    assert result.exit_code == 2
    assert result.stderr == (
        f"Error: {env['dest'] / '.asynchy-tmp'} is a symlink: asynchy keeps its temporary files "
        "there and will not follow it; remove it\n"
    )
    assert list(elsewhere.iterdir()) == []
    assert rows(env["db"], "SELECT count(*) FROM transfers") == [(0,)]


def test_a_symlink_planted_in_a_project_folder_is_refused_mid_run(
    cli: Any, env: dict[str, Path]
) -> None:
    build_epns(env["src"], 1, 2)
    walk(cli, env)
    project = env["dest"] / "ny79"
    project.mkdir()
    elsewhere = env["tmp"] / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, project / ".asynchy-tmp")
    result = sync(cli, env, "--destinations", "20000=ny79")
    assert result.exit_code == 2
    assert "is a symlink: asynchy keeps its temporary files there" in result.stderr
    assert list(elsewhere.iterdir()) == []
    assert rows(env["db"], "SELECT status, failures FROM epns") == [("pending", 0)]


# ------------------------------------------------------------------ database faults
def _damage_truncate(db: Path) -> None:
    size = db.stat().st_size
    with open(db, "r+b") as fh:
        fh.truncate(size // 2)


def _damage_garbage_page(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
    with open(db, "r+b") as fh:
        for n in range(1, pages):  # every page but the header page
            fh.seek(n * page)
            fh.write(os.urandom(page))


@pytest.mark.parametrize("damage", [_damage_truncate, _damage_garbage_page])
@pytest.mark.parametrize(
    "command", [["status"], ["epns"], ["sql", "SELECT count(*) FROM files"], ["sync"], ["walk"]]
)
def test_a_damaged_database_is_one_line_exit_1(
    cli: Any, env: dict[str, Path], damage: Any, command: list[str]
) -> None:
    build_epns(env["src"], 30, 40, size=100)
    walk(cli, env)
    with sqlite3.connect(env["db"]) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    damage(env["db"])
    done = _asynchy(env, *command)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1] == (
        f"Error: {env['db']}: database disk image is malformed: restore it from a backup or "
        f"`sqlite3 {env['db']} .recover`"
    )
    assert len(done.stderr.splitlines()) == 1


def test_a_walk_that_fails_on_its_database_ends_its_early_connection_cleanly(
    env: dict[str, Path], sshd: Sshd
) -> None:
    """The walk connects in the background while the database opens (SftpTree.connect_ahead).
    When the database fails first, the process lets that connection finish and closes it before
    it exits; it is never cut at exit, where ending the thread inside cryptography's native code
    aborted the process (SIGABRT) after the error line, now and then."""
    env["db"].write_bytes(b"not a database, some text " * 200)
    seen = len(sshd.log.read_bytes())
    done = _asynchy(env, "walk")
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"Error: {env['db']} is not a SQLite database; give another db path\n"
    log = sshd.log.read_bytes()[seen:].decode(errors="replace")
    assert "Starting session: subsystem 'sftp'" in log  # the handshake ran to its end...
    assert "[preauth]" not in log  # ...and was not cut half-way


def test_an_empty_file_is_not_given_a_schema_by_a_read_only_command(
    cli: Any, env: dict[str, Path]
) -> None:
    env["db"].write_bytes(b"")
    for command in (["status"], ["epns"], ["sql", "SELECT 1"]):
        done = _asynchy(env, *command)
        assert done.returncode == 2, done.stderr
        assert "is an empty file, not an asynchy database" in done.stderr
        assert env["db"].read_bytes() == b""


def test_a_full_disk_under_the_database_during_sync(
    cli: Any, env: dict[str, Path], tmp_path: Path, write_config: Any, sshd: Sshd
) -> None:
    """Database faults: the disk fills mid-run: one line, exit 1, and no claim left `running`."""
    if os.geteuid() != 0:
        pytest.fail("this test mounts a small tmpfs: run it as root (as CI does)")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        db = mount / "files.db"
        conf = write_config(
            sshd.settings(src_prefix=str(env["src"]), db=str(db), dest=str(env["dest"])),
            name="small.yaml",
        )
        small = dict(env, conf=conf, db=db)
        for n in range(6):
            write_file(env["src"] / f"6100{n}a" / "x.dat", b"x" * 100)
        walk(cli, small)
        filler = mount / "filler"
        proc = subprocess.Popen(
            [sys.executable, "-m", "asynchy", "--config", str(conf), "sync", "--threads", "1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("ASYNCHY_")},
        )
        wait_until(lambda: rows(db, "SELECT count(*) FROM workers")[0][0] >= 1, what="sync start")
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:  # take every free byte
            while True:
                os.write(fd, b"\0" * 65536)
        except OSError:
            pass
        finally:
            os.close(fd)
        out, err = proc.communicate(timeout=120)
        if proc.returncode == 0:  # it finished before the disk filled: nothing to see
            pytest.fail("sync finished before the disk was full; make the EPNs larger")
        assert proc.returncode == 1, out + err
        assert "Traceback" not in err
        assert (
            err.splitlines()[-1]
            == f"Error: the disk holding {db} is full: free space there, then run again"
        )
        filler.unlink()
        again = sync(cli, small)
        assert again.exit_code == 0, again.stdout + again.stderr
        assert set(rows(db, "SELECT DISTINCT status FROM epns")[0]) == {"complete"}
        assert rows(db, "SELECT count(*) FROM epns WHERE status = 'running'") == [(0,)]
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_locked_database_is_one_line_after_db_timeout(cli: Any, env: dict[str, Path]) -> None:
    build_epns(env["src"], 2, 2)
    walk(cli, env)
    holder = sqlite3.connect(env["db"], isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        done = _asynchy(env, "sync", extra_env={"ASYNCHY_DB_TIMEOUT": "1"})
        assert time.monotonic() - started < 20
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [
        f"Error: {env['db']} was locked for 1 s by another process (an asynchy, or a sqlite3 shell "
        "in a transaction): let it finish, then run again (or raise db_timeout)"
    ]
    assert sync(cli, env).exit_code == 0


# ------------------------------------------------------------------ interrupts, environment
def test_ctrl_c_during_parallel_start_up_charges_nothing(cli: Any, env: dict[str, Path]) -> None:
    """failures.md, cancelled: Ctrl+C on the terminal (the whole process group) 0.5 s in."""
    big_epns(env["src"], ["62000a", "62001a"])
    for n in range(3):
        write_file(env["src"] / f"6201{n}a" / "x", b"x")
    walk(cli, env)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "asynchy",
            "--config",
            str(env["conf"]),
            "sync",
            "--parallel",
            "--threads",
            "2",
            "--bwlimit",
            "1000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("ASYNCHY_")},
        start_new_session=True,  # its own process group, as a terminal gives it
    )
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert rows(env["db"], "SELECT count(*) FROM epns WHERE failures > 0") == [(0,)]
    assert rows(
        env["db"], "SELECT count(*) FROM epns WHERE status NOT IN ('pending', 'complete')"
    ) == [(0,)]
    wait_until(lambda: not rsyncs_into(env["dest"]), timeout=10, what="rsyncs to end")


def test_rsync_never_sees_our_secrets(cli: Any, env: dict[str, Path]) -> None:
    """rsync and ssh get an allow-listed environment: no ASYNCHY_SMTP_PASSWORD, no *TOKEN*."""
    big_epns(env["src"], ["63000a"])
    walk(cli, env)
    secret_env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCHY_")}
    secret_env.update(ASYNCHY_SMTP_PASSWORD="hunter2-secret", SOME_API_TOKEN="tok-secret")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "asynchy",
            "--config",
            str(env["conf"]),
            "sync",
            "--bwlimit",
            "2000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=secret_env,
    )
    try:
        wait_until(lambda: bool(rsyncs_into(env["dest"])), what="rsync to start")
        seen = []
        for pid in rsyncs_into(env["dest"]):
            try:
                seen.append(Path(f"/proc/{pid}/environ").read_bytes())
            except OSError:
                continue
        assert seen
        for environ in seen:
            assert b"hunter2-secret" not in environ and b"tok-secret" not in environ
            assert b"LC_ALL=C" in environ
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)


def _workers_of(pid: int) -> list[int]:
    """The --parallel worker processes of a sync: its children that run multiprocessing's spawn."""
    from sshd import processes

    return sorted(
        child
        for child, (ppid, cmd) in processes().items()
        if ppid == pid and b"multiprocessing" in cmd and b"resource_tracker" not in cmd
    )


def test_a_parallel_worker_killed_mid_run_is_one_line_and_charges_nothing(
    cli: Any, env: dict[str, Path]
) -> None:
    """failures.md, link ("a --parallel worker process died"): kill -9 of one worker process while
    a split EPN's parts run.  The next part went to the broken pool: `OSError: handle is closed`
    and a traceback.  Now: no traceback, nothing charged, and the next run completes."""
    from test_split import big_epn

    big_epn(env["src"], "65000a", files=6, mib=6)
    walk(cli, env)
    args = ("--parallel", "--threads", "2", "--split-min", "1M", "--streams-per-epn", "3")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "asynchy",
            "--config",
            str(env["conf"]),
            "sync",
            *args,
            "--bwlimit",
            "4M",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("ASYNCHY_")},
    )
    wait_until(lambda: len(rsyncs_into(env["dest"])) >= 2, what="two parts running")
    os.kill(_workers_of(proc.pid)[0], signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert "Traceback" not in err, err
    assert proc.returncode in (1, 3), out + err
    assert rows(env["db"], "SELECT status, failures FROM epns") in ([("pending", 0)],)
    assert rows(env["db"], "SELECT DISTINCT classification FROM transfers") == [("link",)]
    wait_until(lambda: not rsyncs_into(env["dest"]), timeout=15, what="rsyncs to end")
    result = sync(cli, env, *args)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert statuses(env) == {"65000a": "complete"}
    assert tree_digest(env["dest"] / "65000a") == tree_digest(env["src"] / "65000a")
