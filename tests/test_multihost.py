"""Several data-mover hosts on one PostgreSQL database: claims, leases, crashes (issue #7).

Each "host" is an `asynchy` process in its own UTS namespace with its own host
name (unshare), against the real PostgreSQL server and the real sshd.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import move_clock
from sqlalchemy import create_engine, text
from sshd import Sshd
from test_sync import big_epns, rsyncs_into, tree_digest, wait_until
from trees import build_epns


def on_host(name: str, argv: list[str]) -> list[str]:
    """argv run with its own host name (root: unshare --uts; otherwise in a user namespace)."""
    flags = ["--uts"] if os.geteuid() == 0 else ["--user", "--map-root-user", "--uts"]
    return ["unshare", *flags, "sh", "-c", 'hostname "$0" && exec "$@"', name, *argv]


@pytest.fixture
def cluster(
    sshd: Sshd, served: Path, tmp_path: Path, pg_url: str, write_config: Any
) -> dict[str, Any]:
    """A config for hosts sharing one PostgreSQL database; rsync wrapped to count transfer runs."""
    dest = tmp_path / "vault"
    dest.mkdir()
    runs = tmp_path / "rsync-runs.log"
    wrapper = tmp_path / "rsync-counting"
    wrapper.write_text(
        f'#!/bin/sh\ncase "$*" in *--stats*) echo "$(hostname) $$" >> {runs};; esac\nexec rsync "$@"\n'
    )
    wrapper.chmod(0o755)
    conf = write_config(
        sshd.settings(src_prefix=str(served), db=pg_url, dest=str(dest), rsync=str(wrapper))
    )
    return {"conf": conf, "db": pg_url, "dest": dest, "src": served, "runs": runs, "tmp": tmp_path}


def asynchy(c: dict[str, Any], host: str, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCHY_")}
    argv = [sys.executable, "-m", "asynchy", "--config", str(c["conf"]), *args]
    return subprocess.Popen(
        on_host(host, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def run(c: dict[str, Any], host: str, *args: str, timeout: float = 180) -> tuple[int, str, str]:
    proc = asynchy(c, host, *args)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def query(c: dict[str, Any], sql: str) -> list[tuple[Any, ...]]:
    engine = create_engine(c["db"])
    with engine.connect() as conn:
        got = [tuple(r) for r in conn.execute(text(sql))]
    engine.dispose()
    return got


def test_three_hosts_walk_shards_at_once_into_one_database(
    cluster: dict[str, Any], tmp_path: Path, cli: Any
) -> None:
    build_epns(cluster["src"], 30, 20, subdirs=2)
    procs = [asynchy(cluster, f"walker{k}", "walk", "--shard", f"{k}/3") for k in (1, 2, 3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert query(cluster, "SELECT count(*), count(DISTINCT host) FROM walks") == [(3, 3)]
    reference = tmp_path / "reference.db"
    assert (
        cli(
            "--db", str(reference), "--host", "local", "walk", "--src-prefix", str(cluster["src"])
        ).exit_code
        == 0
    )
    import sqlite3

    with sqlite3.connect(reference) as con:
        want = sorted(con.execute("SELECT epn, path, size, kind FROM files"))
    assert sorted(query(cluster, "SELECT epn, path, size, kind FROM files")) == want
    assert query(cluster, "SELECT count(*), sum(file_count) FROM epns") == [(30, 600)]


def test_three_hosts_sync_each_epn_exactly_once(cluster: dict[str, Any]) -> None:
    build_epns(cluster["src"], 30, 4, size=50_000)
    assert run(cluster, "walker", "walk")[0] == 0
    procs = [
        asynchy(cluster, f"mover{k}", "sync", "--threads", "2", "--bwlimit", "5000")
        for k in (1, 2, 3)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert query(cluster, "SELECT status, count(*) FROM epns GROUP BY status") == [("complete", 30)]
    per_epn = query(cluster, "SELECT epn, count(*) FROM transfers GROUP BY epn")
    assert len(per_epn) == 30 and {n for _, n in per_epn} == {1}
    rsync_runs = cluster["runs"].read_text().splitlines()
    assert len(rsync_runs) == 30  # one transfer rsync per EPN, over all hosts
    hosts = {line.split()[0] for line in rsync_runs}
    assert hosts <= {"mover1", "mover2", "mover3"}
    assert query(cluster, "SELECT count(DISTINCT worker_id), count(DISTINCT host) FROM transfers")[
        0
    ][1] == len(hosts)
    assert tree_digest(cluster["dest"]) == tree_digest(cluster["src"])


def _stop_group(proc_pid: int, rsync_pid: int, sig: int) -> None:
    os.kill(proc_pid, sig)
    os.killpg(rsync_pid, sig)  # rsync leads its own process group (its ssh, its receiver)


def test_paused_worker_loses_its_claim_and_its_late_result_is_refused(
    cluster: dict[str, Any],
) -> None:
    big_epns(cluster["src"], ["80000a"], mib=6)
    assert run(cluster, "walker", "walk")[0] == 0
    slow = asynchy(cluster, "moverA", "sync", "--lease", "3", "--bwlimit", "1000")
    wait_until(lambda: bool(rsyncs_into(cluster["dest"])), what="rsync on host A")
    rsync_pid = rsyncs_into(cluster["dest"])[0]
    python_pid = int(Path(f"/proc/{rsync_pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    _stop_group(
        python_pid, rsync_pid, signal.SIGSTOP
    )  # host A freezes (a VM pause, a long GC, a partition)
    try:
        move_clock(cluster["db"], 60)  # the database's clock passes host A's lease
        code, out, err = run(cluster, "moverB", "sync", "--lease", "3", "--json")
        assert code == 0, out + err
        assert json.loads(out)["complete"] == ["80000a"]
    finally:
        _stop_group(
            python_pid, rsync_pid, signal.SIGCONT
        )  # host A wakes up and finishes what it was doing
    out, err = slow.communicate(timeout=120)
    assert "another worker took this EPN over" in out
    assert query(cluster, "SELECT status, claim_owner FROM epns") == [("complete", None)]
    outcomes = query(cluster, "SELECT host, outcome, claim_token FROM transfers ORDER BY id")
    assert sorted(o for _, o, _ in outcomes) == ["complete", "superseded"]
    assert [h for h, o, _ in outcomes if o == "complete"] == ["moverB"]
    assert [h for h, o, _ in outcomes if o == "superseded"] == ["moverA"]
    assert tree_digest(cluster["dest"] / "80000a") == tree_digest(cluster["src"] / "80000a")


def test_killed_worker_is_finished_by_another_host_after_its_lease(cluster: dict[str, Any]) -> None:
    big_epns(cluster["src"], ["81000a"], mib=6)
    assert run(cluster, "walker", "walk")[0] == 0
    doomed = asynchy(cluster, "moverA", "sync", "--lease", "600", "--bwlimit", "1000")
    wait_until(lambda: bool(rsyncs_into(cluster["dest"])), what="rsync on host A")
    rsync_pid = rsyncs_into(cluster["dest"])[0]
    python_pid = int(Path(f"/proc/{rsync_pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    os.kill(python_pid, signal.SIGKILL)
    doomed.communicate(timeout=30)
    wait_until(
        lambda: not rsyncs_into(cluster["dest"]), timeout=10, what="host A's rsync to die with it"
    )
    # At once, host B may not take it: host A's lease still runs (B cannot know that A is dead).
    code, out, _ = run(cluster, "moverB", "sync", "--json")
    assert code == 0 and json.loads(out)["selected"] == 0
    code, out, _ = run(cluster, "moverB", "workers")
    assert "moverA:" in out
    move_clock(cluster["db"], 601)  # the database's clock passes host A's lease
    code, out, err = run(cluster, "moverB", "sync", "--json")
    assert code == 0, out + err
    assert json.loads(out)["complete"] == ["81000a"]
    assert query(cluster, "SELECT status FROM epns") == [("complete",)]
    assert query(cluster, "SELECT host, outcome FROM transfers") == [("moverB", "complete")]
    assert tree_digest(cluster["dest"] / "81000a") == tree_digest(cluster["src"] / "81000a")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_workers_and_release_stale(
    cli: Any, tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    from asynchy import claims, workers
    from asynchy.db import open_database

    setting = str(tmp_path / "w.db") if backend == "sqlite" else request.getfixturevalue("pg_url")
    src = tmp_path / "src"
    build_epns(src, 3, 1)
    assert cli("--db", setting, "--host", "local", "walk", "--src-prefix", str(src)).exit_code == 0
    db = open_database(setting)
    gone = workers.register_worker(db, "sync", lease=60)
    alive = workers.register_worker(db, "sync", lease=600)
    claims.claim(db, gone, ["20000a", "20001b"], 2, order="ASC", max_attempts=5, lease=60)
    claims.claim(db, alive, ["20002c"], 1, order="ASC", max_attempts=5, lease=600)
    db.close()
    move_clock(setting, 120, owner=gone.worker_id)  # its heartbeat and leases are two minutes old
    result = cli("--db", setting, "workers")
    assert result.exit_code == 0
    assert (
        f"{gone.worker_id}  " in result.stdout
        and "stale" in result.stdout
        and "expired" in result.stdout
    )
    data = json.loads(cli("--db", setting, "workers", "--json").stdout)
    by_id = {w["worker_id"]: w for w in data}
    assert by_id[gone.worker_id]["status"] == "stale" and len(by_id[gone.worker_id]["claims"]) == 2
    assert (
        by_id[alive.worker_id]["status"] == "running"
        and by_id[alive.worker_id]["claims"][0]["epn"] == "20002c"
    )
    result = cli("--db", setting, "release", "--stale")
    assert result.stdout.splitlines() == [
        "released 2 claims: 20000a, 20001b",
        f"marked 1 worker dead: {gone.worker_id}",
    ]
    data = json.loads(cli("--db", setting, "status", "--json").stdout)
    assert data["epns"]["by_status"]["pending"]["epns"] == 2
    assert [c["epn"] for c in data["active_claims"]] == ["20002c"]
    assert cli("--db", setting, "release").exit_code == 2
