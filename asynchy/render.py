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
    pass

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


def as_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False, default=str)


def shown(text: str) -> str:
    """A stored name made safe for one line of a terminal: control characters escaped."""
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text
    )


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


def as_json_line(data: Any) -> str:
    """One JSON object on one line (a stream of them, e.g. a watch's cycles)."""
    return json.dumps(machine(data), default=str)
