"""The fault campaign CI runs: one trial per fault kind of tests/chaos/campaign.py, with
everything else about the trial (EPNs, options, the moment) drawn from a fixed seed.

A long campaign is `python tests/chaos/campaign.py --trials 200 --seed S`; a failed trial here
prints the command that replays it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from campaign import FAULTS, Plan, Trial, server, usable_faults
from sshd import Sshd

SEED = 20261207


@pytest.fixture(scope="module")
def chaos() -> Iterator[tuple[Sshd, Path]]:
    """A server of the campaign's own (trials crash and stop it) and a folder it can read."""
    base = Path(tempfile.mkdtemp(prefix="asynchy-chaos-"))
    os.chmod(base, 0o755)
    with server(base) as sshd:
        yield sshd, base
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("fault", FAULTS)
def test_a_trial_holds_every_invariant(chaos: tuple[Sshd, Path], fault: str) -> None:
    if fault not in usable_faults():
        pytest.fail(f"the {fault} trial needs root (it mounts a small tmpfs), as CI runs")
    sshd, base = chaos
    plan = Plan.draw(SEED, FAULTS.index(fault), faults=(fault,))
    outcome = Trial(sshd, base, plan).run()
    assert outcome.ok, outcome.report()
