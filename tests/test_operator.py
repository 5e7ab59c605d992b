"""What an operator meets day to day: an empty run explained, typos refused, logs and file modes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from helpers import FIXED_MTIME, rows, write_file
from test_alert import mail as mail
from test_alert import portal as portal
from test_alert import run_alert
from test_alert import site as site
from test_sync import env as env
from test_sync import sync, walk
from test_watch import Watch


def test_an_empty_run_says_why(cli: Any, env: dict[str, Path], write_config: Any) -> None:
    """sync that takes nothing counts, per reason, what it left and the command that changes it."""
    for epn in ("12282a", "12283b", "12284c", "55555a"):
        write_file(env["src"] / epn / "f", b"f", FIXED_MTIME)
    walk(cli, env)
    with sqlite3.connect(env["db"]) as conn:
        conn.execute("UPDATE epns SET status = 'quarantined', failures = 5 WHERE epn = '12282a'")
        conn.execute(
            "UPDATE epns SET status = 'failed', failures = 1, last_error_class = 'partial', "
            "not_before = datetime('now', '+600 seconds') WHERE epn = '12283b'"
        )
    result = sync(cli, env, "--destinations", "12282=a,12283=b,12284=c", "--settle", "100000d")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("sync finished: 0 EPNs complete, 0 failed, 0 skipped")
    assert "  not taken: 1 EPN quarantined (asynchy reset --status quarantined)" in lines
    assert any(
        line.startswith("  not taken: 1 EPN backing off (the first one is due at ")
        for line in lines
    )
    assert (
        "  not taken: 1 EPN unmapped (add destinations, or copy_unmapped / --include-unmapped)"
        in lines
    )
    assert (
        "  not taken: 1 EPN settling (still being written: copied once older than --settle)"
        in lines
    )
    data = json.loads(sync(cli, env, "--json", "--destinations", "12282=a").stdout)
    assert {w["reason"]: w["epns"] for w in data["not_taken"]} == {
        "quarantined": 1,
        "backing off": 1,
        "unmapped": 2,  # 12284c and 55555a have no entry in this map
    }


def test_a_global_option_after_the_command_gets_a_hint(cli: Any, tmp_path: Path) -> None:
    result = cli("status", "--db", str(tmp_path / "x.db"))
    assert result.exit_code == 2
    assert (
        "Error: No such option '--db': --db is a global option, it goes before the command "
        "(asynchy --db ... status ...)"
    ) in result.stderr


def test_logs_have_start_and_summary_lines_and_files_are_private(
    cli: Any, env: dict[str, Path], tmp_path: Path
) -> None:
    log = tmp_path / "asynchy.log"
    write_file(env["src"] / "12282a" / "f", b"f")
    walked = cli("--config", str(env["conf"]), "--log-file", str(log), "walk")
    assert walked.exit_code == 0
    synced = cli("--config", str(env["conf"]), "--log-file", str(log), "sync")
    assert synced.exit_code == 0
    text = log.read_text()
    assert f"asynchy walk started: config {env['conf']}, db {env['db']}" in text
    assert "walk complete: 1 EPN walked" in text
    assert "asynchy sync started" in text and "sync finished: 1 EPN complete" in text
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert stat.S_IMODE(env["db"].stat().st_mode) == 0o600
    # logrotate moves the file away: the next command writes a new one (WatchedFileHandler)
    log.rename(tmp_path / "asynchy.log.1")
    assert cli("--config", str(env["conf"]), "--log-file", str(log), "status").exit_code == 0
    assert "asynchy status started" in log.read_text()


def test_secrets_never_reach_the_log(
    cli: Any, site: dict[str, Any], portal: Any, write_config: Any, tmp_path: Path
) -> None:
    from test_alert import SMTP_PASSWORD

    log = tmp_path / "debug.log"
    conf = write_config(
        {**site["values"], "portal": portal.config(), "log_file": str(log), "log_level": "DEBUG"},
        name="secret.yaml",
    )
    os.chmod(conf, 0o600)
    assert cli("--config", str(conf), "walk").exit_code == 0
    result = run_alert(cli, conf)
    assert result.exit_code == 0, result.stdout + result.stderr
    entry = portal.config()["equipment"][0]
    text = log.read_text()
    assert "alert sent to" in text
    for secret in (SMTP_PASSWORD, entry["password"], entry["client_password"]):
        assert secret not in text
        assert secret not in result.stdout + result.stderr


def test_a_normal_stop_of_watch_is_not_an_error(env: dict[str, Path]) -> None:
    """systemctl stop (SIGTERM): exit 130 and one plain line, not an "Error:"."""
    watch = Watch(env["conf"], "--every", "1h", "--json")
    try:
        watch.cycle()
    finally:
        code, stderr = watch.stop(signal.SIGTERM)
    assert code == 130
    assert "Error:" not in stderr
    assert stderr.strip().endswith("asynchy: watch stopped after cycle 1")
    assert rows(env["db"], "SELECT DISTINCT status FROM workers") == [("finished",)]


# ------------------------------------------------------------------ one output convention
def _inventory_of(tmp_path: Path, n: int) -> Path:
    """A database with n walked EPNs (a local source), one of them with a long last error."""
    from asynchy.db import open_database
    from asynchy.inventory import WalkOptions, walk
    from asynchy.remote.local import LocalTree

    src = tmp_path / "src"
    for i in range(n):
        write_file(src / f"{30000 + i}a" / "f.cbf", b"x" * (i + 1))
    path = tmp_path / "files.db"
    db = open_database(str(path))
    try:
        walk(db, LocalTree(str(src)), WalkOptions())
    finally:
        db.close()
    # closed now, not by the garbage collector (sqlite3's statement cache is a reference cycle):
    # an open connection keeps SQLite's -wal file from going away
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(
            "UPDATE epns SET status = 'failed', last_error = ? WHERE epn = '30000a'",
            (
                "rsync exit 255: ssh failed (ssh: connect to host sftp.example.org port 22: "
                "Connection timed out after a long wait)",
            ),
        )
    return path


def test_every_listing_format_holds_every_row(cli: Any, tmp_path: Path) -> None:
    db = str(_inventory_of(tmp_path, 120))
    as_json = json.loads(cli("--db", db, "epns", "--json").stdout)
    assert len(as_json) == 120 and as_json[0]["size"] == 1
    assert json.loads(cli("--db", db, "epns", "--format", "json").stdout) == as_json
    nl = cli("--db", db, "epns", "--format", "nl").stdout.splitlines()
    assert len(nl) == 120 and json.loads(nl[5])["epn"] == "30005a"
    csv_lines = cli("--db", db, "epns", "--csv").stdout.splitlines()
    assert len(csv_lines) == 121 and csv_lines[0].startswith("epn,")
    table = cli("--db", db, "epns", env={"COLUMNS": "40"}).stdout.splitlines()
    assert len(table) == 121  # a pipe: every row, and no cell cut
    assert "…" not in "\n".join(table)
    assert "Connection timed out after a long wait" in "\n".join(table)
    cut = cli("--db", db, "epns", "--limit", "100").stdout.splitlines()
    assert len(cut) == 102 and cut[-1] == "100 of 120 shown; --all for every row"
    assert len(cli("--db", db, "epns", "--limit", "100", "--all").stdout.splitlines()) == 121
    both = cli("--db", db, "epns", "--json", "--csv")
    assert both.exit_code == 2 and "choose one output format" in both.stderr
    assert json.loads(cli("--db", db, "status", "--format", "json").stdout)["epns"]["total"] == 120
    flat = cli("--db", db, "status", "--csv").stdout.splitlines()
    assert flat[0] == "key,value" and "epns.total,120" in flat
    mapped = cli("--db", db, "destinations", "--csv").stdout.splitlines()
    assert mapped[1].split(",")[2] == "false"  # booleans as true/false


def test_a_table_on_a_terminal_stops_at_100(tmp_path: Path) -> None:
    import pty

    db = str(_inventory_of(tmp_path, 120))
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "asynchy", "--db", db, "epns"], stdout=slave, stderr=subprocess.PIPE
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait()
    os.close(master)
    lines = b"".join(chunks).decode().replace("\r\n", "\n").strip().splitlines()
    assert proc.returncode == 0
    assert len(lines) == 102 and lines[-1] == "100 of 120 shown; --all for every row"


def test_sql_takes_parameters_and_stdin_and_shows_human_units(cli: Any, tmp_path: Path) -> None:
    db = str(_inventory_of(tmp_path, 3))
    got = cli(
        "--db",
        db,
        "sql",
        "SELECT epn FROM epns WHERE size > :n ORDER BY epn",
        "-p",
        "n",
        "1",
        "--json",
    )
    assert got.exit_code == 0, got.stderr
    assert json.loads(got.stdout) == [{"epn": "30001a"}, {"epn": "30002a"}]
    piped = cli("--db", db, "sql", "-", "--csv", input="SELECT count(*) AS n FROM epns")
    assert piped.stdout.splitlines() == ["n", "3"]
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE epns SET size = 5368709120 WHERE epn = '30000a'")
    table = cli("--db", db, "sql", "SELECT epn, size FROM epns WHERE epn = '30000a'").stdout
    assert "5.0 GiB" in table
    raw = cli("--db", db, "sql", "SELECT size FROM epns WHERE epn = '30000a'", "--csv").stdout
    assert raw.splitlines() == ["size", "5368709120"]


def test_sql_leaves_no_wal_files_and_tables_read_alike(cli: Any, tmp_path: Path) -> None:
    """sql left -wal/-shm files beside the database; byte columns other than size/bytes were raw
    numbers; one table had thousands separators and the next did not."""
    db = _inventory_of(tmp_path, 3)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(
            "UPDATE epns SET bytes_transferred = 3221225472, file_count = 12345 WHERE epn = '30000a'"
        )
    conn.close()
    for end in ("-wal", "-shm"):
        Path(str(db) + end).unlink(missing_ok=True)
    query = (
        "SELECT epn, bytes_transferred, file_count, bytes_transferred / 10 AS bytes_per_second, "
        "claim_token FROM epns WHERE epn = '30000a'"
    )
    table = subprocess.run(  # its own process, as an operator runs it
        [sys.executable, "-m", "asynchy", "--db", str(db), "sql", query],
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("ASYNCHY_")},
    ).stdout
    assert not Path(str(db) + "-wal").exists() and not Path(str(db) + "-shm").exists()
    row = table.splitlines()[1].split()
    assert row[:3] == ["30000a", "3.0", "GiB"] and "12,345" in row and "MiB/s" in table
    epns = cli("--db", str(db), "epns").stdout
    assert "12,345" in epns
    raw = cli("--db", str(db), "sql", query, "--csv").stdout.splitlines()[1]
    assert raw.startswith("30000a,3221225472,12345,")


def test_metrics_file_for_node_exporter(cli: Any, env: dict[str, Path], tmp_path: Path) -> None:
    """sync writes Prometheus text metrics atomically; prometheus_client's parser reads them."""
    from prometheus_client.parser import text_string_to_metric_families

    for epn in ("12282a", "12283b"):
        write_file(env["src"] / epn / "f", b"abc")
    walk(cli, env)
    with sqlite3.connect(env["db"]) as conn:
        conn.execute("UPDATE epns SET status = 'quarantined' WHERE epn = '12283b'")
    metrics = tmp_path / "asynchy.prom"
    result = sync(cli, env, "--metrics-file", str(metrics))
    assert result.exit_code == 0, result.stderr
    families = {f.name: f for f in text_string_to_metric_families(metrics.read_text())}
    by_status = {s.labels["status"]: s.value for s in families["asynchy_epns"].samples}
    assert (
        by_status["complete"] == 1 and by_status["quarantined"] == 1 and by_status["pending"] == 0
    )
    copied = families["asynchy_bytes_copied"].samples[0].value  # the parser drops _total
    assert copied == 3
    classes = {s.labels["classification"]: s.value for s in families["asynchy_transfers"].samples}
    assert classes == {"ok": 1}
    last = families["asynchy_last_success_timestamp_seconds"].samples[0].value
    assert last > 1_700_000_000
    assert families["asynchy_throughput_bytes_per_second"].samples[0].value >= 0
    assert families["asynchy_oldest_pending_age_seconds"].samples[0].value >= 0
    assert not list(tmp_path.glob(".asynchy.prom.*"))  # written by rename, nothing left over


def test_typos_in_epn_names_are_exit_2_with_close_matches_everywhere(
    cli: Any, env: dict[str, Path]
) -> None:
    """docs/exit-codes.md: a name the inventory does not have is a usage error (2) that offers the
    closest names, for sync and verify as for show, reset and skip (sync said "skipped", exit 0;
    verify exited 3)."""
    for epn in ("99998a", "99999a"):
        write_file(env["src"] / epn / "f", b"f", FIXED_MTIME)
    walk(cli, env)
    for args in (
        ("sync", "--epn", "99999z"),
        ("verify", "--epn", "99999z"),
        ("show", "99999z"),
        ("reset", "99999z"),
        ("skip", "99999z"),
    ):
        result = cli("--config", str(env["conf"]), *args)
        assert result.exit_code == 2, (args, result.stdout, result.stderr)
        assert result.stderr.startswith(
            "Error: EPN '99999z' is not in the inventory (did you mean"
        ), (
            args,
            result.stderr,
        )
        assert "99999a" in result.stderr
    assert rows(env["db"], "SELECT count(*) FROM transfers") == [(0,)]
    assert rows(env["db"], "SELECT count(*) FROM workers") == [(0,)]


def test_a_public_key_given_as_keypath_is_exit_2_naming_the_private_one(
    cli: Any, env: dict[str, Path], write_config: Any, tmp_path: Path
) -> None:
    """A bad --keypath is setup (exit 2), worded with its fix; it was exit 1 with paramiko's words."""
    import yaml

    values = yaml.safe_load(env["conf"].read_text())
    public = values["keypath"] + ".pub"
    for command in ("walk", "sync"):
        result = cli("--config", str(env["conf"]), "--keypath", public, command)
        assert result.exit_code == 2, result.stderr
        assert result.stderr == (
            f"Error: key file {public} (keypath, from option --keypath) is a public key: give the "
            f"private one ({values['keypath']}?)\n"
        )
    garbage = tmp_path / "not-a-key"
    garbage.write_text("this is not a key\n")
    result = cli("--config", str(env["conf"]), "--keypath", str(garbage), "walk")
    assert result.exit_code == 2, result.stderr
    assert result.stderr.startswith(f"Error: key file {garbage} cannot be used (")
    assert "give a private key" in result.stderr


def test_status_says_why_the_last_walk_failed_and_which_walk_completed(
    cli: Any, env: dict[str, Path]
) -> None:
    """A one-off walk with a mistyped --host became the "last walk: failed (0 EPNs, 0 errors)";
    its reason was only in walks.message.  Now status shows it, and the last complete walk."""
    write_file(env["src"] / "12282a" / "f", b"f", FIXED_MTIME)
    walk(cli, env)
    typo = cli("--config", str(env["conf"]), "--host", "nosuch.invalid", "walk")
    assert typo.exit_code == 1, typo.stderr
    data = json.loads(cli("--config", str(env["conf"]), "status", "--json").stdout)
    last = data["last_walk"]
    assert last["status"] == "failed"
    assert last["message"].startswith("cannot resolve host 'nosuch.invalid'")
    assert "nosuch.invalid" in last["source"]
    assert last["last_complete"]["status"] == "complete"
    assert last["last_complete"]["epns_walked"] == 1
    text = cli("--config", str(env["conf"]), "status").stdout
    assert "            why: cannot resolve host 'nosuch.invalid'" in text
    assert "\nlast complete walk: " in text and "complete (1 EPN, 0 errors)" in text


ISO_Z = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


def _times_in(data: Any) -> list[str]:
    """Every string in a JSON value that holds a date and a time."""
    import re

    if isinstance(data, dict):
        return [t for v in data.values() for t in _times_in(v)]
    if isinstance(data, list):
        return [t for v in data for t in _times_in(v)]
    return [data] if isinstance(data, str) and re.search(r"\d{4}-\d\d-\d\d.\d\d:\d\d", data) else []


def test_one_clock_local_with_zone_for_people_utc_z_for_scripts(tmp_path: Path) -> None:
    """docs/reporting.md, "Times": with TZ=Australia/Melbourne, epns/show printed local times
    without a zone, sql raw UTC, sql --json no ISO form, watch --json microseconds and +00:00."""
    import re

    src = tmp_path / "src"
    write_file(src / "12282a" / "f", b"f", FIXED_MTIME)
    (tmp_path / "vault").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCHY_")}
    env.update(TZ="Australia/Melbourne", HOME=str(tmp_path))
    base = [
        sys.executable, "-m", "asynchy", "--db", str(tmp_path / "f.db"), "--host", "local",
    ]  # fmt: skip

    def run(*args: str) -> str:
        done = subprocess.run(
            [*base, *args], capture_output=True, text=True, env=env, timeout=120, check=False
        )
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    run("walk", "--src-prefix", str(src))
    run("sync", "--src-prefix", str(src), "--dest", str(tmp_path / "vault"))
    sql = "SELECT epn, modified, walked_at, completed_at FROM epns"
    tables = [run("epns"), run("show", "12282a"), run("sql", sql), run("status")]
    for text in tables:
        stamps = re.findall(r"\d{4}-\d\d-\d\d \d\d:\d\d(?::\d\d)?( \w+)?", text)
        assert stamps, text
        assert all(zone.strip() in ("AEDT", "AEST") for zone in stamps), text
    assert "2020-09-13 22:26 AEST" in tables[0]  # FIXED_MTIME, 12:26:40 UTC
    machine = [
        json.loads(run("epns", "--json")),
        json.loads(run("show", "12282a", "--json")),
        json.loads(run("sql", sql, "--json")),
        json.loads(run("status", "--json")),
        json.loads(
            run(
                "watch",
                "--once",
                "--json",
                "--src-prefix",
                str(src),
                "--dest",
                str(tmp_path / "vault"),
            )
        ),
    ]
    for data in machine:
        times = _times_in(data)
        assert times, data
        assert all(re.fullmatch(ISO_Z, t) for t in times), times
    assert machine[2][0]["modified"] == "2020-09-13T12:26:40Z"
    csv_out = run("sql", sql, "--format", "csv").splitlines()
    assert csv_out[1].startswith("12282a,2020-09-13T12:26:40Z,")


PLURAL_AFTER_ONE = re.compile(
    r"(?<![\d.,])1 (EPNs|files|errors|items|reconnects|inputs|transfers|conflicts|folders|"
    r"attempts|failures|claims|workers|parts|changes|rows|cycles)\b"
)


def test_no_summary_says_1_and_a_plural() -> None:
    """'1 errors', '1 EPNs walked': every summary format, rendered with counts of one."""
    from datetime import UTC, datetime

    from asynchy import texts
    from asynchy.texts import cycle_line
    from asynchy.watch import CycleSummary

    now = datetime.now(UTC)
    walk = {
        "status": "complete", "epns_walked": 1, "epns_skipped": 1, "epns_changed": 1,
        "files": 1, "bytes": 1, "errors": 1, "reconnects": 1, "elapsed_seconds": 1.0,
        "epns_gone": 1, "error_details": [{"epn": "a", "path": "p", "message": "m", "kind": "k"}],
        "walk_id": 1,
    }  # fmt: skip
    sync = {
        "dry_run": False, "interrupted": False, "stopped": None, "complete": ["a"],
        "failed": [{"epn": "b", "outcome": "failed", "reason": "r"}],
        "changed": [{"epn": "c", "reason": "r"}], "given_back": [{"epn": "d", "reason": "r"}],
        "skipped": {"e": "why"}, "cancelled": ["f"], "bytes": 1, "elapsed_seconds": 1.0,
        "bytes_per_second": 1, "not_taken": [{"reason": "quarantined", "epns": 1, "hint": "h"}],
        "would_change": {"a": 1}, "plan": [{"epn": "a", "bytes": 1, "parts": [1]}],
    }  # fmt: skip
    dry = {**sync, "dry_run": True}
    merge = {
        "inputs": [{"path": "x", "kind": "asynchy"}], "epns": 1, "epns_added": 1, "files_added": 1,
        "files_updated": 1, "files_removed": 1, "epns_completed": 1, "epns_changed": 1,
        "conflicts_resolved": 1, "transfers_added": 1,
    }  # fmt: skip
    alert = {"unmapped": ["a"], "alerted": ["a"], "already_alerted": 1, "refused_recipients": [],
             "portal_errors": [], "all_copied": None}  # fmt: skip
    cycle = CycleSummary(1, now, walked=1, new=1, changed=1, walk_errors=1, alerted=1,
                         complete=1, failed=1, bytes=1, waiting=1)  # fmt: skip
    texts = [
        texts.walk_summary(walk),
        texts.sync_summary(sync),
        texts.sync_summary(dry),
        texts.merge_summary(merge),
        texts.alert_summary(alert),
        texts.alert_summary({**alert, "alerted": []}),
        texts.changed({"dry_run": False, "epns": ["a"], "refused": []}, "reset", "to pending"),
        texts.verified({"checked": 1, "match": ["a"], "differ": [], "not_verified": []}),
        texts.names_warning({"count": 1, "names": ["mx"], "left_out": False, "hint": "h"}, "p"),
        cycle_line(cycle),
    ]
    for text in texts:
        assert not PLURAL_AFTER_ONE.search(text), text


def test_exclude_from_and_include_from_read_as_rsync_reads_them(
    cli: Any, env: dict[str, Path], tmp_path: Path
) -> None:
    """--exclude-from FILE / --include-from FILE (and the keys): one pattern a line, comments and
    blank lines left out; verification leaves out what they leave out."""
    epn = env["src"] / "12282a"
    for name in ("keep.cbf", "scratch/tmp.dat", ".info", ".hidden"):
        write_file(epn / name, b"x")
    excludes = tmp_path / "exclude.txt"
    excludes.write_text("# scratch space and dot-files\n; as rsync reads them\n\nscratch/\n.*\n")
    includes = tmp_path / "include.txt"
    includes.write_text(".info\n")
    walk(cli, env)
    missing = sync(cli, env, "--exclude-from", str(tmp_path / "nope.txt"))
    assert missing.exit_code == 2
    assert missing.stderr == (
        f"Error: exclude_from {tmp_path / 'nope.txt'} does not exist: create it or fix exclude_from\n"
    )
    assert rows(env["db"], "SELECT status, attempts FROM epns") == [("pending", 0)]
    done = sync(cli, env, "--exclude-from", str(excludes), "--include-from", str(includes))
    assert done.exit_code == 0, done.stdout + done.stderr
    copy = env["dest"] / "12282a"
    assert sorted(p.name for p in copy.iterdir()) == [".info", "keep.cbf"]
    files = {"ASYNCHY_EXCLUDE_FROM": str(excludes), "ASYNCHY_INCLUDE_FROM": str(includes)}
    verified = cli("--config", str(env["conf"]), "verify", "--json", env=files)
    assert verified.exit_code == 0, verified.stdout
    assert json.loads(verified.stdout)["differ"] == []
    unfiltered = cli("--config", str(env["conf"]), "verify", "--json")
    assert json.loads(unfiltered.stdout)["differ"] != []  # without the files, two are missing


def test_max_duration_stops_cleanly_and_charges_nothing(cli: Any, env: dict[str, Path]) -> None:
    """sync --max-duration: at the limit no new EPN starts and running copies stop, given back
    uncharged; exit 0 (the run did what it was asked); the next run copies them."""
    from test_sync import big_epns, rsyncs_into

    big_epns(env["src"], ["61000a", "61001b", "61002c"], mib=4)
    walk(cli, env)
    started = time.monotonic()
    result = sync(cli, env, "--max-duration", "2s", "--bwlimit", "200K", "--threads", "1")
    took = time.monotonic() - started
    assert result.exit_code == 0, result.stdout + result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith("sync stopped at the time limit (--max-duration 2s): 0 EPNs complete")
    assert "1 cancelled" in first
    assert "  stopped at the time limit: 61000a (not charged; the next run copies them)" in (
        result.stdout
    )
    assert took < 30
    assert rsyncs_into(env["dest"]) == []
    assert rows(env["db"], "SELECT DISTINCT status, failures FROM epns") == [("pending", 0)]
    assert rows(env["db"], "SELECT classification FROM transfers") == [("cancelled",)]
    data = json.loads(sync(cli, env, "--json").stdout)
    assert sorted(data["complete"]) == ["61000a", "61001b", "61002c"]
    assert data["time_limit_reached"] is None


def test_stop_at_takes_the_next_such_time_and_refuses_nonsense(
    cli: Any, env: dict[str, Path]
) -> None:
    from datetime import datetime, timedelta

    from asynchy.errors import UsageError
    from asynchy.schedule import seconds_until

    now = datetime(2026, 12, 7, 22, 30).astimezone()
    assert seconds_until("23:00", now) == 1800
    assert seconds_until("07:00", now) == 8.5 * 3600  # tomorrow morning
    assert seconds_until("2026-12-08 07:00", now) == 8.5 * 3600
    for bad in ("7 o'clock", "25:00", "2026-12-07 21:00"):
        try:
            seconds_until(bad, now)
        except UsageError:
            continue
        raise AssertionError(bad)
    write_file(env["src"] / "62000a" / "f", b"f")
    walk(cli, env)
    refused = sync(cli, env, "--stop-at", "soon")
    assert refused.exit_code == 2
    assert refused.stderr.startswith("Error: --stop-at 'soon' is not a time: give HH:MM")
    assert rows(env["db"], "SELECT attempts FROM epns") == [(0,)]
    soon = (datetime.now() + timedelta(minutes=5)).strftime("%H:%M")
    assert sync(cli, env, "--stop-at", soon).exit_code == 0  # far enough: the run completes
    assert rows(env["db"], "SELECT status FROM epns") == [("complete",)]
