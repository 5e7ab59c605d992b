"""asynchy merge: every input kind, the rules, idempotence and order, all-or-nothing, shards == one walk."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import FIXED_MTIME, rows
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sshd import Sshd
from trees import build_epns


def dump(path: Path) -> dict[str, Any]:
    """The content of an asynchy database that merging must get right (row ids aside)."""
    return {
        "epns": rows(path, "SELECT * FROM epns ORDER BY epn"),
        "files": rows(path, "SELECT * FROM files ORDER BY epn, path"),
        "walks": rows(path, "SELECT * FROM walks ORDER BY id"),
        "transfers": rows(path, "SELECT * FROM transfers ORDER BY id"),
        "workers": rows(path, "SELECT * FROM workers ORDER BY worker_id"),
    }


def inventory(path: Path) -> dict[str, Any]:
    return {
        "epns": rows(
            path,
            "SELECT epn, size, file_count, modified, walk_complete, status FROM epns ORDER BY epn",
        ),
        "files": rows(path, "SELECT epn, path, size, modified, kind FROM files ORDER BY epn, path"),
    }


def sha(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def merge(cli: Any, target: Path | str, *inputs: Path | str, extra: tuple[str, ...] = ()) -> Any:
    return cli("--db", str(target), "merge", *map(str, inputs), *extra)


# ------------------------------------------------------------------ shards
def test_sharded_walks_merge_to_exactly_one_full_walk(
    cli: Any, sshd: Sshd, served: Path, tmp_path: Path, write_config: Any
) -> None:
    """Three hosts walk a third each over SFTP; the merge is the database of a single full walk."""
    build_epns(served, 30, 12, subdirs=3)
    (served / "20007d" / "d1").chmod(0o000)  # an incomplete walk survives the merge as incomplete
    conf = write_config(sshd.settings(src_prefix=str(served)))
    for k in (1, 2, 3):
        cli("--config", str(conf), "--db", str(tmp_path / f"s{k}.db"), "walk", "--shard", f"{k}/3")
    full = tmp_path / "full.db"
    cli("--config", str(conf), "--db", str(full), "walk")
    result = merge(cli, tmp_path / "merged.db", *(tmp_path / f"s{k}.db" for k in (1, 2, 3)))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(
        "merged 3 inputs into a target of 30 EPNs (30 new), 356 files added, 0 updated, 0 removed;"
    )
    assert inventory(tmp_path / "merged.db") == inventory(full)
    assert rows(
        tmp_path / "merged.db", "SELECT count(*) FROM walk_errors WHERE epn = '20007d'"
    ) == [(1,)]


def test_more_than_ten_inputs(cli: Any, tmp_path: Path) -> None:
    """Inputs are attached ten at a time; twelve shards still merge in one transaction."""
    src = tmp_path / "src"
    build_epns(src, 40, 3)
    for k in range(1, 13):
        assert (
            cli(
                "--db",
                str(tmp_path / f"s{k}.db"),
                "--host",
                "local",
                "walk",
                "--src-prefix",
                str(src),
                "--shard",
                f"{k}/12",
            ).exit_code
            == 0
        )
    full = tmp_path / "full.db"
    cli("--db", str(full), "--host", "local", "walk", "--src-prefix", str(src))
    result = merge(cli, tmp_path / "m.db", *(tmp_path / f"s{k}.db" for k in range(1, 13)))
    assert result.exit_code == 0, result.stderr
    assert inventory(tmp_path / "m.db") == inventory(full)


# ------------------------------------------------------------------ the rules
def _asynchy_db(
    path: Path,
    epns: dict[str, dict[str, Any]],
    files: dict[str, dict[str, tuple[int, int]]],
    walked_at: datetime,
    transfers: list[dict[str, Any]] = (),
) -> Path:  # type: ignore[assignment]
    """A small asynchy database written directly (as a walk and a sync would have left it)."""
    from sqlalchemy import insert

    from asynchy.db import open_database
    from asynchy.models import epns_table, files_table, transfers_table, walks_table

    db = open_database(str(path))
    with db.write() as conn:
        conn.execute(
            insert(walks_table).values(
                id=1,
                started_at=walked_at,
                finished_at=walked_at,
                status="complete",
                source=f"local:/{path.stem}",
                host="h",
                pid=1,
                options={},
            )
        )
        for epn, values in epns.items():
            listing = files.get(epn, {})
            base = {
                "epn": epn,
                "size": sum(s for s, _ in listing.values()),
                "file_count": len(listing),
                "modified": max(
                    (datetime.fromtimestamp(m, UTC) for _, m in listing.values()), default=None
                ),
                "walked_at": walked_at,
                "walk_id": 1,
                "walk_complete": True,
                "status": "pending",
                "first_seen_at": walked_at,
            }
            conn.execute(insert(epns_table).values(**{**base, **values}))
            if listing:
                conn.execute(
                    insert(files_table),
                    [
                        {
                            "epn": epn,
                            "path": p,
                            "size": s,
                            "modified": datetime.fromtimestamp(m, UTC),
                            "kind": "file",
                        }
                        for p, (s, m) in listing.items()
                    ],
                )
        for tr in transfers:
            conn.execute(insert(transfers_table).values(**tr))
    db.close()
    return path


T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _transfer(epn: str, when: datetime, outcome: str = "complete") -> dict[str, Any]:
    return {
        "epn": epn,
        "attempt": 1,
        "started_at": when - timedelta(minutes=1),
        "finished_at": when,
        "worker_id": f"w-{epn}-{when:%H%M}",
        "host": "mover",
        "pid": 7,
        "claim_token": 1,
        "argv": ["rsync"],
        "dest": f"/vault/{epn}",
        "exit_code": 0 if outcome == "complete" else 23,
        "classification": "ok" if outcome == "complete" else "partial",
        "outcome": outcome,
        "bytes_transferred": 100,
        "files_transferred": 1,
    }


def test_newest_walk_wins_and_files_a_newer_complete_walk_missed_go(
    cli: Any, tmp_path: Path
) -> None:
    old = _asynchy_db(
        tmp_path / "old.db",
        {"1a": {}, "2a": {}},
        {"1a": {"a": (1, FIXED_MTIME), "gone": (5, FIXED_MTIME)}, "2a": {"x": (1, FIXED_MTIME)}},
        T0,
    )
    new = _asynchy_db(
        tmp_path / "new.db",
        {"1a": {}, "2a": {"walk_complete": False}},
        {"1a": {"a": (2, FIXED_MTIME + 9)}, "2a": {"y": (3, FIXED_MTIME)}},
        T0 + timedelta(days=1),
    )
    result = merge(cli, tmp_path / "m.db", new, old, extra=("--json",))
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["conflicts_resolved"] == 2
    assert rows(tmp_path / "m.db", "SELECT epn, path, size FROM files ORDER BY epn, path") == [
        ("1a", "a", 2),  # the newer walk's row
        ("2a", "x", 1),  # kept: the newer walk of 2a was incomplete, so x did not vanish
        ("2a", "y", 3),
    ]
    assert rows(
        tmp_path / "m.db", "SELECT epn, size, file_count, walk_complete FROM epns ORDER BY epn"
    ) == [("1a", 2, 1, 1), ("2a", 4, 2, 0)]


def test_transfer_state_is_never_lost_or_downgraded(cli: Any, tmp_path: Path) -> None:
    done_at = T0 + timedelta(days=2)
    copied = _asynchy_db(
        tmp_path / "copied.db",
        {
            "1a": {
                "status": "complete",
                "completed_at": done_at,
                "attempts": 1,
                "bytes_transferred": 100,
            },
            "2a": {
                "status": "complete",
                "completed_at": done_at,
                "attempts": 1,
                "bytes_transferred": 100,
            },
        },
        {"1a": {"f": (100, FIXED_MTIME)}, "2a": {"f": (100, FIXED_MTIME)}},
        T0,
        transfers=[_transfer("1a", done_at), _transfer("2a", done_at)],
    )
    later = _asynchy_db(  # walked again later: 1a unchanged, 2a grew
        tmp_path / "later.db",
        {"1a": {}, "2a": {}},
        {
            "1a": {"f": (100, FIXED_MTIME)},
            "2a": {"f": (100, FIXED_MTIME), "g": (7, FIXED_MTIME + 5)},
        },
        done_at + timedelta(days=1),
    )
    earlier = _asynchy_db(
        tmp_path / "earlier.db",
        {"1a": {"status": "failed", "failures": 2}},
        {"1a": {}},
        T0 - timedelta(days=1),
    )
    result = merge(cli, tmp_path / "m.db", earlier, later, copied, extra=("--json",))
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["epns_completed"], summary["epns_changed"], summary["transfers_added"]) == (
        1,
        1,
        2,
    )
    assert rows(
        tmp_path / "m.db",
        "SELECT epn, status, completed_at, failures, attempts FROM epns ORDER BY epn",
    ) == [
        ("1a", "complete", "2024-01-03 00:00:00", 0, 1),
        ("2a", "changed", "2024-01-03 00:00:00", 0, 1),
    ]
    # Merging again adds nothing, and duplicates no history row.
    again = merge(cli, tmp_path / "m.db", copied, later, earlier, extra=("--json",))
    assert json.loads(again.stdout)["transfers_added"] == 0
    assert rows(tmp_path / "m.db", "SELECT count(*) FROM transfers") == [(2,)]


def test_as_walker_databases(cli: Any, tmp_path: Path) -> None:
    """Absolute paths become EPN-relative, local times become UTC, aggregates are derived."""
    for n, chunk in enumerate([["12345a"], ["12346b"]]):
        with sqlite3.connect(tmp_path / f"files{n}.db") as con:
            con.execute(
                "CREATE TABLE files(epn text, path text unique, size bigint, modified datetime)"
            )
            for epn in chunk:
                con.executemany(
                    "INSERT INTO files VALUES (?, ?, ?, ?)",
                    [
                        (epn, f"/data/{epn}/frames/a.cbf", 10, "2020-01-02 03:04:05"),
                        (epn, f"/data/{epn}/frames/sub/b.cbf", 20, "2020-07-02 03:04:05.123456"),
                        (epn, f"/data/{epn}/back\\slash.txt", 1, "2020-01-02 03:04:05"),
                    ],
                )
    result = merge(
        cli,
        tmp_path / "m.db",
        tmp_path / "files0.db",
        tmp_path / "files1.db",
        extra=("--legacy-timezone", "Australia/Melbourne"),
    )
    assert result.exit_code == 0, result.stderr
    assert "files0.db: as-walker files" in result.stdout
    assert rows(
        tmp_path / "m.db",
        "SELECT epn, path, size, modified FROM files WHERE epn = '12345a' ORDER BY path",
    ) == [
        ("12345a", "back\\\\slash.txt", 1, "2020-01-01 16:04:05"),  # AEDT (UTC+11) in January
        ("12345a", "frames/a.cbf", 10, "2020-01-01 16:04:05"),
        ("12345a", "frames/sub/b.cbf", 20, "2020-07-01 17:04:05"),  # AEST (UTC+10) in July
    ]
    assert rows(
        tmp_path / "m.db", "SELECT epn, size, file_count, modified, status FROM epns ORDER BY epn"
    ) == [
        ("12345a", 31, 3, "2020-07-01 17:04:05", "pending"),
        ("12346b", 31, 3, "2020-07-01 17:04:05", "pending"),
    ]


def test_merc_epns_and_hpc_ignore_yml(cli: Any, tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "merc.db") as con:
        con.execute(
            "CREATE TABLE epns(epn TEXT, size, modified, complete INTEGER DEFAULT 0, "
            "bytesTransferred INTEGER DEFAULT 0)"
        )
        con.executemany(
            "INSERT INTO epns VALUES (?, ?, ?, ?, ?)",
            [
                ("12282a", 1000, "2019-03-01 10:00:00", 1, 990),
                ("12283b", 2000, "2019-03-02 10:00:00", 0, 0),
            ],
        )
    (tmp_path / "ignore.yml").write_text("previouslySynched:\n  - 13000a\n  - 12283b\n")
    result = merge(
        cli,
        tmp_path / "m.db",
        tmp_path / "merc.db",
        extra=("--ignore-yml", str(tmp_path / "ignore.yml"), "--legacy-timezone", "UTC", "--json"),
    )
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["epns_completed"] == 3
    assert rows(
        tmp_path / "m.db",
        "SELECT epn, size, modified, status, bytes_transferred FROM epns ORDER BY epn",
    ) == [
        ("12282a", 1000, "2019-03-01 10:00:00", "complete", 990),
        ("12283b", 2000, "2019-03-02 10:00:00", "complete", 0),
        ("13000a", 0, None, "complete", 0),
    ]


def test_older_asynchy_revision_is_read_without_changing_it(cli: Any, tmp_path: Path) -> None:
    from alembic import command
    from sqlalchemy import create_engine

    from asynchy.db import alembic_config

    old = tmp_path / "old.db"
    engine = create_engine(f"sqlite:///{old}")
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0001")
    engine.dispose()
    with sqlite3.connect(old) as con:
        con.execute(
            "INSERT INTO walks (id, started_at, status, source, host, pid, options) "
            "VALUES (1, '2024-01-01 00:00:00', 'complete', 'local:/x', 'h', 1, '{}')"
        )
        con.execute(
            "INSERT INTO epns (epn, size, file_count, modified, walked_at, walk_id, walk_complete, "
            "first_seen_at) VALUES ('1a', 3, 1, '2020-01-01 00:00:00', '2024-01-01 00:00:00', 1, 1, "
            "'2024-01-01 00:00:00')"
        )
        con.execute(
            "INSERT INTO files (epn, path, size, modified) VALUES ('1a', 'x', 3, '2020-01-01 00:00:00')"
        )
    before = sha(old)
    result = merge(cli, tmp_path / "m.db", old)
    assert result.exit_code == 0, result.stderr
    assert "asynchy database (revision 0001)" in result.stdout
    assert sha(old) == before
    assert rows(tmp_path / "m.db", "SELECT epn, status, attempts FROM epns") == [
        ("1a", "pending", 0)
    ]
    assert rows(tmp_path / "m.db", "SELECT epn, path FROM files") == [("1a", "x")]


# ------------------------------------------------------------------ idempotent and order-independent
epn_names = st.sampled_from(["1a", "2a", "3b"])
file_maps = st.dictionaries(
    st.sampled_from(["p", "q", "r/s"]), st.tuples(st.integers(0, 3), st.integers(0, 2)), max_size=3
)
states = st.fixed_dictionaries(
    {
        "status": st.sampled_from(["pending", "complete", "failed", "quarantined", "skipped"]),
        "walk_complete": st.booleans(),
    }
)


@st.composite
def inputs(draw: Any) -> list[tuple[int, dict[str, Any], dict[str, Any]]]:
    out = []
    for day in draw(st.lists(st.integers(0, 3), min_size=1, max_size=3, unique=True)):
        chosen = draw(st.lists(epn_names, min_size=1, max_size=3, unique=True))
        epn_states = {e: draw(states) for e in chosen}
        listing = {
            e: {p: (s, FIXED_MTIME + m) for p, (s, m) in draw(file_maps).items()} for e in chosen
        }
        out.append((day, epn_states, listing))
    return out


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(inputs())
@example(  # found by Hypothesis: a newer incomplete walk moved changed_at on a second merge
    spec=[
        (
            1,
            {"1a": {"status": "pending", "walk_complete": False}},
            {"1a": {"p": (0, 1_600_000_000)}},
        ),
        (
            0,
            {
                "1a": {"status": "complete", "walk_complete": False},
                "2a": {"status": "pending", "walk_complete": False},
            },
            {"1a": {}, "2a": {}},
        ),
        (2, {"1a": {"status": "pending", "walk_complete": False}}, {"1a": {}}),
    ]
)
def test_same_inputs_any_order_any_number_of_times_same_database(
    cli: Any,
    tmp_path_factory: pytest.TempPathFactory,
    spec: list[tuple[int, dict[str, Any], dict[str, Any]]],
) -> None:
    tmp = tmp_path_factory.mktemp("prop")
    paths = []
    for n, (day, epn_states, listing) in enumerate(spec):
        walked = T0 + timedelta(days=day)
        values = {
            e: {
                **st_,
                **(
                    {"completed_at": walked + timedelta(hours=1)}
                    if st_["status"] == "complete"
                    else {}
                ),
            }
            for e, st_ in epn_states.items()
        }
        paths.append(_asynchy_db(tmp / f"in{n}.db", values, listing, walked))
    forward, backward = tmp / "forward.db", tmp / "backward.db"
    assert merge(cli, forward, *paths).exit_code == 0
    assert merge(cli, backward, *reversed(paths)).exit_code == 0
    assert dump(forward) == dump(backward)
    once = dump(forward)
    assert merge(cli, forward, *paths).exit_code == 0
    assert dump(forward) == once
    # A complete EPN anywhere stays complete, unless a later walk saw other content (then changed).
    for epn, status in rows(forward, "SELECT epn, status FROM epns"):
        if any(states_.get(epn, {}).get("status") == "complete" for _, states_, _ in spec):
            assert status in ("complete", "changed")


# ------------------------------------------------------------------ all or nothing
@pytest.fixture
def target(cli: Any, tmp_path: Path) -> Path:
    src = tmp_path / "src"
    build_epns(src, 3, 2)
    path = tmp_path / "target.db"
    assert (
        cli("--db", str(path), "--host", "local", "walk", "--src-prefix", str(src)).exit_code == 0
    )
    good = tmp_path / "good.db"
    build_epns(tmp_path / "src2", 2, 2)
    assert (
        cli(
            "--db", str(good), "--host", "local", "walk", "--src-prefix", str(tmp_path / "src2")
        ).exit_code
        == 0
    )
    con = sqlite3.connect(path)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return path


def state(path: Path) -> tuple[str | None, int]:
    """The main file's bytes, and how much the write-ahead log holds (0: nothing pending)."""
    wal = Path(str(path) + "-wal")
    return sha(path), wal.stat().st_size if wal.exists() else 0


def _bad_input(kind: str, tmp_path: Path) -> Path:
    bad = tmp_path / f"bad-{kind}"
    if kind == "not-sqlite":
        bad.write_text("id,epn\n1,12345a\n")
    elif kind == "truncated":
        src = tmp_path / "good.db"
        data = src.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif kind == "unknown-schema":
        with sqlite3.connect(bad) as con:
            con.execute("CREATE TABLE experiments (id INTEGER, name TEXT)")
    elif kind == "newer-schema":
        bad.write_bytes((tmp_path / "good.db").read_bytes())
        with sqlite3.connect(bad) as con:
            con.execute("UPDATE alembic_version SET version_num = '9999'")
    elif kind == "folder":
        bad.mkdir()
    elif kind == "missing":
        pass
    return bad


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("not-sqlite", "is neither SQLite nor an HPC ASSyncy ignore.yml"),
        ("truncated", "is damaged"),
        ("unknown-schema", "has an unknown schema (tables: experiments)"),
        ("newer-schema", "has schema revision 9999, newer than this asynchy"),
        ("folder", "is a folder, not a database"),
        ("missing", "does not exist"),
    ],
)
def test_a_bad_input_stops_everything_before_a_byte_is_written(
    cli: Any, target: Path, tmp_path: Path, kind: str, message: str
) -> None:
    bad = _bad_input(kind, tmp_path)
    before = state(target)
    result = merge(cli, target, tmp_path / "good.db", bad)
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr and str(bad) in result.stderr
    assert state(target) == before


def test_unreadable_input(cli: Any, target: Path, tmp_path: Path, served: Path) -> None:
    """A file the user may not read is named; nothing is created (run as an unprivileged account)."""
    from helpers import as_unprivileged

    os.chmod(
        served, 0o777
    )  # the unprivileged account may create the target and read its config here
    secret = served / "secret.db"
    secret.write_bytes((tmp_path / "good.db").read_bytes())
    secret.chmod(0o000)
    out = served / "other-target.db"

    def run() -> tuple[int, str]:
        from click.testing import CliRunner

        from asynchy.cli import cli as asynchy_cli

        os.environ["HOME"] = str(served)
        r = CliRunner().invoke(asynchy_cli, ["--db", str(out), "merge", str(secret)])
        return r.exit_code, r.stderr

    code, err = as_unprivileged(run)
    assert code == 2
    assert err == f"Error: merge input {secret} cannot be read: Permission denied\n"
    assert not out.exists()


def test_target_on_a_full_file_system(cli: Any, tmp_path: Path) -> None:
    """Disk full half-way: the target keeps exactly what it had."""
    if os.geteuid() != 0:
        pytest.fail("this test mounts a small tmpfs: run it as root (as CI does)")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)], check=True)
    try:
        src = tmp_path / "src"
        build_epns(src, 2, 2)
        small = mount / "t.db"
        assert (
            cli("--db", str(small), "--host", "local", "walk", "--src-prefix", str(src)).exit_code
            == 0
        )
        before = inventory(small)
        big = tmp_path / "big.db"
        build_epns(tmp_path / "bigsrc", 40, 500)
        assert (
            cli(
                "--db",
                str(big),
                "--host",
                "local",
                "walk",
                "--src-prefix",
                str(tmp_path / "bigsrc"),
            ).exit_code
            == 0
        )
        result = merge(cli, small, big)
        assert result.exit_code == 1
        assert result.stderr.count("\n") == 1 and "full" in result.stderr
        assert inventory(small) == before
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_target_in_a_read_only_folder(cli: Any, target: Path, tmp_path: Path) -> None:
    from helpers import read_only_dir

    folder = tmp_path / "ro"
    folder.mkdir()
    with read_only_dir(folder):
        result = merge(cli, folder / "new.db", tmp_path / "good.db")
    assert result.exit_code in (1, 2)
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (folder / "new.db").exists()


def _big_input(path: Path, first: int, epns: int, per_epn: int) -> Path:
    """An asynchy database of epns x per_epn file rows, made by SQL (much quicker than a real walk)."""
    from asynchy.db import open_database

    db = open_database(str(path))
    with db.write() as conn:
        conn.exec_driver_sql(
            "INSERT INTO walks (id, started_at, finished_at, status, source, host, pid, options) VALUES "
            f"(1, '2024-01-01 00:00:00', '2024-01-01 00:10:00', 'complete', 'local:/{path.stem}', 'h', 1, '{{}}')"
        )
        conn.exec_driver_sql(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
            "INSERT INTO epns (epn, size, file_count, modified, walked_at, walk_id, walk_complete, status, "
            "first_seen_at) SELECT printf('%06da', ? + i), ? * 10, ?, '2020-01-01 00:00:00', '2024-01-01 00:00:00', "
            "1, 1, 'pending', '2024-01-01 00:00:00' FROM n",
            (epns - 1, first, per_epn, per_epn),
        )
        conn.exec_driver_sql(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
            "INSERT INTO files (epn, path, size, modified, kind) SELECT printf('%06da', ? + i / ?), "
            "printf('frames/img_%06d.cbf', i % ?), 10, '2020-01-01 00:00:00', 'file' FROM n",
            (epns * per_epn - 1, first, per_epn, per_epn),
        )
    db.close()
    return path


def test_kill_9_half_way_leaves_the_target_as_it_was(
    cli: Any, target: Path, tmp_path: Path
) -> None:
    inputs = [
        str(_big_input(tmp_path / f"big{k}.db", 100_000 + k * 1000, 500, 600)) for k in range(4)
    ]
    before = inventory(target)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCHY_")}
    wal = Path(str(target) + "-wal")
    for spilled in (
        1 << 20,
        16 << 20,
    ):  # kill once the write transaction has put this much in the WAL
        assert not wal.exists() or wal.stat().st_size <= spilled  # what we watch grows from here
        proc = subprocess.Popen(
            [sys.executable, "-m", "asynchy", "--db", str(target), "merge", *inputs],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        deadline = time.monotonic() + 60
        while not (wal.exists() and wal.stat().st_size > spilled) and time.monotonic() < deadline:
            assert proc.poll() is None, (
                "the merge finished before it could be killed: make the inputs bigger"
            )
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert inventory(target) == before
    assert merge(cli, target, *inputs).exit_code == 0  # and the merge still works afterwards
    assert rows(target, "SELECT count(*) FROM files")[0][0] == 6 + 4 * 500 * 600


def test_kill_9_of_a_merge_into_a_new_file_leaves_no_file_and_the_next_merge_tidies_up(
    cli: Any, tmp_path: Path
) -> None:
    inputs = [
        str(_big_input(tmp_path / f"big{k}.db", 100_000 + k * 1000, 500, 600)) for k in range(4)
    ]
    folder = tmp_path / "out"
    folder.mkdir()
    new = folder / "new.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCHY_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "asynchy", "--db", str(new), "merge", *inputs],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    scratch = folder / f".new.db.merging.{os.uname().nodename}.{proc.pid}"
    deadline = time.monotonic() + 60
    while not (scratch.exists() and scratch.stat().st_size > 8 << 20):
        assert proc.poll() is None, "the merge finished before it could be killed: make it bigger"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not new.exists()  # a half-built inventory never carries the name asked for
    assert (scratch.stat().st_mode & 0o777) == 0o600
    result = merge(cli, new, *inputs)
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["new.db"]  # the dead merge's file is gone
    assert rows(new, "SELECT count(*) FROM files")[0][0] == 4 * 500 * 600
    assert rows(new, "PRAGMA integrity_check") == [("ok",)]
    assert rows(new, "PRAGMA journal_mode") == [("wal",)]
    assert (new.stat().st_mode & 0o777) == 0o600


def test_refuses_a_target_a_sync_is_using(cli: Any, target: Path, tmp_path: Path) -> None:
    with sqlite3.connect(target) as con:
        con.execute(
            "INSERT INTO workers (worker_id, host, pid, command, started_at, heartbeat_at, status) "
            "VALUES ('w', 'elsewhere', 1, 'sync', datetime('now'), datetime('now'), 'running')"
        )
    before = sha(target)
    result = merge(cli, target, tmp_path / "good.db")
    assert result.exit_code == 2
    assert "a walk or sync (elsewhere:1) is using the target database" in result.stderr
    assert sha(target) == before


# ------------------------------------------------------------------ PostgreSQL target
def test_merge_into_postgresql(cli: Any, tmp_path: Path, pg_url: str) -> None:
    src = tmp_path / "src"
    build_epns(src, 12, 5, subdirs=2)
    for k in (1, 2, 3):
        cli(
            "--db",
            str(tmp_path / f"s{k}.db"),
            "--host",
            "local",
            "walk",
            "--src-prefix",
            str(src),
            "--shard",
            f"{k}/3",
        )
    full = tmp_path / "full.db"
    cli("--db", str(full), "--host", "local", "walk", "--src-prefix", str(src))
    with sqlite3.connect(tmp_path / "files0.db") as con:  # and an as-walker database
        con.execute(
            "CREATE TABLE files(epn text, path text unique, size bigint, modified datetime)"
        )
        con.execute(
            "INSERT INTO files VALUES ('99999z', '/data/99999z/x.cbf', 5, '2020-01-01 00:00:00')"
        )
    inputs = [tmp_path / f"s{k}.db" for k in (1, 2, 3)] + [tmp_path / "files0.db"]
    result = merge(cli, pg_url, *inputs, extra=("--legacy-timezone", "UTC"))
    assert result.exit_code == 0, result.stderr
    assert (
        merge(cli, pg_url, *reversed(inputs), extra=("--legacy-timezone", "UTC")).exit_code == 0
    )  # idempotent
    from sqlalchemy import create_engine, text

    engine = create_engine(pg_url)
    with engine.connect() as conn:
        got = sorted(
            (e, p, s, m.strftime("%Y-%m-%d %H:%M:%S"), k)
            for e, p, s, m, k in conn.execute(
                text("SELECT epn, path, size, modified, kind FROM files")
            )
        )
        epns = sorted(
            tuple(r) for r in conn.execute(text("SELECT epn, size, file_count FROM epns"))
        )
    engine.dispose()
    want = sorted(rows(full, "SELECT epn, path, size, modified, kind FROM files"))
    # as-walker did not record kinds: 'unverified' until sync lists the EPN (docs/merge.md)
    assert got == sorted([*want, ("99999z", "x.cbf", 5, "2020-01-01 00:00:00", "unverified")])
    assert epns == sorted([*rows(full, "SELECT epn, size, file_count FROM epns"), ("99999z", 5, 1)])


def test_file_rows_without_an_epn_row_are_left_out(cli: Any, tmp_path: Path) -> None:
    target = tmp_path / "new.db"
    src = tmp_path / "src"
    build_epns(src, 3, 2)
    shard = tmp_path / "shard.db"
    cli("--db", str(shard), "--host", "local", "walk", "--src-prefix", str(src))
    with sqlite3.connect(shard) as con:  # the sqlite3 shell's default: foreign keys off, no cascade
        kept = [r[0] for r in con.execute("SELECT epn FROM epns ORDER BY epn")]
        epn = kept.pop(0)
        con.execute("DELETE FROM epns WHERE epn = ?", (epn,))
        assert con.execute("SELECT count(*) FROM files WHERE epn = ?", (epn,)).fetchone()[0] == 2
    result = merge(cli, target, shard)
    assert result.exit_code == 0, result.stderr
    assert "2 file rows have no EPN row" in result.stderr
    assert rows(target, "SELECT count(*) FROM files WHERE epn = ?", epn) == [(0,)]
    assert rows(target, "SELECT count(*) FROM files WHERE epn NOT IN (SELECT epn FROM epns)") == [
        (0,)
    ]
    assert rows(target, "SELECT epn FROM epns ORDER BY epn") == [(e,) for e in kept]
    assert rows(target, "SELECT count(*) FROM files WHERE epn IN (?, ?)", *kept) == [(4,)]


@pytest.mark.parametrize(
    ("b_walked", "b_complete", "files", "status"),
    [
        (
            datetime(2026, 3, 10, tzinfo=UTC),
            True,
            [("x.cbf", 10), ("y.cbf", 20), ("z.cbf", 5)],
            "changed",
        ),
        (datetime(2026, 2, 1, tzinfo=UTC), True, [("x.cbf", 10), ("y.cbf", 20)], "complete"),
        (
            datetime(2026, 3, 10, tzinfo=UTC),
            False,
            [("x.cbf", 10), ("y.cbf", 20), ("z.cbf", 5)],
            "changed",
        ),
    ],
)
def test_the_example_in_docs_merge_md(
    cli: Any,
    tmp_path: Path,
    b_walked: datetime,
    b_complete: bool,
    files: list[tuple[str, int]],
    status: str,
) -> None:
    march_1, march_2 = datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC)
    a = _asynchy_db(
        tmp_path / "a.db",
        {"12282a": {"status": "complete", "completed_at": march_2}},
        {"12282a": {"x.cbf": (10, FIXED_MTIME), "y.cbf": (20, FIXED_MTIME)}},
        march_1,
    )
    b_files = {"x.cbf": (10, FIXED_MTIME), "z.cbf": (5, FIXED_MTIME)}
    if b_complete:  # an interrupted walk had not reached y.cbf yet
        b_files["y.cbf"] = (20, FIXED_MTIME)
    b = _asynchy_db(
        tmp_path / "b.db", {"12282a": {"walk_complete": b_complete}}, {"12282a": b_files}, b_walked
    )
    assert merge(cli, tmp_path / "all.db", a, b).exit_code == 0
    assert rows(tmp_path / "all.db", "SELECT path, size FROM files ORDER BY path") == files
    assert rows(tmp_path / "all.db", "SELECT status, size, file_count, completed_at FROM epns") == [
        (status, sum(s for _, s in files), len(files), "2026-03-02 00:00:00")
    ]


# ------------------------------------------------------------------ a claim in the target
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_claim_in_the_target_is_left_to_its_owner_on_both_backends(
    cli: Any, tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """docs/merge.md rule 3: an EPN running in the target itself keeps its row and its claim,
    and is not counted as completed - the same on SQLite and PostgreSQL (one target reader)."""
    from sqlalchemy import create_engine, text

    src = tmp_path / "src"
    build_epns(src, 2, 2)
    target: str = (
        str(tmp_path / "target.db") if backend == "sqlite" else request.getfixturevalue("pg_url")
    )
    source = tmp_path / "input.db"
    for db in (target, str(source)):
        assert cli("--db", db, "--host", "local", "walk", "--src-prefix", str(src)).exit_code == 0
    with sqlite3.connect(source) as con:  # the input completed both EPNs
        con.execute(
            "UPDATE epns SET status = 'complete', completed_at = '2026-01-02 03:04:05', "
            "bytes_transferred = size"
        )
    url = target if "://" in target else f"sqlite:///{target}"
    engine = create_engine(url)
    with engine.begin() as conn:  # the target holds a claim on the first one
        conn.execute(
            text(
                "UPDATE epns SET status = 'running', claim_owner = 'gone-worker', claim_token = 7 "
                "WHERE epn = '20000a'"
            )
        )
    result = merge(cli, target, source, extra=("--json",))
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["epns_completed"] == 1  # 20001b only
    with engine.connect() as conn:
        got = conn.execute(
            text("SELECT epn, status, claim_owner, claim_token FROM epns ORDER BY epn")
        ).all()
    engine.dispose()
    assert [tuple(r) for r in got] == [
        ("20000a", "running", "gone-worker", 7),
        ("20001b", "complete", None, 0),
    ]
