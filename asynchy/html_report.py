"""``asynchy report --html``: one self-contained HTML page with charts drawn as inline SVG.

No scripts, no fonts, no network: a manager can open it anywhere, and it can
be mailed or archived as it is.
"""

from __future__ import annotations

from datetime import UTC, date, timedelta
from html import escape
from typing import Any

from sqlalchemy import select

from asynchy.db import Database
from asynchy.models import epns_table, transfers_table
from asynchy.render import human_bytes, human_seconds, local_time, plural, shown
from asynchy.reports import StatusReport, status
from asynchy.texts import fixity_lines

COLORS = {
    "complete": "#2e7d32",
    "pending": "#9e9e9e",
    "running": "#1565c0",
    "changed": "#ef6c00",
    "failed": "#c62828",
    "quarantined": "#6a1b9a",
    "damaged": "#ad1457",
    "skipped": "#bdbdbd",
}
W, H, PAD_L, PAD_B, PAD_T = 760, 240, 80, 30, 12


def _daily(db: Database) -> list[tuple[date, int, int]]:
    with db.read() as conn:
        rows = conn.exec_driver_sql(
            "SELECT day, bytes_transferred, epns_completed FROM v_daily_transfers ORDER BY day"
        ).all()
    out = []
    for day, nbytes, done in rows:
        d = day if isinstance(day, date) else date.fromisoformat(str(day))
        out.append((d, int(nbytes or 0), int(done or 0)))
    return out


def _axis(max_value: float) -> list[float]:
    if max_value <= 0:
        return [0.0]
    return [max_value * i / 4 for i in range(5)]


def cumulative_chart(daily: list[tuple[date, int, int]]) -> str:
    """Bytes transferred so far, day by day (an area under a line)."""
    if not daily:
        return '<svg id="chart-cumulative" class="chart" data-points="0" width="760" height="60"><text x="10" y="35">no transfers yet</text></svg>'
    first, last = daily[0][0], daily[-1][0]
    span = max(1, (last - first).days)
    total, points = 0, []
    for day, nbytes, _ in daily:
        total += nbytes
        points.append(((day - first).days, total))
    top = max(1, total)

    def x(d: float) -> float:
        return PAD_L + (W - PAD_L - 10) * d / span

    def y(v: float) -> float:
        return PAD_T + (H - PAD_T - PAD_B) * (1 - v / top)

    line = " ".join(f"{x(d):.1f},{y(v):.1f}" for d, v in points)
    if len(points) == 1:
        line = f"{x(0):.1f},{y(points[0][1]):.1f} {W - 10:.1f},{y(points[0][1]):.1f}"
    area = f"{PAD_L},{H - PAD_B} {line} {x(points[-1][0]) if len(points) > 1 else W - 10:.1f},{H - PAD_B}"
    parts = [
        f'<svg id="chart-cumulative" class="chart" data-points="{len(points)}" data-total="{total}" '
        f'width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img">',
        "<title>Bytes transferred so far</title>",
    ]
    for v in _axis(top):
        parts.append(
            f'<line x1="{PAD_L}" x2="{W - 10}" y1="{y(v):.1f}" y2="{y(v):.1f}" class="grid"/>'
        )
        parts.append(
            f'<text x="{PAD_L - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{escape(human_bytes(v))}</text>'
        )
    parts.append(f'<polygon points="{area}" fill="#a5d6a7"/>')
    parts.append(f'<polyline points="{line}" fill="none" stroke="#2e7d32" stroke-width="2"/>')
    parts.append(f'<text x="{PAD_L}" y="{H - 8}">{first.isoformat()}</text>')
    parts.append(f'<text x="{W - 10}" y="{H - 8}" text-anchor="end">{last.isoformat()}</text>')
    parts.append("</svg>")
    return "".join(parts)


def daily_chart(daily: list[tuple[date, int, int]], days: int = 60) -> str:
    """Bytes per day over the last ``days`` days with any transfer (bars)."""
    if not daily:
        return '<svg id="chart-daily" class="chart" data-bars="0" width="760" height="60"><text x="10" y="35">no transfers yet</text></svg>'
    last = daily[-1][0]
    window = [(d, b, n) for d, b, n in daily if d > last - timedelta(days=days)]
    first = window[0][0]
    slots = (last - first).days + 1
    top = max(1, max(b for _, b, _ in window))
    bar_w = (W - PAD_L - 10) / slots

    def y(v: float) -> float:
        return PAD_T + (H - PAD_T - PAD_B) * (1 - v / top)

    parts = [
        f'<svg id="chart-daily" class="chart" data-bars="{len(window)}" width="{W}" height="{H}" '
        f'viewBox="0 0 {W} {H}" role="img">',
        "<title>Bytes transferred per day</title>",
    ]
    for v in _axis(top):
        parts.append(
            f'<line x1="{PAD_L}" x2="{W - 10}" y1="{y(v):.1f}" y2="{y(v):.1f}" class="grid"/>'
        )
        parts.append(
            f'<text x="{PAD_L - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{escape(human_bytes(v))}</text>'
        )
    for day, nbytes, done in window:
        left = PAD_L + (day - first).days * bar_w
        parts.append(
            f'<rect class="bar" x="{left + 1:.1f}" y="{y(nbytes):.1f}" width="{max(1.0, bar_w - 2):.1f}" '
            f'height="{H - PAD_B - y(nbytes):.1f}" fill="#1565c0" data-day="{day.isoformat()}" data-bytes="{nbytes}">'
            f"<title>{day.isoformat()}: {escape(human_bytes(nbytes))}, {plural(done, 'EPN')} completed</title></rect>"
        )
    parts.append(f'<text x="{PAD_L}" y="{H - 8}">{first.isoformat()}</text>')
    parts.append(f'<text x="{W - 10}" y="{H - 8}" text-anchor="end">{last.isoformat()}</text>')
    parts.append("</svg>")
    return "".join(parts)


def status_chart(by_status: dict[str, dict[str, int]]) -> str:
    """One horizontal bar per status, by bytes, with the EPN count."""
    rows = sorted(by_status.items(), key=lambda kv: -kv[1]["bytes"])
    top = max([1] + [v["bytes"] for _, v in rows])
    height = 26 * len(rows) + 10
    parts = [
        f'<svg id="status-breakdown" class="chart" width="{W}" height="{height}" viewBox="0 0 {W} {height}">'
    ]
    for i, (name, v) in enumerate(rows):
        y0 = 8 + 26 * i
        width = (W - 330) * v["bytes"] / top
        parts.append(f'<text x="110" y="{y0 + 14}" text-anchor="end">{escape(name)}</text>')
        parts.append(
            f'<rect class="bar" x="120" y="{y0}" width="{max(1.0, width):.1f}" height="18" '
            f'fill="{COLORS.get(name, "#607d8b")}" data-status="{escape(name)}" data-bytes="{v["bytes"]}"/>'
        )
        parts.append(
            f'<text x="{126 + width:.1f}" y="{y0 + 14}">{plural(v["epns"], "EPN")}, {escape(human_bytes(v["bytes"]))}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#212121;max-width:820px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px} .sub{color:#616161;margin:0 0 16px}
.cards{display:flex;flex-wrap:wrap;gap:12px} .card{border:1px solid #e0e0e0;border-radius:6px;padding:10px 14px;min-width:150px}
.card .v{font-size:22px;font-weight:600} .card .l{color:#616161;font-size:13px}
.chart text{font-size:11px;fill:#424242} .grid{stroke:#eeeeee}
table{border-collapse:collapse;font-size:13px;width:100%} th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eeeeee}
td.n{text-align:right} .empty{color:#757575}
"""


def render(db: Database, title: str = "asynchy progress") -> str:
    """The page, from the template templates/report.html.j2 (autoescaped)."""
    import jinja2

    data = status(db)
    daily = _daily(db)
    largest, failures = _tables(db)
    generated = data["generated_at"].astimezone(UTC)
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("asynchy", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    return env.get_template("report.html.j2").render(
        title=title,
        css=_trusted(CSS),
        database=data["database"],
        generated_local=local_time(data["generated_at"]),
        generated_iso=generated.isoformat(),
        generated_utc=f"{generated:%Y-%m-%d %H:%M}",
        cards=_cards(data),
        cumulative=_trusted(cumulative_chart(daily)),
        daily=_trusted(daily_chart(daily)),
        by_status=_trusted(status_chart(data["epns"]["by_status"])),
        fixity=fixity_lines(data["fixity"])[0],
        last_audit=fixity_lines(data["fixity"])[1],
        largest=[
            {
                "epn": shown(r.epn),
                "status": r.status,
                "bytes": int(r.size),
                "size": human_bytes(r.size),
                "files": f"{int(r.file_count):,}",
                "newest": local_time(r.modified),
            }
            for r in largest
        ],
        failures=[
            {
                "when": local_time(r.finished_at),
                "epn": shown(r.epn),
                "attempt": r.attempt,
                "exit": "" if r.exit_code is None else r.exit_code,
                "outcome": r.outcome,
                "reason": shown(r.reason or ""),
            }
            for r in failures
        ],
    )


def _trusted(markup: str) -> Any:
    """Markup made in this module: the constant CSS, and SVG whose text the helpers escape."""
    from markupsafe import Markup

    return Markup(markup)  # noqa: S704 - see above; everything else goes through autoescape


def _tables(db: Database) -> tuple[list[Any], list[Any]]:
    """The largest EPNs still to copy, and the latest failed attempts."""
    e, t = epns_table.c, transfers_table.c
    with db.read() as conn:
        largest = conn.execute(
            select(e.epn, e.status, e.size, e.file_count, e.modified)
            .where(e.status.in_(("pending", "changed", "failed", "running")))
            .order_by(e.size.desc(), e.epn)
            .limit(15)
        ).all()
        failures = conn.execute(
            select(t.finished_at, t.epn, t.attempt, t.exit_code, t.outcome, t.reason)
            .where(t.outcome.in_(("failed", "quarantined", "changed")))
            .order_by(t.finished_at.desc(), t.id.desc())
            .limit(20)
        ).all()
    return list(largest), list(failures)


def _cards(data: StatusReport) -> list[dict[str, Any]]:
    """The headline numbers: shown value, label, and the raw number (data-value)."""
    b = data["bytes"]
    eta = data["eta_seconds"]
    rate = data["throughput"]
    cards = [
        ("headline-total-bytes", human_bytes(b["total"]), "in the inventory", b["total"]),
        (
            "headline-done-bytes",
            human_bytes(b["done"]),
            f"copied and verified ({b['percent_done']:.1f} %)",
            b["done"],
        ),
        ("headline-remaining-bytes", human_bytes(b["remaining"]), "still to copy", b["remaining"]),
        ("headline-epns", f"{data['epns']['total']:,}", "EPNs", data["epns"]["total"]),
        (
            "headline-rate",
            human_bytes(rate["last_day_copying_bytes_per_second"]) + "/s",
            "while copying, over the last day",
            int(rate["last_day_bytes"]),
        ),
        (
            "headline-eta",
            human_seconds(eta) if eta else ("done" if eta == 0 else "-"),
            "of copying to go at that rate",
            int(eta or 0),
        ),
    ]
    return [{"id": i, "value": v, "label": label, "raw": raw} for i, v, label, raw in cards]


def write(db: Database, path: str, title: str = "asynchy progress") -> int:
    """Write the page; returns its size in bytes (UTF-8)."""
    data = render(db, title).encode("utf-8")
    with open(path, "wb") as fh:
        fh.write(data)
    return len(data)
