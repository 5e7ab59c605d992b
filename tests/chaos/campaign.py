"""A seeded fault campaign against the real thing: OpenSSH's sshd on 127.0.0.1, the rsync binary,
``python -m asynchy`` in its own process group, SQLite files on disk.

Each trial makes a small facility of random EPNs, walks it, starts ``asynchy sync`` with random
options (threads or ``--parallel`` processes, ``--partial``, a big EPN split in parts, ``--retry``,
a ``--bwlimit`` that keeps the copy busy for a few seconds) and, at a random moment, injects one
fault chosen at random (``FAULTS``).  Then it checks the invariants, runs ``walk --refresh`` and
up to ``CLEAN_RUNS`` clean syncs, and checks them again:

* no EPN is complete unless its copy is byte-identical to its source, and every regular file
  of it has its source checksum on record, the checksum of its content (docs/fixity.md);
* nothing is charged: every fault here is a link, setup, stop or source-change fault
  (docs/failures.md), so ``epns.failures`` stays 0 and nothing is failed or quarantined;
* every EPN is complete within ``CLEAN_RUNS`` clean runs;
* no process is left (rsync, ssh, workers, asynchy);
* ``PRAGMA integrity_check`` is ok;
* nothing is written outside dest (the work folder holds only what it should; the source is
  only changed by the campaign itself);
* no ``.asynchy-tmp`` entry is left once every EPN is complete;
* no traceback, and an exit code from docs/exit-codes.md (or the SIGKILL the trial sent).

Everything a trial does follows from ``(seed, trial)``; only the timing is the machine's.  A failed
trial prints its seed, the command that replays it and the commands it ran.

    python tests/chaos/campaign.py --trials 200 --seed 7       # a long campaign
    python tests/chaos/campaign.py --seed 7 --trial 31 --keep  # replay one trial, keep its files

The test suite runs a short one (tests/chaos/test_chaos.py).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import random
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from sshd import Sshd, processes  # noqa: E402

FAULTS = (
    "kill9_sync",  # the sync process (its rsyncs and workers die with it)
    "kill9_group",  # its whole process group, as a crashed session
    "kill9_rsync",  # one rsync
    "kill9_ssh",  # one ssh connection
    "kill9_worker",  # one --parallel worker process
    "server_crash",  # sshd and every session killed, back after a few seconds
    "stall",  # the server's sessions stopped (SIGSTOP) past the stall timeout
    "enospc",  # the destination's file system fills up
    "ctrl_c",  # SIGINT to the process group, as a terminal sends it
    "sigterm",  # systemctl stop
    "two_syncs",  # a second sync on the same database at the same time
    "source_append",  # the source changes under the copy
    "source_delete",
    "source_truncate",
    "source_rewrite",
)
CLEAN_RUNS = 3
RUN_TIMEOUT = 180.0  # seconds: a sync that takes longer hangs
EPN_SIZES = (1024, 30_000, 300_000, 1_500_000, 5_000_000)
FIXED_MTIME = 1_600_000_000
EXIT_CODES = {0, 1, 2, 3, 130}


# ------------------------------------------------------------------ what a trial does
@dataclass
class Plan:
    """Everything random about one trial, drawn from its own generator."""

    seed: int
    trial: int
    fault: str
    at: float  # seconds after the sync started
    options: list[str]
    epns: dict[str, list[tuple[str, int]]]  # EPN -> (relative path, size)
    down: float = 0.0  # server_crash: seconds the server stays down
    change: int = 0  # source_*: which file (an index into the EPN's files)
    only: str | None = None  # the fault was given (--fault), not drawn

    @classmethod
    def draw(cls, seed: int, trial: int, faults: tuple[str, ...] = FAULTS) -> Plan:
        rng = random.Random(f"asynchy-chaos:{seed}:{trial}")
        fault = rng.choice(faults)
        only = fault if len(faults) == 1 else None
        epns: dict[str, list[tuple[str, int]]] = {}
        for i in range(rng.randint(3, 6)):
            name = f"{70000 + 10 * trial + i}{'abcdef'[i]}"
            files = [
                (
                    f"{rng.choice(['', 'frames/', 'frames/run1/', 'processed/'])}f{j}.dat",
                    rng.choice(EPN_SIZES),
                )
                for j in range(rng.randint(2, 6))
            ]
            epns[name] = sorted(dict(files).items())
        big = rng.choice(list(epns))  # one EPN big enough to be split in parts
        epns[big] = [*epns[big], ("big/part.raw", 12_000_000)]
        threads = rng.choice([1, 2, 3])
        options = [
            "--threads",
            str(threads),
            "--retry",
            str(rng.choice([0, 1, 2])),
            "--bwlimit",
            rng.choice(["4M", "8M", "16M"]),
            "--stall-timeout",
            "3" if fault == "stall" else "15",
            "--lease",
            "20",
        ]
        if fault == "kill9_worker" or rng.random() < 0.3:
            options.append("--parallel")
        if rng.random() < 0.4:
            options.append("--partial")
        if rng.random() < 0.5:
            options += ["--split-min", "4M", "--streams-per-epn", str(rng.choice([2, 3]))]
        if rng.random() < 0.2:
            options += ["--verify", "checksum"]
        return cls(
            seed=seed,
            trial=trial,
            fault=fault,
            at=round(rng.uniform(0.3, 3.0), 2),
            options=options,
            epns=epns,
            down=round(rng.uniform(1.0, 4.0), 2),
            change=rng.randrange(1000),
            only=only,
        )

    def replay(self) -> str:
        only = f" --fault {self.only}" if self.only else ""
        return (
            f"python tests/chaos/campaign.py --seed {self.seed} --trial {self.trial}{only} --keep"
        )


@dataclass
class Outcome:
    plan: Plan
    violations: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    root: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.violations

    def line(self) -> str:
        state = "ok" if self.ok else "FAILED"
        return (
            f"trial {self.plan.trial} (seed {self.plan.seed}): {self.plan.fault} at "
            f"{self.plan.at} s; {'; '.join(self.notes)}: {state}"
        )

    def report(self) -> str:
        lines = [self.line()]
        lines += [f"  violated: {v}" for v in self.violations]
        lines.append(f"  replay: {self.plan.replay()}")
        lines += [f"  ran: {c}" for c in self.commands]
        if self.root is not None:
            lines.append(f"  files: {self.root}")
        return "\n".join(lines)


# ------------------------------------------------------------------ the trial
class Trial:
    def __init__(self, sshd: Sshd, base: Path, plan: Plan, *, keep: bool = False) -> None:
        self.sshd = sshd
        self.plan = plan
        self.keep = keep
        self.root = base / f"trial-{plan.seed}-{plan.trial}"
        self.src = self.root / "src"
        self.work = self.root / "work"
        self.dest = self.work / "dest"
        self.db = self.work / "files.db"
        self.conf = self.work / "as.yaml"
        self.out = Outcome(plan)
        self.sync_pids: list[int] = []
        self.mutated: dict[str, float] = {}  # EPN -> when the campaign changed its source
        self.mounted = False
        self.stopped: list[int] = []
        self.original: dict[str, dict[str, tuple[Any, ...]]] = {}

    # -------------------------------------------------------------- set-up
    def _make(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        for folder in (self.root, self.src, self.work):
            folder.mkdir(parents=True)
            os.chmod(folder, 0o755)
        self.dest.mkdir()
        rng = random.Random(f"content:{self.plan.seed}:{self.plan.trial}")
        total = 0
        for epn, files in self.plan.epns.items():
            for rel, size in files:
                path = self.src / epn / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(rng.randbytes(size))
                os.utime(path, (FIXED_MTIME, FIXED_MTIME))
                total += size
            (self.src / epn / "empty").mkdir()
            os.symlink("frames", self.src / epn / "link")
        for dirpath, dirnames, _ in os.walk(self.src):
            for d in dirnames:
                os.chmod(os.path.join(dirpath, d), 0o755)
        if self.plan.fault == "enospc":
            size = total * 2 + 8 * 2**20
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(self.dest)], check=True
            )
            self.mounted = True
        import yaml

        values = self.sshd.settings(
            src_prefix=str(self.src),
            dest=str(self.dest),
            db=str(self.db),
            log_file=str(self.work / "asynchy.log"),
            log_level="DEBUG",
        )
        self.conf.write_text(yaml.safe_dump(values))

    def _argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "asynchy", "--config", str(self.conf), "-q", *args]

    def _start(self, *args: str) -> subprocess.Popen[str]:
        argv = self._argv(*args)
        self.out.commands.append(shlex.join(argv[1:]).replace(sys.executable, "python"))
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group, as a job in a terminal
            env={k: v for k, v in os.environ.items() if not k.startswith("ASYNCHY_")},
        )
        self.sync_pids.append(proc.pid)
        return proc

    def _finish(self, proc: subprocess.Popen[str], what: str, killed: bool = False) -> int:
        try:
            _, err = proc.communicate(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            _, err = proc.communicate()
            self.out.violations.append(f"{what} hung for more than {RUN_TIMEOUT:g} s")
        code = proc.returncode
        if "Traceback" in err:
            self.out.violations.append(f"{what} printed a traceback:\n{err[-3000:]}")
        if code not in EXIT_CODES and not (killed and code == -signal.SIGKILL):
            self.out.violations.append(f"{what} exited {code}: {err.strip()[-500:]}")
        return code

    def _run(self, *args: str) -> int:
        return self._finish(self._start(*args), " ".join(args))

    # -------------------------------------------------------------- the fault
    def _descendants(self, pid: int) -> dict[int, bytes]:
        table = processes()
        children: dict[int, list[int]] = {}
        for p, (ppid, _) in table.items():
            children.setdefault(ppid, []).append(p)
        found: dict[int, bytes] = {}
        todo = list(children.get(pid, []))
        while todo:
            p = todo.pop()
            found[p] = table[p][1]
            todo += children.get(p, [])
        return found

    def _wait_for(self, pick: Callable[[], list[int]], proc: subprocess.Popen[str]) -> int | None:
        """A process to hit, from the moment planned on; None if the run ended first."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None:
            found = pick()
            if found:
                return random.Random(self.plan.change).choice(sorted(found))
            time.sleep(0.05)
        return None

    def _kill(self, proc: subprocess.Popen[str], kind: str) -> None:
        def pick() -> list[int]:
            found = self._descendants(proc.pid)
            if kind == "rsync":
                return [p for p, cmd in found.items() if cmd.startswith(b"rsync")]
            if kind == "ssh":
                return [p for p, cmd in found.items() if cmd.split(b"\0")[0].endswith(b"ssh")]
            return [
                p
                for p, cmd in found.items()
                if b"multiprocessing.spawn" in cmd or b"spawn_main" in cmd
            ]

        victim = self._wait_for(pick, proc)
        if victim is None:
            self.out.notes.append(f"no {kind} to kill")
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
        self.out.notes.append(f"killed {kind} {victim}")

    def _server_crash(self) -> None:
        self.sshd.kill_sessions()
        self.sshd.stop()
        time.sleep(self.plan.down)
        self.sshd.restart()
        self.out.notes.append(f"server down {self.plan.down} s")

    def _stall(self, proc: subprocess.Popen[str]) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            sessions = [p for p, cmd in self.sshd.sessions().items() if b"rsync" in cmd]
            if sessions:
                break
            time.sleep(0.05)
        self.stopped = list(self.sshd.sessions())
        for pid in self.stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        self.out.notes.append(f"stopped {len(self.stopped)} server processes")
        time.sleep(5)
        self._resume()

    def _resume(self) -> None:
        for pid in self.stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.stopped = []

    def _fill(self) -> None:
        filler = self.dest / ".filler"
        with contextlib.suppress(OSError), open(filler, "wb") as fh:
            while True:
                fh.write(b"\0" * 2**20)
        self.out.notes.append("dest full")

    def _change_source(self) -> None:
        """Change a file of an EPN that is not complete yet (the change then belongs to its copy)."""
        statuses = dict(_rows(self.db, "SELECT epn, status FROM epns"))
        candidates = [e for e in self.plan.epns if statuses.get(e) != "complete"]
        if not candidates:
            self.out.notes.append("every EPN complete before the change")
            return
        epn = candidates[self.plan.change % len(candidates)]
        files = self.plan.epns[epn]
        rel = files[self.plan.change % len(files)][0]
        path = self.src / epn / rel
        kind = self.plan.fault.removeprefix("source_")
        if kind == "append":
            with open(path, "ab") as fh:
                fh.write(b"appended" * 1000)
        elif kind == "delete":
            path.unlink()
        elif kind == "truncate":
            os.truncate(path, path.stat().st_size // 3)
        else:  # a rewrite of the same size
            size = path.stat().st_size
            path.write_bytes(random.Random(self.plan.change).randbytes(size))
        self.mutated[epn] = time.time()
        self.out.notes.append(f"{kind} {epn}/{rel}")

    def _fault_run(self) -> None:
        plan = self.plan
        proc = self._start("sync", *plan.options)
        second = None
        killed = plan.fault in ("kill9_sync", "kill9_group")
        time.sleep(plan.at)
        if plan.fault == "two_syncs":
            second = self._start("sync", *plan.options)
        elif plan.fault == "kill9_sync":
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        elif plan.fault == "kill9_group":
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        elif plan.fault.startswith("kill9_"):
            self._kill(proc, plan.fault.removeprefix("kill9_"))
        elif plan.fault == "server_crash":
            self._server_crash()
        elif plan.fault == "stall":
            self._stall(proc)
        elif plan.fault == "enospc":
            self._fill()
        elif plan.fault == "ctrl_c":
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)
        elif plan.fault == "sigterm":
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
        else:
            self._change_source()
        code = self._finish(proc, "the sync under fault", killed=killed)
        self.out.notes.append(f"sync exit {code}")
        if second is not None:
            self.out.notes.append(f"second sync exit {self._finish(second, 'the second sync')}")

    # -------------------------------------------------------------- the invariants
    def _check(self, when: str, *, final: bool) -> None:
        v = self.out.violations
        integrity = _rows(self.db, "PRAGMA integrity_check")
        if integrity != [("ok",)]:
            v.append(f"{when}: integrity_check says {integrity}")
        charged = _rows(
            self.db,
            "SELECT epn, status, failures, last_error FROM epns "
            "WHERE failures > 0 OR status IN ('failed', 'quarantined')",
        )
        if charged:
            v.append(f"{when}: charged for a fault that is not the EPN's: {charged}")
        done = _rows(
            self.db,
            "SELECT e.epn, max(t.finished_at) FROM epns e LEFT JOIN transfers t "
            "ON t.epn = e.epn AND t.outcome = 'complete' WHERE e.status = 'complete' GROUP BY e.epn",
        )
        for epn, finished in done:
            differences = _differences(self.src / epn, self.dest / epn, self.original.get(epn, {}))
            if not differences:
                wrong = _fixity_errors(self.db, epn, self.dest / epn)
                if wrong:
                    v.append(f"{when}: {epn} is complete but its checksums are wrong: {wrong[:5]}")
                continue
            if not final and epn in self.mutated and _before(finished, self.mutated[epn]):
                continue  # complete before the campaign changed its source: walk --refresh sees it
            v.append(f"{when}: {epn} is complete but differs from its source: {differences[:5]}")
        if final:
            left = _rows(self.db, "SELECT epn, status FROM epns WHERE status != 'complete'")
            if left:
                v.append(f"not every EPN complete after {CLEAN_RUNS} clean runs: {left}")
            temp = [p for p in self.dest.rglob(".asynchy-tmp") if any(p.iterdir())]
            if temp and not left:
                leftovers = [str(x.relative_to(self.dest)) for t in temp for x in t.iterdir()]
                v.append(f".asynchy-tmp not empty after completion: {leftovers[:10]}")
        allowed = {"dest", "files.db", "files.db-wal", "files.db-shm", "as.yaml", "asynchy.log"}
        extra = sorted(p.name for p in self.work.iterdir() if p.name not in allowed)
        if extra:
            v.append(f"{when}: written outside dest: {extra}")

    def _left_over(self) -> list[str]:
        """Processes of this trial still running: anything naming its folder, or an ssh master of
        one of its syncs."""
        mine = str(self.root).encode()
        masters = [f"asynchy-ssh-{pid}-".encode() for pid in self.sync_pids]
        server = set(self.sshd.sessions()) if self.sshd.proc is not None else set()
        found = []
        for pid, (_ppid, cmd) in processes().items():
            if pid == os.getpid() or pid in server:  # the server's own processes are not ours
                continue
            if mine in cmd or any(m in cmd for m in masters):
                shown = cmd.replace(b"\0", b" ").decode(errors="replace")[:200]
                found.append(f"{pid}: {shown}")
        return found

    def _wait_gone(self, what: Callable[[], list[str]], timeout: float = 10) -> list[str]:
        deadline = time.monotonic() + timeout
        left = what()
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = what()
        return left

    # -------------------------------------------------------------- the whole trial
    def run(self) -> Outcome:
        try:
            self._make()
            if self._run("walk") != 0:
                self.out.violations.append("the first walk failed")
                return self.out
            before = _snapshot(self.src)
            self.original = {
                epn: _snapshot(self.src / epn) for epn in self.plan.epns
            }  # what a file deleted from the source was: sync never deletes (docs/sync.md)
            self._fault_run()
            self._after_fault(before)
            self._clean_runs()
        except Exception as exc:  # the campaign's own trouble is a failed trial, with its cause
            import traceback

            self.out.violations.append(f"campaign error: {exc}\n{traceback.format_exc()}")
        finally:
            self._resume()
            if self.sshd.proc is None:
                self.sshd.restart()
            self._tidy()
        return self.out

    def _after_fault(self, before: dict[str, tuple[Any, ...]]) -> None:
        if self.plan.fault == "enospc":
            (self.dest / ".filler").unlink(missing_ok=True)
        self._check("after the fault", final=False)
        now = _snapshot(self.src)
        changed = {
            p
            for p in set(before) | set(now)
            if before.get(p) != now.get(p) and p.split("/", 1)[0] not in self.mutated
        }
        if changed:
            self.out.violations.append(f"the source changed under asynchy: {sorted(changed)[:5]}")

    def _clean_runs(self) -> None:
        before = _snapshot(self.src)
        self._run("walk", "--refresh")
        runs = 0
        for _ in range(CLEAN_RUNS):
            runs += 1
            self._run("sync", "--threads", "2", "--retry", "1")
            if not _rows(self.db, "SELECT 1 FROM epns WHERE status != 'complete'"):
                break
        self.out.notes.append(f"complete after {runs} clean run{'s' if runs > 1 else ''}")
        left = self._wait_gone(self._left_over)
        if left:
            self.out.violations.append(f"processes left: {left[:5]}")
        self._check("at the end", final=True)
        if _snapshot(self.src) != before:
            self.out.violations.append("the source changed during the clean runs")

    def _tidy(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.dest)], check=False)
        self.out.root = self.root if (self.keep or not self.out.ok) else None
        if self.out.root is None:
            shutil.rmtree(self.root, ignore_errors=True)


# ------------------------------------------------------------------ helpers
def _rows(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
        return conn.execute(sql, params).fetchall()


def _fixity_errors(db: Path, epn: str, copy: Path) -> list[str]:
    """Fixity (docs/fixity.md): a complete EPN's regular files each have a current source
    checksum on record, and it is the checksum of the file's content (the copy: equal to the
    source when this is asked)."""
    import xxhash

    from asynchy.names import decode_name

    wrong = []
    for path, algo, value in _rows(
        db,
        "SELECT f.path, c.algo, c.value FROM files f LEFT JOIN checksums c ON c.epn = f.epn "
        "AND c.path = f.path AND c.size = f.size AND c.modified = f.modified "
        "WHERE f.epn = ? AND f.kind = 'file'",
        epn,
    ):
        if value is None:
            wrong.append(f"{path}: no checksum on record")
            continue
        data = (copy / os.fsdecode(decode_name(path))).read_bytes()
        actual = (
            xxhash.xxh3_128_hexdigest(data) if algo == "xxh128" else hashlib.md5(data).hexdigest()
        )
        if actual != value:
            wrong.append(f"{path}: {algo} {value} on record, the file's is {actual}")
    return wrong


def _before(finished: str | None, when: float) -> bool:
    """Was a completion (stored UTC, whole seconds) recorded before ``when`` (or in its second)?"""
    if finished is None:
        return False
    at = datetime.fromisoformat(finished).replace(tzinfo=UTC).timestamp()
    return at <= when


def _snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under root: kind, size, mtime and a hash of files; symlink targets."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            if os.path.islink(path):
                out[rel] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                out[rel] = ("dir",)
            else:
                with open(path, "rb") as fh:
                    digest = hashlib.sha256(fh.read()).hexdigest()
                out[rel] = ("file", st.st_size, int(st.st_mtime), digest)
    return out


def _differences(src: Path, copy: Path, original: dict[str, tuple[Any, ...]]) -> list[str]:
    """How the copy differs from the source.  A file the source no longer has may stay in the
    copy as it was (sync never deletes, docs/sync.md)."""
    if not copy.is_dir():
        return ["no copy at all"]
    a, b = _snapshot(src), _snapshot(copy)
    return [
        f"{p}: source {a.get(p)!r:.80} copy {b.get(p)!r:.80}"
        for p in sorted(set(a) | set(b))
        if a.get(p) != b.get(p) and not (p not in a and b.get(p) == original.get(p))
    ]


@contextlib.contextmanager
def server(base: Path) -> Iterator[Sshd]:
    sshd = Sshd(base / "sshd").start()
    try:
        yield sshd
    finally:
        sshd.stop()


def usable_faults() -> tuple[str, ...]:
    """Every fault; the full disk needs root (it mounts a small tmpfs)."""
    return FAULTS if os.geteuid() == 0 else tuple(f for f in FAULTS if f != "enospc")


def campaign(
    seed: int,
    trials: list[int],
    *,
    faults: tuple[str, ...] | None = None,
    keep: bool = False,
    on_trial: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    base = Path(tempfile.mkdtemp(prefix="asynchy-chaos-"))
    os.chmod(base, 0o755)
    outcomes = []
    try:
        with server(base) as sshd:
            for n in trials:
                plan = Plan.draw(seed, n, faults or usable_faults())
                outcome = Trial(sshd, base, plan, keep=keep).run()
                outcomes.append(outcome)
                if on_trial is not None:
                    on_trial(outcome)
    finally:
        if not any(o.root for o in outcomes):
            shutil.rmtree(base, ignore_errors=True)
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--trial", type=int, action="append", help="run just this trial (replay)")
    parser.add_argument("--fault", choices=FAULTS, help="only this fault (every trial)")
    parser.add_argument("--keep", action="store_true", help="keep every trial's files")
    args = parser.parse_args()
    trials = args.trial or list(range(args.trials))
    print(f"asynchy chaos campaign: seed {args.seed}, {len(trials)} trials", flush=True)
    started = time.monotonic()

    def show(outcome: Outcome) -> None:
        print(outcome.line() if outcome.ok else outcome.report(), flush=True)

    faults = (args.fault,) if args.fault else None
    outcomes = campaign(args.seed, trials, faults=faults, keep=args.keep, on_trial=show)
    failed = [o for o in outcomes if not o.ok]
    print(
        f"{len(outcomes) - len(failed)} of {len(outcomes)} trials held every invariant "
        f"in {time.monotonic() - started:.0f} s (seed {args.seed})"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
