"""`asynchy alert` end to end: the server listed over the real sshd, a real SMTP server with
STARTTLS and login (aiosmtpd), a real HTTP server playing the facility portal."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from email.message import EmailMessage
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from helpers import rows
from mailserver import MailServer
from portal_server import PortalServer
from sshd import Sshd

SMTP_USER, SMTP_PASSWORD = "mover", "s3cret-smtp-pw"


@pytest.fixture
def mail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MailServer]:
    server = MailServer(tmp_path, user=SMTP_USER, password=SMTP_PASSWORD).start()
    monkeypatch.setenv("SSL_CERT_FILE", str(server.cert))  # trust the test server's certificate
    yield server
    server.stop()


@pytest.fixture
def portal() -> Iterator[PortalServer]:
    server = PortalServer("401-once").start()
    yield server
    server.stop()


@pytest.fixture
def site(
    sshd: Sshd, served: Path, tmp_path: Path, write_config: Any, mail: MailServer
) -> dict[str, Any]:
    """Five EPN folders on the server; 30003c is mapped to a project, the others are not."""
    for epn in ("30001a", "30002b", "30003c", "30004d", "30005e"):
        (served / epn).mkdir()
        (served / epn / "data.cbf").write_bytes(b"x")
    (served / "README.txt").write_text("not an EPN folder")
    values = sshd.settings(
        src_prefix=str(served),
        db=str(tmp_path / "files.db"),
        destinations={"30003": "ny79"},
        alert_to=["ops@site.example", "pi-desk@site.example"],
        alert_from="asynchy@mover.site.example",
        smtp_host="127.0.0.1",
        smtp_port=mail.port,
        smtp_starttls=True,
        smtp_user=SMTP_USER,
    )
    return {
        "values": values,
        "conf": write_config(values),
        "db": tmp_path / "files.db",
        "tmp": tmp_path,
    }


def run_alert(cli: Any, conf: Path, *args: str, password: str | None = SMTP_PASSWORD) -> Any:
    env = {"ASYNCHY_SMTP_PASSWORD": password} if password is not None else None
    return cli("--config", str(conf), "alert", *args, env=env)


class _Tables(HTMLParser):
    """The rows of every <table> in an HTML document, as lists of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "br" and self._cell is not None:
            self._cell.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def parts(msg: EmailMessage) -> tuple[str, str]:
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert text is not None and html is not None
    return text.get_content().replace("\r\n", "\n"), html.get_content().replace("\r\n", "\n")


def test_alert_names_unmapped_epns_once_with_portal_details(
    cli: Any, site: dict[str, Any], mail: MailServer, portal: PortalServer, write_config: Any
) -> None:
    conf = write_config({**site["values"], "portal": portal.config()})
    result = run_alert(cli, conf)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(
        "alert sent naming 4 EPNs (4 unmapped on the server, 0 named before)"
    )
    assert len(mail.received) == 1
    assert mail.logins == [(SMTP_USER, True)]  # logged in, after STARTTLS (aiosmtpd requires it)
    sender, recipients, msg = mail.received[0]
    assert sender == "asynchy@mover.site.example"
    assert recipients == ["ops@site.example", "pi-desk@site.example"]
    assert msg["Subject"] == "Unknown ownership of EPNs"
    assert msg.get_content_type() == "multipart/alternative"
    text, html = parts(msg)
    # The text part: every unmapped EPN, the mapped one and the plain file left out.
    for epn in ("30001a", "30002b", "30004d", "30005e"):
        assert epn in text
    assert "30003c" not in text and "README" not in text
    assert "Principal:        Ada Lovelace <ada@uni.example>" in text
    assert "    - Grace Hopper <grace@uni.example>" in text
    assert "Visit:            2026-11-19 22:00 UTC to 2026-11-20 22:00 UTC" in text
    assert '"30004": <project folder>' in text
    # The HTML part: a table of visits, and the EPNs without a visit.
    parser = _Tables()
    parser.feed(html)
    visits, others = parser.tables
    assert visits[0] == ["EPN", "Start", "End", "Principal scientist", "Data scientists"]
    assert visits[1] == [
        "30001a",
        "2026-11-19 22:00 UTC",
        "2026-11-20 22:00 UTC",
        "Ada Lovelace\nada@uni.example",
        "Grace Hopper <grace@uni.example>\nAlan Turing <alan@uni.example>",
    ]
    assert visits[2][:4] == [
        "30002b",
        "2026-11-22 09:00 UTC",
        "2026-11-22 21:00 UTC",
        "Rosalind Franklin\nrosalind@uni.example",
    ]
    assert [c for c in others[0] if c] == ["30004d", "30005e"]
    # The portal: basic auth with the client, form login, and one re-login after the 401.
    posts = [r for r in portal.requests if r["method"] == "POST"]
    assert len(posts) == 2 and posts[0]["form"]["grant_type"] == ["password"]
    gets = [r for r in portal.requests if r["method"] == "GET"]
    assert [g["query"]["access_token"] for g in gets] == [["token-1"], ["token-2"]]
    assert gets[0]["path"] == "/api/v1/equipment/1/visits" and "start_time" in gets[0]["query"]
    # Recorded: the alerted EPNs, and the visits (for reports).
    assert rows(site["db"], "SELECT epn, recipients FROM alerts ORDER BY epn") == [
        (epn, "ops@site.example, pi-desk@site.example")
        for epn in ("30001a", "30002b", "30004d", "30005e")
    ]
    assert rows(
        site["db"],
        "SELECT epn, principal_last_name, json_array_length(data_scientists) FROM visits ORDER BY epn",
    ) == [("30001a", "Lovelace", 2), ("30002b", "Franklin", 0)]
    # The next run names nobody again: nothing is sent.
    again = run_alert(cli, conf)
    assert again.exit_code == 0, again.stderr
    assert again.stdout.startswith(
        "no alert needed: 4 unmapped EPNs on the server, all named in earlier alerts"
    )
    assert len(mail.received) == 1
    # A new unmapped EPN appears: only it is named.
    (Path(site["values"]["src_prefix"]) / "30006f").mkdir()
    third = run_alert(cli, conf, "--json")
    assert json.loads(third.stdout)["alerted"] == ["30006f"]
    assert len(mail.received) == 2
    # The secret never shows.
    for output in (result.stdout, result.stderr, again.stdout, third.stdout):
        assert SMTP_PASSWORD not in output and "portal-secret" not in output


def test_realert_days(cli: Any, site: dict[str, Any], mail: MailServer) -> None:
    assert run_alert(cli, site["conf"]).exit_code == 0
    import sqlite3

    with sqlite3.connect(site["db"]) as con:  # the first alert went out ten days ago
        con.execute("UPDATE alerts SET sent_at = datetime('now', '-10 days')")
    assert run_alert(cli, site["conf"], "--realert-days", "30").stdout.startswith("no alert needed")
    result = run_alert(cli, site["conf"], "--realert-days", "7")
    assert result.stdout.startswith("alert sent naming 4 EPNs")
    assert len(mail.received) == 2
    assert rows(site["db"], "SELECT count(*) FROM alerts") == [(8,)]


@pytest.mark.parametrize("mode", ["timeout", "bad-json", "500"])
def test_alert_goes_out_without_visit_details_when_the_portal_fails(
    cli: Any, site: dict[str, Any], mail: MailServer, write_config: Any, mode: str
) -> None:
    portal = PortalServer(mode, delay=3).start()
    try:
        conf = write_config({**site["values"], "portal": portal.config(timeout=1)})
        result = run_alert(cli, conf)
    finally:
        portal.stop()
    assert result.exit_code == 0, result.stderr
    expected = {
        "timeout": "no answer from http://127.0.0.1",
        "bad-json": "the portal's answer is not JSON",
        "500": "the portal answered HTTP 500",
    }[mode]
    assert f"portal: portal visits of equipment 1: {expected}" in result.stdout
    text, _ = parts(mail.received[0][2])
    assert "Without visit details (the facility portal could not be asked):" in text
    assert expected in text and "Principal" not in text
    assert rows(site["db"], "SELECT count(*) FROM visits") == [(0,)]
    assert rows(site["db"], "SELECT count(*) FROM alerts") == [(4,)]


def test_dry_run_prints_the_message_and_records_nothing(
    cli: Any, site: dict[str, Any], mail: MailServer
) -> None:
    html = site["tmp"] / "preview.html"
    result = run_alert(cli, site["conf"], "--dry-run", "--html", str(html), password=None)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == (
        "alert (dry run): 4 EPNs, to ops@site.example, pi-desk@site.example; nothing sent, "
        "nothing recorded"
    )
    assert "4 EPNs on " in result.stdout and "no destination mapping" in result.stdout  # the text
    assert "Content-Type" not in result.stdout and "=3D" not in result.stdout  # not raw MIME
    assert lines[-1].startswith("[HTML part: ") and f"written to {html}" in lines[-1]
    assert html.read_text().lstrip().startswith("<!DOCTYPE html>") or "<html" in html.read_text()
    assert mail.received == [] and mail.logins == []
    assert rows(site["db"], "SELECT count(*) FROM alerts") == [(0,)]


def test_dry_run_needs_no_recipients(cli: Any, site: dict[str, Any], write_config: Any) -> None:
    values = {k: v for k, v in site["values"].items() if k != "alert_to"}
    conf = write_config(values, name="noto.yaml")
    result = run_alert(cli, conf, "--dry-run", password=None)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("alert (dry run): 4 EPNs, to (alert_to not set);")
    refused = run_alert(cli, conf, password=None)
    assert refused.exit_code == 2 and "alert_to is not set" in refused.stderr


def test_smtp_refusals_are_one_line_and_record_nothing(
    cli: Any, site: dict[str, Any], mail: MailServer
) -> None:
    wrong = run_alert(cli, site["conf"], password="wrong")
    assert wrong.exit_code == 1
    assert wrong.stderr.strip().startswith(
        f"Error: SMTP server 127.0.0.1:{mail.port} refused the login of mover: 535"
    )
    assert "wrong" not in wrong.stderr
    mail.handler.refuse_rcpt = {"ops@site.example", "pi-desk@site.example"}
    refused = run_alert(cli, site["conf"])
    assert refused.exit_code == 1
    assert (
        "refused every recipient (ops@site.example, pi-desk@site.example); check alert_to"
        in refused.stderr
    )
    mail.handler.refuse_rcpt = set()
    mail.handler.refuse_data = "554 5.7.1 message rejected as spam"
    spam = run_alert(cli, site["conf"])
    assert spam.exit_code == 1
    assert "refused the message: 554 5.7.1 message rejected as spam" in spam.stderr
    mail.stop()
    down = run_alert(cli, site["conf"])
    assert down.exit_code == 1 and "Connection refused" in down.stderr
    assert rows(site["db"], "SELECT count(*) FROM alerts") == [(0,)]
    assert len(down.stderr.strip().splitlines()) == 1


def test_templates_can_be_replaced_and_a_broken_one_is_named(
    cli: Any, site: dict[str, Any], mail: MailServer, write_config: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "alert.txt.j2").write_text(
        "Hello team,\n{% for e in epns %}* {{ e.epn }} (number {{ e.number }})\n{% endfor %}"
    )
    conf = write_config(
        {**site["values"], "alert_templates": str(folder), "alert_subject": "EPNs to claim"}
    )
    assert run_alert(cli, conf).exit_code == 0
    msg = mail.received[0][2]
    text, html = parts(msg)
    assert msg["Subject"] == "EPNs to claim"
    assert text.startswith("Hello team,\n* 30001a (number 30001)\n")
    assert "<table" in html  # the shipped HTML template, not replaced
    (folder / "alert.html.j2").write_text("<p>{% for e in epns %}{{ e.epn }}{% endfor %</p>\n")
    (Path(site["values"]["src_prefix"]) / "30007g").mkdir()
    broken = run_alert(cli, conf)
    assert broken.exit_code == 2
    assert broken.stderr.strip() == (
        f"Error: alert template {folder / 'alert.html.j2'} line 1: expected token 'end of statement block', "
        "got '%'; fix the template"
    )
    (folder / "alert.html.j2").write_text(
        "<p>{{ epns[0].owner }}</p>\n"
    )  # a name the context lacks
    unknown = run_alert(cli, conf)
    assert unknown.exit_code == 2
    assert (
        "alert.html.j2 cannot be rendered: 'dict object' has no attribute 'owner'" in unknown.stderr
    )
    assert len(mail.received) == 1
    assert rows(site["db"], "SELECT count(*) FROM alerts WHERE epn = '30007g'") == [(0,)]


def test_names_are_escaped_in_the_html_part(
    cli: Any, site: dict[str, Any], mail: MailServer
) -> None:
    (Path(site["values"]["src_prefix"]) / "40000<b>x").mkdir()
    assert run_alert(cli, site["conf"]).exit_code == 0
    text, html = parts(mail.received[0][2])
    assert "40000<b>x" in text
    assert "<code>40000&lt;b&gt;x</code>" in html and "<b>x" not in html


def test_configuration_mistakes(cli: Any, site: dict[str, Any], write_config: Any) -> None:
    in_clear = write_config({**site["values"], "smtp_password": "x"}, name="clear.yaml")
    result = cli("--config", str(in_clear), "alert")
    assert result.exit_code == 2
    assert (
        "key 'smtp_password' is not allowed" in result.stderr
        and "ASYNCHY_SMTP_PASSWORD" in result.stderr
    )
    no_password = run_alert(cli, site["conf"], password=None)
    assert no_password.exit_code == 2
    assert (
        "smtp_user is set but no password: set ASYNCHY_SMTP_PASSWORD or smtp_password_file"
        in no_password.stderr
    )
    no_to = write_config(
        {k: v for k, v in site["values"].items() if k != "alert_to"}, name="noto.yaml"
    )
    assert "alert_to is not set" in cli("--config", str(no_to), "alert").stderr
    bad_to = write_config({**site["values"], "alert_to": "not an address"}, name="badto.yaml")
    result = cli("--config", str(bad_to), "alert")
    assert result.exit_code == 2 and "key 'alert_to' must be an e-mail address" in result.stderr


def test_password_from_a_file(
    cli: Any, site: dict[str, Any], mail: MailServer, write_config: Any, tmp_path: Path
) -> None:
    secret = tmp_path / "smtp-password"
    secret.write_text(SMTP_PASSWORD + "\n")
    os.chmod(secret, 0o600)
    conf = write_config({**site["values"], "smtp_password_file": str(secret)})
    assert run_alert(cli, conf, password=None).exit_code == 0
    assert mail.logins == [(SMTP_USER, True)]


def test_a_password_never_crosses_the_network_in_clear() -> None:
    from asynchy.alert import Smtp
    from asynchy.errors import ConfigError

    with pytest.raises(
        ConfigError, match=r"would cross the network to mail\.example\.org in clear"
    ):
        Smtp(host="mail.example.org", user="u", password="p").check()
    Smtp(host="mail.example.org", user="u", password="p", starttls=True).check()
    Smtp(host="127.0.0.1", user="u", password="p").check()  # a relay on this host


def test_destinations_lists_mapped_and_unmapped(
    cli: Any, tmp_path: Path, write_config: Any
) -> None:
    src = tmp_path / "src"
    for epn in ("12282a", "12283b", "99999z"):
        (src / epn).mkdir(parents=True)
    conf = write_config(
        {
            "host": "local",
            "src_prefix": str(src),
            "db": str(tmp_path / "f.db"),
            "dest": "/vault",
            "destinations": {"12282": "ny79", "99999": "/other/ab12"},
        }
    )
    assert cli("--config", str(conf), "walk").exit_code == 0
    result = cli("--config", str(conf), "destinations", "--format", "csv")
    assert result.stdout.splitlines() == [
        "epn,number,mapped,folder,copied,dest_path,status",
        "12282a,12282,true,ny79,true,/vault/ny79/12282a,pending",
        "12283b,12283,false,,false,/vault/12283b,pending",
        "99999z,99999,true,/other/ab12,true,/other/ab12/99999z,pending",
    ]
    unmapped = cli("--config", str(conf), "destinations", "--unmapped")
    assert "12283b" in unmapped.stdout and "12282a" not in unmapped.stdout


@pytest.mark.parametrize("mapping", [None, {"12282": "ny79"}])
@pytest.mark.parametrize("copy_unmapped", [False, True])
def test_alert_dry_run_is_true_to_status(
    cli: Any, tmp_path: Path, write_config: Any, mapping: Any, copy_unmapped: bool
) -> None:
    """alert names exactly the EPNs sync leaves behind for want of a mapping, as status counts them:
    with no destinations (or copy_unmapped) every EPN is copied, so there is nothing to say."""
    src = tmp_path / "src"
    for epn in ("12282a", "12283b", "12284c"):
        (src / epn).mkdir(parents=True)
        (src / epn / "f").write_bytes(b"x")
    values: dict[str, Any] = {
        "host": "local",
        "src_prefix": str(src),
        "db": str(tmp_path / "f.db"),
        "dest": str(tmp_path),
        "copy_unmapped": copy_unmapped,
    }
    if mapping:
        values["destinations"] = mapping
    conf = write_config(values)
    assert cli("--config", str(conf), "walk").exit_code == 0
    status = json.loads(cli("--config", str(conf), "status", "--json").stdout)
    dry = cli("--config", str(conf), "alert", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.stderr
    named = json.loads(dry.stdout)["alerted"]
    assert len(named) == status["unmapped"]["epns"]
    left = cli("--config", str(conf), "destinations", "--unmapped", "--format", "csv").stdout
    assert sorted(named) == sorted(line.split(",")[0] for line in left.splitlines()[1:])
    text = cli("--config", str(conf), "alert", "--dry-run").stdout
    if mapping and not copy_unmapped:
        assert named == ["12283b", "12284c"]
        assert "not copied" in text
    else:
        assert named == []
        assert text.startswith("no alert needed: ") and "copied into dest/<epn>" in text
        assert "not copied" not in text
