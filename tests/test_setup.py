"""Setting up: `asynchy config` (the effective settings and their sources) and `asynchy check`
(the preflight on its own, against the real sshd, SMTP and portal servers of the tests)."""

from __future__ import annotations

import json
import os
import socket
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
from helpers import FIXED_MTIME, read_only_dir, write_file
from mailserver import MailServer
from portal_server import PortalServer
from sshd import Sshd
from test_alert import SMTP_PASSWORD, SMTP_USER
from test_alert import mail as mail
from test_alert import portal as portal


# ------------------------------------------------------------------ asynchy config
def test_config_names_the_source_of_every_value_and_masks_secrets(
    cli: Any, write_config: Any, tmp_path: Path
) -> None:
    conf = write_config(
        {
            "host": "sftp.example",
            "threads": 3,
            "db": "postgresql://asynchy:db-secret@127.0.0.1/asynchy",
            "portal": {
                "base_url": "https://portal.example",
                "equipment": [
                    {
                        "id": 1,
                        "username": "u",
                        "password": "portal-secret",
                        "client_name": "c",
                        "client_password": "client-secret",
                    }
                ],
            },
        }
    )
    env = {"ASYNCHY_SETTLE": "2h", "ASYNCHY_SMTP_PASSWORD": "smtp-secret"}
    result = cli("--config", str(conf), "--port", "2222", "config", "--json", env=env)
    assert result.exit_code == 0, result.stderr
    rows = {r["key"]: r for r in json.loads(result.stdout)}
    assert rows["host"] == {"key": "host", "value": "sftp.example", "source": f"config file {conf}"}
    assert rows["threads"]["value"] == 3
    assert rows["port"] == {"key": "port", "value": 2222, "source": "option --port"}
    assert rows["settle"] == {
        "key": "settle",
        "value": 7200.0,
        "source": "environment variable ASYNCHY_SETTLE",
    }
    assert rows["every"]["source"] == "default"
    assert rows["db"]["value"] == "postgresql://asynchy:********@127.0.0.1/asynchy"
    equipment = rows["portal"]["value"]["equipment"][0]
    assert equipment["password"] == equipment["client_password"] == "********"
    assert rows["smtp_password"] == {
        "key": "smtp_password",
        "value": "********",
        "source": "environment variable ASYNCHY_SMTP_PASSWORD",
    }
    assert set(rows) >= {"src_prefix", "dest", "epn_pattern", "history_days"}  # every key
    table = cli("--config", str(conf), "config", env=env)
    for output in (result.stdout, table.stdout):
        assert "secret" not in output
    line = next(x for x in table.stdout.splitlines() if x.startswith("threads "))
    assert line.split() == ["threads", "3", "config", "file", str(conf)]
    csv = cli("--config", str(conf), "config", "--format", "csv").stdout.splitlines()
    assert csv[0] == "key,value,source"


def test_config_without_a_file_says_so(cli: Any, tmp_path: Path) -> None:
    result = cli("config", env={"HOME": str(tmp_path)})
    assert result.exit_code == 0
    assert "(no config file at " in result.stdout
    assert all(
        line.split()[-1] == "default"
        for line in result.stdout.splitlines()[1:-1]
        if line.split()[0] != "db"
    )


# ------------------------------------------------------------------ asynchy check
@pytest.fixture
def ready(sshd: Sshd, served: Path, tmp_path: Path) -> dict[str, Any]:
    """A working setup: two EPN folders on the server, a writable dest, an existing database."""
    for epn in ("40001a", "40002b"):
        write_file(served / epn / "data.cbf", b"x", FIXED_MTIME)
    dest = tmp_path / "vault"
    dest.mkdir()
    return sshd.settings(src_prefix=str(served), dest=str(dest), db=str(tmp_path / "files.db"))


def _check(cli: Any, conf: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    result = cli("--config", str(conf), "check", "--json", *args, env=env)
    return result.exit_code, {c["check"]: c for c in json.loads(result.stdout)["checks"]}


def test_check_a_working_setup_with_smtp_and_portal(
    cli: Any, write_config: Any, ready: dict[str, Any], mail: MailServer, portal: PortalServer
) -> None:
    values = {
        **ready,
        "alert_to": ["ops@site.example"],
        "smtp_host": "127.0.0.1",
        "smtp_port": mail.port,
        "smtp_starttls": True,
        "smtp_user": SMTP_USER,
        "portal": portal.config(),
    }
    conf = write_config(values)
    assert cli("--config", str(conf), "db", "upgrade").exit_code == 0
    code, checks = _check(cli, conf, env={"ASYNCHY_SMTP_PASSWORD": SMTP_PASSWORD})
    assert code == 0, checks
    states = {name: c["state"] for name, c in checks.items()}
    assert states == {
        "config": "ok",
        "rsync": "ok",
        "server": "ok",
        "host key": "ok",
        "login": "ok",
        "remote rsync": "ok",
        "src_prefix": "ok",
        "EPN names": "ok",
        "dest": "ok",
        "database": "ok",
        "smtp": "ok",
        "portal": "ok",
    }
    assert "all 2 folders match" in checks["EPN names"]["detail"]
    assert mail.logins == [(SMTP_USER, True)] and mail.received == []  # logged in, sent nothing
    assert [r["method"] for r in portal.requests] == ["POST"]  # one login, nothing else
    assert list(Path(ready["dest"]).iterdir()) == []  # the write probe left nothing
    table = cli("--config", str(conf), "check", env={"ASYNCHY_SMTP_PASSWORD": SMTP_PASSWORD})
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert len(lines) == 12 and lines[0].startswith("ok    config ")
    assert SMTP_PASSWORD not in table.stdout + table.stderr


def _refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("case", "failed", "code", "words"),
    [
        ("port", "server", 1, "Connection refused"),
        ("known_hosts", "host key", 2, "is not in"),
        ("user", "login", 2, "refused user"),
        ("src_prefix", "src_prefix", 2, "cannot be listed"),
        ("too_low", "EPN names", 2, "one level too low"),
        ("too_high", "EPN names", 2, "one level too high"),
        ("dest", "dest", 2, "not an existing folder"),
        ("read_only_dest", "dest", 2, "not writable"),
    ],
)
def test_check_names_the_problem_with_its_exit_code(
    cli: Any,
    write_config: Any,
    ready: dict[str, Any],
    tmp_path: Path,
    case: str,
    failed: str,
    code: int,
    words: str,
) -> None:
    values = dict(ready)
    served = Path(ready["src_prefix"])
    if case == "port":
        values["port"] = _refused_port()
    elif case == "known_hosts":
        empty = tmp_path / "known_hosts"
        empty.write_text("")
        values["known_hosts"] = str(empty)
    elif case == "user":
        values["user"] = "nobody-here"
    elif case == "src_prefix":
        values["src_prefix"] = str(served / "missing")
    elif case == "too_low":
        values["src_prefix"] = str(served / "40001a")
    elif case == "too_high":
        values["src_prefix"] = str(served.parent)  # the tests' served folders and sshd's own
    elif case == "dest":
        values["dest"] = str(tmp_path / "nowhere")
    conf = write_config(values)
    guard = read_only_dir(Path(ready["dest"])) if case == "read_only_dest" else nullcontext()
    with guard:
        result, checks = _check(cli, conf)
        table = cli("--config", str(conf), "check")
    assert result == code, checks
    assert checks[failed]["state"] == "fail", checks
    assert words in checks[failed]["detail"], checks[failed]
    assert [c for c in checks.values() if c["state"] == "fail"] == [checks[failed]]
    assert table.exit_code == code
    assert "Error: 1 check failed" in table.stderr
    assert table.stderr.count("\n") == 1  # one line, no traceback


def test_check_smtp_and_portal_refusals_are_setup(
    cli: Any, write_config: Any, ready: dict[str, Any], mail: MailServer, tmp_path: Path
) -> None:
    refusing = PortalServer("ok").start()
    try:
        portal = refusing.config()
        portal["equipment"][0]["password"] = "wrong"
        conf = write_config(
            {
                **ready,
                "alert_to": ["ops@site.example"],
                "smtp_host": "127.0.0.1",
                "smtp_port": mail.port,
                "smtp_starttls": True,
                "smtp_user": SMTP_USER,
                "portal": portal,
            }
        )
        code, checks = _check(cli, conf, env={"ASYNCHY_SMTP_PASSWORD": "wrong"})
    finally:
        refusing.stop()
    assert code == 2
    assert checks["smtp"]["state"] == "fail" and "refused smtp_user" in checks["smtp"]["detail"]
    assert checks["portal"]["state"] == "fail" and "refused" in checks["portal"]["detail"]
    assert "wrong" not in json.dumps(checks)


def test_init_offers_the_check(cli: Any, ready: dict[str, Any], tmp_path: Path) -> None:
    conf = tmp_path / "new.yaml"
    args = [f"--{k.replace('_', '-')}={v}" for k, v in ready.items() if k != "known_hosts"]
    result = cli(
        "--known-hosts",
        str(ready["known_hosts"]),
        "init",
        "--config-path",
        str(conf),
        "--no-interactive",
        "--check",
        *args,
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"wrote {conf}\n")
    assert "ok    login " in result.stdout and "ok    src_prefix " in result.stdout
    os.unlink(conf)
    quiet = cli("init", "--config-path", str(conf), "--no-interactive", *args)
    assert quiet.exit_code == 0 and "src_prefix" not in quiet.stdout  # no check unless asked
