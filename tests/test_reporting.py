"""status, epns, show, sql, reset, skip, verify, report: exact output on a database with a known history."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import reporting_fixture as fx
from helpers import FIXED_MTIME, rows, write_file

ROOT = Path(__file__).resolve().parent.parent
GiB = 2**30


@pytest.fixture(autouse=True)
def _utc(monkeypatch: pytest.MonkeyPatch) -> None:
    """Human output uses local time: make it UTC so the expected text is fixed."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()


@pytest.fixture
def known(tmp_path: Path) -> Path:
    path = tmp_path / "known.db"
    fx.build(path).close()
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def known_any(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The known history in SQLite and in the real PostgreSQL."""
    setting = (
        str(tmp_path / "known.db")
        if request.param == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    fx.build(setting).close()
    return setting


def test_status_human(cli: Any, known: Path) -> None:
    result = cli("--db", str(known), "status")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert re.fullmatch(rf"asynchy status at \d{{4}}-\d\d-\d\d \d\d:\d\d UTC of {known}", lines[0])
    assert lines[1:9] == [
        "status       EPNs       size  files",
        "complete       40  155.0 GiB    120",
        "failed          3   14.0 GiB      9",
        "pending        14   56.0 GiB     42",
        "quarantined     1    2.0 GiB      3",
        "running         1    4.0 GiB      3",
        "skipped         1    3.0 GiB      3",
        "total          60  234.0 GiB    180",
    ]
    assert lines[9] == "progress:   155.0 GiB of 234.0 GiB done (66.2 %), 76.0 GiB to go"
    assert re.match(
        r"last walk:  \d{4}-\d\d-\d\d \d\d:\d\d UTC, 12 min 0 s, partial \(60 EPNs, 1 error\)",
        lines[10],
    )
    assert re.match(r"last sync:  .*, 11 min 0 s|last sync:  .*still running", lines[11]), lines[11]
    assert lines[12] == "fixity:     0 of 120 copied files with a source checksum"  # docs/fixity.md
    assert lines[13] == "last audit: never (run asynchy audit)"
    assert lines[14].startswith("throughput: ")
    assert "\nfailures:      3  rsync exit 23: partial transfer due to error\n" in result.stdout
    assert (
        "\n               1  rsync exit 12: error in rsync protocol data stream\n" in result.stdout
    )
    assert re.search(
        r"\nclaims:     12045a by mover2:300 since \d\d:\d\d, lease until \d\d:\d\d\n",
        result.stdout,
    )
    assert all(len(line) <= 80 for line in lines[1:])


def test_status_json_on_sqlite_and_postgresql(cli: Any, known_any: str) -> None:
    result = cli("--db", known_any, "status", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["epns"]["total"] == 60
    assert data["epns"]["by_status"]["complete"] == {"epns": 40, "bytes": 155 * GiB, "files": 120}
    assert data["bytes"] == {
        "total": 234 * GiB,
        "done": 155 * GiB,
        "remaining": 76 * GiB,
        "percent_done": 66.2,
    }
    assert data["files"] == {"total": 180, "done": 120}
    assert data["last_walk"]["status"] == "partial" and data["last_walk"]["seconds"] == 720
    assert data["last_sync"]["worker_id"] == "w3" and data["last_sync"]["status"] == "running"
    assert [(f["exit_code"], f["epns"]) for f in data["top_failures"]] == [
        (23, 3),
        (12, 1),
    ]  # quarantined too
    assert (
        data["active_claims"][0]["epn"] == "12045a" and data["active_claims"][0]["host"] == "mover2"
    )
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", data["generated_at"])
    # The last day: the complete transfer of the last EPN (if within a day) and six failed attempts of 1/4 GiB.
    assert (
        data["throughput"]["last_day_bytes"] % (GiB // 4) == 0
        and data["throughput"]["last_day_bytes"] >= 6 * GiB // 4
    )
    assert data["eta_seconds"] > 0


def test_epns_filters_and_formats(cli: Any, known_any: str) -> None:
    result = cli(
        "--db",
        known_any,
        "epns",
        "--status",
        "failed",
        "--status",
        "quarantined",
        "--format",
        "csv",
    )
    assert result.exit_code == 0, result.stderr
    parsed = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["epn"] for r in parsed] == ["12040b", "12041c", "12042a", "12043b"]
    assert parsed[0]["size"] == str(6 * GiB) and parsed[0]["modified"] == "2021-03-11T00:00:00Z"
    assert parsed[0]["last_error"].startswith("rsync exit 23")
    result = cli(
        "--db",
        known_any,
        "epns",
        "--min-size",
        "7G",
        "--since",
        "2020-01-01",
        "--order",
        "desc",
        "--format",
        "json",
    )
    data = json.loads(result.stdout)
    assert [d["epn"] for d in data] == ["12055b", "12048a", "12041c", "12034b", "12027a", "12020c"]
    assert all(d["size"] == 7 * GiB for d in data)
    result = cli("--db", known_any, "epns", "--until", "2019-02-01", "--limit", "1")
    assert result.stdout.splitlines() == [
        "epn     status       size  files  modified              attempts  last_error",
        "12000a  complete  1.0 GiB      3  2019-01-01 00:00 UTC         1",
        "1 of 2 shown; --all for every row",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--status", "done"], "--status 'done' is not a status"),
        (["--since", "last tuesday"], "--since 'last tuesday' is not a date"),
        (["--min-size", "big"], "--min-size 'big' is not a size"),
    ],
)
def test_epns_bad_filters(cli: Any, known: Path, args: list[str], message: str) -> None:
    result = cli("--db", str(known), "epns", *args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert result.stderr.count("\n") == 1


def test_show_everything_about_one_epn(cli: Any, known: Path) -> None:
    result = cli("--db", str(known), "show", "12041c")
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    assert text.startswith(
        "EPN 12041c: failed\n  inventory:   3 files, 7.0 GiB, newest file 2021-03-31 00:00 UTC\n"
    )
    assert "2 attempts, 2 failures in a row" in text
    assert re.search(
        r"^1  \d{4}-\d\d-\d\d \d\d:\d\d UTC  5 min 0 s    23  partial  failed   256.0 MiB$",
        text,
        re.M,
    )
    assert "attempt 2: rsync exit 23: partial transfer due to error" in text
    assert 'send_files failed to open "img.cbf": Permission denied (13)' in text
    assert "walk errors:\n  private: Permission denied (permission)" in text
    data = json.loads(cli("--db", str(known), "show", "12041c", "--json").stdout)
    assert data["epn"]["status"] == "failed" and len(data["transfers"]) == 2
    assert data["transfers"][0]["seconds"] == 300


def test_show_unknown_epn(cli: Any, known: Path) -> None:
    result = cli("--db", str(known), "show", "12099z")
    assert result.exit_code == 2
    assert (
        result.stderr
        == "Error: EPN '12099z' is not in the inventory (similar: 12090?)\n".replace(
            " (similar: 12090?)", ""
        )
    )


def test_missing_database_is_not_created(cli: Any, tmp_path: Path) -> None:
    for command in (
        ["status"],
        ["epns"],
        ["show", "1a"],
        ["sql", "SELECT 1"],
        ["report", "--html", "x.html"],
    ):
        result = cli("--db", str(tmp_path / "nope.db"), *command)
        assert result.exit_code == 2, command
        assert f"database {tmp_path / 'nope.db'} does not exist" in result.stderr
    assert not (tmp_path / "nope.db").exists()


# ------------------------------------------------------------------ sql
def test_sql_formats(cli: Any, known_any: str) -> None:
    q = "SELECT status, epns, bytes FROM v_status_summary WHERE status IN ('complete', 'failed') ORDER BY status"
    assert cli("--db", known_any, "sql", q).stdout.splitlines() == [  # a table: IEC units
        "status    epns  bytes",
        "complete  40    155.0 GiB",
        "failed    3     14.0 GiB",
    ]
    assert cli("--db", known_any, "sql", q, "--format", "csv").stdout == (
        "status,epns,bytes\ncomplete,40,166429982720\nfailed,3,15032385536\n"
    )
    assert json.loads(cli("--db", known_any, "sql", q, "--format", "json").stdout) == [
        {"status": "complete", "epns": 40, "bytes": 166429982720},
        {"status": "failed", "epns": 3, "bytes": 15032385536},
    ]


WRITES = [
    "DELETE FROM epns",
    "UPDATE epns SET status = 'complete'",
    "DROP TABLE files",
    "INSERT INTO epns (epn, first_seen_at) VALUES ('x', '2020-01-01')",
    # the security review's: a query that ends its own read-only transaction, then writes
    "SELECT 1; COMMIT; DELETE FROM epns",
    "COMMIT; CREATE TABLE pwned (x int); SELECT 1",
    "SELECT 1; END; DELETE FROM epns",
    "COMMIT",
    "END",
    "CREATE TABLE pwned (x int)",
    "COPY (SELECT 1) TO PROGRAM 'touch {marker}'",
    "COPY epns TO '{marker}'",
    "DO $$ BEGIN DELETE FROM epns; END $$",
    "SET ROLE postgres",
    "SET default_transaction_read_only = off",
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid()",
    "SELECT lo_import('/etc/hostname')",
    "SELECT lo_export(0, '{marker}')",
    "SELECT set_config('default_transaction_read_only', 'off', false)",
    "SELECT * FROM query_to_xml('DELETE FROM epns RETURNING epn', true, true, '')",
    "SELECT dblink_exec('dbname=' || current_database(), 'DELETE FROM epns')",
    "WITH gone AS (DELETE FROM epns RETURNING epn) SELECT count(*) FROM gone",
    "SELECT epn FROM epns FOR UPDATE",
    "SELECT 1 /* ; */ ; DELETE FROM epns -- ;",
    "SELECT $x$ ; $x$; DELETE FROM epns",
    "SELECT 'it''s'; DELETE FROM epns",
    "SELECT nextval('walks_id_seq')",
]


@pytest.mark.parametrize("statement", WRITES)
def test_sql_refuses_writes(cli: Any, known_any: str, statement: str, tmp_path: Path) -> None:
    """Every write form the security review tried, on SQLite and on PostgreSQL (with dblink
    installed there): one line, exit 2, and nothing changed - no row, no table, no file."""
    marker = tmp_path / "pwned"
    if "://" in known_any:
        from sqlalchemy import create_engine

        engine = create_engine(known_any)
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS dblink")
        engine.dispose()
    count = "SELECT status, count(*) AS n FROM epns GROUP BY status ORDER BY status"
    before = cli("--db", known_any, "sql", count, "--csv").stdout
    result = cli("--db", known_any, "sql", statement.format(marker=marker))
    assert result.exit_code == 2, result.stdout
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: "), result.stderr
    assert any(w in result.stderr for w in ("only reads", "refused the query", "one statement"))
    assert cli("--db", known_any, "sql", count, "--csv").stdout == before
    tables = cli("--db", known_any, "sql", "SELECT count(*) AS n FROM transfers", "--csv").stdout
    assert tables.splitlines()[1] != "0"
    pwned = cli("--db", known_any, "sql", "SELECT * FROM pwned")
    assert pwned.exit_code == 2  # no such table
    assert not marker.exists()


def test_sql_reads_what_looks_like_a_write(cli: Any, known_any: str) -> None:
    """Semicolons, keywords and % inside strings, names and comments are the query's own (and
    LIKE '%' works on PostgreSQL: psycopg read '%' as a placeholder)."""
    for query, expected in (
        ("SELECT 'a;b; DELETE FROM epns' AS x", "a;b; DELETE FROM epns"),
        ('SELECT 1 AS "x;y" -- ; DROP TABLE epns', "1"),
        ("/* DELETE; */ SELECT count(*) AS n FROM epns WHERE epn LIKE '1200%';", "10"),
    ):
        result = cli("--db", known_any, "sql", query, "--csv")
        assert result.exit_code == 0, result.stderr
        assert result.stdout.splitlines()[1] == expected, query


def test_sql_refuses_what_sqlite_would_let_write_elsewhere(
    cli: Any, known: Path, tmp_path: Path
) -> None:
    for statement in (
        f"ATTACH DATABASE '{tmp_path / 'new.db'}' AS x",
        "PRAGMA query_only = OFF",
        f"VACUUM INTO '{tmp_path / 'copy.db'}'",
        "CREATE TEMP TABLE t (x)",
    ):
        result = cli("--db", str(known), "sql", statement)
        assert result.exit_code == 2, statement
    assert not (tmp_path / "new.db").exists() and not (tmp_path / "copy.db").exists()


def test_sql_refuses_functions_that_leak_or_take_a_pointer(cli: Any, known: Path) -> None:
    """fts3_tokenizer('porter') printed the address of SQLite's tokenizer (issue 19)."""
    for query in ("SELECT hex(fts3_tokenizer('porter'))", "SELECT load_extension('x')"):
        result = cli("--db", str(known), "sql", query)
        assert result.exit_code == 2, (query, result.stdout)
        assert result.stdout == "" and "not authorized" in result.stderr
        assert result.stderr.count("\n") == 1


def test_sql_bad_query(cli: Any, known: Path) -> None:
    result = cli("--db", str(known), "sql", "SELECT 1 FRM epns")
    assert result.exit_code == 2
    assert result.stderr == 'Error: the database refused the query: near "epns": syntax error\n'
    typo = cli("--db", str(known), "sql", "SELEC 1")
    assert typo.exit_code == 2
    assert typo.stderr.startswith("Error: asynchy sql only reads: a statement starting with SELEC")


# ------------------------------------------------------------------ recipes in docs/reporting.md
def recipes() -> dict[str, str]:
    text = (ROOT / "docs" / "reporting.md").read_text().split("## Recipes", 1)[1]
    found = re.findall(r"^### (.+?)\n```sql\n(.*?)```", text, re.S | re.M)
    return {title.strip(): sql.strip() for title, sql in found}


def test_there_are_at_least_ten_recipes() -> None:
    assert len(recipes()) >= 10


@pytest.mark.parametrize("title", sorted(recipes()))
def test_recipe(cli: Any, known: Path, title: str) -> None:
    result = cli("--db", str(known), "sql", recipes()[title], "--format", "json")
    assert result.exit_code == 0, result.stderr
    got = json.loads(result.stdout)
    expected = EXPECTED[title]
    if callable(expected):
        expected(got)
    else:
        assert got == expected


def _months(got: list[dict[str, Any]]) -> None:
    assert sum(r["bytes"] for r in got) == 155 * GiB + 6 * (GiB // 4)
    assert sum(r["epns"] for r in got) == 40
    assert [r["month"] for r in got] == sorted(r["month"] for r in got)


def _last_week(got: list[dict[str, Any]]) -> None:
    assert 1 <= len(got) <= 7
    assert sum(r["epns_completed"] for r in got) in range(8, 12)


def _retried(got: list[dict[str, Any]]) -> None:
    assert [r["epn"] for r in got] == ["12040b", "12041c", "12042a"]
    assert all(r["attempts"] == 2 for r in got)


def _who(got: list[dict[str, Any]]) -> None:
    assert [(r["epn"], r["host"], r["pid"]) for r in got] == [("12045a", "mover2", 300)]


def _speed(got: list[dict[str, Any]]) -> None:
    assert got == [
        {
            "host": "mover1",
            "transfers": 40,
            "bytes": 155 * GiB,
            "bytes_per_second": 155 * GiB // (40 * 3600),
        }
    ]


EXPECTED: dict[str, Any] = {
    "Oldest EPNs not yet copied": [
        {"epn": "12040b", "status": "failed", "size": 6 * GiB, "modified": "2021-03-11T00:00:00Z"},
        {"epn": "12041c", "status": "failed", "size": 7 * GiB, "modified": "2021-03-31T00:00:00Z"},
        {"epn": "12042a", "status": "failed", "size": 1 * GiB, "modified": "2021-04-20T00:00:00Z"},
        {
            "epn": "12043b",
            "status": "quarantined",
            "size": 2 * GiB,
            "modified": "2021-05-10T00:00:00Z",
        },
        {"epn": "12045a", "status": "running", "size": 4 * GiB, "modified": "2021-06-19T00:00:00Z"},
    ],
    "Bytes still to copy, and how much is done": [{"done": 155 * GiB, "remaining": 76 * GiB}],
    "Bytes transferred per month": _months,
    "Failures by exit code": [
        {"last_exit_code": 23, "last_error_class": "partial", "epns": 3},
        {"last_exit_code": 12, "last_error_class": "retryable", "epns": 1},
    ],
    "EPNs that changed since they were copied": [],
    "The ten largest EPNs and where they stand": [
        {"epn": e, "status": s, "size": 7 * GiB}
        for e, s in [
            ("12006a", "complete"),
            ("12013b", "complete"),
            ("12020c", "complete"),
            ("12027a", "complete"),
            ("12034b", "complete"),
            ("12041c", "failed"),
            ("12048a", "pending"),
            ("12055b", "pending"),
        ]
    ]
    + [
        {"epn": e, "status": s, "size": 6 * GiB}
        for e, s in [("12005c", "complete"), ("12012a", "complete")]
    ],
    "EPNs that needed more than one attempt": _retried,
    "Throughput of the last seven days": _last_week,
    "Who is copying what right now": _who,
    "Folders the last walk could not read": [
        {"epn": "12041c", "path": "private", "kind": "permission", "message": "Permission denied"}
    ],
    "Skipped EPNs and why": [{"epn": "12044c", "skip_reason": "test data"}],
    "Average speed of completed transfers, per worker host": _speed,
}


# ------------------------------------------------------------------ reset and skip
def test_reset_and_skip(cli: Any, known: Path) -> None:
    result = cli("--db", str(known), "reset", "--status", "failed", "--status", "quarantined")
    assert result.exit_code == 0
    assert result.stdout == "reset 4 EPNs to pending\n"
    assert rows(
        known,
        "SELECT epn, status, failures, last_error FROM epns WHERE epn IN ('12040b', '12043b')",
    ) == [("12040b", "pending", 0, None), ("12043b", "pending", 0, None)]
    assert rows(known, "SELECT count(*) FROM transfers WHERE epn = '12040b'") == [
        (2,)
    ]  # history kept
    result = cli("--db", str(known), "skip", "12046b", "12047c", "--reason", "not ours")
    assert result.stdout == "skipped 2 EPNs\n"
    assert rows(known, "SELECT status, skip_reason FROM epns WHERE epn = '12046b'") == [
        ("skipped", "not ours")
    ]
    typo = cli("--db", str(known), "reset", "12046b", "12045a", "12046c")
    assert typo.exit_code == 2  # a typo changes nothing at all
    assert typo.stderr.startswith(
        "Error: EPN '12046c' is not in the inventory (did you mean 12046b"
    )
    assert rows(known, "SELECT status FROM epns WHERE epn = '12046b'") == [("skipped",)]
    assert cli("--db", str(known), "skip", "99999x").exit_code == 2
    result = cli("--db", str(known), "reset", "12046b", "12045a")
    assert result.exit_code == 3
    assert result.stdout == "reset 1 EPN to pending\n"
    assert "not reset: 12045a: claimed by a running sync" in result.stderr
    assert rows(known, "SELECT status, skip_reason FROM epns WHERE epn = '12046b'") == [
        ("pending", None)
    ]
    assert rows(known, "SELECT status FROM epns WHERE epn = '12045a'") == [("running",)]


def test_reset_of_complete_epns_asks_first_and_dry_runs_change_nothing(
    cli: Any, known: Path
) -> None:
    """`reset --status complete` re-queued every complete EPN without a word; now it needs --yes
    (or a yes at the terminal's prompt), and reset and skip have --dry-run."""
    before = rows(known, "SELECT epn, status FROM epns ORDER BY epn")
    refused = cli("--db", str(known), "reset", "--status", "complete")
    assert refused.exit_code == 2
    assert refused.stderr == (
        "Error: reset --status complete puts 40 complete EPNs back in the queue (their copies are "
        "checked and copied again where they differ): pass --yes, or --dry-run to list them\n"
    )
    dry = cli("--db", str(known), "reset", "--status", "complete", "--dry-run", "--json")
    assert dry.exit_code == 0
    assert json.loads(dry.stdout)["dry_run"] is True
    assert len(json.loads(dry.stdout)["epns"]) == 40
    assert cli("--db", str(known), "skip", "12046b", "--dry-run").stdout == (
        "would skip 1 EPN: 12046b\n"
    )
    assert rows(known, "SELECT epn, status FROM epns ORDER BY epn") == before
    done = cli("--db", str(known), "reset", "--status", "complete", "--yes")
    assert done.exit_code == 0 and done.stdout == "reset 40 EPNs to pending\n"
    assert rows(known, "SELECT count(*) FROM epns WHERE status = 'complete'") == [(0,)]
    assert "complete (asks first, or --yes)" in " ".join(cli("reset", "--help").stdout.split())


def test_verify_json(cli: Any, copied: dict[str, Path]) -> None:
    base = ["--db", str(copied["db"]), "--host", "local"]
    (copied["dest"] / "70001a" / "sub" / "b.dat").unlink()
    result = cli(*base, "verify", "--dest", str(copied["dest"]), "--json")
    assert result.exit_code == 3
    assert json.loads(result.stdout) == {
        "checked": 2,
        "match": ["70000a"],
        "differ": [
            {
                "epn": "70001a",
                "reason": "verify: 1 file differs from the inventory ('sub/b.dat' missing)",
            }
        ],
        "not_verified": [],
    }
    text = cli(*base, "verify", "--dest", str(copied["dest"]), "--epn", "70000a").stdout
    assert text.splitlines()[-1] == "verified 1 EPN: 1 match, 0 differ"


def test_reset_needs_something(cli: Any, known: Path) -> None:
    result = cli("--db", str(known), "reset")
    assert result.exit_code == 2
    assert "name the EPNs to reset" in result.stderr


# ------------------------------------------------------------------ verify (on real copies)
@pytest.fixture
def copied(cli: Any, tmp_path: Path) -> dict[str, Path]:
    src, dest, db = tmp_path / "src", tmp_path / "dest", tmp_path / "f.db"
    dest.mkdir()
    for epn in ("70000a", "70001a"):
        write_file(src / epn / "a.dat", b"alpha", FIXED_MTIME)
        write_file(src / epn / "sub" / "b.dat", b"bravo", FIXED_MTIME)
    base = ["--db", str(db), "--host", "local"]
    assert cli(*base, "walk", "--src-prefix", str(src)).exit_code == 0
    assert cli(*base, "sync", "--src-prefix", str(src), "--dest", str(dest)).exit_code == 0
    return {"src": src, "dest": dest, "db": db}


def test_verify_finds_a_damaged_copy_and_sync_repairs_it(cli: Any, copied: dict[str, Path]) -> None:
    base = ["--db", str(copied["db"]), "--host", "local"]
    assert (
        cli(*base, "verify", "--dest", str(copied["dest"])).stdout
        == "verified 2 EPNs: 2 match, 0 differ\n"
    )
    (copied["dest"] / "70001a" / "sub" / "b.dat").unlink()
    result = cli(*base, "verify", "--dest", str(copied["dest"]))
    assert result.exit_code == 3
    assert result.stdout.startswith(
        "differs: 70001a: verify: 1 file differs from the inventory ('sub/b.dat' missing)"
    )
    assert rows(copied["db"], "SELECT epn, status, last_error_class FROM epns ORDER BY epn") == [
        ("70000a", "complete", None),
        ("70001a", "changed", "verify"),
    ]
    result = cli(
        *base, "sync", "--src-prefix", str(copied["src"]), "--dest", str(copied["dest"]), "--json"
    )
    assert json.loads(result.stdout)["complete"] == ["70001a"]
    assert (copied["dest"] / "70001a" / "sub" / "b.dat").read_bytes() == b"bravo"


def test_verify_checksum_sees_same_size_same_time_damage(cli: Any, copied: dict[str, Path]) -> None:
    base = ["--db", str(copied["db"]), "--host", "local"]
    write_file(copied["dest"] / "70000a" / "a.dat", b"ALPHA", FIXED_MTIME)  # same size, same mtime
    assert cli(*base, "verify", "--dest", str(copied["dest"])).exit_code == 0
    result = cli(
        *base,
        "verify",
        "--checksum",
        "--dest",
        str(copied["dest"]),
        "--src-prefix",
        str(copied["src"]),
    )
    assert result.exit_code == 3
    assert "differs: 70000a: verify: 1 file differs from the source by checksum" in result.stdout


# ------------------------------------------------------------------ the HTML report in a real browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM, "chromium is needed for this test (Debian: apt-get install chromium)"
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def test_report_renders_in_a_browser(cli: Any, known: Path, tmp_path: Path) -> None:
    from PIL import Image

    page = tmp_path / "report.html"
    result = cli("--db", str(known), "report", "--html", str(page))
    assert result.exit_code == 0, result.stderr
    html = page.read_text()
    assert (
        "<script" not in html and "http://" not in html and "https://" not in html
    )  # self-contained
    dom = _chromium("--dump-dom", f"file://{page}").stdout
    assert 'id="headline-total-bytes" data-value="251255586816"' in dom and ">234.0 GiB<" in dom
    assert (
        'id="headline-done-bytes" data-value="166429982720"' in dom
        and "copied and verified (66.2 %)" in dom
    )
    assert re.search(r'<svg id="chart-cumulative"[^>]*data-points="(\d+)"', dom).group(1) in (
        "30",
        "31",
    )
    bars = re.findall(r'<rect class="bar" [^>]*data-day="[^"]+" data-bytes="(\d+)"', dom)
    assert sum(int(b) for b in bars) == 155 * GiB + 6 * (GiB // 4)
    assert 'data-status="complete" data-bytes="166429982720"' in dom
    assert re.search(r'<table id="largest-pending">.*?12041c.*?7\.0 GiB', dom, re.S)
    assert re.search(r'<table id="recent-failures">.*?rsync exit 23', dom, re.S)
    shot = tmp_path / "report.png"
    run = _chromium("--window-size=860,1900", f"--screenshot={shot}", f"file://{page}")
    assert "ERROR" not in "\n".join(
        line for line in run.stderr.splitlines() if "report.html" in line
    )
    image = Image.open(shot).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20) or []
    by_colour = {rgb: n for n, rgb in colours}
    assert by_colour.get((0x15, 0x65, 0xC0), 0) > 2000  # the daily bars were drawn
    assert by_colour.get((0xA5, 0xD6, 0xA7), 0) > 5000  # the cumulative area was drawn
    assert by_colour.get((0x2E, 0x7D, 0x32), 0) > 500  # the complete bar of the status chart


def test_report_unwritable_path(cli: Any, known: Path, tmp_path: Path) -> None:
    result = cli("--db", str(known), "report", "--html", str(tmp_path / "no" / "dir" / "r.html"))
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: cannot write ")
    assert not (tmp_path / "no").exists()  # no folder made on the way


def test_read_only_commands_open_a_file_name_with_uri_characters(
    cli: Any, known: Path, tmp_path: Path
) -> None:
    """'#', '?' and '%' in the database's name: the read-only URI quotes them (no stray file 'a')."""
    odd = tmp_path / "a#1?x%41.db"
    shutil.copy(known, odd)
    result = cli("--db", str(odd), "sql", "--csv", "SELECT count(*) AS n FROM epns")
    assert result.exit_code == 0, result.stderr
    expected = sqlite3.connect(known).execute("SELECT count(*) FROM epns").fetchone()[0]
    assert result.stdout.splitlines()[1] == str(expected)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("known.db")) == [
        "a#1?x%41.db",
        *[n for n in ("a#1?x%41.db-shm", "a#1?x%41.db-wal") if (tmp_path / n).exists()],
    ]


def test_report_says_its_size_in_bytes(cli: Any, known: Path, tmp_path: Path) -> None:
    page = tmp_path / "r.html"
    result = cli("--db", str(known), "report", "--html", str(page), "--title", "Rückführung · MX")
    assert result.exit_code == 0, result.stderr
    size = page.stat().st_size
    assert size > len(page.read_text(encoding="utf-8"))  # the page has non-ASCII characters
    assert f"({size:,} bytes)" in result.stdout


def test_the_eta_after_a_short_first_sync_is_the_copying_rate(
    cli: Any, tmp_path: Path, write_config: Any
) -> None:
    """Right after a short first sync the rate is the bytes over the time spent copying, not over
    the whole day (which said "156 B/s last day; to go: 31 h 21 min" for 17 MiB)."""
    src = tmp_path / "src"
    for epn, mib in (("12000a", 13), ("12001b", 17)):
        (src / epn).mkdir(parents=True)
        (src / epn / "data.raw").write_bytes(os.urandom(mib * 2**20))
    (tmp_path / "vault").mkdir()
    conf = write_config(
        {
            "host": "local",
            "src_prefix": str(src),
            "db": str(tmp_path / "f.db"),
            "dest": str(tmp_path / "vault"),
        }
    )
    assert cli("--config", str(conf), "walk").exit_code == 0
    assert cli("--config", str(conf), "sync", "--epn", "12000a").exit_code == 0
    data = json.loads(cli("--config", str(conf), "status", "--json").stdout)
    rate = data["throughput"]
    assert rate["last_day_bytes"] == 13 * 2**20
    assert 1 <= rate["last_day_copying_seconds"] <= 30
    assert rate["last_day_copying_bytes_per_second"] == pytest.approx(
        13 * 2**20 / rate["last_day_copying_seconds"]
    )
    assert data["eta_seconds"] == pytest.approx(
        17 * 2**20 / rate["last_day_copying_bytes_per_second"]
    )
    assert data["eta_seconds"] < 60
    table = cli("--config", str(conf), "status").stdout
    line = next(ln for ln in table.splitlines() if ln.startswith("to go:"))
    assert " h " not in line and " d " not in line, line
