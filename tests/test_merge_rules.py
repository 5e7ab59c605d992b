"""The merge rules on their own (asynchy.merge.rules): properties over generated candidates.

End-to-end merges are tested in test_merge.py; here the pure decision is checked directly:
the order of the inputs never matters, merging the result again changes nothing, and a
completed EPN is never downgraded except to `changed` by a newer walk that saw other content.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from asynchy.merge.rules import EpnCandidate, decide, left_to_owner, plan, walk_rank

BASE = datetime(2026, 1, 1, tzinfo=UTC)
STATUSES = ("pending", "failed", "quarantined", "skipped", "changed", "complete")
times = st.one_of(st.none(), st.integers(0, 30).map(lambda d: BASE + timedelta(days=d)))


@st.composite
def candidate(draw: Any, src: int) -> EpnCandidate:
    """One place's view, as real places hold it: a walked asynchy database (size and count from
    its file rows, a completion with its time) or an EPN-only row (MeRC asynchy: a size, complete
    without a time; an ignore.yml entry: nothing but complete)."""
    walked = draw(st.booleans())
    status = draw(st.sampled_from(STATUSES if walked else ("pending", "complete")))
    files = draw(st.integers(0, 3)) if walked else 0
    return EpnCandidate(
        epn="12282a",
        src=src,
        size=files * draw(st.sampled_from([100, 200])) if walked else draw(st.integers(0, 3)) * 100,
        file_count=files,
        modified=draw(times) if files else None,
        walked_at=draw(times.filter(lambda t: t is not None)) if walked else None,
        walk_complete=walked and draw(st.booleans()),
        walk_error_count=draw(st.integers(0, 2)) if walked else 0,
        status=status,
        completed_at=draw(times.filter(lambda t: t is not None))
        if walked and status == "complete"
        else None,
        bytes_transferred=draw(st.integers(0, 3)) * 100,
        attempts=draw(st.integers(0, 4)) if walked else 0,
        failures=draw(st.integers(0, 4)) if status in ("failed", "quarantined") else 0,
        last_error=draw(st.sampled_from([None, "rsync exit 23", "rsync exit 12"]))
        if walked
        else None,
        skip_reason="by hand" if status == "skipped" else None,
        dest_path=draw(st.sampled_from([None, "/vault/a", "/vault/b"])) if walked else None,
        last_exit_code=draw(st.sampled_from([None, 0, 23])) if walked else None,
        last_error_class=draw(st.sampled_from([None, "partial", "verify"])) if walked else None,
        first_seen_at=draw(times),
        has_files=files > 0,
    )


inputs = st.integers(1, 5).flatmap(
    lambda n: st.tuples(*[candidate(src) for src in range(1, n + 1)]).map(list)
)


def as_target(cands: list[EpnCandidate]) -> EpnCandidate:
    """The merged row as the target holds it afterwards (what merge.sql.upsert_epns writes)."""
    values = decide(cands)
    walked = [c for c in cands if c.walked_at is not None or c.has_files]
    winner = max(walked or cands, key=walk_rank)
    row = {
        "size": winner.size,
        "file_count": winner.file_count,
        "modified": winner.modified,
        "has_files": winner.has_files,
        **values,
    }
    return EpnCandidate(epn="12282a", src=0, **row)


@settings(max_examples=300, deadline=None)
@given(inputs, st.randoms(use_true_random=False))
def test_the_order_of_the_inputs_does_not_matter(cands: list[EpnCandidate], rnd: Any) -> None:
    shuffled = list(cands)
    rnd.shuffle(shuffled)
    assert decide(shuffled) == decide(cands)
    assert plan({"12282a": shuffled})[0].decisions == plan({"12282a": cands})[0].decisions


@settings(max_examples=300, deadline=None)
@given(inputs)
def test_merging_the_result_again_changes_nothing(cands: list[EpnCandidate]) -> None:
    assert decide([as_target(cands), *cands]) == decide(cands)


@settings(max_examples=300, deadline=None)
@given(inputs)
def test_complete_stays_complete_unless_a_newer_walk_saw_other_content(
    cands: list[EpnCandidate],
) -> None:
    status = decide(cands)["status"]
    if any(c.status == "complete" for c in cands):
        assert status in ("complete", "changed")
        done = max(
            (c for c in cands if c.status == "complete"),
            key=lambda c: (c.completed_at or datetime.min.replace(tzinfo=UTC), walk_rank(c)),
        )
        oldest = datetime.min.replace(tzinfo=UTC)
        since = max(done.completed_at or oldest, done.walked_at or oldest)
        newer = [c for c in cands if c.walked_at and c.walked_at > since]
        if not newer:
            assert status == "complete"
    else:
        assert status != "complete"


def test_a_running_claim_counts_only_in_the_target() -> None:
    running_input = EpnCandidate(epn="e", src=1, status="running")
    assert not left_to_owner([running_input])
    assert left_to_owner([EpnCandidate(epn="e", src=0, status="running"), running_input])
