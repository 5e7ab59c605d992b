"""failures.decide, the one decision function (docs/failures.md), as a table: every class in
every situation - the first attempt, the last retry, --max-attempts reached, a stop requested -
plus the rows for a worker process that died and for the failed parts of a split EPN."""

from __future__ import annotations

import pytest

from asynchy.failures import (
    POLICY,
    RECORDED,
    Action,
    Situation,
    decide,
    lost,
    speaks_for,
)

FIRST = Situation(tries=1, retry=2)  # tries left
LAST = Situation(tries=3, retry=2)  # the last attempt --retry allows
NO_RETRY = Situation(tries=1, retry=0)  # the default --retry 0
AT_LIMIT = Situation(tries=1, retry=2, failures=4, max_attempts=5)  # the fifth data failure
STOPPING = Situation(tries=1, retry=2, stopping=True)  # Ctrl+C, SIGTERM, the time limit

A = Action
TABLE: dict[str, tuple[Action, Action, Action, Action, Action]] = {
    # class:      first attempt           last retry     --retry 0      max attempts      stopping
    "ok": (A.COMPLETE, A.COMPLETE, A.COMPLETE, A.COMPLETE, A.COMPLETE),
    "cancelled": (A.CANCEL, A.CANCEL, A.CANCEL, A.CANCEL, A.CANCEL),
    "link": (A.GIVE_BACK_AND_PROBE, A.GIVE_BACK, A.GIVE_BACK, A.GIVE_BACK_AND_PROBE, A.GIVE_BACK),
    "setup": (
        A.GIVE_BACK_AND_HALT,
        A.GIVE_BACK_AND_HALT,
        A.GIVE_BACK_AND_HALT,
        A.GIVE_BACK_AND_HALT,
        A.GIVE_BACK_AND_HALT,
    ),
    "changed": (A.RELIST_AND_RETRY, A.RELIST, A.RELIST, A.RELIST_AND_RETRY, A.RELIST),
    "partial": (A.RETRY_AFTER_BACKOFF, A.FAIL, A.FAIL, A.QUARANTINE, A.FAIL),
    "verify": (A.RETRY_AFTER_BACKOFF, A.FAIL, A.FAIL, A.QUARANTINE, A.FAIL),
    "checksum": (A.RETRY_AFTER_BACKOFF, A.FAIL, A.FAIL, A.QUARANTINE, A.FAIL),
}
SITUATIONS = (FIRST, LAST, NO_RETRY, AT_LIMIT, STOPPING)


@pytest.mark.parametrize("cls", sorted(TABLE))
@pytest.mark.parametrize("at", range(len(SITUATIONS)))
def test_every_class_in_every_situation(cls: str, at: int) -> None:
    decision = decide(cls, SITUATIONS[at])  # type: ignore[arg-type]
    assert decision.action is TABLE[cls][at]
    assert decision.charged == (cls in ("partial", "verify", "checksum"))
    assert decision.repair == (cls == "checksum")  # the next copy compares by checksum


def test_the_table_covers_every_class_of_the_policy() -> None:
    assert set(TABLE) == set(POLICY) | {"ok"}


@pytest.mark.parametrize("action", list(Action))
def test_what_each_action_records(action: Action) -> None:
    """The EPN row's outcome: only a retry in this run keeps the claim."""
    recorded = RECORDED[action]
    assert recorded in ("complete", "cancelled", "released", "retry", "changed", "failed")
    keeps = action in (Action.RELIST_AND_RETRY, Action.RETRY_AFTER_BACKOFF)
    assert (recorded == "retry") == keeps


def test_a_worker_process_that_died_is_the_link_or_a_stop() -> None:
    assert lost(stopping=False) == "link"  # given back uncharged, the server probed
    assert lost(stopping=True) == "cancelled"
    assert decide(lost(False), FIRST).action is Action.GIVE_BACK_AND_PROBE
    assert decide(lost(True), FIRST).action is Action.CANCEL


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("cancelled", "setup"),
        ("setup", "link"),
        ("link", "changed"),
        ("changed", "partial"),
        ("changed", "verify"),
        ("cancelled", "partial"),
    ],
)
def test_which_failed_part_speaks_for_the_attempt(a: str, b: str) -> None:
    """A stop, then the setup, then the link, then a source that changed, then data."""
    assert speaks_for(a, b)  # type: ignore[arg-type]
    assert not speaks_for(b, a)  # type: ignore[arg-type]
