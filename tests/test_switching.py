"""Switching from the older tools works on their real files (docs/configuration.md, "Switching").

Fixtures reproduce the originals' formats: HPC ASSyncy's config.yml (every key of its shipped
sample), its ignore.yml and epnalert templates (``epn_details``, ``unknown_epns``); as-walker's
``files`` table (absolute paths, naive local times) and its config.yml; MeRC asynchy's ``epns``
table and its test config without user, keypath and db.  Real sshd, rsync, aiosmtpd and a
loopback portal.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from helpers import FIXED_MTIME, rows, write_file
from mailserver import MailServer
from portal_server import PortalServer
from sshd import Sshd
from test_sync import tree_digest

MELBOURNE = ZoneInfo("Australia/Melbourne")


@pytest.fixture
def mail(tmp_path: Path) -> Iterator[MailServer]:
    server = MailServer(tmp_path).start()  # HPC mailed through port 25 without a login
    yield server
    server.stop()


@pytest.fixture
def portal() -> Iterator[PortalServer]:
    server = PortalServer("ok").start()
    yield server
    server.stop()


def hpc_config(
    tmp_path: Path, sshd: Sshd, served: Path, mail: MailServer, portal: PortalServer
) -> Path:
    """An HPC ASSyncy config with every key of its shipped sample, pointing at the test servers."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "ignore.yml").write_text("previouslySynched:\n- 30004d\n")
    (etc / "epnalert-text.j2").write_text(
        "Site notes: see the wiki\n\n{{ epn_details }}\n\nNo visit details for:\n{{ unknown_epns }}\n"
    )
    (etc / "epnalert-html.j2").write_text(
        "<html><body><pre>{{ epn_details }}\nNo visit details for:\n{{ unknown_epns }}</pre></body></html>\n"
    )
    logs = tmp_path / "log"
    logs.mkdir()
    entry = portal.config()["equipment"][0]
    text = f"""---
comment: "This site's sample config"
epn_cap_map:
    "30003": ny79
    "30004": ab12

ignore: {etc / "ignore.yml"}

equipment:
    - {{ username: '{entry["username"]}', password: '{entry["password"]}', client_name: '{entry["client_name"]}', client_password: '{entry["client_password"]}', id: 1}}

base-url: {portal.url}

epnalert-email-to: to@site.example
epnalert-email-from: from@site.example
epnalert-email-smtp: 127.0.0.1:{mail.port}
epnalert-template-folder: {etc}
epnalert-template-text: epnalert-text.j2
epnalert-template-html: epnalert-html.j2
visit-day-range: 200
key-file: {sshd.client_key}
host: {sshd.host}
destination-root-path: {tmp_path / "scratch"}
sync-frequency-hours: 1
max-tasks: 2
log-level: logging.DEBUG

log-files:
    sync: {logs / "sync.log"}
    epnalert: {logs / "epnalert.log"}
    email: {logs / "epnalert.log"}

# what asynchy needs besides (the test sshd's port, account and known_hosts; the served folder)
port: {sshd.port}
user: {sshd.user}
known_hosts: {sshd.known_hosts}
src_prefix: {served}
db: {tmp_path / "files.db"}
"""
    path = etc / "config.yml"
    path.write_text(text)
    os.chmod(path, 0o600)
    (tmp_path / "scratch").mkdir()
    return path


def test_hpc_assyncy_sample_config_is_read_unchanged(
    tmp_path: Path, sshd: Sshd, served: Path, mail: MailServer, portal: PortalServer, cli: Any
) -> None:
    from asynchy.config import load_settings

    path = hpc_config(tmp_path, sshd, served, mail, portal)
    s = load_settings(config_path=path, env={}, options={})
    assert (s.log_level, s.threads, s.every) == ("DEBUG", 2, 3600.0)
    assert (s.smtp_host, s.smtp_port) == ("127.0.0.1", mail.port)
    assert s.ignore_file == str(tmp_path / "etc" / "ignore.yml")
    assert (s.alert_template_text, s.alert_template_html) == (
        "epnalert-text.j2",
        "epnalert-html.j2",
    )
    assert s.alert_log_file == str(tmp_path / "log" / "epnalert.log")
    # mxsync's layout, filters and permissions, and epnalert's rule, without saying so
    assert s.layout == "{project}/{epn}/data"
    assert (s.include, s.exclude, s.chmod) == ((".info",), (".*",), "Dg+s,ug+w,o-wx,ug+X")
    assert s.alert_only_with_details
    # -v shows every mapping; nothing is an error
    result = cli("-v", "--config", str(path), "walk")
    assert result.exit_code == 0, result.stderr
    for key in (
        "epn_cap_map",
        "key-file",
        "destination-root-path",
        "epnalert-email-smtp",
        "ignore",
    ):
        assert f"HPC ASSyncy key '{key}' read as" in result.stderr
    assert "HPC ASSyncy site: layout '{project}/{epn}/data'" in result.stderr


def test_hpc_assyncy_site_switches_with_watch_once(
    tmp_path: Path, sshd: Sshd, served: Path, mail: MailServer, portal: PortalServer, cli: Any
) -> None:
    """watch --once on HPC's config: mapped EPNs to <root>/<project>/<epn>/data/, ignore.yml and
    unmapped EPNs left alone, one mail from HPC-shaped templates with the portal's details."""
    for epn in ("30001a", "30002b", "30003c", "30004d", "30005e"):
        write_file(served / epn / "data.cbf", b"frames of " + epn.encode())
    write_file(served / "30003c" / ".info", b"kept: mxsync included .info")
    write_file(served / "30003c" / ".hidden", b"left out: mxsync excluded dot-files")
    os.makedirs(served / "30003c" / "sub")
    write_file(served / "30003c" / "sub" / "more.cbf", b"more")
    conf = hpc_config(tmp_path, sshd, served, mail, portal)
    root = tmp_path / "scratch"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCHY_")}
    first = subprocess.run(
        [sys.executable, "-m", "asynchy", "--config", str(conf), "watch", "--once", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert first.returncode == 0, first.stdout + first.stderr
    cycle = json.loads(first.stdout.splitlines()[-1])
    assert (cycle["complete"], cycle["failed"], cycle["alerted"]) == (1, 0, 3)
    copy = root / "ny79" / "30003c" / "data"
    assert (copy / "data.cbf").read_bytes() == b"frames of 30003c"
    assert (copy / ".info").exists() and not (copy / ".hidden").exists()
    assert (copy / "sub" / "more.cbf").exists()
    assert os.stat(copy / "sub").st_mode & stat.S_ISGID  # Dg+s, as mxsync set it
    assert os.stat(copy / "data.cbf").st_mode & stat.S_IWGRP  # ug+w
    assert sorted(p.name for p in root.iterdir()) == ["ny79"]  # nothing else was copied
    statuses = dict(rows(tmp_path / "files.db", "SELECT epn, status FROM epns"))
    assert statuses == {
        "30001a": "pending",
        "30002b": "pending",
        "30003c": "complete",
        "30004d": "complete",  # previouslySynched in the ignore file
        "30005e": "pending",
    }
    assert rows(tmp_path / "files.db", "SELECT dest_path FROM epns WHERE epn = '30003c'") == [
        (str(copy),)
    ]
    # one mail, rendered from HPC's own templates with HPC's two variables
    assert len(mail.received) == 1
    _, to, msg = mail.received[0]
    assert to == ["to@site.example"]
    body = msg.get_body(("plain",))
    assert body is not None
    text = body.get_content().replace("\r\n", "\n")
    assert text.startswith("Site notes: see the wiki\n\n")
    assert (
        "Epn 30001a on 2026-11-19T22:00:00+00:00 is not known.\n"
        "Principal scientist: Ada Lovelace ada@uni.example\n"
        "It includes scientists: \n"
        "Grace Hopper grace@uni.example\n"
        "Alan Turing alan@uni.example\n"
        "** Please add it the config. **\n\n"
    ) in text
    assert "No visit details for:\n['30005e']" in text
    # a second cycle names nobody again; the sync log and the alert log were written
    second = subprocess.run(
        [sys.executable, "-m", "asynchy", "--config", str(conf), "watch", "--once", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout.splitlines()[-1])["alerted"] == 0
    assert len(mail.received) == 1
    sync_log = (tmp_path / "log" / "sync.log").read_text()
    assert "EPN 30003c complete" in sync_log and sync_log.count("watch cycle 1:") == 2
    assert (
        "alert sent to to@site.example naming 3 EPNs"
        in (tmp_path / "log" / "epnalert.log").read_text()
    )


def test_hpc_rule_no_mail_without_any_visit_details(
    tmp_path: Path, sshd: Sshd, served: Path, mail: MailServer, portal: PortalServer, cli: Any
) -> None:
    write_file(served / "30009z" / "data.cbf", b"x")  # the portal knows no visit of it
    conf = hpc_config(tmp_path, sshd, served, mail, portal)
    assert cli("--config", str(conf), "walk").exit_code == 0
    result = cli("--config", str(conf), "alert")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert mail.received == []
    assert rows(tmp_path / "files.db", "SELECT count(*) FROM alerts") == [(0,)]


# ------------------------------------------------------------------ as-walker and MeRC asynchy
def _local(epoch: int) -> str:
    """as-walker's `modified`: a naive local time (here: Melbourne)."""
    return datetime.fromtimestamp(epoch, MELBOURNE).strftime("%Y-%m-%d %H:%M:%S")


JULY = int(datetime(2024, 7, 15, 10, 0, tzinfo=MELBOURNE).timestamp())  # +10:00
JANUARY = int(datetime(2024, 1, 15, 10, 0, tzinfo=MELBOURNE).timestamp())  # +11:00


def aswalker_tree(served: Path) -> None:
    write_file(served / "40001a" / "july.cbf", b"winter data", JULY)
    write_file(served / "40001a" / "sub" / "january.cbf", b"summer data", JANUARY)
    os.symlink("july.cbf", served / "40001a" / "link_to_file")
    os.utime(served / "40001a" / "link_to_file", (JULY, JULY), follow_symlinks=False)
    write_file(served / "40002b" / "jan.cbf", b"more summer", JANUARY + 60)


def aswalker_db(path: Path, served: Path) -> None:
    """as-walker's files{i}.db: every non-folder (symlinks too) with lstat size and local time."""
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE files(epn text, path text unique, size bigint, modified datetime)")
    for epn in ("40001a", "40002b"):
        for dirpath, _dirs, files in os.walk(served / epn):
            for name in files + [d for d in _dirs if os.path.islink(os.path.join(dirpath, d))]:
                full = os.path.join(dirpath, name)
                st = os.lstat(full)
                con.execute(
                    "INSERT INTO files VALUES (?, ?, ?, ?)",
                    (epn, full, st.st_size, _local(int(st.st_mtime))),
                )
    con.commit()
    con.close()


def test_aswalker_databases_merge_equal_to_a_walk_and_sync_at_once(
    tmp_path: Path,
    sshd: Sshd,
    served: Path,
    write_config: Any,
    cli: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Symlinks and July and January times under TZ=Australia/Melbourne, no option given."""
    aswalker_tree(served)
    legacy = tmp_path / "files0.db"
    aswalker_db(legacy, served)
    monkeypatch.setenv("TZ", "Australia/Melbourne")
    dest = tmp_path / "vault"
    dest.mkdir()
    conf = write_config(
        sshd.settings(src_prefix=str(served), db=str(tmp_path / "merged.db"), dest=str(dest))
    )
    merged = cli("--config", str(conf), "merge", str(legacy))
    assert merged.exit_code == 0, merged.stdout + merged.stderr
    assert "legacy local times read in Australia/Melbourne" in merged.stdout
    walked = write_config(
        sshd.settings(src_prefix=str(served), db=str(tmp_path / "walked.db")), name="w.yaml"
    )
    assert cli("--config", str(walked), "walk").exit_code == 0
    query = "SELECT epn, path, size, modified FROM files ORDER BY epn, path"
    assert rows(tmp_path / "merged.db", query) == rows(tmp_path / "walked.db", query)
    assert {k for (k,) in rows(tmp_path / "merged.db", "SELECT DISTINCT kind FROM files")} == {
        "unverified"
    }
    result = cli("--config", str(conf), "sync")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert result.stdout.startswith("sync finished: 2 EPNs complete, 0 failed")
    for epn in ("40001a", "40002b"):
        assert tree_digest(dest / epn) == tree_digest(served / epn)
    assert os.path.islink(dest / "40001a" / "link_to_file")
    kinds = "SELECT epn, path, kind FROM files ORDER BY epn, path"
    assert rows(tmp_path / "merged.db", kinds) == rows(tmp_path / "walked.db", kinds)


def test_merc_epns_table_imports_and_sync_copies_the_pending_ones(
    tmp_path: Path, sshd: Sshd, served: Path, write_config: Any, cli: Any
) -> None:
    write_file(served / "41001a" / "a.cbf", b"pending one")
    write_file(served / "41002b" / "b.cbf", b"pending two")
    write_file(served / "41003c" / "c.cbf", b"done by MeRC")
    merc = tmp_path / "merc.db"
    con = sqlite3.connect(merc)
    con.execute(
        "CREATE TABLE epns(epn TEXT, size, modified, complete INTEGER DEFAULT 0, "
        "bytesTransferred INTEGER DEFAULT 0)"
    )
    con.executemany(
        "INSERT INTO epns VALUES (?, ?, ?, ?, ?)",
        [
            ("41001a", 11, "2024-07-01 10:00:00", 0, 0),
            ("41002b", 11, "2024-07-02 10:00:00", 0, 0),
            ("41003c", 12, "2024-07-03 10:00:00", 1, 12),
        ],
    )
    con.commit()
    con.close()
    dest = tmp_path / "vault"
    dest.mkdir()
    conf = write_config(
        sshd.settings(src_prefix=str(served), db=str(tmp_path / "files.db"), dest=str(dest))
    )
    assert cli("--config", str(conf), "merge", str(merc), "--legacy-timezone", "UTC").exit_code == 0
    result = cli("--config", str(conf), "sync", "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert sorted(json.loads(result.stdout)["complete"]) == ["41001a", "41002b"]
    assert (dest / "41001a" / "a.cbf").read_bytes() == b"pending one"
    assert not (dest / "41003c").exists()
    assert rows(tmp_path / "files.db", "SELECT epn, file_count FROM epns ORDER BY epn") == [
        ("41001a", 1),
        ("41002b", 1),
        ("41003c", 0),
    ]


def test_aswalker_config_keys_are_read(write_config: Any, cli: Any, tmp_path: Path) -> None:
    from asynchy.config import load_settings

    path = tmp_path / "config.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "epns_path": str(tmp_path / "spreadsheets"),
                "hostname": "sftp.synchrotron.example",
                "user": "mx",
                "key_path": str(tmp_path / "key"),
            }
        )
    )
    s = load_settings(config_path=path, env={}, options={})
    assert (s.host, s.user, s.keypath) == ("sftp.synchrotron.example", "mx", str(tmp_path / "key"))
    warned = [n for level, n in s.notes if level >= 30]
    assert len(warned) == 1 and "'epns_path' is not used" in warned[0] and "--epn-file" in warned[0]


def test_merc_config_without_user_keypath_db_is_one_line(cli: Any, tmp_path: Path) -> None:
    path = tmp_path / "invalid.yaml"
    path.write_text("host: sftp.synchrotron.org.au\nport: 22\n")  # MeRC asynchy's own test file
    result = cli("--config", str(path), "walk", "--src-prefix", "/data")
    assert result.exit_code == 2
    assert result.stderr == (
        f"Error: config file {path} lacks user, keypath, db: a MeRC asynchy config names host, "
        "port, user, keypath and db; add the missing ones\n"
    )


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("{project}/{epn}/{site}", "has an unknown field {site}"),
        ("{project}/../{epn}", "must be a relative path without '..'"),
        ("{project}/data", "must hold {epn}"),
    ],
)
def test_bad_layouts_are_refused(
    cli: Any, write_config: Any, tmp_path: Path, layout: str, message: str
) -> None:
    conf = write_config({"host": "local", "layout": layout, "db": str(tmp_path / "f.db")})
    result = cli("--config", str(conf), "status")
    assert result.exit_code == 2
    assert message in result.stderr


def test_destinations_shows_the_layout(cli: Any, write_config: Any, tmp_path: Path) -> None:
    src = tmp_path / "src"
    for epn in ("12282a", "99999z"):
        write_file(src / epn / "x", b"x", FIXED_MTIME)
    conf = write_config(
        {
            "host": "local",
            "src_prefix": str(src),
            "dest": "/srv/vault",
            "db": str(tmp_path / "f.db"),
            "destinations": {"12282": "ny79"},
            "layout": "{project}/{epn}/data",
        }
    )
    assert cli("--config", str(conf), "walk").exit_code == 0
    got = json.loads(cli("--config", str(conf), "destinations", "--format", "json").stdout)
    assert {r["epn"]: r["dest_path"] for r in got} == {
        "12282a": "/srv/vault/ny79/12282a/data",
        "99999z": "/srv/vault/99999z/data",  # unmapped: the parts that need no project
    }
