"""Turning results into text for people (and JSON for scripts)."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from asynchy.reports import StatusReport

UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 EPN``, ``2 EPNs``, ``1 attempt``: a count and its noun, agreeing."""
    return f"{n:,} {word if n == 1 else (many or word + 's')}"


def human_bytes(n: float) -> str:
    value = float(n)
    for unit in UNITS:
        if abs(value) < 1024 or unit == UNITS[-1]:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_seconds(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s"
    minutes, sec = divmod(round(s), 60)
    if minutes < 60:
        return f"{minutes} min {sec} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def compact_duration(seconds: float) -> str:
    """6h, 1h30m, 90s: a duration as it is typed (--max-duration, --every)."""
    total = round(seconds)
    out = ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if total >= size:
            out += f"{total // size}{unit}"
            total %= size
    return out or "0s"


def walk_summary(summary: dict[str, Any]) -> str:
    parts = [
        f"walk {summary['status']}: {plural(summary['epns_walked'], 'EPN')} walked",
    ]
    if summary["epns_skipped"]:
        parts.append(f"{summary['epns_skipped']} already walked")
    if summary["epns_changed"]:
        parts.append(f"{summary['epns_changed']} changed")
    parts.append(plural(summary["files"], "file"))
    parts.append(human_bytes(summary["bytes"]))
    parts.append(plural(summary["errors"], "error"))
    if summary["reconnects"]:
        parts.append(plural(summary["reconnects"], "reconnect"))
    line = ", ".join(parts) + f" in {human_seconds(summary['elapsed_seconds'])}"
    lines = [line]
    if summary["epns_gone"]:
        lines.append(
            f"note: {plural(summary['epns_gone'], 'EPN')} in the database "
            f"{'was' if summary['epns_gone'] == 1 else 'were'} not found on the source"
        )

    details = summary["error_details"]
    for err in details:
        where = (
            f"{err['epn']}/{err['path']}"
            if err["epn"] and err["path"]
            else (err["epn"] or err["path"] or ".")
        )
        lines.append(f"  error: {shown(where)}: {shown(err['message'])} ({err['kind']})")
    if summary["errors"] > len(details):
        lines.append(
            f"  ... and {summary['errors'] - len(details)} more in the walk_errors table "
            f"(walk_id {summary['walk_id']})"
        )
    return "\n".join(lines)


def names_warning(odd: dict[str, Any], pattern: str) -> str:
    """The walk's one warning about folders under src_prefix that do not look like EPNs."""
    n = odd["count"]
    names = ", ".join(shown(repr(x)) for x in odd["names"][:5]) + (" ..." if n > 5 else "")
    what = (
        "left out (strict_names)"
        if odd["left_out"]
        else ("recorded as an EPN" if n == 1 else "recorded as EPNs")
    )
    return (
        f"{plural(n, 'folder')} under src_prefix {'does' if n == 1 else 'do'} not look like "
        f"{'an EPN' if n == 1 else 'EPNs'} (epn_pattern {pattern}) and {'was' if n == 1 else 'were'} "
        f"{what}: {names}; {odd['hint']}"
    )


def as_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False, default=str)


def shown(text: str) -> str:
    """A stored name made safe for one line of a terminal: control characters escaped."""
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text
    )


def plan_lines(plan: list[dict[str, Any]]) -> list[str]:
    """A dry run's plan: the order EPNs would start in, and which are split into parts."""
    if not plan:
        return []
    lines = ["  plan, in start order (the largest first):"]
    for step, entry in enumerate(plan, 1):
        parts = entry["parts"]
        how = (
            f"in {plural(len(parts), 'part')} of {', '.join(human_bytes(p) for p in parts)}"
            if parts
            else "whole"
        )
        lines.append(f"    {step}. {shown(entry['epn'])}: {human_bytes(entry['bytes'])} {how}")
    return lines


def sync_summary(summary: dict[str, Any]) -> str:
    """The end of a sync: one line of counts (EPNs, not attempts), then a line per EPN left over."""
    elapsed = summary["elapsed_seconds"]
    if summary["dry_run"]:
        changes = summary["would_change"]
        lines = [
            f"sync dry run: {plural(len(changes), 'EPN')} checked, "
            f"{plural(sum(changes.values()), 'item')} would be transferred, "
            f"{len(summary['failed']):,} failed in {human_seconds(elapsed)}"
        ]
        lines += [f"  {shown(epn)}: {plural(n, 'item')}" for epn, n in changes.items()]
        lines += plan_lines(summary.get("plan", []))
    else:
        state = "interrupted" if summary["interrupted"] else "finished"
        if summary.get("stopped"):
            state = "stopped"
        elif summary.get("time_limit_reached"):
            state = f"stopped at the time limit ({summary['time_limit_reached']})"
        rate = human_bytes(summary["bytes_per_second"]) + "/s"
        parts = [
            f"{plural(len(summary['complete']), 'EPN')} complete",
            f"{len(summary['failed']):,} failed",
        ]
        if summary["changed"]:
            parts.append(f"{len(summary['changed'])} changed")
        if summary["given_back"]:
            parts.append(f"{len(summary['given_back'])} given back")
        if summary.get("refused"):
            parts.append(f"{len(summary['refused'])} refused")
        parts += [f"{len(summary['skipped'])} skipped", f"{len(summary['cancelled'])} cancelled"]
        lines = [
            f"sync {state}: {', '.join(parts)}, "
            f"{human_bytes(summary['bytes'])} in {human_seconds(elapsed)} ({rate})"
        ]
    for failure in summary["failed"]:
        lines.append(f"  {failure['outcome']}: {shown(failure['epn'])}: {shown(failure['reason'])}")
    for item in summary.get("changed", []):
        lines.append(
            f"  changed: {shown(item['epn'])}: {shown(item['reason'])} (the next run copies it)"
        )
    for item in summary.get("given_back", []):
        lines.append(f"  given back: {shown(item['epn'])}: {shown(item['reason'])} (not charged)")
    for item in summary.get("refused", []):
        lines.append(f"  refused: {shown(item['epn'])}: {shown(item['reason'])}")
    if summary.get("time_limit_reached") and summary.get("cancelled"):
        stopped = ", ".join(shown(e) for e in summary["cancelled"][:5])
        more = ", ..." if len(summary["cancelled"]) > 5 else ""
        lines.append(
            f"  stopped at the time limit: {stopped}{more} (not charged; the next run copies them)"
        )
    for w in summary.get("not_taken", []):
        n = w["epns"]
        lines.append(f"  not taken: {plural(n, 'EPN')} {w['reason']} ({w['hint']})")
    by_reason: dict[str, list[str]] = {}
    for epn, why in summary["skipped"].items():
        by_reason.setdefault(why, []).append(epn)
    for why, epns in by_reason.items():
        if len(epns) <= 3:
            lines += [f"  skipped: {shown(epn)}: {why}" for epn in epns]
        else:  # one line per reason, with its count: an unmapped archive is not a wall of text
            first = ", ".join(shown(e) for e in epns[:3])
            lines.append(f"  skipped {plural(len(epns), 'EPN')} ({first}, ...): {why}")
    return "\n".join(lines)


# ------------------------------------------------------------------ tables and machine formats
# The one clock (docs/reporting.md, "Times"): machines get UTC ISO 8601 with a Z and whole
# seconds (json, csv, nl, in every command); people get the local time with its zone (tables and
# lines).  The database stores UTC.
def iso_utc(value: datetime) -> str:
    """ISO 8601 in UTC with a Z, for JSON and CSV."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def local_time(value: datetime | None) -> str:
    """Local time for people (the terminal's time zone), with the zone's name."""
    return value.astimezone().strftime("%Y-%m-%d %H:%M %Z") if value is not None else "-"


_STORED_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def stored_time(value: Any) -> Any:
    """A time as SQLite keeps asynchy's (UTC text, ``YYYY-MM-DD HH:MM:SS``) as an aware datetime,
    so that ``asynchy sql`` shows it by the one clock; any other value as it is."""
    if isinstance(value, str) and len(value) == 19 and _STORED_TIME.fullmatch(value):
        try:
            return datetime.fromisoformat(value).replace(tzinfo=UTC)
        except ValueError:
            return value
    return value


def short_time(value: datetime | None) -> str:
    """HH:MM for today (local time), the date too otherwise."""
    if value is None:
        return "-"
    local = value.astimezone()
    return (
        local.strftime("%H:%M")
        if local.date() == datetime.now().astimezone().date()
        else local_time(value)
    )


def machine(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso_utc(value)
    if isinstance(value, Decimal):  # PostgreSQL's sum() of integers
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: machine(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [machine(v) for v in value]
    return value


def as_json_data(data: Any) -> str:
    return json.dumps(machine(data), indent=2, default=str)


def _csv_cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    value = machine(v)
    return json.dumps(value) if isinstance(value, (list, dict)) else value


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _formula_safe(cell: Any) -> Any:
    """OWASP's advice for CSV opened in a spreadsheet: a text cell that starts like a formula
    gets a leading quote (``--csv-safe``); numbers stay numbers."""
    if isinstance(cell, str) and cell.startswith(FORMULA_STARTS):
        return "'" + cell
    return cell


def as_csv(columns: list[str], rows: list[tuple[Any, ...]], *, safe: bool = False) -> str:
    """CSV with every value exact (names keep their bytes, control characters too; the stored
    escapes of docs/schema.md decode them); ``safe``: formula-like text cells quoted."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        cells = [_csv_cell(v) for v in row]
        writer.writerow([_formula_safe(c) for c in cells] if safe else cells)
    return out.getvalue()


# ------------------------------------------------------------------ the one output convention
FORMATS = ("table", "json", "csv", "nl")  # and "csv-safe": csv with formula-like cells quoted


def stdout_is_terminal() -> bool:
    import sys

    return sys.stdout.isatty()


def rows_out(
    columns: list[str],
    rows: list[tuple[Any, ...]],
    fmt: str,
    *,
    human_rows: list[tuple[Any, ...]] | None = None,
    limit: int | None = None,
    right: set[str] | None = None,
    empty: str = "no rows",
) -> str:
    """A listing in one of FORMATS.  json, csv and nl (one JSON object a line) hold every row (raw
    numbers, UTC ISO times); a table has human units and local times, is cut to ``limit`` rows with a
    line that says so, and fits the terminal only when it is one (a pipe gets whole cells)."""
    if fmt == "json":
        return as_json_rows(columns, rows)
    if fmt == "nl":
        return "\n".join(
            json.dumps(machine(dict(zip(columns, r, strict=True))), default=str) for r in rows
        )
    if fmt in ("csv", "csv-safe"):
        return as_csv(columns, rows, safe=fmt == "csv-safe").rstrip("\n")
    shown_rows = human_rows if human_rows is not None else rows
    if not shown_rows:
        return empty
    cut = shown_rows if limit is None else shown_rows[:limit]
    width = terminal_width() if stdout_is_terminal() else None
    text = table(columns, cut, width=width, right=right)
    if len(cut) < len(shown_rows):
        text += f"\n{len(cut)} of {len(shown_rows)} shown; --all for every row"
    return text


def _byte_column(name: str) -> str | None:
    """``bytes`` for a column of byte counts (a word ``bytes`` or ``size`` in its name:
    size, bytes_transferred, done_bytes), ``rate`` for bytes per second, else None."""
    words = name.lower().split("_")
    if "bytes" not in words and "size" not in words:
        return None
    return "rate" if "per" in words and ("second" in words or "s" in words) else "bytes"


def human_units(columns: list[str], rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Rows of ``asynchy sql`` for a table: byte counts (and rates) in IEC units; everything
    else as it is."""
    kinds = [_byte_column(c) for c in columns]

    def shown_value(value: Any, kind: str | None) -> Any:
        if kind is None or isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
            return value
        return human_bytes(float(value)) + ("/s" if kind == "rate" else "")

    return [tuple(shown_value(v, k) for v, k in zip(row, kinds, strict=True)) for row in rows]


# Columns that hold identifiers or codes, not quantities: no thousands separators there.
_NAMES = {"#", "id", "pid", "port", "exit", "epn", "number", "attempt", "year", "month", "day"}


def _is_quantity(column: str) -> bool:
    name = column.lower()
    return name not in _NAMES and not name.endswith(("_id", "_code", "_token", "pid", "port"))


def _flat(data: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(data, dict):
        out: list[tuple[str, Any]] = []
        for k, v in data.items():
            out += _flat(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    return [(prefix, data)]


def data_out(data: Any, fmt: str, human: Any) -> str:
    """One object (a summary, status, show) in one of FORMATS; ``human()`` renders the table form.
    csv gives one ``key,value`` row per leaf (dotted keys; lists as JSON)."""
    if fmt == "json":
        return as_json_data(data)
    if fmt == "nl":
        return as_json_line(data)
    if fmt in ("csv", "csv-safe"):
        flat = [(k, v) for k, v in _flat(data)]
        return as_csv(["key", "value"], flat, safe=fmt == "csv-safe").rstrip("\n")
    return str(human())


def as_json_rows(columns: list[str], rows: list[tuple[Any, ...]]) -> str:
    return as_json_data([dict(zip(columns, row, strict=True)) for row in rows])


def _cell(value: Any, quantity: bool = True) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return local_time(value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, Decimal)) and quantity and value == int(value):
        return f"{int(value):,}"  # the same thousands separators in every table
    if isinstance(value, float):
        return f"{value:,.1f}" if quantity and abs(value) >= 1000 else f"{value:g}"
    return shown(str(value))


def table(
    columns: list[str],
    rows: list[tuple[Any, ...]],
    *,
    width: int | None = 80,
    right: set[str] | None = None,
) -> str:
    """A plain text table that fits ``width`` columns (the widest columns are cut with '…');
    ``width=None``: nothing is cut (output to a pipe or a file)."""
    right = right or set()
    quantities = [_is_quantity(c) for c in columns]
    cells = [[_cell(v, q) for v, q in zip(row, quantities, strict=False)] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    while width is not None and sum(widths) + 2 * (len(widths) - 1) > width and max(widths) > 8:
        widest = widths.index(max(widths))
        widths[widest] -= 1

    def fit(text: str, i: int) -> str:
        if len(text) > widths[i]:
            text = text[: widths[i] - 1] + "…"
        return text.rjust(widths[i]) if columns[i] in right else text.ljust(widths[i])

    lines = ["  ".join(fit(c, i) for i, c in enumerate(columns)).rstrip()]
    lines += ["  ".join(fit(c, i) for i, c in enumerate(row)).rstrip() for row in cells]
    return "\n".join(lines)


def terminal_width() -> int:
    return min(shutil.get_terminal_size((80, 24)).columns, 160)


# ------------------------------------------------------------------ config and check
def setting_value(value: Any) -> str:
    """A setting as ``asynchy config`` shows it in a table."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(machine(value), default=str)
    return str(value)


CHECK_MARKS = {"ok": "ok  ", "warn": "warn", "fail": "FAIL", "skip": "skip"}


def check_line(check: Any) -> str:
    """One line of ``asynchy check``: state, name, what was found (names escaped)."""
    return f"{CHECK_MARKS[check.state]}  {check.name:<13} {shown(check.detail)}"


# ------------------------------------------------------------------ status, epns, show
def status(data: StatusReport, width: int | None = 80) -> str:
    lines = [f"asynchy status at {local_time(data['generated_at'])} of {data['database']}"]
    rows = [
        (status, v["epns"], human_bytes(v["bytes"]), f"{v['files']:,}")
        for status, v in sorted(data["epns"]["by_status"].items())
    ]
    rows.append(
        (
            "total",
            data["epns"]["total"],
            human_bytes(data["bytes"]["total"]),
            f"{data['files']['total']:,}",
        )
    )
    lines.append(
        table(
            ["status", "EPNs", "size", "files"], rows, width=width, right={"EPNs", "size", "files"}
        )
    )
    b = data["bytes"]
    lines.append(
        f"progress:   {human_bytes(b['done'])} of {human_bytes(b['total'])} done ({b['percent_done']:.1f} %), "
        f"{human_bytes(b['remaining'])} to go"
    )
    unmapped = data.get("unmapped") or {}
    if unmapped.get("epns"):
        n = unmapped["epns"]
        lines.append(
            f"unmapped:   {plural(n, 'EPN')} ({human_bytes(unmapped['bytes'])}) not copied: "
            "no destinations entry (asynchy destinations --unmapped; copy_unmapped copies them)"
        )
    walk = data["last_walk"]
    if walk:
        lines.append(f"last walk:  {_walk_line(walk)}")
        if walk["status"] != "complete" and walk.get("message"):
            lines += _wrapped("why:", shown(walk["message"]), width)
        if "last_complete" in walk:
            good = walk["last_complete"]
            lines.append(f"last complete walk: {_walk_line(good) if good else 'never'}")
    else:
        lines.append("last walk:  never (run asynchy walk)")
    sync = data["last_sync"]
    if sync:
        took = human_seconds(sync["seconds"]) if sync["seconds"] is not None else "still running"
        lines.append(
            f"last sync:  {local_time(sync['started_at'])}, {took}, {sync['status']} "
            f"({sync['complete']} complete, {sync['failed']} failed)"
        )
    else:
        lines.append("last sync:  never (run asynchy sync)")
    t = data["throughput"]
    eta = data["eta_seconds"]
    if t["last_day_copying_seconds"]:
        lines.append(
            f"throughput: {human_bytes(t['last_day_copying_bytes_per_second'])}/s while copying "
            f"(last day: {human_bytes(t['last_day_bytes'])} in "
            f"{human_seconds(t['last_day_copying_seconds'])})"
        )
    else:
        lines.append("throughput: nothing copied in the last day")
    if eta:
        lines.append(
            f"to go:      {human_seconds(eta)} of copying at that rate ({local_time(data['eta_at'])})"
        )
    else:
        lines.append(
            "to go:      "
            + ("nothing left to copy" if eta == 0 else "unknown (nothing copied in the last day)")
        )
    for n, failure in enumerate(data["top_failures"]):
        label = "failures:  " if n == 0 else "           "
        lines.append(
            f"{label} {failure['epns']:>4}  {shown(failure['reason'] or failure['class'] or '?')}"[
                :width
            ]
        )
    for n, claim in enumerate(data["active_claims"]):
        label = "claims:    " if n == 0 else "           "
        lines.append(
            f"{label} {shown(claim['epn'])} by {claim['host']}:{claim['pid']} since {short_time(claim['claimed_at'])}, "
            f"lease until {short_time(claim['lease_until'])}"
        )
    return "\n".join(lines)


def _wrapped(label: str, text: str, width: int | None, indent: int = 12) -> list[str]:
    """``label text`` under the status lines' indent, wrapped to the terminal (never cut)."""
    import textwrap

    lead = " " * indent + label + " "
    if width is None:
        return [lead + text]
    return textwrap.wrap(
        text, width=max(40, width), initial_indent=lead, subsequent_indent=" " * len(lead)
    )


def _walk_line(walk: dict[str, Any]) -> str:
    took = human_seconds(walk["seconds"]) if walk["seconds"] is not None else "still running"
    return (
        f"{local_time(walk['started_at'])}, {took}, {walk['status']} "
        f"({plural(walk['epns_walked'], 'EPN')}, {plural(walk['errors'], 'error')})"
    )


EPN_COLUMNS = ["epn", "status", "size", "files", "modified", "attempts", "last_error"]


def epn_rows(items: list[dict[str, Any]], human: bool) -> list[tuple[Any, ...]]:
    return [
        tuple(human_bytes(item[c]) if (human and c == "size") else item[c] for c in EPN_COLUMNS)
        for item in items
    ]


def show(data: dict[str, Any], width: int | None = 80) -> str:
    e = data["epn"]
    lines = [
        f"EPN {shown(e['epn'])}: {e['status']}"
        + (f" ({shown(e['skip_reason'])})" if e.get("skip_reason") else "")
    ]
    lines.append(
        f"  inventory:   {plural(e['file_count'], 'file')}, {human_bytes(e['size'])}, newest file {local_time(e['modified'])}"
    )
    lines.append(
        f"  walked:      {local_time(e['walked_at'])}"
        + ("" if e["walk_complete"] else " (incomplete: see walk errors)")
    )
    lines.append(f"  destination: {shown(e['dest_path'] or '-')}")
    lines.append(
        f"  transfers:   {plural(e['attempts'], 'attempt')}, {plural(e['failures'], 'failure')} in a row, "
        f"{human_bytes(e['bytes_transferred'])} moved, completed {local_time(e['completed_at'])}"
    )
    if e["last_error"]:
        lines.append(f"  last error:  {shown(e['last_error'])}")
    if e["status"] == "running":
        lines.append(
            f"  claimed by:  {e['claim_owner']} since {local_time(e['claimed_at'])}, "
            f"lease until {local_time(e['lease_until'])}"
        )
    if data["transfers"]:
        rows = [
            (
                x["attempt"],
                local_time(x["started_at"]),
                human_seconds(x["seconds"] or 0),
                "" if x["exit_code"] is None else x["exit_code"],
                x["classification"],
                x["outcome"],
                human_bytes(x["bytes"]),
            )
            for x in data["transfers"]
        ]
        lines.append("")
        lines.append(
            table(
                ["#", "started", "took", "exit", "class", "outcome", "bytes"],
                rows,
                width=width,
                right={"#", "exit", "bytes"},
            )
        )
        for x in data["transfers"]:
            if x["reason"] or x["stderr_tail"]:
                lines.append(f"  attempt {x['attempt']}: {shown(x['reason'] or '')}")
                for line in (x["stderr_tail"] or "").strip().splitlines()[-5:]:
                    lines.append(f"    {shown(line)}"[:width])
    if data["walk_errors"]:
        lines.append("")
        lines.append("walk errors:")
        for err in data["walk_errors"]:
            lines.append(
                f"  {shown(err['path'] or '.')}: {shown(err['message'])} ({err['kind']})"[:width]
            )
    return "\n".join(lines)


# ------------------------------------------------------------------ workers
def workers_dict(row: Any) -> dict[str, Any]:
    return {
        "worker_id": row.worker_id,
        "host": row.host,
        "pid": row.pid,
        "command": row.command,
        "status": "stale" if row.stale else row.status,
        "started_at": row.started_at,
        "heartbeat_seconds_ago": row.heartbeat_seconds_ago,
        "lease_seconds": row.lease_seconds,
        "claims": [{"epn": epn, "lease_seconds_left": left} for epn, left in row.claims],
    }


def workers(rows: list[Any], width: int | None = 80) -> str:
    if not rows:
        return "no running workers"
    table_rows = []
    for r in rows:
        left = [x for _, x in r.claims if x is not None]
        table_rows.append(
            (
                r.worker_id,
                f"{r.host}:{r.pid}",
                "stale" if r.stale else r.status,
                "-"
                if r.heartbeat_seconds_ago is None
                else human_seconds(r.heartbeat_seconds_ago) + " ago",
                len(r.claims),
                "-"
                if not left
                else human_seconds(min(left))
                if min(left) >= 0
                else f"expired {human_seconds(-min(left))} ago",
            )
        )
    text = table(
        ["worker", "host:pid", "status", "heartbeat", "claims", "next lease end"],
        table_rows,
        width=width,
        right={"claims"},
    )
    detail = [
        f"  {r.worker_id}: {', '.join(shown(e) for e, _ in r.claims)}" for r in rows if r.claims
    ]
    return text + ("\n" + "\n".join(detail) if detail else "")


def merge_summary(data: dict[str, Any]) -> str:
    lines = [
        f"merged {plural(len(data['inputs']), 'input')} into a target of {plural(data['epns'], 'EPN')} "
        f"({data['epns_added']:,} new), "
        f"{plural(data['files_added'], 'file')} added, {data['files_updated']:,} updated, {data['files_removed']:,} removed; "
        f"{plural(data['epns_completed'], 'EPN')} completed, {data['epns_changed']:,} changed, "
        f"{plural(data['conflicts_resolved'], 'conflict')} resolved, {plural(data['transfers_added'], 'transfer')} added"
    ]
    lines += [f"  {shown(i['path'])}: {i['kind']}" for i in data["inputs"]]
    if data.get("legacy_timezone"):
        lines.append(f"  legacy local times read in {data['legacy_timezone']} (--legacy-timezone)")
    return "\n".join(lines)


def as_json_line(data: Any) -> str:
    """One JSON object on one line (a stream of them, e.g. a watch's cycles)."""
    return json.dumps(machine(data), default=str)


def alert_preview(summary: Any, html_path: str | None) -> str:
    """``alert --dry-run``: who would get it, the text part as sent, and what the HTML part holds."""
    html = summary.html or ""
    to = ", ".join(summary.to) if getattr(summary, "to", None) else "(alert_to not set)"
    rows = html.count("<tr")
    where = f"written to {html_path}" if html_path else "--html FILE writes it"
    lines = [
        f"alert (dry run): {plural(len(summary.alerted), 'EPN')}, to {to}; nothing sent, nothing recorded",
        "",
        summary.text.rstrip("\n"),
        "",
        f"[HTML part: {len(html):,} characters, {rows} table rows; {where}]",
    ]
    return "\n".join(lines)


def alert_summary(data: dict[str, Any]) -> str:
    unmapped, alerted = len(data["unmapped"]), len(data["alerted"])
    if data.get("all_copied"):
        return f"no alert needed: {data['all_copied']}"
    if not alerted:
        line = (
            f"no alert needed: {plural(unmapped, 'unmapped EPN')} on the server, all named in "
            "earlier alerts"
        )
        if not unmapped:
            line = "no alert needed: every EPN on the server has a destination mapping"
    else:
        line = (
            f"alert sent naming {plural(alerted, 'EPN')} ({unmapped:,} unmapped on the server, "
            f"{data['already_alerted']} named before): {', '.join(shown(e) for e in data['alerted'][:10])}"
            + (" ..." if alerted > 10 else "")
        )
    lines = [line]
    if data["refused_recipients"]:
        lines.append("  refused by the SMTP server: " + ", ".join(data["refused_recipients"]))
    lines += [f"  portal: {p}" for p in data["portal_errors"]]
    return "\n".join(lines)


# ------------------------------------------------------------------ reset, skip, verify
def changed(data: dict[str, Any], verb: str, to: str) -> str:
    """reset and skip: what was (or, in a dry run, would be) changed."""
    done = data["epns"]
    head = ("would " + ("reset" if verb == "reset" else "skip")) if data["dry_run"] else verb
    line = f"{head} {plural(len(done), 'EPN')}" + (f" {to}" if to else "")
    if data["dry_run"] and done:
        line += ": " + ", ".join(shown(e) for e in done[:20]) + (" ..." if len(done) > 20 else "")
    return line


def refusals(data: dict[str, Any], verb: str) -> list[str]:
    """reset and skip: the EPNs left as they were, and why (for stderr)."""
    return [f"  not {verb}: {shown(r['epn'])}: {r['reason']}" for r in data["refused"]]


def verified(data: dict[str, Any]) -> str:
    """verify: a line per copy that differs or could not be checked, then the counts."""
    lines = [f"differs: {shown(d['epn'])}: {shown(d['reason'])}" for d in data["differ"]]
    lines += [f"not verified: {shown(d['epn'])}: {d['reason']}" for d in data["not_verified"]]
    differ = len(data["differ"])
    line = f"verified {plural(data['checked'], 'EPN')}: {len(data['match']):,} match, {differ:,} differ"
    if differ:
        line += (
            f"; {'it is' if differ == 1 else 'they are'} now 'changed' and the next sync copies "
            f"{'it' if differ == 1 else 'them'} again"
        )
    return "\n".join([*lines, line])
