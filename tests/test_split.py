"""Filling the link (docs/sync.md): a big EPN copied in parts, each its own rsync over its own ssh
connection, one verdict per EPN, the largest work first, and a bandwidth budget for the host.

Real sshd and rsync; big files are sparse on the source (cheap to make, real bytes on the wire).
"""

from __future__ import annotations

import json
import os
import re
import signal
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from helpers import FIXED_MTIME, rows, rsync_processes, write_file
from test_sync import env as env
from test_sync import own_server as own_server
from test_sync import (
    spawn_sync,
    statuses,
    sync,
    tree_digest,
    wait_until,
    walk,
)

from asynchy.errors import ConfigError
from asynchy.schedule import Bandwidth, part_count, share, split_files

MiB = 2**20
DAYS_MON_FRI = ("Mon", "Tue", "Wed", "Thu", "Fri")
SPLIT = ("--threads", "4", "--split-min", "1M")


def big_epn(src: Path, name: str = "60000a", files: int = 8, mib: int = 2) -> None:
    for i in range(files):
        path = src / name / f"d{i % 2}" / f"f{i}.raw"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            fh.truncate(mib * MiB)
        os.utime(path, (FIXED_MTIME, FIXED_MTIME))
    (src / name / "empty-folder").mkdir()
    write_file(src / name / "notes.txt", b"notes")


def part_rsyncs(dest: Path) -> dict[int, bytes]:
    """rsync processes copying a part into dest (one per part): pid -> command line."""
    return {pid: c for pid, c in rsync_processes(dest).items() if re.search(rb"\.p\d+\x00", c)}


def control_path(cmd: bytes) -> bytes:
    m = re.search(rb"ControlPath=(\S+)", cmd)
    assert m, cmd
    return m.group(1)


def test_a_big_epn_is_copied_in_parts_each_over_its_own_connection(
    cli: Any, env: dict[str, Path]
) -> None:
    big_epn(env["src"])
    write_file(env["src"] / "60001b" / "small", b"s")
    walk(cli, env)
    proc = spawn_sync(env, *SPLIT, "--bwlimit", "4M")  # 1 MiB/s for each of 4 parts
    seen: dict[int, bytes] = {}

    def four_at_once() -> bool:
        seen.update(now := part_rsyncs(env["dest"]))
        return len(now) >= 4

    wait_until(four_at_once, what="four parts at once")
    paths = {control_path(cmd) for cmd in seen.values()}
    assert len(paths) == len(seen)  # no ssh connection shared among the parts
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    assert tree_digest(env["dest"] / "60000a") == tree_digest(env["src"] / "60000a")
    assert (env["dest"] / "60000a" / "empty-folder").is_dir()  # the final pass copies folders too
    assert statuses(env) == {"60000a": "complete", "60001b": "complete"}
    [(parts_json, nbytes, outcome)] = rows(
        env["db"],
        "SELECT parts, bytes_transferred, outcome FROM transfers WHERE epn = '60000a'",
    )
    parts = json.loads(parts_json)
    assert outcome == "complete"
    assert [p["part"] for p in parts] == [0, 1, 2, 3] and {p["of"] for p in parts} == {4}
    assert sum(p["files"] for p in parts) == 9  # every file in exactly one part
    assert sum(p["bytes"] for p in parts) == 16 * MiB + 5
    assert all(p["bytes"] == 4 * MiB for p in parts if p["files"] == 2)
    assert all(p["exit_code"] == 0 for p in parts)
    assert nbytes >= 16 * MiB  # the parts' bytes are the attempt's
    assert rows(env["db"], "SELECT parts FROM transfers WHERE epn = '60001b'") == [(None,)]


def test_a_part_killed_is_run_again_alone(cli: Any, env: dict[str, Path]) -> None:
    big_epn(env["src"])
    walk(cli, env)
    proc = spawn_sync(env, *SPLIT, "--bwlimit", "4M", "--retry", "2")
    wait_until(lambda: len(part_rsyncs(env["dest"])) >= 4, what="four parts at once")
    victim, cmd = sorted(part_rsyncs(env["dest"]).items())[0]
    killed_part = int(re.search(rb"\.p(\d+)\x00", cmd).group(1))  # type: ignore[union-attr]
    os.kill(victim, signal.SIGKILL)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, out + err
    assert statuses(env) == {"60000a": "complete"}
    assert tree_digest(env["dest"] / "60000a") == tree_digest(env["src"] / "60000a")
    attempts = rows(
        env["db"],
        "SELECT attempt, classification, outcome, parts FROM transfers ORDER BY id",
    )
    assert [(a[1], a[2]) for a in attempts] == [("link", "released"), ("ok", "complete")]
    first, second = (json.loads(a[3]) for a in attempts)
    assert len(first) == 4
    assert [p["classification"] for p in first if p["part"] == killed_part] == ["link"]
    # The second attempt ran only the part that was killed; the others were not copied again.
    assert [p["part"] for p in second] == [killed_part]
    assert rows(env["db"], "SELECT failures FROM epns") == [(0,)]  # a kill is not the data's fault


def test_server_killed_while_parts_run_charges_nothing_and_the_next_run_completes(
    cli: Any, own_server: Any
) -> None:
    """failures.md, link: the server dies while four parts run; exit 1, nothing charged, the EPN
    is pending again, and the next run copies it."""
    import threading

    server, env = own_server
    big_epn(env["src"])
    walk(cli, env)

    def serving_four_parts() -> bool:
        # Four part rsyncs in /proc is not enough: until sshd has forked their sessions, a kill
        # finds none, and sessions accepted just before the stop outlive the listener.
        servers = [c for c in server.sessions().values() if c.split(b"\0")[0].endswith(b"rsync")]
        return len(part_rsyncs(env["dest"])) >= 4 and len(servers) >= 4

    def outage() -> None:
        wait_until(serving_four_parts, what="sshd serving four parts at once")
        server.kill_sessions()
        server.stop()

    t = threading.Thread(target=outage)
    t.start()
    result = sync(cli, env, *SPLIT, "--bwlimit", "4M", "--retry", "0")
    t.join()
    assert result.exit_code == 1, result.stdout + result.stderr
    assert result.stderr.startswith(f"Error: cannot reach {server.known_hosts_name}: ")
    assert rows(env["db"], "SELECT status, failures, claim_owner FROM epns") == [
        ("pending", 0, None)
    ]
    [(classification, parts)] = rows(env["db"], "SELECT classification, parts FROM transfers")
    assert classification in ("link", "cancelled") and len(json.loads(parts)) == 4
    assert not part_rsyncs(env["dest"])
    server.restart()
    again = sync(cli, env, *SPLIT)
    assert again.exit_code == 0, again.stdout + again.stderr
    assert statuses(env) == {"60000a": "complete"}
    assert tree_digest(env["dest"] / "60000a") == tree_digest(env["src"] / "60000a")


def test_ctrl_c_stops_every_part_and_gives_the_claim_back(cli: Any, env: dict[str, Path]) -> None:
    big_epn(env["src"])
    walk(cli, env)
    proc = spawn_sync(env, *SPLIT, "--bwlimit", "2M")
    wait_until(lambda: len(part_rsyncs(env["dest"])) >= 4, what="four parts at once")
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    wait_until(lambda: not part_rsyncs(env["dest"]), timeout=10, what="every part to stop")
    assert rows(env["db"], "SELECT status, claim_owner, failures FROM epns") == [
        ("pending", None, 0)
    ]
    assert rows(env["db"], "SELECT classification, outcome FROM transfers") == [
        ("cancelled", "cancelled")
    ]


def test_dry_run_shows_the_split_and_the_order(cli: Any, env: dict[str, Path]) -> None:
    big_epn(env["src"])
    write_file(env["src"] / "60001b" / "small", b"s")
    walk(cli, env)
    result = sync(cli, env, *SPLIT, "--dry-run")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    at = lines.index("  plan, in start order (the largest first):")
    assert (
        lines[at + 1] == "    1. 60000a: 16.0 MiB in 4 parts of 4.0 MiB, 4.0 MiB, 4.0 MiB, 4.0 MiB"
    )
    assert lines[at + 2] == "    2. 60001b: 1 B whole"
    data = json.loads(sync(cli, env, *SPLIT, "--dry-run", "--json").stdout)
    assert [p["epn"] for p in data["plan"]] == ["60000a", "60001b"]
    assert sorted(data["plan"][0]["parts"]) == [4 * MiB, 4 * MiB, 4 * MiB, 4 * MiB + 5]
    assert not list(env["dest"].iterdir())  # a dry run copies nothing
    assert set(statuses(env).values()) == {"pending"}


def test_streams_per_epn_1_copies_whole(cli: Any, env: dict[str, Path]) -> None:
    big_epn(env["src"])
    walk(cli, env)
    result = sync(cli, env, *SPLIT, "--streams-per-epn", "1")
    assert result.exit_code == 0, result.stderr
    assert rows(env["db"], "SELECT parts FROM transfers") == [(None,)]


def test_two_sync_processes_copy_a_split_epn_once(cli: Any, env: dict[str, Path]) -> None:
    big_epn(env["src"])
    for n in range(3):
        write_file(env["src"] / f"6100{n}c" / "small", b"s" * 1000)
    walk(cli, env)
    procs = [spawn_sync(env, *SPLIT, "--bwlimit", "8M") for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert set(statuses(env).values()) == {"complete"}
    per_epn = rows(env["db"], "SELECT epn, count(*) FROM transfers GROUP BY epn")
    assert all(n == 1 for _epn, n in per_epn) and len(per_epn) == 4
    assert tree_digest(env["dest"] / "60000a") == tree_digest(env["src"] / "60000a")


@pytest.mark.parametrize(
    "value, message",
    [
        ("08:00,20M 25:00,off", "no such time of day"),
        ("08:00,20M 18:00", "is not [Day-]HH:MM,RATE"),
        ("Fun-08:00,1M", "is not a day"),
        ("08:00,fast", "is not a rate"),
        ("08:00,100b", "below rsync's smallest rate"),
    ],
)
def test_bad_timetables_are_refused_before_anything_is_claimed(
    cli: Any, env: dict[str, Path], value: str, message: str
) -> None:
    write_file(env["src"] / "62000a" / "x", b"x")
    walk(cli, env)
    result = sync(cli, env, "--bwlimit", value)
    assert result.exit_code == 2
    assert message in result.stderr and result.stderr.startswith("Error: --bwlimit")
    assert rows(env["db"], "SELECT status, attempts FROM epns") == [("pending", 0)]
    assert rows(env["db"], "SELECT count(*) FROM transfers") == [(0,)]


# ------------------------------------------------------------------ the pure parts
def test_timetable_in_rclones_form() -> None:
    table = Bandwidth.parse("08:00,20M 18:00,off Sat-00:00,off")
    assert table is not None
    wednesday = datetime(2026, 12, 2)
    assert table.rate_at(wednesday.replace(hour=9)) == 20 * MiB
    assert table.rate_at(wednesday.replace(hour=19)) is None
    assert table.rate_at(wednesday.replace(hour=7, minute=59)) is None  # Tuesday 18:00 still
    # A time without a day applies every day (as rclone's): Saturday is off until its 08:00.
    assert table.rate_at(datetime(2026, 12, 5, 7)) is None
    assert table.rate_at(datetime(2026, 12, 5, 12)) == 20 * MiB
    weekdays = Bandwidth.parse(" ".join(f"{d}-08:00,20M {d}-18:00,off" for d in DAYS_MON_FRI))
    assert weekdays is not None
    assert weekdays.rate_at(datetime(2026, 12, 5, 12)) is None  # Saturday
    assert weekdays.rate_at(datetime(2026, 12, 7, 0, 30)) is None  # Monday night
    assert weekdays.rate_at(datetime(2026, 12, 7, 8, 30)) == 20 * MiB  # Monday morning
    assert Bandwidth.parse("50M") == Bandwidth(((0, 50 * MiB),))
    assert Bandwidth.parse("off") is None and Bandwidth.parse("0") is None
    with pytest.raises(ConfigError):
        Bandwidth.parse("8:00,1M 8:99,2M")


def test_shares_never_add_up_to_more_than_the_budget() -> None:
    budget = 8 * MiB
    four = [share(budget, i * budget / 4, starting=4 - i, running=i) for i in range(4)]
    assert four == [budget / 4] * 4
    assert share(budget, 3 * budget / 4, starting=1, running=3) == budget / 4
    assert share(budget, budget / 4, starting=1, running=1) == budget / 2  # the tail
    assert share(None, 0, starting=1, running=0) is None


def test_split_is_balanced_by_bytes_and_every_file_is_in_exactly_one_part() -> None:
    files = [(f"f{i}".encode(), size) for i, size in enumerate([90, 10, 40, 40, 30, 20, 5, 5])]
    parts = split_files(files, 3)
    flat = [name for part in parts for name in part]
    assert sorted(flat) == sorted(name for name, _ in files) and len(flat) == len(set(flat))
    loads = sorted(sum(dict(files)[n] for n in part) for part in parts)
    assert loads == [75, 75, 90]
    assert split_files(files[:2], 5) == [[b"f0"], [b"f1"]]  # never more parts than files


def test_part_count_follows_the_fair_share() -> None:
    gib = 2**30
    kw = {"threads": 4, "split_min": gib, "streams": 4}
    assert part_count(10 * gib, 100, batch_bytes=12 * gib, **kw) == 4
    assert part_count(5 * gib, 100, batch_bytes=12 * gib, **kw) == 2
    assert part_count(2 * gib, 100, batch_bytes=12 * gib, **kw) == 1  # within its share
    assert part_count(gib // 2, 100, batch_bytes=gib // 2, **kw) == 1  # below --split-min
    assert part_count(10 * gib, 3, batch_bytes=10 * gib, **kw) == 3  # no more than its files
    assert part_count(10 * gib, 100, batch_bytes=10 * gib, **{**kw, "streams": 2}) == 2


def test_a_timetable_is_taken_and_each_rsync_gets_its_share(cli: Any, env: dict[str, Path]) -> None:
    """A valid timetable (here the same rate all day) runs; each rsync started with a share."""
    for n in range(2):
        write_file(env["src"] / f"6300{n}a" / "x", b"x" * 1000)
    walk(cli, env)
    result = sync(cli, env, "--threads", "2", "--bwlimit", "00:00,4M 12:00,4M")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert set(statuses(env).values()) == {"complete"}
    argvs = [json.loads(a) for (a,) in rows(env["db"], "SELECT argv FROM transfers")]
    assert all(f"--bwlimit={2 * MiB}b" in argv for argv in argvs), argvs
