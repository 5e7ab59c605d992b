"""Eligibility is defined once (asynchy.eligibility): for generated EPN rows, the claim's SQL
takes an EPN if and only if it has no reason not to be taken, the reason waiting.not_taken counts
and sync --epn explains.  Real SQLite and real PostgreSQL, rows from Hypothesis (NULLs included:
a predicate that is NULL instead of false would hide an EPN from the claim)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, insert, select

from asynchy import dbclock
from asynchy.db import Database, open_database
from asynchy.eligibility import REASONS, Conditions, claimable, flags, reason_of
from asynchy.models import epns_table

NOW = datetime.now(UTC).replace(microsecond=0)
TIMES = st.one_of(
    st.none(),
    st.sampled_from(
        [NOW - timedelta(days=2), NOW - timedelta(seconds=5), NOW + timedelta(hours=1)]
    ),
)
ROWS = st.fixed_dictionaries(
    {
        "status": st.sampled_from(
            ["pending", "changed", "failed", "running", "complete", "skipped", "quarantined"]
        ),
        "walk_complete": st.booleans(),
        "walked_at": TIMES,
        "last_error_class": st.one_of(
            st.none(),
            st.sampled_from(["partial", "verify", "checksum", "retryable", "permanent", "changed"]),
        ),
        "failures": st.integers(0, 6),
        "not_before": TIMES,
        "lease_until": TIMES,
        "modified": TIMES,
    }
)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    if request.param == "sqlite":
        setting = str(tmp_path_factory.mktemp("elig") / "files.db")
    else:
        setting = request.getfixturevalue("pg_url")
    database = open_database(setting)
    yield database
    database.close()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=st.lists(ROWS, min_size=1, max_size=12), settle=st.booleans())
def test_claimable_exactly_when_no_reason(
    db: Database, rows: list[dict[str, Any]], settle: bool
) -> None:
    cutoff = NOW - timedelta(days=1) if settle else None
    with db.write() as conn:
        conn.execute(delete(epns_table))
        conn.execute(
            insert(epns_table),
            [
                {
                    "epn": f"{10000 + i}a",
                    "first_seen_at": NOW - timedelta(days=3),
                    "size": 1,
                    "file_count": 1,
                    **row,
                }
                for i, row in enumerate(rows)
            ],
        )
    c = Conditions(dbclock.now(db), 5, cutoff)
    e = epns_table.c
    with db.read() as conn:
        taken = set(conn.execute(select(e.epn).where(claimable(c))).scalars())
        flagged = conn.execute(select(e.epn, *flags(c))).all()
    reasons = {r.epn: reason_of(r) for r in flagged}
    assert taken == {epn for epn, why in reasons.items() if why is None}
    for row in flagged:  # every flag is true or false, never NULL
        assert all(getattr(row, r.name) in (True, False, 0, 1) for r in REASONS if r.when)
