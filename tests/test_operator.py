"""What an operator meets day to day: an empty run explained, typos refused, logs and file modes."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
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
    assert "walk complete: 1 EPNs walked" in text
    assert "asynchy sync started" in text and "sync finished: 1 EPNs complete" in text
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
