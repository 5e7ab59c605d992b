"""The inventory tables, as SQLAlchemy Core tables (no ORM: start-up stays quick).

Documented column by column in docs/schema.md.

Only table definitions live here: no engines, sessions or business rules.
``SCHEMA_HEAD`` must name the newest alembic revision in ``migrations/versions``
(a test checks it), so that opening an up-to-date database never loads alembic.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    false,
    text,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.types import TypeDecorator, TypeEngine

SCHEMA_HEAD = "0009"
# Every status of an EPN (docs/schema.md), in the order people read them.
STATUSES = (
    "pending",
    "running",
    "complete",
    "damaged",
    "changed",
    "failed",
    "quarantined",
    "skipped",
)
QUEUE_STATUSES = ("pending", "changed", "failed", "running")
QUEUE_CONDITION = "status IN ('pending', 'changed', 'failed', 'running')"

# SQLite has no date type; asynchy stores UTC as 'YYYY-MM-DD HH:MM:SS' text (whole
# seconds), which sorts correctly and which SQLite's date functions understand.
SQLITE_DATETIME_FORMAT = "%(year)04d-%(month)02d-%(day)02d %(hour)02d:%(minute)02d:%(second)02d"


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime in Python; timestamptz on PostgreSQL, text on SQLite."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(
                sqlite.DATETIME(storage_format=SQLITE_DATETIME_FORMAT)  # type: ignore[no-untyped-call]
            )
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None, microsecond=0)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def sqlite_time_text(epoch_seconds: int) -> str:
    """The exact text UTCDateTime stores on SQLite, for bulk paths that bypass the type."""
    return datetime.fromtimestamp(epoch_seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


# One run of ``asynchy walk``.
walks_table = Table(
    "walks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("started_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime),
    Column("status", Text, nullable=False, server_default=text("'running'")),
    Column("source", Text, nullable=False),
    Column("host", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("options", JSON, nullable=False),
    Column("epns_total", Integer, nullable=False, server_default=text("0")),
    Column("epns_walked", Integer, nullable=False, server_default=text("0")),
    Column("epns_skipped", Integer, nullable=False, server_default=text("0")),
    Column("epns_changed", Integer, nullable=False, server_default=text("0")),
    Column("files", BigInteger, nullable=False, server_default=text("0")),
    Column("bytes", BigInteger, nullable=False, server_default=text("0")),
    Column("errors", Integer, nullable=False, server_default=text("0")),
    Column("reconnects", Integer, nullable=False, server_default=text("0")),
    Column("message", Text),
)


# One experiment folder on the source, with aggregates of its files.
epns_table = Table(
    "epns",
    metadata,
    Column("epn", Text, primary_key=True),
    Column("size", BigInteger, nullable=False, server_default=text("0")),
    Column("file_count", Integer, nullable=False, server_default=text("0")),
    Column("modified", UTCDateTime),
    Column("walked_at", UTCDateTime),
    Column("walk_id", Integer, ForeignKey("walks.id", ondelete="SET NULL")),
    Column("walk_complete", Boolean, nullable=False, server_default=false()),
    Column("walk_error_count", Integer, nullable=False, server_default=text("0")),
    Column("status", Text, nullable=False, server_default=text("'pending'")),
    Column("changed_at", UTCDateTime),
    Column("first_seen_at", UTCDateTime, nullable=False),
    # Transfer state (asynchy sync), revision 0002.
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("failures", Integer, nullable=False, server_default=text("0")),
    Column("last_exit_code", Integer),
    Column("last_error", Text),
    Column("last_error_class", Text),
    Column("bytes_transferred", BigInteger, nullable=False, server_default=text("0")),
    Column("completed_at", UTCDateTime),
    Column("dest_path", Text),
    Column("claim_owner", Text),
    Column("claim_token", BigInteger, nullable=False, server_default=text("0")),
    Column("claimed_at", UTCDateTime),
    Column("lease_until", UTCDateTime),
    Column("claimed_from", Text),
    # asynchy skip, revision 0003.
    Column("skip_reason", Text),
    # Revision 0007: after a data failure the EPN waits until then (back-off over runs).
    Column("not_before", UTCDateTime),
    Index(None, "status", "modified"),
    Index(None, "walk_id"),
    Index(None, "claim_owner"),
    # Revision 0005: the queue sync claims from, in order (complete EPNs drop out of it).
    Index(
        "ix_epns_queue",
        "modified",
        "epn",
        sqlite_where=text(QUEUE_CONDITION),  # postgresql_where: see add_postgresql_options
    ),
)


# One regular file or symlink of an EPN (the key is the EPN and the path inside it).
files_table = Table(
    "files",
    metadata,
    Column("epn", Text, ForeignKey("epns.epn", ondelete="CASCADE"), primary_key=True),
    Column("path", Text, primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("modified", UTCDateTime, nullable=False),
    Column("kind", Text, nullable=False, server_default=text("'file'")),
    sqlite_with_rowid=False,
)


# Revision 0009: the source-side checksum of one regular file, as the copy proved it (docs/fixity.md).
# It counts for the file while the file's row has the same size and modified.
checksums_table = Table(
    "checksums",
    metadata,
    Column("epn", Text, ForeignKey("epns.epn", ondelete="CASCADE"), primary_key=True),
    Column("path", Text, primary_key=True),
    Column("algo", Text, nullable=False),  # xxh128 or md5 (rsync --checksum-choice)
    Column("value", Text, nullable=False),  # lower-case hex, as rsync's %C and xxh128sum print it
    Column("size", BigInteger, nullable=False),
    Column("modified", UTCDateTime, nullable=False),
    Column("obtained", Text, nullable=False),  # transfer (the copy's own %C) or source (a pass)
    Column("recorded_at", UTCDateTime, nullable=False),
    Column("audited_at", UTCDateTime),  # the last time a read of the local copy matched it
    Column("damage", Text),  # NULL, or what the last audit found: mismatch or missing
    sqlite_with_rowid=False,
)


# Revision 0009: one audit of one EPN's local copy against its checksums (asynchy audit), kept.
audits_table = Table(
    "audits",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("epn", Text, ForeignKey("epns.epn", ondelete="CASCADE"), nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime, nullable=False),
    Column("host", Text, nullable=False),
    Column("files", Integer, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("mismatched", Integer, nullable=False),
    Column("missing", Integer, nullable=False),
    Column("unexpected", Integer),  # NULL when the audit stopped before the end of the EPN
    Column("result", Text, nullable=False),  # ok, damaged or stopped (a budget ran out)
    Column("resume_after", Text),  # stopped: the last path checked (the next audit goes on there)
    Column("message", Text),  # the first damaged files
    Column("alerted_at", UTCDateTime),  # damaged: when an alert mail named it
    Index(None, "epn", "finished_at"),
)


# A problem met while walking: an unreadable or vanished folder, an unsafe name, a missing EPN.
walk_errors_table = Table(
    "walk_errors",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("walk_id", Integer, ForeignKey("walks.id", ondelete="CASCADE"), nullable=False),
    Column("epn", Text),
    Column("path", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("message", Text, nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Index(None, "epn"),
    Index(None, "walk_id"),
)


# One attempt to copy an EPN (asynchy sync), kept for ever.
transfers_table = Table(
    "transfers",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("epn", Text, ForeignKey("epns.epn", ondelete="CASCADE"), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime, nullable=False),
    Column("worker_id", Text, nullable=False),
    Column("host", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("claim_token", BigInteger, nullable=False),
    Column("argv", JSON, nullable=False),
    Column("dest", Text, nullable=False),
    Column("exit_code", Integer),
    Column("classification", Text, nullable=False),
    Column("outcome", Text, nullable=False),
    Column("reason", Text),
    Column("bytes_transferred", BigInteger, nullable=False, server_default=text("0")),
    Column("files_transferred", Integer, nullable=False, server_default=text("0")),
    Column("stdout_tail", Text),
    Column("stderr_tail", Text),
    # Revision 0008: a split EPN's parts in this attempt, one object each (docs/schema.md).
    Column("parts", JSON(none_as_null=True)),
    Index(None, "epn"),
    Index(None, "finished_at"),
)


# A running or finished ``asynchy sync`` process (one row per run).
workers_table = Table(
    "workers",
    metadata,
    Column("worker_id", Text, primary_key=True),
    Column("host", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("command", Text, nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("heartbeat_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime),
    Column("status", Text, nullable=False, server_default=text("'running'")),
    # Revision 0004: the lease this worker takes (a worker silent for longer is presumed dead).
    Column("lease_seconds", Integer),
)


# Revision 0006: a visit (experiment) as the facility portal describes it, cached for reports.
visits_table = Table(
    "visits",
    metadata,
    Column("epn", Text, primary_key=True),
    Column("equipment_id", Text, nullable=False),
    Column("start_time", UTCDateTime),
    Column("end_time", UTCDateTime),
    Column("principal_first_names", Text),
    Column("principal_last_name", Text),
    Column("principal_email", Text),
    Column("data_scientists", JSON, nullable=False),
    Column("fetched_at", UTCDateTime, nullable=False),
)


# Revision 0006: one EPN named in one alert e-mail that was sent (asynchy alert).
alerts_table = Table(
    "alerts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("epn", Text, nullable=False),
    Column("sent_at", UTCDateTime, nullable=False),
    Column("recipients", Text, nullable=False),
    Column("subject", Text, nullable=False),
    Index(None, "epn", "sent_at"),
)


def add_postgresql_options() -> None:
    """The PostgreSQL half of the partial queue index.  Given at import time, a ``postgresql_*``
    keyword loads SQLAlchemy's PostgreSQL dialect (and asyncio, ~50 ms) in every command, also
    on SQLite; so db.py adds it when it opens a PostgreSQL database (idempotent)."""
    index = next(i for i in epns_table.indexes if i.name == "ix_epns_queue")
    index.dialect_kwargs["postgresql_where"] = text(QUEUE_CONDITION)
