"""The inventory tables (SQLAlchemy 2 declarative).  Documented column by column in docs/schema.md.

Only table definitions live here: no engines, sessions or business rules.
``SCHEMA_HEAD`` must name the newest alembic revision in ``migrations/versions``
(a test checks it), so that opening an up-to-date database never loads alembic.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
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
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator, TypeEngine

SCHEMA_HEAD = "0006"
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


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Walk(Base):
    """One run of ``asynchy walk``."""

    __tablename__ = "walks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(Text, nullable=False, server_default=text("'running'"))
    source: Mapped[str] = mapped_column(Text, nullable=False)
    host: Mapped[str] = mapped_column(Text, nullable=False)
    pid: Mapped[int] = mapped_column(Integer, nullable=False)
    options: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    epns_total: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    epns_walked: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    epns_skipped: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    epns_changed: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    files: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default=text("0"))
    bytes: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default=text("0"))
    errors: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    reconnects: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    message: Mapped[str | None] = mapped_column(Text)


class Epn(Base):
    """One experiment folder on the source, with aggregates of its files."""

    __tablename__ = "epns"

    epn: Mapped[str] = mapped_column(Text, primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default=text("0"))
    file_count: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    modified: Mapped[datetime | None] = mapped_column(UTCDateTime)
    walked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    walk_id: Mapped[int | None] = mapped_column(ForeignKey("walks.id", ondelete="SET NULL"))
    walk_complete: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=false())
    walk_error_count: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    status: Mapped[str] = mapped_column(Text, nullable=False, server_default=text("'pending'"))
    changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    # Transfer state (asynchy sync), revision 0002.
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    failures: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    last_exit_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_error_class: Mapped[str | None] = mapped_column(Text)
    bytes_transferred: Mapped[int] = mapped_column(
        BigInteger, nullable=False, server_default=text("0")
    )
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    dest_path: Mapped[str | None] = mapped_column(Text)
    claim_owner: Mapped[str | None] = mapped_column(Text)
    claim_token: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default=text("0"))
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    claimed_from: Mapped[str | None] = mapped_column(Text)
    # asynchy skip, revision 0003.
    skip_reason: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index(None, "status", "modified"),
        Index(None, "walk_id"),
        Index(None, "claim_owner"),
        # Revision 0005: the queue sync claims from, in order (complete EPNs drop out of it).
        Index(
            "ix_epns_queue",
            "modified",
            "epn",
            postgresql_where=text(QUEUE_CONDITION),
            sqlite_where=text(QUEUE_CONDITION),
        ),
    )


class File(Base):
    """One regular file or symlink of an EPN (the key is the EPN and the path inside it)."""

    __tablename__ = "files"

    epn: Mapped[str] = mapped_column(ForeignKey("epns.epn", ondelete="CASCADE"), primary_key=True)
    path: Mapped[str] = mapped_column(Text, primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    modified: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    kind: Mapped[str] = mapped_column(Text, nullable=False, server_default=text("'file'"))

    __table_args__ = ({"sqlite_with_rowid": False},)


class WalkError(Base):
    """A problem met while walking: an unreadable or vanished folder, an unsafe name, a missing EPN."""

    __tablename__ = "walk_errors"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    walk_id: Mapped[int] = mapped_column(ForeignKey("walks.id", ondelete="CASCADE"), nullable=False)
    epn: Mapped[str | None] = mapped_column(Text)
    path: Mapped[str] = mapped_column(Text, nullable=False)
    kind: Mapped[str] = mapped_column(Text, nullable=False)
    message: Mapped[str] = mapped_column(Text, nullable=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)

    __table_args__ = (Index(None, "epn"), Index(None, "walk_id"))


class Transfer(Base):
    """One attempt to copy an EPN (asynchy sync), kept for ever."""

    __tablename__ = "transfers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    epn: Mapped[str] = mapped_column(ForeignKey("epns.epn", ondelete="CASCADE"), nullable=False)
    attempt: Mapped[int] = mapped_column(Integer, nullable=False)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    worker_id: Mapped[str] = mapped_column(Text, nullable=False)
    host: Mapped[str] = mapped_column(Text, nullable=False)
    pid: Mapped[int] = mapped_column(Integer, nullable=False)
    claim_token: Mapped[int] = mapped_column(BigInteger, nullable=False)
    argv: Mapped[list[str]] = mapped_column(JSON, nullable=False)
    dest: Mapped[str] = mapped_column(Text, nullable=False)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    classification: Mapped[str] = mapped_column(Text, nullable=False)
    outcome: Mapped[str] = mapped_column(Text, nullable=False)
    reason: Mapped[str | None] = mapped_column(Text)
    bytes_transferred: Mapped[int] = mapped_column(
        BigInteger, nullable=False, server_default=text("0")
    )
    files_transferred: Mapped[int] = mapped_column(
        Integer, nullable=False, server_default=text("0")
    )
    stdout_tail: Mapped[str | None] = mapped_column(Text)
    stderr_tail: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index(None, "epn"), Index(None, "finished_at"))


class Worker(Base):
    """A running or finished ``asynchy sync`` process (one row per run)."""

    __tablename__ = "workers"

    worker_id: Mapped[str] = mapped_column(Text, primary_key=True)
    host: Mapped[str] = mapped_column(Text, nullable=False)
    pid: Mapped[int] = mapped_column(Integer, nullable=False)
    command: Mapped[str] = mapped_column(Text, nullable=False)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(Text, nullable=False, server_default=text("'running'"))
    # Revision 0004: the lease this worker takes (a worker silent for longer is presumed dead).
    lease_seconds: Mapped[int | None] = mapped_column(Integer)


class Visit(Base):
    """Revision 0006: a visit (experiment) as the facility portal describes it, cached for reports."""

    __tablename__ = "visits"

    epn: Mapped[str] = mapped_column(Text, primary_key=True)
    equipment_id: Mapped[str] = mapped_column(Text, nullable=False)
    start_time: Mapped[datetime | None] = mapped_column(UTCDateTime)
    end_time: Mapped[datetime | None] = mapped_column(UTCDateTime)
    principal_first_names: Mapped[str | None] = mapped_column(Text)
    principal_last_name: Mapped[str | None] = mapped_column(Text)
    principal_email: Mapped[str | None] = mapped_column(Text)
    data_scientists: Mapped[list[dict[str, str]]] = mapped_column(JSON, nullable=False)
    fetched_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class Alert(Base):
    """Revision 0006: one EPN named in one alert e-mail that was sent (asynchy alert)."""

    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    epn: Mapped[str] = mapped_column(Text, nullable=False)
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    recipients: Mapped[str] = mapped_column(Text, nullable=False)
    subject: Mapped[str] = mapped_column(Text, nullable=False)

    __table_args__ = (Index(None, "epn", "sent_at"),)


epns_table = cast(Table, Epn.__table__)
transfers_table = cast(Table, Transfer.__table__)
workers_table = cast(Table, Worker.__table__)
files_table = cast(Table, File.__table__)
walks_table = cast(Table, Walk.__table__)
walk_errors_table = cast(Table, WalkError.__table__)
visits_table = cast(Table, Visit.__table__)
alerts_table = cast(Table, Alert.__table__)
