"""The failure model of ``asynchy sync``: which class a result belongs to, and who pays for it.

docs/failures.md is this module in prose; ``POLICY`` below is its table, and
a test checks that the two agree.  Three questions are kept apart, as trusted
transfer systems do: is it the *link* (the server or the network), the
*setup* (this host's configuration), or *this EPN's data*?  Only data
problems are charged to an EPN (count toward ``--max-attempts`` and set a
back-off); link and setup problems are properties of the run.

Everything here is pure: no I/O, no database.
"""

from __future__ import annotations

import posixpath
import random
import re
from dataclasses import dataclass
from enum import Enum
from typing import Literal

from asynchy.jobs import FailureClass

DATA_CLASSES: tuple[str, ...] = ("partial", "verify", "checksum")
# Written by asynchy before 0.2 (revision 0006 and older); read so that old databases keep working.
LEGACY_RETRYABLE = ("retryable",)
LEGACY_PERMANENT = ("permanent",)


InRun = Literal["cancel", "halt", "after_probe", "relist", "after_backoff"]


@dataclass(frozen=True, slots=True)
class Policy:
    charged: bool  # counts toward --max-attempts and sets a back-off (not_before)
    in_run: InRun  # what the batch does with the EPN now (decide reads it)
    this_run: str  # the same, in docs/failures.md's words
    next_run: str  # what a later run does
    part_rank: int  # of a split EPN's failed parts, the lowest rank speaks for the attempt
    repair: bool = False  # the copy is redone by checksum: at once in the attempt, and next time


POLICY: dict[str, Policy] = {
    "link": Policy(
        False,
        "after_probe",
        "claim given back at once; no new EPNs start; the server is probed with spaced, "
        "jittered back-off (--retry + 1 probes). It answers: the run goes on and the EPN may be "
        "tried again (at most --retry + 1 attempts per run). It does not: every claim is given "
        "back and the run ends with exit 1",
        "takes the EPN as if nothing happened",
        part_rank=2,
    ),
    "setup": Policy(
        False,
        "halt",
        "claim given back; no new EPNs start; the run ends with exit 2 (a changed host key: 1) "
        "and one line naming the fix. Preflight finds most of these before anything is claimed",
        "takes the EPN as if nothing happened, once the setup is fixed",
        part_rank=1,
    ),
    "partial": Policy(
        True,
        "after_backoff",
        "retried after 1, 2, 4 ... s while --retry allows, keeping the claim; then given back "
        "as failed with not_before set",
        "waits until not_before (10 min, doubling, at most 6 h, jittered); quarantined after "
        "--max-attempts data failures in a row",
        part_rank=4,
    ),
    "verify": Policy(
        True,
        "after_backoff",
        "as partial",
        "as partial",
        part_rank=4,
    ),
    "checksum": Policy(
        True,
        "after_backoff",
        "the copy is redone at once with rsync --checksum and checked again; if it still "
        "differs, as partial",
        "as partial, and the next copy uses rsync --checksum (a repair)",
        part_rank=4,
        repair=True,
    ),
    "changed": Policy(
        False,
        "relist",
        "sync lists the EPN again (a one-EPN walk --refresh), then copies it again while "
        "--retry allows; else it is left 'changed'",
        "copies it again (the inventory is already fresh)",
        part_rank=3,
    ),
    "cancelled": Policy(
        False,
        "cancel",
        "not an attempt: the claim is given back with the EPN's status as it was",
        "takes the EPN as if nothing happened",
        part_rank=0,
    ),
}


# ------------------------------------------------------------------ what happens after a result
class Action(Enum):
    """What the batch does after one attempt's result (``decide``)."""

    COMPLETE = "complete"  # record it complete
    CANCEL = "cancel"  # not an attempt: the claim goes back with the EPN's status as it was
    GIVE_BACK_AND_PROBE = "give back, probe the server, may take it again"  # link, tries left
    GIVE_BACK = "give back, probe the server, not again in this run"  # link, no tries left
    GIVE_BACK_AND_HALT = "give back, start nothing new"  # setup
    RELIST_AND_RETRY = "list it again, copy it again now"  # changed, tries left
    RELIST = "list it again, leave it changed for the next run"  # changed, no tries left
    RETRY_AFTER_BACKOFF = "charge it, try again in this run after a back-off"  # data, tries left
    FAIL = "charge it, leave it failed with a back-off"  # data, no tries left
    QUARANTINE = "charge it, quarantine it"  # data, --max-attempts reached


# What each action writes to the EPN's row (claims.record): the outcome of the attempt.
RECORDED: dict[Action, str] = {
    Action.COMPLETE: "complete",
    Action.CANCEL: "cancelled",
    Action.GIVE_BACK_AND_PROBE: "released",
    Action.GIVE_BACK: "released",
    Action.GIVE_BACK_AND_HALT: "released",
    Action.RELIST_AND_RETRY: "retry",  # the claim is kept
    Action.RELIST: "changed",
    Action.RETRY_AFTER_BACKOFF: "retry",  # the claim is kept
    Action.FAIL: "failed",
    Action.QUARANTINE: "failed",  # the database makes it quarantined (failures reach the limit)
}


@dataclass(frozen=True, slots=True)
class Situation:
    """What decide needs to know besides the class."""

    tries: int  # attempts of this EPN in this run, this one included
    retry: int  # --retry N: at most N + 1 attempts of one EPN in one run
    failures: int = 0  # data failures charged to it so far (on record, and in this run)
    max_attempts: int = 5  # data failures in a row that quarantine it
    stopping: bool = False  # a stop was asked for (Ctrl+C, SIGTERM, the time limit)


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    charged: bool
    repair: bool = False  # the next copy compares by checksum

    @property
    def recorded(self) -> str:
        return RECORDED[self.action]

    @property
    def keeps_claim(self) -> bool:
        return self.recorded == "retry"


def decide(classification: FailureClass, situation: Situation) -> Decision:
    """The one place that turns an attempt's class into what happens next (docs/failures.md):
    ``POLICY`` row by row; tested as a table of every class in every situation."""
    if classification == "ok":
        return Decision(Action.COMPLETE, charged=False)
    policy = POLICY[classification]
    again = situation.tries < situation.retry + 1 and not situation.stopping
    if policy.in_run == "cancel":
        action = Action.CANCEL
    elif policy.in_run == "halt":
        action = Action.GIVE_BACK_AND_HALT
    elif policy.in_run == "after_probe":
        action = Action.GIVE_BACK_AND_PROBE if again else Action.GIVE_BACK
    elif policy.in_run == "relist":
        action = Action.RELIST_AND_RETRY if again else Action.RELIST
    elif situation.failures + 1 >= situation.max_attempts:
        action = Action.QUARANTINE
    else:
        action = Action.RETRY_AFTER_BACKOFF if again else Action.FAIL
    return Decision(action, charged=policy.charged, repair=policy.repair)


def lost(stopping: bool) -> FailureClass:
    """The class of an attempt whose worker process died (kill -9, the OOM killer): the link's, or
    a stop's when one was asked for (Ctrl+C also reaches --parallel workers as they start)."""
    return "cancelled" if stopping else "link"


def speaks_for(a: FailureClass, b: FailureClass) -> bool:
    """Of two failed parts of a split EPN, does ``a`` speak for the attempt rather than ``b``?
    A stop, then the setup, then the link, then a source that changed (none charged: the EPN is
    listed again and copied again), then a data failure (``Policy.part_rank``)."""
    return POLICY[a].part_rank < POLICY[b].part_rank


def charged(classification: str) -> bool:
    policy = POLICY.get(classification)
    return policy.charged if policy is not None else classification in LEGACY_RETRYABLE


# ------------------------------------------------------------------ classifying rsync's exit
# ssh said something that will not change by trying again: the setup is wrong.
_SSH_SETUP = re.compile(
    "|".join(
        (
            r"Host key verification failed",
            r"REMOTE HOST IDENTIFICATION HAS CHANGED",
            r"host key is known for",  # "No ED25519 host key is known for ... strict checking"
            r"has changed and you have requested strict checking",
            r"Permission denied \((?!\d)",  # ssh's "(publickey)", not rsync's errno "(13)"
            r"Too many authentication failures",
            r"no such identity",
            r"Bad owner or permissions",
            r"bad permissions",
            r"Load key",  # "Load key ...: invalid format"
            r"Bad configuration option",
            r"command-line line",
            r"garbage at end of line",
            r"unknown option",
        )
    )
)
_LOCAL_DEST = re.compile(
    r"\[(?i:receiver|generator)\].*(Permission denied|Read-only file system|No space left on device"
    r"|Disk quota exceeded|Operation not permitted) \(\d+\)"
)
_SETUP_CODES = {1, 2, 4, 25, 126, 127}
_LINK_CODES = {5, 10, 12, 13, 14, 15, 16, 19, 20, 21, 22, 30, 35, 124, 125}


def ssh_refused(stderr: str) -> bool:
    """ssh said why it would not connect (host key, login, key file, option): a setup problem."""
    return _SSH_SETUP.search(stderr) is not None


# rsync's sender met a source that moved on while it was read: a file or folder gone since it was
# listed (ENOENT on link_stat / change_dir; an explicit file name of a split EPN's part), or a file that
# shrank under it ("read errors mapping ... No data available (61)": rsync's ENODATA for a short read;
# a real read error says EIO).  A change of the source, never a fault of this EPN's data.
_SENDER_ERROR = re.compile(r"^rsync: \[sender\] (.*)$", re.M)
_SOURCE_MOVED = re.compile(
    r'^(?:(?:link_stat|change_dir|opendir) ".*" failed: No such file or directory \(2\)'
    r'|read errors mapping ".*": No data available \(61\))$'
)
_CHANGE_DIR = re.compile(r'^rsync: \[sender\] change_dir "(.*)" failed: (.*)$', re.M)


def prefix_unreachable(stderr: str, prefix: str | None, cwd: str | None = None) -> str | None:
    """rsync could not enter ``src_prefix`` itself (not an EPN inside it): what it said, or None.

    The same for every EPN: a setup problem (docs/failures.md).  rsync names the folder as it was
    given, joined to its working folder when relative (the EPN's destination folder)."""
    if not prefix:
        return None
    wanted = {posixpath.normpath(prefix)}
    if cwd is not None and not prefix.startswith("/"):
        wanted.add(posixpath.normpath(posixpath.join(cwd, prefix)))
    for m in _CHANGE_DIR.finditer(stderr):
        if posixpath.normpath(m.group(1)) in wanted:
            return m.group(0).strip()
    return None


def source_moved(stderr: str) -> bool:
    """Every error rsync's sender reported says the source changed under it (and there is one)."""
    errors = [m.group(1).strip() for m in _SENDER_ERROR.finditer(stderr)]
    return bool(errors) and all(_SOURCE_MOVED.match(e) for e in errors)


def classify_exit(
    exit_code: int | None, stderr: str, *, prefix: str | None = None, cwd: str | None = None
) -> FailureClass:
    """The class of one rsync run from its exit code and what it said on stderr.

    ``prefix`` (src_prefix as rsync was given it) and ``cwd`` (rsync's working folder) let a
    source prefix that cannot be entered be told from an EPN that cannot."""
    if exit_code == 0:
        return "ok"
    if exit_code is None:  # it could not even be started
        return "setup"
    if exit_code < 0:  # killed by a signal: our stall watchdog, the OOM killer, someone's kill -9
        return "link"
    if exit_code == 255 or exit_code in _LINK_CODES:
        # ssh refused: rsync passes on ssh's 255, or, when it reads the closed pipe before it
        # reaps ssh, says 12 (protocol data stream); about one run in fifteen here.
        if ssh_refused(stderr):
            return "setup"
        if exit_code == 255:
            return "link"
    if exit_code in _SETUP_CODES:
        return "setup"
    if _LOCAL_DEST.search(stderr):  # our own destination refused a write: every EPN would fail
        return "setup"
    if exit_code in (3, 23) and prefix_unreachable(stderr, prefix, cwd) is not None:
        return "setup"  # src_prefix itself: every EPN would fail alike
    if exit_code == 24:  # only vanished files: the source is changing
        return "changed"
    if exit_code == 23 and source_moved(stderr):  # gone or shrunk since it was listed
        return "changed"
    if exit_code in (3, 11, 23):
        return "partial"
    if exit_code in _LINK_CODES:
        return "link"
    return "link"


# ------------------------------------------------------------------ the most telling line of stderr
_NOISE = (
    "Could not chdir to home directory",
    "Warning: Permanently added",
    "** WARNING: connection is not using",
    "@@@",
    "IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY",
    "Someone could be eavesdropping",
    "It is also possible that a host key has just been changed",
    "The fingerprint for the",
    "Please contact your system administrator",
    "Add correct host key in",
    "Offending",
    "  remove with:",
    "ssh-keygen -f",
)
# Most specific first: the line that names the cause wins over the lines that follow from it.
_SPECIFIC = (
    re.compile(r"Host key for .* has changed"),
    re.compile(r"host key is known for"),
    re.compile(r"REMOTE HOST IDENTIFICATION HAS CHANGED"),
    re.compile(r"Permission denied \("),
    re.compile(r"^ssh: "),
    re.compile(r"Host key verification failed"),
    re.compile(r"^rsync: (?!connection unexpectedly closed)(?!\[\w+\] connection unexpectedly)"),
)


def main_complaint(stderr: str) -> str:
    """The line of stderr that says what went wrong (not a banner, not the login noise, not an echo)."""
    lines = [ln.strip() for ln in stderr.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith(_NOISE)]
    for pattern in _SPECIFIC:
        for line in lines:
            if pattern.search(line):
                return line
    return next(
        (ln for ln in lines if not ln.startswith("rsync error:")), lines[0] if lines else ""
    )


# ------------------------------------------------------------------ spacing of attempts
IN_RUN_BASE = 1.0  # seconds before the first retry of a data failure within a run
IN_RUN_CAP = 60.0
NEXT_RUN_BASE = 600.0  # not_before after the first data failure: 10 minutes ...
NEXT_RUN_CAP = 6 * 3600.0  # ... doubling, at most 6 hours
PROBE_BASE = 1.0  # circuit breaker: seconds before the second probe of the server
PROBE_CAP = 60.0


def backoff(n: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Delay before try n+1 (n >= 0): base * 2**n, at most cap, with 'equal jitter' (half fixed, half random)."""
    full = min(cap, base * 2.0 ** max(0, n))
    return full / 2 + (rng or random).uniform(0, full / 2)
