"""Nobody gets in through the copy (docs/security.md): a group member who can write into the
destination, a copy that would land in another EPN's folder, a hostile server's names, ssh
options the service account's own ssh config would add.  Real sshd, real rsync."""

from __future__ import annotations

import json
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from helpers import FIXED_MTIME, rows, write_file
from sshd import Sshd
from test_alert import mail as mail
from test_sync import env as env
from test_sync import sync, tree_digest, walk


def _conf(env: dict[str, Any], write_config: Any, sshd: Sshd, **values: Any) -> dict[str, Any]:
    conf = write_config(
        sshd.settings(
            src_prefix=str(env["src"]), db=str(env["db"]), dest=str(env["dest"]), **values
        ),
        name="security.yaml",
    )
    return {**env, "conf": conf}


# ------------------------------------------------------------------ planted symlinks (3)
@pytest.mark.parametrize("planted", ["epn", "project", "temp"])
def test_a_symlink_planted_under_dest_is_never_followed(
    cli: Any, env: dict[str, Any], write_config: Any, sshd: Sshd, tmp_path: Path, planted: str
) -> None:
    """The security review planted `dest/40001a -> /elsewhere/t1` and `dest/projC ->
    /elsewhere/t2`: sync marked both complete with the data in /elsewhere.  Now every folder
    asynchy creates or enters under dest is opened without following symlinks: a setup error
    naming the path, nothing charged, nothing written through it."""
    site = _conf(env, write_config, sshd, destinations={"40002": "projC"}, copy_unmapped=True)
    for epn in ("40001a", "40002b"):
        write_file(env["src"] / epn / "frames" / "f.cbf", b"data " + epn.encode())
    walk(cli, site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link, epn = {
        "epn": (env["dest"] / "40001a", "40001a"),
        "project": (env["dest"] / "projC", "40002b"),
        "temp": (env["dest"] / "projC" / ".asynchy-tmp", "40002b"),
    }[planted]
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(elsewhere, link)
    result = sync(cli, site, "--epn", epn)
    assert result.exit_code == 2, result.stdout + result.stderr
    assert result.stderr.startswith(f"Error: {link} is a symlink: ")
    assert result.stderr.count("\n") == 1
    assert list(elsewhere.iterdir()) == []  # nothing written through it
    assert rows(env["db"], "SELECT status, failures FROM epns WHERE epn = ?", epn) == [
        ("pending", 0)
    ]
    os.unlink(link)
    done = sync(cli, site, "--epn", epn)
    assert done.exit_code == 0, done.stdout + done.stderr
    copy = env["dest"] / ("40001a" if epn == "40001a" else "projC/40002b")
    assert tree_digest(copy) == tree_digest(env["src"] / epn)


@pytest.mark.parametrize("partial", [False, True])
def test_a_temporary_folder_swapped_for_a_symlink_after_the_check_is_not_followed(
    cli: Any, env: dict[str, Any], write_config: Any, sshd: Sshd, tmp_path: Path, partial: bool
) -> None:
    """rsync resolves --temp-dir and --partial-dir again for every file: a group member who
    renames `.asynchy-tmp` and plants a symlink there after asynchy checked it would have rsync
    write through the symlink.  rsync is given them through the folder asynchy opened
    (/proc/self/fd/N/<name>).  An rsync wrapper makes the swap just before rsync starts (before
    this, rsync looked for its temporary folder in `elsewhere`)."""
    write_file(env["src"] / "40009a" / "frames" / "f.cbf", b"the data", FIXED_MTIME)
    elsewhere, moved = tmp_path / "elsewhere", tmp_path / "moved"
    elsewhere.mkdir()
    own = env["dest"] / ".asynchy-tmp"
    wrapper = tmp_path / "rsync-swapping"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'if [ -d "{own}" ] && [ ! -L "{own}" ] && [ ! -e "{moved}" ]; then\n'
        f'  mv "{own}" "{moved}" && ln -s "{elsewhere}" "{own}"\n'
        "fi\n"
        f'exec {shutil.which("rsync")} "$@"\n'
    )
    wrapper.chmod(0o755)
    site = _conf(env, write_config, sshd, rsync=str(wrapper))
    walk(cli, site)
    result = sync(cli, site, *(["--partial"] if partial else []))
    assert moved.is_dir()  # the swap was made
    assert result.exit_code == 0, result.stdout + result.stderr
    assert list(elsewhere.iterdir()) == []  # nothing written through the symlink
    assert tree_digest(env["dest"] / "40009a") == tree_digest(env["src"] / "40009a")
    copy = rows(env["db"], "SELECT argv FROM transfers")[0][0]
    assert "/proc/self/fd/" not in copy and f"--temp-dir={own}/" in copy  # recorded as built
    assert (f"--partial-dir={own}/" in copy) is partial


def test_verify_does_not_follow_a_symlink_planted_over_a_complete_copy(
    cli: Any, env: dict[str, Any], tmp_path: Path
) -> None:
    write_file(env["src"] / "40005a" / "f.cbf", b"data", FIXED_MTIME)
    walk(cli, env)
    assert sync(cli, env).exit_code == 0
    elsewhere = tmp_path / "elsewhere"
    (env["dest"] / "40005a").rename(elsewhere)  # the same files, now somewhere else
    os.symlink(elsewhere, env["dest"] / "40005a")
    result = cli("--config", str(env["conf"]), "verify", "--json")
    assert result.exit_code == 3
    differ = json.loads(result.stdout)["differ"]
    assert differ[0]["epn"] == "40005a" and "is a symlink" in differ[0]["reason"]


# ------------------------------------------------------------------ overlapping destinations (4)
def test_a_copy_that_would_land_in_another_epn_s_folder_is_refused(
    cli: Any, env: dict[str, Any], write_config: Any, sshd: Sshd
) -> None:
    """With copy_unmapped, a server folder `projD` (holding `12400a/good.txt`) was copied into
    dest/projD, over the complete EPN 12400a mapped there; only verify noticed.  Folders must be
    disjoint: both are refused at plan time with one line naming the other, until one is
    skipped."""
    site = _conf(env, write_config, sshd, destinations={"12400": "projD"}, copy_unmapped=True)
    write_file(env["src"] / "12400a" / "good.txt", b"the real data")
    write_file(env["src"] / "projD" / "12400a" / "good.txt", b"an impostor")
    result = cli("--config", str(site["conf"]), "walk")
    assert result.exit_code == 0
    first = sync(cli, site, "--json")
    assert first.exit_code == 3, first.stdout
    refused = {r["epn"]: r["reason"] for r in json.loads(first.stdout)["refused"]}
    assert set(refused) == {"12400a", "projD"}
    assert "holds EPN 12400a's folder" in refused["projD"] or "project projD" in refused["projD"]
    assert "lies inside EPN projD's folder" in refused["12400a"]
    assert not (env["dest"] / "projD").exists()  # nothing copied
    assert rows(env["db"], "SELECT max(failures) FROM epns") == [(0,)]
    text = sync(cli, site).stdout
    assert "  refused: projD: its folder " in text and "asynchy skip one of them" in text
    assert (
        cli("--config", str(site["conf"]), "skip", "projD", "--reason", "not an EPN").exit_code == 0
    )
    second = sync(cli, site)
    assert second.exit_code == 0, second.stdout
    assert (env["dest"] / "projD" / "12400a" / "good.txt").read_bytes() == b"the real data"


# ------------------------------------------------------------------ ssh options (5)
class EmptyAgent:
    """An ssh-agent on a Unix socket that holds no key and counts who asked it."""

    def __init__(self, path: Path) -> None:
        import socket
        import threading

        self.path, self.asked = path, 0
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import struct

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.asked += 1
            with conn:
                while (head := conn.recv(4)) and len(head) == 4:
                    conn.recv(struct.unpack(">I", head)[0])
                    conn.sendall(struct.pack(">IBI", 5, 12, 0))  # IDENTITIES_ANSWER, no keys

    def close(self) -> None:
        self.sock.close()


def test_nothing_of_this_host_reaches_the_server_whatever_its_ssh_config_says(
    cli: Any,
    env: dict[str, Any],
    write_config: Any,
    sshd: Sshd,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A `Host *` block with ForwardAgent and LocalCommand in the service account's
    ~/.ssh/config applied to the facility connection, and SSH_AUTH_SOCK reached ssh: the agent
    was offered to an untrusted server.  Now no ssh config is read unless ssh_config names one,
    forwarding is pinned off, and the agent is used only when the settings allow it."""
    marker = tmp_path / "local-command-ran"
    ssh_dir = Path(os.environ["HOME"]) / ".ssh"
    ssh_dir.mkdir(exist_ok=True)
    (ssh_dir / "config").write_text(
        f"Host *\n  ForwardAgent yes\n  PermitLocalCommand yes\n  LocalCommand touch {marker}\n"
    )
    agent = EmptyAgent(tmp_path / "agent.sock")
    monkeypatch.setenv("SSH_AUTH_SOCK", str(agent.path))
    try:
        write_file(env["src"] / "41000a" / "f.cbf", b"data")
        walk(cli, env)
        result = sync(cli, env)
        assert result.exit_code == 0, result.stdout + result.stderr
        assert not marker.exists()  # ~/.ssh/config was not read
        assert agent.asked == 0  # keypath is set: neither paramiko nor ssh asked the agent
        opted = _conf(env, write_config, sshd, ssh_agent="yes")
        write_file(env["src"] / "41001a" / "f.cbf", b"more")
        assert cli("--config", str(opted["conf"]), "walk").exit_code == 0
        assert sync(cli, opted).exit_code == 0
        assert agent.asked >= 1  # with ssh_agent: yes it is asked (so the check above can fail)
    finally:
        agent.close()


# ------------------------------------------------------------------ the small ones (6)
def test_the_portal_needs_https_beyond_this_machine_and_can_take_the_token_in_a_header(
    cli: Any, write_config: Any, tmp_path: Path
) -> None:
    from portal_server import PortalServer

    far = {
        "base_url": "http://portal.example.org",
        "equipment": [
            {
                "id": 1,
                "username": "u",
                "password_env": "P",
                "client_name": "c",
                "client_password_env": "Q",
            }
        ],
    }
    conf = write_config({"portal": far, "db": str(tmp_path / "x.db")})
    result = cli("--config", str(conf), "config")
    assert result.exit_code == 2
    assert "base_url must be https://" in result.stderr
    server = PortalServer("ok").start()
    try:
        from datetime import UTC, datetime, timedelta

        from asynchy.portal import Portal

        now = datetime.now(UTC)
        visits, errors = Portal(server.config(token_in="header")).visits(
            now - timedelta(days=30), now
        )
        assert errors == [] and visits
        got = [r for r in server.requests if r["method"] == "GET"]
        assert got and all(r["auth"].startswith("Bearer token-") for r in got)
        assert all("access_token" not in r["query"] for r in got)  # not in the URL
    finally:
        server.stop()


def test_the_schema_upgrade_backup_is_as_private_as_the_database(tmp_path: Path) -> None:
    import stat

    from asynchy.db import Database, backup_sqlite, open_database

    path = tmp_path / "files.db"
    db = open_database(str(path))
    try:
        assert isinstance(db, Database)
        backup = backup_sqlite(db, "0007")
    finally:
        db.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600


def test_secrets_in_files_others_can_read_get_a_warning(
    cli: Any, write_config: Any, tmp_path: Path
) -> None:
    conf = write_config({"db": "postgresql://asynchy:db-secret@127.0.0.1:1/x"})
    os.chmod(conf, 0o644)
    result = cli("--config", str(conf), "-v", "config")
    assert f"config file {conf} holds a database password and can be read by other users" in (
        result.stderr
    )
    assert "db-secret" not in result.stderr + result.stdout
    os.chmod(conf, 0o600)
    assert "can be read by other users" not in cli("--config", str(conf), "-v", "config").stderr
    secret = tmp_path / "smtp-password"
    secret.write_text("smtp-secret\n")
    os.chmod(secret, 0o644)
    mail = write_config(
        {"alert_to": ["ops@example.org"], "smtp_password_file": str(secret), "db": "x.db"},
        name="mail.yaml",
    )
    checked = cli("--config", str(mail), "check", "--json")
    assert f"smtp_password_file {secret} can be read by other users: chmod 600" in checked.stderr
    assert "smtp-secret" not in checked.stderr + checked.stdout


# ------------------------------------------------------------------ hostile names, everywhere
HOSTILE_EPNS: list[bytes] = [
    b"55555a<img src=x onerror=alert(8)>",
    b"<svg onload=alert(1)>",
    b"12348a\r\nBcc: evil@example.org\r\n",
    b"12349a\x1b[2J\x1b[31mred\x07",
    b"-rf --delete",
    b"$(touch PWNED-epn)",
    b"5" * 5 + b"b" * 250,  # 255 bytes
    b"12350\xff\xfe",
    b"   ",
]
HOSTILE_FILE = b"frame\n\x1b[31m$(touch PWNED-file).cbf"
RAW_CONTROLS = ("\x1b", "\x07", "\r")


class _Tags(HTMLParser):
    """Every start tag of a page, with its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _scripted(html: str) -> list[str]:
    """Elements that would run something: a script, or any on* attribute."""
    parser = _Tags()
    parser.feed(html)
    return [
        tag
        for tag, attrs in parser.tags
        if tag == "script" or any(name.startswith("on") for name in attrs)
    ]


def test_hostile_names_are_exact_in_the_copy_and_escaped_for_people(
    cli: Any,
    env: dict[str, Any],
    write_config: Any,
    sshd: Sshd,
    mail: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every name kind the security review tried, through walk, sync, epns, show, status, report,
    alert (the shipped templates and HPC ASSyncy's names), CSV and the log: nothing runs, every
    name is exact in the copy and the database, and no human-facing line carries a raw control
    character or live markup."""
    import portal_server
    from portal_server import PortalServer
    from test_alert import SMTP_PASSWORD, SMTP_USER

    from asynchy.names import decode_name

    src = bytes(env["src"])
    for epn in HOSTILE_EPNS:
        write_file(Path(os.fsdecode(src + b"/" + epn + b"/" + HOSTILE_FILE)), b"x" * 7)
    log = tmp_path / "asynchy.log"
    sync_conf = write_config(
        sshd.settings(
            src_prefix=str(env["src"]), db=str(env["db"]), dest=str(env["dest"]), log_file=str(log)
        ),
        name="hostile.yaml",
    )
    run = lambda *args, **kw: cli("--config", str(sync_conf), *args, **kw)  # noqa: E731
    assert run("walk").exit_code == 0
    synced = run("sync")
    assert synced.exit_code == 0, synced.stdout + synced.stderr
    for epn in HOSTILE_EPNS:  # exact in the copy
        copy = Path(os.fsdecode(bytes(env["dest"]) + b"/" + epn))
        assert tree_digest(copy) == tree_digest(Path(os.fsdecode(src + b"/" + epn)))
    stored = [r[0] for r in rows(env["db"], "SELECT epn FROM epns")]
    assert sorted(decode_name(s) for s in stored) == sorted(HOSTILE_EPNS)  # exact in the database
    human = [
        run("epns"),
        run("status"),
        *(run("show", "--", s) for s in stored),
        run("verify"),
        run("sql", "SELECT epn, dest_path FROM epns"),
        run("reset", "--dry-run", "--", stored[0]),
    ]
    for result in human:
        assert result.exit_code in (0, 3), result.stdout + result.stderr
        for raw in RAW_CONTROLS:
            assert raw not in result.stdout + result.stderr, (raw, result.stdout)
    typo = run("show", "--", stored[3] + "x")  # "did you mean" names a hostile EPN
    assert typo.exit_code == 2 and typo.stderr.count("\n") == 1
    assert not any(raw in typo.stderr for raw in RAW_CONTROLS)
    import csv as csv_module
    import io

    out = run("epns", "--csv").stdout_bytes.decode()  # exact bytes (click's .stdout folds \r\n)
    parsed = list(csv_module.reader(io.StringIO(out, newline="")))
    assert sorted(r[0] for r in parsed[1:] if r) == sorted(stored)
    safe = run("epns", "--csv-safe").stdout
    assert "\n'-rf --delete," in safe and "\n-rf --delete," not in safe
    page = tmp_path / "report.html"
    assert run("report", "--html", str(page)).exit_code == 0
    assert _scripted(page.read_text()) == []
    # the log: every record starts with its time; nothing raw; no forged line
    text = log.read_text(encoding="utf-8", errors="surrogateescape")
    for line in text.splitlines():
        assert line.startswith(("2", "    ")), line
        assert not line.lstrip().startswith("Bcc:"), line
    assert not any(raw in text for raw in RAW_CONTROLS)
    # alerts: the portal's fields and the server's names, shipped templates and HPC's names
    hostile_visit = {
        "epn": HOSTILE_EPNS[0].decode(),
        "start_time": "2026-11-20T09:00:00Z",
        "end_time": "2026-11-21T09:00:00Z",
        "principal_scientist": {
            "first_names": "<script>alert(7)</script>",
            "last_name": "<img src=x onerror=alert(6)>",
            "email": "x@y.example",
        },
        "data_scientists": [],
    }
    monkeypatch.setitem(portal_server.VISITS, "1", [hostile_visit])
    hpc = tmp_path / "hpc-templates"
    hpc.mkdir()
    (hpc / "epnalert-text.j2").write_text("{{ epn_details }}\n{{ unknown_epns }}\n")
    (hpc / "epnalert-html.j2").write_text(
        "<html><body><pre>{{ epn_details }}\n{{ unknown_epns }}</pre></body></html>\n"
    )
    portal = PortalServer("ok").start()
    try:
        for n, templates in enumerate(
            [
                {},
                {
                    "alert_templates": str(hpc),
                    "alert_template_text": "epnalert-text.j2",
                    "alert_template_html": "epnalert-html.j2",
                },
            ]
        ):
            conf = write_config(
                sshd.settings(
                    src_prefix=str(env["src"]),
                    db=str(tmp_path / f"alert{n}.db"),
                    destinations={"99999": "nobody"},
                    alert_to=["ops@site.example"],
                    smtp_host="127.0.0.1",
                    smtp_port=mail.port,
                    smtp_starttls=True,
                    smtp_user=SMTP_USER,
                    portal=portal.config(),
                    **templates,
                ),
                name=f"alert{n}.yaml",
            )
            sent = cli("--config", str(conf), "alert", env={"ASYNCHY_SMTP_PASSWORD": SMTP_PASSWORD})
            assert sent.exit_code == 0, sent.stdout + sent.stderr
            assert not any(raw in sent.stdout + sent.stderr for raw in RAW_CONTROLS)
            _from, _to, msg = mail.received[-1]
            assert msg["Bcc"] is None and msg["To"] == "ops@site.example"
            html = msg.get_body(("html",)).get_content()
            assert _scripted(html) == [], html
            assert "&lt;img src=x onerror=alert(8)&gt;" in html or "&lt;img" in html
    finally:
        portal.stop()
    pwned = [p for p in (Path.cwd(), env["tmp"], env["src"], Path("/")) if list(p.glob("PWNED*"))]
    assert pwned == []  # nothing ran


def test_rsync_below_3_5_0_is_used_with_a_warning_naming_the_cve(
    cli: Any, env: dict[str, Any], tmp_path: Path
) -> None:
    """3.4.1-3.4.x were accepted with an INFO line; the receiver's chdir symlink race
    (CVE-2026-53796) is fixed only in 3.5.0, and asynchy runs rsync inside the destination."""
    real = shutil.which("rsync")
    assert real is not None
    old = tmp_path / "rsync-3.4.4"
    old.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "--version" ]; then echo "rsync  version 3.4.4  protocol version 32"; exit 0; fi\n'
        f'exec {real} "$@"\n'
    )
    old.chmod(0o755)
    write_file(env["src"] / "42000a" / "f.cbf", b"data")
    walk(cli, env)
    result = cli("--config", str(env["conf"]), "--rsync", str(old), "sync")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "CVE-2026-53796" in result.stderr and "upgrade rsync to >= 3.5.0" in result.stderr
    checked = json.loads(
        cli("--config", str(env["conf"]), "--rsync", str(old), "check", "--json").stdout
    )
    state = {c["check"]: c for c in checked["checks"]}["rsync"]
    assert state["state"] == "warn" and "CVE-2026-53796" in state["detail"]
