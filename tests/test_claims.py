"""The transfer queue in the database, on SQLite and on the real PostgreSQL: claims, leases, fencing."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text, update
from trees import build_epns

from asynchy import claims, workers
from asynchy.db import Database, open_database
from asynchy.failures import Decision, Situation, decide
from asynchy.inventory import WalkOptions, walk
from asynchy.jobs import TransferResult
from asynchy.models import epns_table
from asynchy.remote.local import LocalTree


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    url = str(tmp_path / "q.db") if request.param == "sqlite" else request.getfixturevalue("pg_url")
    database = open_database(url)
    yield database
    database.close()


def _fill(db: Database, root: Path, n: int) -> list[str]:
    build_epns(root, n, 1)
    walk(db, LocalTree(root), WalkOptions())
    return sorted(f"{20000 + i}{'abcd'[i % 4]}" for i in range(n))


def _decision(result: TransferResult) -> Decision:
    """What the batch decides for a first attempt with no retry left (failures.decide)."""
    return decide(result.classification, Situation(tries=1, retry=0, max_attempts=2))


def _result(c: claims.Claim, classification: str = "ok") -> TransferResult:
    now = datetime.now(UTC)
    return TransferResult(
        c.epn, c.attempts + 1, c.token, now, now, ("rsync",), 0, classification, None, 10, 1
    )


def _expire(db: Database, epn: str) -> None:
    past = (
        text("datetime('now', '-1 minute')")
        if db.is_sqlite
        else text("now() - interval '1 minute'")
    )
    with db.write() as conn:
        conn.execute(update(epns_table).where(epns_table.c.epn == epn).values(lease_until=past))


def test_claims_are_exclusive_even_under_contention(db: Database, tmp_path: Path) -> None:
    """Eight threads claiming from one queue of 40: every EPN goes to exactly one of them."""
    epns = _fill(db, tmp_path / "src", 40)
    got: dict[str, list[str]] = {}
    lock = threading.Lock()

    def worker() -> None:
        me = workers.register_worker(db, "test")
        while True:
            taken = claims.claim(db, me, epns, 3, order="ASC", max_attempts=5, lease=60)
            if not taken:
                return
            with lock:
                got.setdefault(me.worker_id, []).extend(c.epn for c in taken)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [epn for taken in got.values() for epn in taken]
    assert sorted(every) == epns  # each exactly once


def test_fencing_rejects_the_result_of_a_worker_that_lost_its_claim(
    db: Database, tmp_path: Path
) -> None:
    (epn,) = _fill(db, tmp_path / "src", 1)
    slow = workers.register_worker(db, "test")
    fast = workers.register_worker(db, "test")
    (first,) = claims.claim(db, slow, [epn], 1, order="ASC", max_attempts=5, lease=60)
    assert (
        claims.claim(db, fast, [epn], 1, order="ASC", max_attempts=5, lease=60) == []
    )  # the lease holds
    _expire(db, epn)  # the slow worker was paused past its lease
    (second,) = claims.claim(db, fast, [epn], 1, order="ASC", max_attempts=5, lease=60)
    assert second.token == first.token + 1
    assert (
        claims.record(
            db,
            fast,
            second,
            _result(second),
            _decision(_result(second)),
            max_attempts=5,
            dest_path="/d",
            lease=60,
        )
        == "complete"
    )
    # The paused worker wakes up and reports: its result must not overwrite anything.
    assert (
        claims.record(
            db,
            slow,
            first,
            _result(first, "partial"),
            _decision(_result(first, "partial")),
            max_attempts=5,
            dest_path="/d",
            lease=60,
        )
        == "superseded"
    )
    with db.read() as conn:
        assert conn.execute(text("SELECT status, failures, claim_owner FROM epns")).one() == (
            "complete",
            0,
            None,
        )
        outcomes = conn.execute(text("SELECT worker_id, outcome FROM transfers ORDER BY id")).all()
    assert [tuple(r) for r in outcomes] == [
        (fast.worker_id, "complete"),
        (slow.worker_id, "superseded"),
    ]


def test_heartbeat_keeps_a_claim_alive(db: Database, tmp_path: Path) -> None:
    (epn,) = _fill(db, tmp_path / "src", 1)
    owner = workers.register_worker(db, "test")
    other = workers.register_worker(db, "test")
    claims.claim(db, owner, [epn], 1, order="ASC", max_attempts=5, lease=60)
    _expire(db, epn)
    assert workers.heartbeat(db, owner, 60) == 1  # renewed before anyone noticed
    assert claims.claim(db, other, [epn], 1, order="ASC", max_attempts=5, lease=60) == []


def test_order_limit_and_quarantine(db: Database, tmp_path: Path) -> None:
    epns = _fill(db, tmp_path / "src", 3)
    for day, epn in zip((3, 1, 2), epns, strict=True):
        with db.write() as conn:
            conn.execute(
                update(epns_table)
                .where(epns_table.c.epn == epn)
                .values(modified=datetime(2024, 1, day, tzinfo=UTC))
            )
    me = workers.register_worker(db, "test")
    planned, _ = claims.plan(db, order="DESC", limit=2, max_attempts=2)
    assert [p.epn for p in planned] == [epns[0], epns[2]]
    planned, _ = claims.plan(db, order="ASC", limit=2, max_attempts=2)
    assert [p.epn for p in planned] == [epns[1], epns[2]]
    (c,) = claims.claim(db, me, [epns[0]], 1, order="ASC", max_attempts=2, lease=60)
    assert (
        claims.record(
            db,
            me,
            c,
            _result(c, "partial"),
            _decision(_result(c, "partial")),
            max_attempts=2,
            dest_path="/d",
            lease=60,
        )
        == "failed"
    )
    (c,) = claims.claim(db, me, [epns[0]], 1, order="ASC", max_attempts=2, lease=60)
    assert (
        claims.record(
            db,
            me,
            c,
            _result(c, "partial"),
            _decision(_result(c, "partial")),
            max_attempts=2,
            dest_path="/d",
            lease=60,
        )
        == "quarantined"
    )
    assert claims.claim(db, me, [epns[0]], 1, order="ASC", max_attempts=2, lease=60) == []
