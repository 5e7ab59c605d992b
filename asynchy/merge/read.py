"""Reading candidates: one reader per input kind (asynchy, MeRC asynchy epns, as-walker files,
ignore.yml) and one for the target, the same on a SQLite and a PostgreSQL target."""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, select, text

from asynchy.errors import UsageError
from asynchy.merge.inspect import Source
from asynchy.merge.rules import MIN_TIME, EpnCandidate
from asynchy.models import epns_table
from asynchy.names import encode_name

log = logging.getLogger(__name__)


BATCH = 50_000


def aware(value: Any) -> datetime | None:
    """A stored time (text or datetime, UTC) as an aware datetime."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value).replace("Z", "")).replace(tzinfo=UTC)


def local_time(value: Any, zone: tzinfo) -> datetime | None:
    """A naive local time written by an older tool -> UTC."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, UTC)
    parsed = datetime.fromisoformat(str(value).strip())
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)
    return parsed.astimezone(UTC).replace(microsecond=0)


ASYNCHY_EPN_COLUMNS = (
    "epn",
    "size",
    "file_count",
    "modified",
    "walked_at",
    "walk_id",
    "walk_complete",
    "walk_error_count",
    "status",
    "changed_at",
    "first_seen_at",
    "attempts",
    "failures",
    "last_exit_code",
    "last_error",
    "last_error_class",
    "bytes_transferred",
    "completed_at",
    "dest_path",
    "skip_reason",
)


TIME_COLUMNS = {"modified", "walked_at", "changed_at", "first_seen_at", "completed_at"}


def asynchy_candidates(
    con: sqlite3.Connection, schema: str, columns: set[str], src: int
) -> Iterator[EpnCandidate]:
    """EPN rows of an asynchy database of any revision (columns it lacks take their defaults)."""
    present = [c for c in ASYNCHY_EPN_COLUMNS if c in columns]
    with_files = {r[0] for r in con.execute(HOLDING.format(schema=schema + "."))}
    for row in con.execute(f"SELECT {', '.join(present)} FROM {schema}.epns"):
        data = dict(zip(present, row, strict=True))
        for key in TIME_COLUMNS & data.keys():
            data[key] = aware(data[key])
        data["walk_complete"] = bool(data.get("walk_complete"))
        status = data.get("status") or "pending"
        if status == "running":  # a claim in another database means nothing here
            status = "pending"
        data["status"] = status
        yield EpnCandidate(
            src=src,
            has_files=data["epn"] in with_files,
            **{k: v for k, v in data.items() if v is not None or k in ("modified",)},
        )


def legacy_candidates(
    con: sqlite3.Connection, source: Source, src: int, zone: tzinfo
) -> Iterator[EpnCandidate]:
    """MeRC asynchy epns rows (EPN-only; complete = 1 is a completed EPN with its transferred bytes)."""
    if "epns" not in source.tables:
        return
    for epn, size, modified, complete, moved in con.execute(
        'SELECT epn, size, modified, complete, "bytesTransferred" FROM epns'
    ):
        if epn is None:
            continue
        yield EpnCandidate(
            epn=encode_name(str(epn).encode()),
            src=src,
            size=int(size or 0),
            modified=local_time(modified, zone),
            status="complete" if complete else "pending",
            bytes_transferred=int(moved or 0),
        )


def legacy_file_rows(
    con: sqlite3.Connection, zone: tzinfo
) -> Iterator[tuple[str, str, int, datetime]]:
    """as-walker files rows -> (epn, path inside the EPN, size, UTC mtime); the EPN folder is found in the path."""
    for epn, path, size, modified in con.execute(
        "SELECT epn, path, size, modified FROM files ORDER BY epn, path"
    ):
        if epn is None or path is None:
            continue
        epn_text = str(epn)
        marker = "/" + epn_text + "/"
        at = str(path).find(marker)
        if at < 0:
            log.warning("as-walker row %r is not inside EPN %r: left out", path, epn_text)
            continue
        rel = str(path)[at + len(marker) :]
        when = local_time(modified, zone)
        yield (
            encode_name(epn_text.encode()),
            encode_name(rel.encode()),
            int(size or 0),
            when or MIN_TIME,
        )


def legacy_zone(name: str | None) -> ZoneInfo:
    """The zone the older tools' naive local times are read in: by name, with its daylight saving.

    Default: this machine's zone - ``TZ``, else the zone ``/etc/localtime`` links to - never a
    fixed offset (December's +11 would shift every July time of Melbourne by an hour)."""
    if name:
        try:
            return ZoneInfo(name)
        except Exception:
            raise UsageError(
                f"--legacy-timezone {name!r} is not a time zone (e.g. Australia/Melbourne)"
            ) from None
    return machine_zone()


def machine_zone() -> ZoneInfo:
    tz = os.environ.get("TZ", "").lstrip(":")
    if tz:
        try:
            return ZoneInfo(tz)
        except Exception:
            raise UsageError(
                f"TZ={tz!r} is not a time zone name: set TZ to e.g. Australia/Melbourne, or pass "
                "--legacy-timezone"
            ) from None
    try:
        target = os.path.realpath("/etc/localtime")
        marker = "/zoneinfo/"
        if marker in target:
            return ZoneInfo(target.split(marker, 1)[1])
        with open("/etc/localtime", "rb") as fh:
            return ZoneInfo.from_file(fh, key="localtime")
    except (OSError, ValueError):
        return ZoneInfo("UTC")


def candidates_of(
    con: sqlite3.Connection,
    schema: str,
    source: Source,
    src: int,
    zone: tzinfo,
    legacy_aggregates: dict[str, tuple[int, int, datetime | None]] | None,
) -> Iterator[EpnCandidate]:
    if source.kind == "asynchy":
        yield from asynchy_candidates(con, schema, source.tables["epns"], src)
    elif source.kind == "ignore-yml":
        for epn in source.epns_listed:
            yield EpnCandidate(epn=encode_name(epn.encode()), src=src, status="complete")
    else:
        merc = {c.epn: c for c in legacy_candidates(con, source, src, zone)}
        for epn, (count, size, newest) in (legacy_aggregates or {}).items():
            c = merc.pop(epn, None) or EpnCandidate(epn=epn, src=src)
            c.size, c.file_count, c.modified, c.has_files, c.walk_complete = (
                size,
                count,
                newest,
                True,
                True,
            )
            yield c
        yield from merc.values()


def collect(candidates: dict[str, list[EpnCandidate]], found: Iterable[EpnCandidate]) -> None:
    for c in found:
        candidates.setdefault(c.epn, []).append(c)


# EPNs of an input that hold file rows: one index probe per EPN instead of a scan of every file row.
HOLDING = "SELECT e.epn FROM {schema}epns e WHERE EXISTS (SELECT 1 FROM {schema}files f WHERE f.epn = e.epn)"


def target_candidates(conn: Connection) -> Iterator[EpnCandidate]:
    """The target's own EPN rows (src 0), read the same way on SQLite and PostgreSQL.  Unlike an
    input's, a running claim stays ``running`` (rules.left_to_owner)."""
    e = epns_table.c
    with_files = {r[0] for r in conn.execute(text(HOLDING.format(schema="")))}
    for row in conn.execute(select(*[getattr(e, c) for c in ASYNCHY_EPN_COLUMNS])).mappings():
        data = {k: v for k, v in row.items() if v is not None or k == "modified"}
        data["status"] = data.get("status") or "pending"
        yield EpnCandidate(src=0, has_files=data["epn"] in with_files, **data)
