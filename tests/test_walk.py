"""`asynchy walk` end to end: real sshd, real SQLite (and PostgreSQL), real signals."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import FIXED_MTIME, inventory, rows, stderr_on_a_terminal, write_file
from sshd import Sshd
from tcpproxy import Proxy
from trees import HOSTILE_NAMES, build_contract_tree, build_epns

from asynchy.names import decode_name


def utc_text(epoch: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch))


@pytest.fixture
def sftp_conf(sshd: Sshd, served: Path, tmp_path: Path, write_config: Any) -> Path:
    """A config file for the sshd fixture serving ``served``, with the db in tmp_path."""
    return write_config(sshd.settings(src_prefix=str(served), db=str(tmp_path / "files.db")))


def walk(cli: Any, conf: Path, *args: str) -> Any:
    return cli("--config", str(conf), "walk", *args)


def test_walk_records_every_file_and_epn_aggregates(
    cli: Any, sftp_conf: Path, sshd: Sshd, served: Path, tmp_path: Path
) -> None:
    expected = build_epns(served, 5, 40, subdirs=3, size=100)
    result = walk(cli, sftp_conf)
    assert result.exit_code == 0, result.stderr
    db = tmp_path / "files.db"
    assert rows(
        db, "SELECT epn, size, file_count, modified, walk_complete, status FROM epns ORDER BY epn"
    ) == [
        (epn.decode(), 4000, 40, utc_text(FIXED_MTIME + 39), 1, "pending")
        for epn in sorted(expected)
    ]
    got = rows(db, "SELECT epn, path, size, modified, kind FROM files ORDER BY epn, path")
    want = sorted(
        (epn.decode(), path.decode(), size, utc_text(mtime), kind)
        for epn, files in expected.items()
        for path, (size, mtime, kind) in files.items()
    )
    assert got == want
    walk_row = rows(
        db, "SELECT status, epns_total, epns_walked, files, bytes, errors, source FROM walks"
    )
    assert walk_row == [
        ("complete", 5, 5, 200, 20000, 0, f"sftp://{sshd.user}@{sshd.known_hosts_name}{served}")
    ]
    # The summary: EPNs, files, bytes, errors and elapsed time on one line; no progress bar when not a terminal.
    assert result.stdout.startswith(
        "walk complete: 5 EPNs walked, 200 files, 19.5 KiB, 0 errors in "
    )
    assert result.stderr == ""


def test_query_with_plain_sqlite3(cli: Any, sftp_conf: Path, served: Path, tmp_path: Path) -> None:
    """The README's promise: `sqlite3 files.db 'select epn, size, file_count from epns'`."""
    build_epns(served, 2, 3)
    assert walk(cli, sftp_conf).exit_code == 0
    out = subprocess.run(
        ["sqlite3", str(tmp_path / "files.db"), "select epn, size, file_count from epns"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out == "20000a|30|3\n20001b|30|3\n"


def test_local_and_sftp_walks_give_the_same_database(
    cli: Any, sshd: Sshd, served: Path, tmp_path: Path, write_config: Any
) -> None:
    build_epns(served, 4, 30, subdirs=2)
    sftp_db, local_db = tmp_path / "sftp.db", tmp_path / "local.db"
    conf = write_config(sshd.settings(src_prefix=str(served), db=str(sftp_db)))
    assert walk(cli, conf).exit_code == 0
    assert (
        cli("--db", str(local_db), "--host", "local", "walk", "--src-prefix", str(served)).exit_code
        == 0
    )
    assert inventory(sftp_db) == inventory(local_db)


def test_hostile_names_stored_exactly(
    cli: Any, sftp_conf: Path, served: Path, tmp_path: Path
) -> None:
    """Every byte of every name survives; non-UTF-8 bytes and backslashes use the documented escapes."""
    build_contract_tree(served)
    result = walk(cli, sftp_conf, "--epn", "hostile 9")
    assert result.exit_code == 0, result.stderr
    stored = [
        p for (p,) in rows(tmp_path / "files.db", "SELECT path FROM files WHERE epn = 'hostile 9'")
    ]
    assert sorted(decode_name(p) for p in stored if not p.startswith("dir-")) == sorted(
        HOSTILE_NAMES
    )
    assert "\\xff\\xfenot-utf8" in stored
    assert "back\\\\slash" in stored
    assert "new\nline" in stored
    assert not (Path.cwd() / "PWNED").exists()


def test_permission_denied_folder_exit_3_recorded_and_retried(
    cli: Any, sftp_conf: Path, served: Path, tmp_path: Path
) -> None:
    """An unreadable folder: recorded for its EPN, reported, EPN marked incomplete and walked again next time."""
    build_epns(served, 2, 5)
    write_file(served / "20000a" / "private" / "x.dat", b"secret")
    os.chmod(served / "20000a" / "private", 0o000)
    result = walk(cli, sftp_conf)
    assert result.exit_code == 3
    assert "1 error in" in result.stdout
    assert "error: 20000a/private: " in result.stdout and "(permission)" in result.stdout
    db = tmp_path / "files.db"
    assert rows(
        db, "SELECT epn, walk_complete, walk_error_count, file_count FROM epns ORDER BY epn"
    ) == [("20000a", 0, 1, 5), ("20001b", 1, 0, 5)]
    assert rows(db, "SELECT epn, path, kind FROM walk_errors") == [
        ("20000a", "private", "permission")
    ]
    assert rows(db, "SELECT status, errors FROM walks") == [("partial", 1)]
    # Fixed: the next plain walk re-walks the incomplete EPN only, and now finds its file.
    os.chmod(served / "20000a" / "private", 0o755)
    result = walk(cli, sftp_conf, "--json")
    assert result.exit_code == 0
    summary = json.loads(result.stdout)
    assert (summary["epns_walked"], summary["epns_skipped"], summary["errors"]) == (1, 1, 0)
    assert rows(
        db, "SELECT epn, walk_complete, walk_error_count, file_count FROM epns ORDER BY epn"
    ) == [("20000a", 1, 0, 6), ("20001b", 1, 0, 5)]


def test_second_walk_skips_walked_epns_and_continues(
    cli: Any, sftp_conf: Path, served: Path, tmp_path: Path
) -> None:
    build_epns(served, 6, 4)
    assert walk(cli, sftp_conf, "--epn", "20001b", "--epn", "20004a").exit_code == 0
    result = walk(cli, sftp_conf, "--json")
    summary = json.loads(result.stdout)
    assert (summary["epns_total"], summary["epns_walked"], summary["epns_skipped"]) == (6, 4, 2)
    assert rows(tmp_path / "files.db", "SELECT count(*), count(DISTINCT epn) FROM files") == [
        (24, 6)
    ]


def test_refresh_adds_updates_removes_and_marks_changed(
    cli: Any, sftp_conf: Path, served: Path, tmp_path: Path
) -> None:
    build_epns(served, 3, 4)
    db = tmp_path / "files.db"
    assert walk(cli, sftp_conf).exit_code == 0
    with sqlite3.connect(db) as con:  # as if sync had copied two of them
        con.execute("UPDATE epns SET status = 'complete' WHERE epn IN ('20000a', '20001b')")
    write_file(served / "20000a" / "new.dat", b"new", FIXED_MTIME + 100)  # added
    write_file(served / "20000a" / "f000001.dat", b"longer content", FIXED_MTIME + 200)  # changed
    (served / "20000a" / "f000002.dat").unlink()  # vanished
    write_file(served / "20002c" / "extra.dat", b"e", FIXED_MTIME)  # pending EPN changes too
    result = walk(cli, sftp_conf, "--refresh", "--json")
    assert result.exit_code == 0
    summary = json.loads(result.stdout)
    assert (summary["epns_walked"], summary["epns_changed"], summary["epns_skipped"]) == (3, 2, 0)
    assert rows(
        db, "SELECT path, size, modified FROM files WHERE epn = '20000a' ORDER BY path"
    ) == [
        ("f000000.dat", 10, utc_text(FIXED_MTIME)),
        ("f000001.dat", 14, utc_text(FIXED_MTIME + 200)),
        ("f000003.dat", 10, utc_text(FIXED_MTIME + 3)),
        ("new.dat", 3, utc_text(FIXED_MTIME + 100)),
    ]
    got = rows(
        db,
        "SELECT epn, size, file_count, modified, status, changed_at IS NOT NULL FROM epns ORDER BY epn",
    )
    assert got == [
        ("20000a", 37, 4, utc_text(FIXED_MTIME + 200), "changed", 1),
        ("20001b", 40, 4, utc_text(FIXED_MTIME + 3), "complete", 0),
        ("20002c", 41, 5, utc_text(FIXED_MTIME + 3), "pending", 1),
    ]
    # Without --refresh, walked EPNs are not looked at again.
    write_file(served / "20001b" / "late.dat", b"l")
    summary = json.loads(walk(cli, sftp_conf, "--json").stdout)
    assert summary["epns_walked"] == 0 and summary["epns_skipped"] == 3


def test_refresh_with_unreadable_folder_never_drops_its_files(
    cli: Any, sftp_conf: Path, served: Path, tmp_path: Path
) -> None:
    """Files we could not list this time are not 'vanished': they stay in the inventory."""
    build_epns(served, 1, 2)
    write_file(served / "20000a" / "sub" / "keep.dat", b"k")
    assert walk(cli, sftp_conf).exit_code == 0
    os.chmod(served / "20000a" / "sub", 0o000)
    assert walk(cli, sftp_conf, "--refresh").exit_code == 3
    assert rows(tmp_path / "files.db", "SELECT path FROM files ORDER BY path") == [
        ("f000000.dat",),
        ("f000001.dat",),
        ("sub/keep.dat",),
    ]
    assert rows(tmp_path / "files.db", "SELECT walk_complete FROM epns") == [(0,)]


def test_shards_partition_the_epns(
    cli: Any, sshd: Sshd, served: Path, tmp_path: Path, write_config: Any
) -> None:
    """--shard K/N: N hosts walk disjoint shares that together are exactly the full walk."""
    build_epns(served, 30, 2)
    full = tmp_path / "full.db"
    assert (
        walk(cli, write_config(sshd.settings(src_prefix=str(served), db=str(full)))).exit_code == 0
    )
    parts = []
    for k in (1, 2, 3):
        part = tmp_path / f"shard{k}.db"
        conf = write_config(sshd.settings(src_prefix=str(served)), name=f"s{k}.yaml")
        result = cli("--config", str(conf), "--db", str(part), "walk", "--shard", f"{k}/3")
        assert result.exit_code == 0, result.stderr
        parts.append(inventory(part))
    assert all(p["epns"] for p in parts)  # every host gets a share
    merged = {
        "epns": sorted(e for p in parts for e in p["epns"]),
        "files": sorted(f for p in parts for f in p["files"]),
    }
    assert merged == inventory(full)


@pytest.mark.parametrize("shard", ["0/3", "4/3", "x", "1/0"])
def test_bad_shard_is_a_usage_error(cli: Any, sftp_conf: Path, shard: str) -> None:
    result = walk(cli, sftp_conf, "--shard", shard)
    assert result.exit_code == 2
    assert "--shard" in result.stderr


def test_epn_options_and_missing_epn(
    cli: Any, sftp_conf: Path, served: Path, tmp_path: Path
) -> None:
    build_epns(served, 4, 2)
    epn_file = tmp_path / "epns.txt"
    epn_file.write_text("# wanted\n20002c\n\n20003d\n")
    # a name the server does not have (and the inventory never had): a typo, refused, nothing written
    typo = walk(cli, sftp_conf, "--epn", "20000a", "--epn-file", str(epn_file), "--epn", "20001z")
    assert typo.exit_code == 2
    assert typo.stderr.startswith("Error: EPN '20001z' is not on ")
    assert "(did you mean 20001b" in typo.stderr
    assert rows(tmp_path / "files.db", "SELECT count(*) FROM epns") == [(0,)]
    assert rows(tmp_path / "files.db", "SELECT count(*) FROM walks") == [(0,)]
    result = walk(cli, sftp_conf, "--epn", "20000a", "--epn-file", str(epn_file))
    assert result.exit_code == 0
    assert rows(tmp_path / "files.db", "SELECT epn, walk_complete FROM epns ORDER BY epn") == [
        ("20000a", 1),
        ("20002c", 1),
        ("20003d", 1),
    ]
    # an EPN the inventory knows that has gone from the server: walked, and recorded as missing
    import shutil

    shutil.rmtree(served / "20003d")
    gone = walk(cli, sftp_conf, "--epn", "20003d", "--refresh")
    assert gone.exit_code == 3
    assert "error: 20003d: " in gone.stdout and "(missing)" in gone.stdout


@pytest.mark.parametrize("bad", ["a/b", "..", ".", "", "bad\\q"])
def test_epn_that_cannot_be_a_folder_name(
    cli: Any, sftp_conf: Path, tmp_path: Path, bad: str
) -> None:
    result = walk(cli, sftp_conf, "--epn", bad)
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: EPN ")
    assert not (tmp_path / "files.db").exists()


def test_unknown_host_key_via_cli_exit_2(
    cli: Any, sshd: Sshd, served: Path, tmp_path: Path, write_config: Any
) -> None:
    kh = tmp_path / "empty_known_hosts"
    kh.write_text("")
    conf = write_config(
        sshd.settings(src_prefix=str(served), db=str(tmp_path / "f.db"), known_hosts=str(kh))
    )
    result = walk(cli, conf)
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert "is not in" in result.stderr and "SHA256:" in result.stderr
    assert rows(tmp_path / "f.db", "SELECT status FROM walks") == [("failed",)]
    # --accept-new-host-key records it and the walk runs.
    result = walk(cli, conf, "--accept-new-host-key")
    assert result.exit_code == 0, result.stderr
    assert kh.read_text() == sshd.host_key_line()


def test_changed_host_key_via_cli_exit_1(
    cli: Any, sshd: Sshd, served: Path, tmp_path: Path, write_config: Any
) -> None:
    from sshd import keygen

    keygen(tmp_path / "other")
    kind, b64 = (tmp_path / "other.pub").read_text().split()[:2]
    kh = tmp_path / "kh"
    kh.write_text(f"{sshd.known_hosts_name} {kind} {b64}\n")
    conf = write_config(
        sshd.settings(src_prefix=str(served), db=str(tmp_path / "f.db"), known_hosts=str(kh))
    )
    result = walk(cli, conf, "--accept-new-host-key")
    assert result.exit_code == 1
    assert "has CHANGED" in result.stderr
    assert result.stderr.count("\n") == 1


def test_missing_key_file_via_cli(
    cli: Any, sshd: Sshd, served: Path, tmp_path: Path, write_config: Any
) -> None:
    conf = write_config(
        sshd.settings(
            src_prefix=str(served), db=str(tmp_path / "f.db"), keypath=str(tmp_path / "k")
        )
    )
    result = walk(cli, conf)
    assert result.exit_code == 2
    assert result.stderr == (
        f"Error: key file {tmp_path / 'k'} (keypath, from config file {conf}) does not exist: "
        "fix keypath or create the key with ssh-keygen\n"
    )


def test_dropped_connection_is_reestablished(
    cli: Any, sshd: Sshd, served: Path, tmp_path: Path, write_config: Any
) -> None:
    """The link dies mid-walk: asynchy reconnects, finishes, and records exactly the full tree."""
    build_epns(served, 20, 150, subdirs=3)
    reference = tmp_path / "reference.db"
    assert (
        cli(
            "--db", str(reference), "--host", "local", "walk", "--src-prefix", str(served)
        ).exit_code
        == 0
    )
    with Proxy(sshd.port, cut_after=120_000) as proxy:
        db = tmp_path / "f.db"
        conf = write_config(
            sshd.settings(
                src_prefix=str(served),
                db=str(db),
                port=proxy.port,
                known_hosts=str(sshd.known_hosts_via(proxy.port)),
            )
        )
        result = walk(cli, conf, "--workers", "4", "--json")
        assert result.exit_code == 0, result.stderr
        assert proxy.cuts == 1
    summary = json.loads(result.stdout)
    assert summary["reconnects"] == 1
    assert inventory(db) == inventory(reference)
    assert rows(db, "SELECT reconnects, status FROM walks") == [(1, "complete")]


def test_large_epn_spills_and_survives_a_reconnect(
    cli: Any,
    sshd: Sshd,
    served: Path,
    tmp_path: Path,
    write_config: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """EPNs bigger than the in-memory buffer go through the staging table; a reconnect discards the half."""
    from asynchy import inventory as inv

    monkeypatch.setattr(inv, "SPILL_ROWS", 100)
    build_epns(served, 3, 700, subdirs=7)
    reference = tmp_path / "reference.db"
    assert (
        cli(
            "--db", str(reference), "--host", "local", "walk", "--src-prefix", str(served)
        ).exit_code
        == 0
    )
    with Proxy(sshd.port, cut_after=150_000) as proxy:
        db = tmp_path / "f.db"
        conf = write_config(
            sshd.settings(
                src_prefix=str(served),
                db=str(db),
                port=proxy.port,
                known_hosts=str(sshd.known_hosts_via(proxy.port)),
            )
        )
        result = walk(cli, conf, "--workers", "2")
        assert result.exit_code == 0, result.stderr
        assert proxy.cuts == 1
    assert inventory(db) == inventory(reference)


def test_walk_into_postgresql_matches_sqlite(
    cli: Any, served: Path, tmp_path: Path, pg_url: str
) -> None:
    expected = build_epns(served, 3, 25, subdirs=2)
    build_contract_tree(served / "more")
    sqlite_db = tmp_path / "f.db"
    for db in (str(sqlite_db), pg_url):
        result = cli("--db", db, "--host", "local", "walk", "--src-prefix", str(served))
        assert result.exit_code == 0, result.stderr
    from sqlalchemy import create_engine, text

    engine = create_engine(pg_url)
    with engine.connect() as conn:
        pg_files = conn.execute(
            text("SELECT epn, path, size, modified, kind FROM files ORDER BY epn, path")
        ).all()
        pg_epns = conn.execute(text("SELECT epn, size, file_count FROM epns ORDER BY epn")).all()
    engine.dispose()
    lite = rows(sqlite_db, "SELECT epn, path, size, modified, kind FROM files ORDER BY epn, path")
    assert sorted(
        (e, p, s, m.strftime("%Y-%m-%d %H:%M:%S"), k) for e, p, s, m, k in pg_files
    ) == sorted(lite)
    assert sorted(tuple(r) for r in pg_epns) == rows(
        sqlite_db, "SELECT epn, size, file_count FROM epns ORDER BY epn"
    )
    assert len(pg_epns) == len(expected) + 1  # and "more"


def test_refresh_on_postgresql(cli: Any, served: Path, pg_url: str) -> None:
    build_epns(served, 2, 3)
    args = ("--db", pg_url, "--host", "local", "walk", "--src-prefix", str(served))
    assert cli(*args).exit_code == 0
    write_file(served / "20000a" / "f000000.dat", b"changed!", FIXED_MTIME + 50)
    (served / "20001b" / "f000001.dat").unlink()
    summary = json.loads(cli(*args, "--refresh", "--json").stdout)
    assert summary["epns_changed"] == 2
    from sqlalchemy import create_engine, text

    engine = create_engine(pg_url)
    with engine.connect() as conn:
        got = conn.execute(text("SELECT epn, size, file_count FROM epns ORDER BY epn")).all()
    engine.dispose()
    assert [tuple(r) for r in got] == [("20000a", 28, 3), ("20001b", 20, 2)]


# ------------------------------------------------------------------ interruption
def _spawn_walk(conf: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCHY_")}
    return subprocess.Popen(
        [sys.executable, "-m", "asynchy", "--config", str(conf), "walk", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_for_rows(
    db: Path, sql: str, minimum: int, proc: subprocess.Popen[str], timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            if db.exists() and rows(db, sql)[0][0] >= minimum:
                return
        except sqlite3.OperationalError:
            pass
        time.sleep(0.05)
    raise AssertionError("the walk made no progress")


@pytest.fixture
def slow_walk(sshd: Sshd, served: Path, tmp_path: Path, write_config: Any) -> Any:
    """A walk slowed by a 20 ms round trip, so that it can be stopped half-way."""
    expected = build_epns(served, 60, 60, subdirs=3)
    proxy = Proxy(sshd.port, delay=0.01)
    db = tmp_path / "f.db"
    conf = write_config(
        sshd.settings(
            src_prefix=str(served),
            db=str(db),
            port=proxy.port,
            known_hosts=str(sshd.known_hosts_via(proxy.port)),
        )
    )
    yield conf, db, expected
    proxy.close()


def test_kill_9_mid_walk_then_resume(
    slow_walk: Any, cli: Any, served: Path, tmp_path: Path
) -> None:
    """kill -9 half-way: every recorded EPN is whole; the next walk records the rest, nothing twice."""
    conf, db, expected = slow_walk
    proc = _spawn_walk(conf, "--workers", "2")
    _wait_for_rows(db, "SELECT count(*) FROM epns", 5, proc)
    proc.kill()
    proc.wait()
    recorded = rows(db, "SELECT epn, file_count FROM epns")
    assert 0 < len(recorded) < len(expected)
    for epn, count in recorded:  # atomic per EPN: all of its files or nothing
        assert count == len(expected[epn.encode()])
        assert rows(db, "SELECT count(*) FROM files WHERE epn = ?", epn) == [(count,)]
    assert rows(db, "SELECT status FROM walks") == [("running",)]
    result = cli("--config", str(conf), "walk", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["epns_skipped"] == len(recorded)
    assert summary["epns_walked"] == len(expected) - len(recorded)
    reference = tmp_path / "reference.db"
    assert (
        cli(
            "--db", str(reference), "--host", "local", "walk", "--src-prefix", str(served)
        ).exit_code
        == 0
    )
    assert inventory(db) == inventory(reference)
    # The dead walk is recognised as interrupted by the next one.
    assert rows(db, "SELECT status FROM walks ORDER BY id") == [("interrupted",), ("complete",)]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_exits_130_and_records_it(slow_walk: Any, sig: signal.Signals) -> None:
    conf, db, expected = slow_walk
    proc = _spawn_walk(conf, "--workers", "2")
    _wait_for_rows(db, "SELECT count(*) FROM epns", 3, proc)
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert "Traceback" not in err
    assert err.count("\n") == 1
    assert rows(db, "SELECT status, message FROM walks") == [
        ("interrupted", "interrupted by the user")
    ]
    for epn, count in rows(db, "SELECT epn, file_count FROM epns"):
        assert count == len(expected[epn.encode()])


def test_progress_bar_on_a_terminal(slow_walk: Any) -> None:
    """On a terminal stderr shows a bar (EPNs of total, files, bytes); -q shows none."""

    conf, _db, _expected = slow_walk
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCHY_")}

    def stderr_of(*extra: str) -> str:
        argv = [sys.executable, "-m", "asynchy", *extra, "--config", str(conf), "walk", "--refresh"]
        code, shown = stderr_on_a_terminal([*argv, "--workers", "4"], env, columns=100)
        assert code == 0
        return shown

    shown = stderr_of()
    assert "walk:" in shown and "/60 [" in shown and "EPN/s" in shown
    assert re.search(r"\d{2,}/60 .*[\d,]+ files, [\d.]+ KiB", shown), shown
    assert stderr_of("-q") == ""


def test_log_file_gets_warnings(cli: Any, sftp_conf: Path, served: Path, tmp_path: Path) -> None:
    build_epns(served, 1, 1)
    (served / "20000a" / "closed").mkdir()
    os.chmod(served / "20000a" / "closed", 0o000)
    log = tmp_path / "asynchy.log"
    result = cli("--config", str(sftp_conf), "--log-file", str(log), "walk")
    assert result.exit_code == 3
    text = log.read_text()
    assert "EPN 20000a: closed:" in text and "(permission)" in text


# ------------------------------------------------------------------ src_prefix one level off
def _levels(root: Path) -> None:
    """/data/mx/<EPN>/{frames,processed,snapshots}: the facility's layout."""
    for epn in ("10000a", "10001b"):
        for part in ("frames", "processed", "snapshots"):
            write_file(root / "data" / "mx" / epn / part / "f.cbf", b"x")


def test_src_prefix_one_level_too_high_is_named_with_its_fix(
    cli: Any, sftp_conf: Path, served: Path, tmp_path: Path
) -> None:
    """src_prefix .../data records one "EPN" called mx; the walk warns once, naming the fix."""
    _levels(served)
    result = cli("--config", str(sftp_conf), "walk", "--src-prefix", str(served / "data"), "--json")
    assert result.exit_code == 0, result.stderr
    odd = json.loads(result.stdout)["unexpected_names"]
    assert odd["count"] == 1 and odd["names"] == ["mx"] and odd["left_out"] is False
    assert odd["hint"] == (
        "src_prefix may be one level too high: its folder 'mx' holds EPN folders; try src_prefix "
        f"{served / 'data' / 'mx'}"
    )
    warnings = [ln for ln in result.stderr.splitlines() if "do" in ln and "look like" in ln]
    assert len(warnings) == 1, result.stderr
    assert "1 folder under src_prefix does not look like an EPN" in warnings[0]
    assert rows(tmp_path / "files.db", "SELECT epn FROM epns") == [("mx",)]


def test_src_prefix_one_level_too_low_and_strict_names(
    cli: Any, tmp_path: Path, write_config: Any
) -> None:
    """src_prefix .../mx/10000a records frames, processed, snapshots as EPNs (a warning says so);
    --strict-names (or strict_names) records nothing that does not look like an EPN."""
    _levels(tmp_path)
    conf = write_config({"host": "local", "db": str(tmp_path / "f.db")})
    low = str(tmp_path / "data" / "mx" / "10000a")
    result = cli("--config", str(conf), "walk", "--src-prefix", low, "--json")
    odd = json.loads(result.stdout)["unexpected_names"]
    assert odd["names"] == ["frames", "processed", "snapshots"]
    assert odd["hint"] == (
        "src_prefix may be one level too low: it looks like an EPN folder itself ('10000a'); "
        f"try src_prefix {tmp_path / 'data' / 'mx'}"
    )
    strict = write_config({"host": "local", "db": str(tmp_path / "g.db")}, name="strict.yaml")
    result = cli("--config", str(strict), "walk", "--src-prefix", low, "--strict-names")
    assert result.exit_code == 0
    assert rows(tmp_path / "g.db", "SELECT count(*) FROM epns") == [(0,)]
    assert "were left out (strict_names)" in result.stderr
    right = cli("--config", str(strict), "walk", "--src-prefix", str(tmp_path / "data" / "mx"))
    assert right.exit_code == 0 and "look like" not in right.stderr
    assert rows(tmp_path / "g.db", "SELECT epn FROM epns ORDER BY epn") == [
        ("10000a",),
        ("10001b",),
    ]
    off = write_config(
        {"host": "local", "db": str(tmp_path / "h.db"), "epn_pattern": "off"}, name="off.yaml"
    )
    quiet = cli("--config", str(off), "walk", "--src-prefix", low)
    assert "look like" not in quiet.stderr
    bad = write_config({"host": "local", "epn_pattern": "(["}, name="bad.yaml")
    refused = cli("--config", str(bad), "walk", "--src-prefix", low)
    assert refused.exit_code == 2 and "epn_pattern' must be a regular expression" in refused.stderr
