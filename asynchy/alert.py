"""``asynchy alert``: e-mail the EPNs on the server that no destination mapping claims.

An EPN whose number has no ``destinations`` entry is never copied (nobody
knows which project owns it).  The alert lists such EPNs once: every EPN
named in a sent message is recorded in ``alerts`` and left out of later
messages, unless ``realert_days`` have passed.  With a facility portal
configured, each EPN comes with its visit (times, principal scientist, data
scientists), cached in ``visits``; when the portal cannot be asked the alert
goes out without those details.

The message is multipart (text and HTML), rendered from the Jinja2 templates
``alert.txt.j2`` and ``alert.html.j2`` shipped in ``asynchy/templates``; a file
of the same name in the ``alert_templates`` folder replaces the shipped one.
"""

from __future__ import annotations

import logging
import smtplib
import socket
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, insert, select, update

from asynchy.config import SECRET_ENV, Settings
from asynchy.db import Database
from asynchy.destinations import copies_unmapped, epn_number, left_unmapped
from asynchy.errors import AlertError, ConfigError, PortalError
from asynchy.keyparse import is_loopback
from asynchy.models import alerts_table, audits_table, epns_table, visits_table
from asynchy.names import encode_name
from asynchy.portal import Person, Portal, Visit, person_from
from asynchy.remote.base import Tree
from asynchy.render import plural

log = logging.getLogger(__name__)

TEMPLATES = ("alert.txt.j2", "alert.html.j2")


@dataclass(frozen=True, slots=True)
class Smtp:
    host: str = "localhost"
    port: int = 25
    starttls: bool = False
    user: str | None = None
    password: str | None = field(default=None, repr=False)  # never shown
    timeout: float = 30.0

    def check(self) -> None:
        """ConfigError unless a message could be sent this way (a dry run needs none of it)."""
        if self.user and not self.password:
            raise ConfigError(
                "smtp_user is set but no password: set ASYNCHY_SMTP_PASSWORD or smtp_password_file"
            )
        if self.user and not self.starttls and not is_loopback(self.host):
            raise ConfigError(
                f"smtp_user is set but smtp_starttls is off: the password would cross the network to "
                f"{self.host} in clear; set smtp_starttls: true"
            )


@dataclass(frozen=True, slots=True)
class AlertOptions:
    to: tuple[str, ...]
    sender: str
    subject: str = "Unknown ownership of EPNs"
    templates: Path | None = None
    realert_days: float | None = None
    smtp: Smtp = field(default_factory=Smtp)
    source: str = ""  # where the EPNs are, for the message
    config_path: str = "~/.as.yaml"
    template_names: tuple[str, str] = (
        TEMPLATES  # (text, html) file names (HPC: epnalert-text.j2 ...)
    )
    only_with_details: bool = False  # HPC ASSyncy's rule: no mail unless some EPN has visit details
    copy_unmapped: bool = (
        False  # sync copies unmapped EPNs too: none is left behind for want of a map
    )


@dataclass
class AlertSummary:
    unmapped: list[str] = field(default_factory=list)  # every unmapped EPN on the server
    alerted: list[str] = field(default_factory=list)  # named in this message
    already: int = 0  # unmapped, but alerted before
    sent: bool = False
    dry_run: bool = False
    message: str | None = None  # the whole message, in a dry run
    text: str | None = None  # its text part, in a dry run
    to: tuple[str, ...] = ()  # who it goes (or would go) to
    html: str | None = None  # its HTML part, in a dry run
    visits: int = 0  # visits the portal returned
    portal_errors: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # recipients the SMTP server refused
    held_back: bool = False  # only_with_details, and no EPN had visit details: nothing sent
    all_copied: str | None = (
        None  # why no EPN is left behind for want of a mapping (nothing to say)
    )
    damaged: list[str] = field(default_factory=list)  # damaged copies named (docs/fixity.md)

    def as_dict(self) -> dict[str, Any]:
        return {
            "unmapped": self.unmapped,
            "alerted": self.alerted,
            "already_alerted": self.already,
            "sent": self.sent,
            "dry_run": self.dry_run,
            "visits_fetched": self.visits,
            "portal_errors": self.portal_errors,
            "refused_recipients": self.refused,
            "held_back_without_details": self.held_back,
            "all_copied": self.all_copied,
            "damaged": self.damaged,
        }


# ------------------------------------------------------------------ templates
def _environment(folder: Path | None, html_name: str) -> Any:
    """Templates from ``folder``, then the shipped ones.  The HTML template (whatever its name:
    HPC ASSyncy's is ``epnalert-html.j2``) is autoescaped, the text one is not."""
    import jinja2

    loaders: list[Any] = []
    if folder is not None:
        if not folder.is_dir():
            raise ConfigError(
                f"alert_templates {folder} is not a folder: create it or fix alert_templates"
            )
        loaders.append(jinja2.FileSystemLoader(str(folder)))
    loaders.append(jinja2.PackageLoader("asynchy", "templates"))
    return jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        autoescape=lambda name: name == html_name,  # noqa: S701 - the text part is not HTML
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render(
    folder: Path | None, context: Mapping[str, Any], names: tuple[str, str] = TEMPLATES
) -> tuple[str, str]:
    """(text, html) of the message; a ConfigError naming the template, line and problem."""
    import jinja2

    env = _environment(folder, names[1])
    out = []
    for name in names:
        where = name
        try:
            template = env.get_template(name)
            where = template.filename or name
            out.append(template.render(**context))
        except jinja2.TemplateSyntaxError as exc:
            raise ConfigError(
                f"alert template {exc.filename or where} line {exc.lineno}: {exc.message}; fix the template"
            ) from None
        except jinja2.TemplateNotFound:
            raise ConfigError(
                f"alert template {name} is not in {folder or 'the shipped templates'}: "
                "fix alert_templates or the template names"
            ) from None
        except jinja2.TemplateError as exc:
            raise ConfigError(
                f"alert template {where} cannot be rendered: {exc}; fix the template"
            ) from None
    return out[0], out[1]


def check_templates(folder: Path | None, names: tuple[str, str] = TEMPLATES) -> None:
    """Render both templates with a made-up EPN, so a broken template stops a watch at its start."""
    visit = Visit(
        "12345a",
        "1",
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 1, 2, tzinfo=UTC),
        Person("A", "Scientist", "a@example.org"),
        (Person("B", "Helper", "b@example.org"),),
    )
    render(
        folder, _context(["12345a", "12346b"], {"12345a": visit}, [], "example", "x", "s"), names
    )


def _visit_dict(v: Visit) -> dict[str, Any]:
    def when(t: datetime | None) -> str:
        return t.strftime("%Y-%m-%d %H:%M UTC") if t else "-"

    return {
        "start": when(v.start_time),
        "end": when(v.end_time),
        "start_time": v.start_time,
        "end_time": v.end_time,
        "equipment_id": v.equipment_id,
        "principal": _person_dict(v.principal) if v.principal else None,
        "data_scientists": [_person_dict(p) for p in v.data_scientists],
    }


def _person_dict(p: Person) -> dict[str, str]:
    return {**p.as_dict(), "name": p.name}


def _context(
    epns: Sequence[str],
    visits: Mapping[str, Visit],
    portal_errors: Sequence[str],
    source: str,
    config_path: str,
    subject: str,
    portal: bool = True,
) -> dict[str, Any]:
    rows = [
        {
            "epn": epn,
            "number": epn_number(epn),
            "visit": _visit_dict(visits[epn]) if epn in visits else None,
        }
        for epn in epns
    ]
    return {
        # HPC ASSyncy's two variables, built as epnalert built them (its templates render unchanged)
        "epn_details": "".join(hpc_details(visits[e]) for e in epns if e in visits),
        "unknown_epns": [e for e in epns if e not in visits],
        "epns": rows,
        "with_visit": [r for r in rows if r["visit"] is not None],
        "without_visit": [r for r in rows if r["visit"] is None],
        "numbers": sorted({str(r["number"]) for r in rows if r["number"]}),
        "portal_errors": list(portal_errors),
        "portal": portal,
        "source": source,
        "config_path": config_path,
        "subject": subject,
        "host": socket.gethostname(),
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def hpc_details(v: Visit) -> str:
    """One EPN's block of HPC ASSyncy's ``epn_details`` text."""

    def who(p: Person | None) -> str:
        return f"{p.first_names} {p.last_name} {p.email}" if p is not None else ""

    start = v.start_time.isoformat() if v.start_time else ""
    lines = [
        f"Epn {v.epn} on {start} is not known.",
        f"Principal scientist: {who(v.principal)}",
        "It includes scientists: ",
        *[who(p) for p in v.data_scientists],
        "** Please add it the config. **",
    ]
    return "\n".join(lines) + "\n\n"


# ------------------------------------------------------------------ visits cache
def _store_visits(db: Database, visits: Sequence[Visit]) -> None:
    if not visits:
        return
    now = datetime.now(UTC)
    latest = {v.epn: v for v in visits}
    rows = [
        {
            "epn": v.epn,
            "equipment_id": v.equipment_id,
            "start_time": v.start_time,
            "end_time": v.end_time,
            "principal_first_names": v.principal.first_names if v.principal else None,
            "principal_last_name": v.principal.last_name if v.principal else None,
            "principal_email": v.principal.email if v.principal else None,
            "data_scientists": [p.as_dict() for p in v.data_scientists],
            "fetched_at": now,
        }
        for v in latest.values()
    ]
    with db.write() as conn:  # replace the cached rows of these EPNs, in one transaction
        conn.execute(delete(visits_table).where(visits_table.c.epn.in_(list(latest))))
        conn.execute(insert(visits_table), rows)


def cached_visits(db: Database, epns: Sequence[str]) -> dict[str, Visit]:
    v = visits_table.c
    out: dict[str, Visit] = {}
    with db.read() as conn:
        for start in range(0, len(epns), 500):
            for r in conn.execute(select(visits_table).where(v.epn.in_(epns[start : start + 500]))):
                names = (r.principal_first_names, r.principal_last_name, r.principal_email)
                principal = Person(*(n or "" for n in names)) if any(names) else None
                out[r.epn] = Visit(
                    r.epn,
                    r.equipment_id,
                    r.start_time,
                    r.end_time,
                    principal,
                    tuple(p for p in map(person_from, r.data_scientists or []) if p is not None),
                )
    return out


def fetch_visits(db: Database, portal: Portal, now: datetime) -> tuple[int, list[str]]:
    """Ask the portal for the visits of the last ``visit_days`` and cache them; (count, errors)."""
    try:
        visits, errors = portal.visits(now - timedelta(days=portal.visit_days), now)
    except ConfigError as exc:  # a password file or variable that cannot be read
        return 0, [str(exc)]
    except PortalError as exc:
        return 0, [str(exc)]
    _store_visits(db, visits)
    for problem in errors:
        log.warning("%s", problem)
    return len(visits), errors


# ------------------------------------------------------------------ choosing and sending
def _already_alerted(db: Database, epns: Sequence[str], since: datetime | None) -> set[str]:
    a = alerts_table.c
    found: set[str] = set()
    with db.read() as conn:
        for start in range(0, len(epns), 500):
            query = select(a.epn).where(a.epn.in_(epns[start : start + 500])).group_by(a.epn)
            if since is not None:
                query = query.having(func.max(a.sent_at) > since)
            found.update(conn.execute(query).scalars())
    return found


def build_message(opts: AlertOptions, text: str, html: str) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = opts.subject
    msg["From"] = opts.sender
    msg["To"] = ", ".join(opts.to)
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid(domain=socket.getfqdn() or "localhost")
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(text)
    msg.add_alternative(html, subtype="html")
    return msg


def send(msg: EmailMessage, smtp: Smtp) -> list[str]:
    """Hand the message to the SMTP server; the recipients it refused (others got it), or AlertError."""
    smtp.check()
    where = f"SMTP server {smtp.host}:{smtp.port}"
    try:
        with smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout) as server:
            server.ehlo()
            if smtp.starttls:
                server.starttls(context=ssl.create_default_context())
                server.ehlo()
            if smtp.user:
                server.login(smtp.user, smtp.password or "")
            refused = server.send_message(msg)
    except smtplib.SMTPNotSupportedError:
        raise AlertError(
            f"{where} does not offer STARTTLS: turn smtp_starttls off only if it is on this host"
        ) from None
    except smtplib.SMTPAuthenticationError as exc:
        raise AlertError(
            f"{where} refused the login of {smtp.user}: {_reply(exc)}; check smtp_user and the password"
        ) from None
    except smtplib.SMTPRecipientsRefused as exc:
        raise AlertError(
            f"{where} refused every recipient ({', '.join(exc.recipients)}); check alert_to"
        ) from None
    except smtplib.SMTPSenderRefused as exc:
        raise AlertError(
            f"{where} refused the sender {exc.sender}: {_reply(exc)}; check alert_from"
        ) from None
    except smtplib.SMTPResponseException as exc:
        raise AlertError(f"{where} refused the message: {_reply(exc)}") from None
    except ssl.SSLError as exc:
        raise AlertError(f"{where}: STARTTLS failed: {exc.reason or exc}") from None
    except smtplib.SMTPException as exc:
        raise AlertError(f"{where}: {exc}") from None
    except TimeoutError:
        raise AlertError(f"{where} did not answer within {smtp.timeout:g} s") from None
    except OSError as exc:
        raise AlertError(f"cannot reach {where}: {exc.strerror or exc}") from None
    return sorted(refused)


def _reply(exc: smtplib.SMTPResponseException) -> str:
    text = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else ""
    return f"{exc.smtp_code} {text}".strip()


def alert(
    db: Database,
    on_server: Sequence[str],
    destinations: Mapping[str, str] | None,
    opts: AlertOptions,
    *,
    portal: Portal | None = None,
    dry_run: bool = False,
    now: datetime | None = None,
) -> AlertSummary:
    """Send (or, dry, show) one message naming the unmapped EPNs not alerted before and the
    damaged copies not named before (docs/fixity.md); record them."""
    now = now or datetime.now(UTC)
    summary = AlertSummary(dry_run=dry_run, to=opts.to)
    damaged = _damaged_to_alert(db)
    summary.damaged = [d["epn"] for d in damaged]
    todo = _unmapped_to_alert(db, on_server, destinations, opts, summary, now)
    if not todo and not damaged:
        return summary
    if todo and portal is not None:
        summary.visits, summary.portal_errors = fetch_visits(db, portal, now)
    visits = cached_visits(db, todo)
    if todo and opts.only_with_details and not any(e in visits for e in todo):
        summary.held_back = True  # HPC ASSyncy's rule; they are named once details are known
        log.info("unmapped EPNs held back: none of %d has visit details yet", len(todo))
        todo = []
        if not damaged:
            return summary
    context = _context(
        todo,
        visits,
        summary.portal_errors,
        opts.source,
        opts.config_path,
        opts.subject,
        portal=portal is not None or bool(visits),
    )
    text, html = render(opts.templates, context | {"damaged": damaged}, opts.template_names)
    msg = build_message(opts, text, html)
    summary.alerted = todo
    if dry_run:
        summary.message, summary.text, summary.html = msg.as_string(), text, html
        return summary
    summary.refused = send(msg, opts.smtp)
    summary.sent = True
    _record_sent(db, opts, todo, damaged, now)
    log.info(
        "alert sent to %s naming %s",
        ", ".join(opts.to),
        plural(len(todo) + len(damaged), "EPN"),
    )
    return summary


def _unmapped_to_alert(
    db: Database,
    on_server: Sequence[str],
    destinations: Mapping[str, str] | None,
    opts: AlertOptions,
    summary: AlertSummary,
    now: datetime,
) -> list[str]:
    """The unmapped EPNs the message names: those not alerted before (or within realert_days)."""
    if copies_unmapped(destinations, opts.copy_unmapped):  # nothing is left behind for want of one
        summary.all_copied = (
            "copy_unmapped is on: EPNs without a mapping are copied into dest/<epn>"
            if destinations
            else "no destinations are configured: every EPN is copied into dest/<epn>"
        )
        return []
    summary.unmapped = sorted(
        {e for e in on_server if left_unmapped(e, destinations, opts.copy_unmapped)}
    )
    since = now - timedelta(days=opts.realert_days) if opts.realert_days is not None else None
    known = _already_alerted(db, summary.unmapped, since)
    todo = [e for e in summary.unmapped if e not in known]
    summary.already = len(summary.unmapped) - len(todo)
    return todo


def _damaged_to_alert(db: Database) -> list[dict[str, Any]]:
    """Damaged EPNs whose audit no alert has named yet (one entry per EPN: its latest audit)."""
    a, e = audits_table.c, epns_table.c
    query = (
        select(a.id, a.epn, a.message)
        .join(epns_table, e.epn == a.epn)
        .where(a.result == "damaged", a.alerted_at.is_(None), e.status == "damaged")
        .order_by(a.epn, a.id)
    )
    with db.read() as conn:
        latest = {epn: (audit_id, message) for audit_id, epn, message in conn.execute(query)}
    return [{"epn": epn, "message": m or "", "audit_id": i} for epn, (i, m) in latest.items()]


def _record_sent(
    db: Database,
    opts: AlertOptions,
    todo: Sequence[str],
    damaged: Sequence[dict[str, Any]],
    now: datetime,
) -> None:
    a = audits_table.c
    with db.write() as conn:
        if todo:
            conn.execute(
                insert(alerts_table),
                [
                    {
                        "epn": e,
                        "sent_at": now,
                        "recipients": ", ".join(opts.to),
                        "subject": opts.subject,
                    }
                    for e in todo
                ],
            )
        if damaged:
            conn.execute(
                update(audits_table)
                .where(a.epn.in_([d["epn"] for d in damaged]), a.result == "damaged")
                .where(a.alerted_at.is_(None))
                .values(alerted_at=now)
            )


def epns_on_server(tree: Tree) -> list[str]:
    """The EPN folders the source lists now (stored-name form); the tree is closed."""
    try:
        top, _ = tree.list_epns()
    finally:
        tree.close()
    return [encode_name(t.name) for t in top if t.is_dir]


def options_from_settings(
    settings: Settings, env: Mapping[str, str], source: str, *, preview: bool = False
) -> AlertOptions | None:
    """AlertOptions from the configuration, or None when ``alert_to`` is not set (a ``preview``,
    ``alert --dry-run``, needs no recipients).

    The SMTP password comes from ``ASYNCHY_SMTP_PASSWORD`` or ``smtp_password_file`` only."""
    if not settings.alert_to and not preview:
        return None
    password = env.get(SECRET_ENV["smtp_password"]) or None
    if password is None and settings.smtp_password_file:
        path = Path(settings.smtp_password_file).expanduser()
        try:
            password = path.read_text(encoding="utf-8").strip()
            others = path.stat().st_mode & 0o044
        except OSError as exc:
            raise ConfigError(f"smtp_password_file {path} cannot be read: {exc.strerror}") from None
        if others:
            log.warning(
                "smtp_password_file %s can be read by other users: chmod 600 %s", path, path
            )
    return AlertOptions(
        to=tuple(settings.alert_to or ()),
        sender=settings.alert_from or f"asynchy@{socket.getfqdn()}",
        subject=settings.alert_subject,
        templates=Path(settings.alert_templates).expanduser() if settings.alert_templates else None,
        realert_days=settings.realert_days,
        smtp=Smtp(
            host=settings.smtp_host,
            port=settings.smtp_port,
            starttls=settings.smtp_starttls,
            user=settings.smtp_user,
            password=password,
            timeout=settings.timeout,
        ),
        source=source,
        config_path=str(settings.config_path),
        template_names=(
            settings.alert_template_text or TEMPLATES[0],
            settings.alert_template_html or TEMPLATES[1],
        ),
        only_with_details=settings.alert_only_with_details,
        copy_unmapped=settings.copy_unmapped,
    )
