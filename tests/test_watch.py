"""`asynchy watch` end to end: cycles against the real sshd with the real rsync, settling,
one watch per database (SQLite and PostgreSQL), signals, failures that skip a cycle."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import FIXED_MTIME, rows, write_file
from sshd import Sshd
from test_sync import big_epns, rsyncs_into, tree_digest, wait_until


@pytest.fixture
def env(sshd: Sshd, served: Path, tmp_path: Path, write_config: Any) -> dict[str, Any]:
    dest = tmp_path / "vault"
    dest.mkdir()
    db = tmp_path / "files.db"
    values = sshd.settings(src_prefix=str(served), db=str(db), dest=str(dest))
    return {"conf": write_config(values), "values": values, "db": db, "dest": dest, "src": served}


class Watch:
    """`asynchy watch` in its own process; its stdout lines (one per cycle) arrive in a queue."""

    def __init__(self, conf: Path, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCHY_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "asynchy", "--config", str(conf), "watch", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        assert self.proc.stdout is not None
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.put(line)

    def cycle(self, timeout: float = 60) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            self.proc.kill()
            raise AssertionError(
                "no cycle line: " + (self.proc.stderr.read() if self.proc.stderr else "")
            ) from None
        return json.loads(line)

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        self.proc.send_signal(sig)
        self.proc.wait(timeout=60)
        return self.proc.returncode, self.proc.stderr.read() if self.proc.stderr else ""


def set_mtime(root: Path, when: float) -> None:
    for path in root.rglob("*"):
        os.utime(path, (when, when))


def test_two_cycles_a_growing_epn_is_copied_once_it_has_settled(env: dict[str, Any]) -> None:
    src, dest = env["src"], env["dest"]
    for i in range(3):
        write_file(src / "50000a" / f"run1/img_{i}.cbf", b"old experiment %d" % i)
    now = time.time()
    for i in range(2):  # the experiment running now: its newest file is 10 s old
        write_file(src / "50001b" / f"img_{i}.cbf", b"being written %d" % i, mtime=now - 10)
    watch = Watch(env["conf"], "--every", "8s", "--settle", "60s", "--json")
    try:
        first = watch.cycle()
        assert (first["cycle"], first["walked"], first["new"], first["complete"]) == (1, 2, 2, 1)
        assert first["waiting_to_settle"] == 1 and first["problems"] == []
        assert tree_digest(dest / "50000a") == tree_digest(src / "50000a")
        assert not (dest / "50001b").exists()  # not copied half-way
        assert dict(rows(env["db"], "SELECT epn, status FROM epns")) == {
            "50000a": "complete",
            "50001b": "pending",
        }
        # Before the next cycle: the experiment writes its last file and ends (two minutes ago, say),
        # and a file is added to the old one, which was already copied.
        write_file(src / "50001b" / "img_2.cbf", b"the last frame")
        set_mtime(src / "50001b", time.time() - 120)
        write_file(src / "50000a" / "late-notes.txt", b"added after the copy")
        second = watch.cycle()
        assert (
            second["cycle"],
            second["complete"],
            second["changed"],
            second["waiting_to_settle"],
        ) == (2, 2, 2, 0)
        for epn in ("50000a", "50001b"):
            assert tree_digest(dest / epn) == tree_digest(src / epn)
        assert dict(rows(env["db"], "SELECT epn, status FROM epns")) == {
            "50000a": "complete",
            "50001b": "complete",
        }
        assert rows(env["db"], "SELECT epn, count(*) FROM transfers GROUP BY epn ORDER BY epn") == [
            ("50000a", 2),
            ("50001b", 1),
        ]
        assert rows(env["db"], "SELECT file_count FROM epns WHERE epn = '50001b'") == [(3,)]
    finally:
        code, stderr = watch.stop()  # while it sleeps
    assert code == 130, stderr
    assert "Traceback" not in stderr
    assert rows(env["db"], "SELECT DISTINCT status FROM workers") == [("finished",)]


def test_sigterm_during_a_transfer_ends_the_cycle_cleanly(env: dict[str, Any]) -> None:
    big_epns(env["src"], ["51000a", "51001b"])
    watch = Watch(env["conf"], "--every", "1h", "--bwlimit", "1000", "--threads", "2")
    wait_until(lambda: len(rsyncs_into(env["dest"])) >= 2, what="rsync to start")
    code, stderr = watch.stop()
    assert code == 130, stderr
    line = watch.lines.get(timeout=5)
    assert (
        line.startswith("watch cycle 1: walked 2 EPNs (2 new, 0 changed)")
        and "; interrupted" in line
    )
    wait_until(lambda: not rsyncs_into(env["dest"]), timeout=10, what="rsyncs to stop")
    assert rows(env["db"], "SELECT DISTINCT status FROM epns") == [
        ("pending",)
    ]  # claims given back
    assert rows(env["db"], "SELECT status FROM workers") == [("interrupted",)]


def test_one_watch_per_database(cli: Any, env: dict[str, Any]) -> None:
    (env["src"] / "52000a").mkdir()
    watch = Watch(env["conf"], "--every", "1h", "--json")
    try:
        watch.cycle()
        second = cli("--config", str(env["conf"]), "watch", "--once")
        assert second.exit_code == 1
        assert second.stderr.strip().startswith(
            f"Error: another asynchy watch (pid {watch.proc.pid} on {socket.gethostname()}, since "
        )
        assert second.stderr.strip().endswith(
            f"is using {env['db']}: stop it first, or leave this one out"
        )
    finally:
        code, _ = watch.stop(signal.SIGINT)
    assert code == 130
    # The lock went with the process: the next watch runs.
    again = cli("--config", str(env["conf"]), "watch", "--once")
    assert again.exit_code == 0, again.stderr


def test_one_watch_per_postgresql_database(
    cli: Any, pg_url: str, tmp_path: Path, write_config: Any
) -> None:
    src = tmp_path / "src"
    write_file(src / "53000a" / "x.cbf", b"x")
    (tmp_path / "vault").mkdir()
    conf = write_config(
        {"host": "local", "src_prefix": str(src), "dest": str(tmp_path / "vault"), "db": pg_url}
    )
    watch = Watch(conf, "--every", "1h", "--json")
    try:
        assert watch.cycle()["complete"] == 1
        second = cli("--config", str(conf), "watch", "--once")
        assert second.exit_code == 1
        assert (
            f"another asynchy watch (pid {watch.proc.pid} on {socket.gethostname()}, since "
            in second.stderr
        )
    finally:
        code, _ = watch.stop()
    assert code == 130
    assert cli("--config", str(conf), "watch", "--once").exit_code == 0


def test_an_unreachable_server_skips_the_cycle_without_burning_attempts(
    cli: Any, env: dict[str, Any], write_config: Any
) -> None:
    write_file(env["src"] / "54000a" / "x.cbf", b"x")
    assert cli("--config", str(env["conf"]), "walk").exit_code == 0
    with socket.socket() as probe:  # a port where nobody listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    down = write_config({**env["values"], "port": port, "timeout": 3}, name="down.yaml")
    result = cli("--config", str(down), "watch", "--once")
    assert result.exit_code == 1
    assert "; problems: walk: " in result.stdout and "no alert or sync this cycle" in result.stderr
    assert rows(env["db"], "SELECT status, attempts, failures FROM epns") == [("pending", 0, 0)]
    assert rows(env["db"], "SELECT count(*) FROM transfers") == [(0,)]


def test_configuration_mistakes_stop_the_watch_at_once(
    cli: Any, env: dict[str, Any], write_config: Any, tmp_path: Path
) -> None:
    (env["src"] / "55000a").mkdir()
    no_dest = write_config({**env["values"], "dest": str(tmp_path / "missing")}, name="nodest.yaml")
    result = cli("--config", str(no_dest), "watch")
    assert result.exit_code == 2
    assert (
        result.stderr.strip()
        == f"Error: dest {tmp_path / 'missing'} is not an existing folder: create it or fix dest"
    )
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "alert.txt.j2").write_text("{% if %}")
    broken = write_config(
        {**env["values"], "alert_to": ["ops@site.example"], "alert_templates": str(templates)},
        name="tpl.yaml",
    )
    result = cli("--config", str(broken), "watch")
    assert result.exit_code == 2
    assert f"alert template {templates / 'alert.txt.j2'} line 1:" in result.stderr
    assert rows(env["db"], "SELECT count(*) FROM walks") == [(1,)]  # only the first config's walk
    bad_every = cli("--config", str(env["conf"]), "watch", "--every", "soon")
    assert bad_every.exit_code == 2
    assert (
        "Invalid value for '--every': 'soon' must be a duration such as 90s, 30m, 1h or 2d"
        in bad_every.stderr
    )


def test_sync_settle_leaves_young_epns_for_later(
    cli: Any, tmp_path: Path, write_config: Any
) -> None:
    src = tmp_path / "src"
    write_file(src / "56000a" / "old.cbf", b"old", mtime=FIXED_MTIME)
    write_file(src / "56001b" / "new.cbf", b"new", mtime=time.time() - 30)
    (src / "56002c").mkdir()  # empty: settles an hour after it was first seen
    (tmp_path / "vault").mkdir()
    conf = write_config(
        {
            "host": "local",
            "src_prefix": str(src),
            "dest": str(tmp_path / "vault"),
            "db": str(tmp_path / "f.db"),
        }
    )
    assert cli("--config", str(conf), "walk").exit_code == 0
    result = cli("--config", str(conf), "sync", "--settle", "10m", "--json")
    assert json.loads(result.stdout)["complete"] == ["56000a"]
    explicit = cli("--config", str(conf), "sync", "--settle", "10m", "--epn", "56001b", "--json")
    assert json.loads(explicit.stdout)["skipped"] == {
        "56001b": "still being written (its newest file is younger than --settle)"
    }
    assert sorted(json.loads(cli("--config", str(conf), "sync", "--json").stdout)["complete"]) == [
        "56001b",
        "56002c",
    ]


def test_a_locked_database_costs_one_cycle_not_the_watch(
    cli: Any, env: dict[str, Any], write_config: Any
) -> None:
    """failures.md, database faults: the watch logs the error and tries again next cycle."""
    import sqlite3

    write_file(env["src"] / "57000a" / "x.cbf", b"x")
    conf = write_config({**env["values"], "db_timeout": 1}, name="locked.yaml")
    assert cli("--config", str(conf), "walk").exit_code == 0
    holder = sqlite3.connect(env["db"], isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # someone holds the write lock during the first cycle
    watch = Watch(conf, "--every", "4s", "--settle", "1s", "--json")
    try:
        first = watch.cycle()
        holder.execute("ROLLBACK")
        holder.close()
        assert first["complete"] == 0
        assert any("was locked for 1 s by another process" in p for p in first["problems"])
        second = watch.cycle()
        assert (second["cycle"], second["complete"], second["problems"]) == (2, 1, [])
    finally:
        code, stderr = watch.stop()
    assert code == 130, stderr
    assert "Traceback" not in stderr
    assert rows(env["db"], "SELECT status, failures FROM epns") == [("complete", 0)]


def test_the_metrics_file_stays_fresh_through_a_server_outage(
    served_base: Path, served: Path, tmp_path: Path, write_config: Any
) -> None:
    """docs/operations.md: every cycle rewrites the metrics file, with its outcome; it was written
    only at the end of a sync run, so a cycle whose walk failed (server down) left it stale."""
    from prometheus_client.parser import text_string_to_metric_families

    server = Sshd(served_base / f"watch-metrics-{tmp_path.name}").start()
    try:
        write_file(served / "57000a" / "x.cbf", b"x")
        (tmp_path / "vault").mkdir()
        metrics = tmp_path / "asynchy.prom"
        values = server.settings(
            src_prefix=str(served), db=str(tmp_path / "f.db"), dest=str(tmp_path / "vault"),
            metrics_file=str(metrics), timeout=3,
        )  # fmt: skip
        watch = Watch(write_config(values), "--every", "1s", "--settle", "0s", "--json")

        def read() -> dict[str, Any]:
            families = {f.name: f for f in text_string_to_metric_families(metrics.read_text())}
            failed = {
                s.labels["class"]: s.value
                for s in families["asynchy_watch_failed_cycles"].samples
                if s.name.endswith("_total")
            }
            return {
                "ok": families["asynchy_watch_last_cycle_ok"].samples[0].value,
                "cycles": families["asynchy_watch_cycles"].samples[0].value,
                "written": families["asynchy_metrics_written_timestamp_seconds"].samples[0].value,
                "failed": failed,
                "complete": {s.labels["status"]: s.value for s in families["asynchy_epns"].samples}[
                    "complete"
                ],
            }

        first = watch.cycle()
        assert first["complete"] == 1, first
        assert read()["ok"] == 1 and read()["complete"] == 1
        server.stop()
        down = watch.cycle()
        while not down["problems"]:
            down = watch.cycle()
        now = time.time()
        during = read()
        assert during["ok"] == 0, during
        assert during["failed"]["link"] >= 1 and during["failed"]["setup"] == 0
        assert during["cycles"] == down["cycle"]
        assert now - during["written"] < 5  # fresh: written by this very cycle
        again = watch.cycle()
        assert read()["failed"]["link"] >= during["failed"]["link"] + 1
        assert again["cycle"] == down["cycle"] + 1
        server.restart()
        back = watch.cycle()
        while back["problems"]:
            back = watch.cycle()
        assert read()["ok"] == 1
        code, _ = watch.stop()
        assert code == 130
    finally:
        server.stop()


def _rsync_anywhere_into(dest: Path) -> list[int]:
    """Every rsync process (a receiver's forked child too) working for a copy into dest."""
    from helpers import works_in
    from sshd import processes

    return [
        pid
        for pid, (_ppid, cmd) in processes().items()
        if b"rsync" in cmd and pid != os.getpid() and works_in(pid, cmd, dest)
    ]


def test_sigterm_leaves_no_rsync_behind_and_says_sigterm(env: dict[str, Any]) -> None:
    """After SIGTERM, rsync's receiver child outlived the watch by about 0.5 s, and the stop line
    of a sync said "Ctrl+C again" to someone who sent SIGTERM."""
    big_epns(env["src"], ["58000a", "58001b"])
    watch = Watch(env["conf"], "--every", "1h", "--bwlimit", "1000", "--threads", "2")
    wait_until(lambda: len(_rsync_anywhere_into(env["dest"])) >= 3, what="rsyncs and a receiver")
    code, _stderr = watch.stop()
    assert code == 130
    assert _rsync_anywhere_into(env["dest"]) == []  # at once, not a moment later
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "asynchy",
            "--config",
            str(env["conf"]),
            "sync",
            "--bwlimit",
            "1000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("ASYNCHY_")},
    )
    wait_until(lambda: len(_rsync_anywhere_into(env["dest"])) >= 2, what="rsync to start")
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "(send SIGTERM again to exit at once)" in err and "Ctrl+C" not in err
    assert _rsync_anywhere_into(env["dest"]) == []


def test_quiet_cycles_fold_into_one_row_and_old_walks_go(
    cli: Any, env: dict[str, Any], write_config: Any
) -> None:
    """A watch every 5 s added a walks and a workers row per cycle for ever (17k a day each):
    quiet cycles now replace the previous quiet cycle's rows, and walks older than
    history_days that no EPN refers to are deleted."""
    write_file(env["src"] / "59000a" / "x.cbf", b"x", FIXED_MTIME)
    assert cli("--config", str(env["conf"]), "walk").exit_code == 0
    assert cli("--config", str(env["conf"]), "sync").exit_code == 0
    assert cli("--config", str(env["conf"]), "walk", "--refresh").exit_code == 0  # a walk row
    with contextlib.closing(sqlite3.connect(env["db"])) as conn, conn:  # 100 days old, unreferenced
        conn.execute("UPDATE walks SET started_at = datetime('now', '-100 days') WHERE id = 1")
    watch = Watch(env["conf"], "--every", "1s", "--json")
    cycles = [watch.cycle() for _ in range(5)]
    code, _ = watch.stop()
    assert code == 130
    assert all(not c["problems"] for c in cycles), cycles
    walks = rows(env["db"], "SELECT id FROM walks ORDER BY id")
    workers = rows(env["db"], "SELECT worker_id FROM workers")
    assert (1,) not in walks  # older than 90 days, referenced by no EPN
    assert len(walks) <= 3, walks  # the refresh walk, and the newest quiet cycle (and one more)
    assert len(workers) <= 3, workers  # the sync that copied, and the newest quiet cycle
    status = json.loads(cli("--config", str(env["conf"]), "status", "--json").stdout)
    assert status["last_walk"]["status"] == "complete"
