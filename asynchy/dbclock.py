"""The database's clock: leases, back-offs and heartbeats are timed by the database, never by a
host's own clock (several hosts share one PostgreSQL database; docs/multi-host.md).  Each helper
gives a SQL expression, for SQLite (UTC text) and PostgreSQL (timestamptz) alike."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, Interval, bindparam, func, literal

from asynchy.db import Database


def now(db: Database | str) -> ColumnElement[Any]:
    """Now, comparable with stored UTC times (``db``: a Database or a dialect name)."""
    if _sqlite(db):
        return func.datetime("now")
    return func.now()


def now_plus(db: Database, seconds: float) -> ColumnElement[Any]:
    """Now plus a fixed number of seconds (a literal)."""
    if db.is_sqlite:
        return func.datetime("now", f"+{int(seconds)} seconds")
    return func.now() + literal(timedelta(seconds=seconds), Interval())


def later(db: Database | str, name: str) -> ColumnElement[Any]:
    """Now plus a bound number of seconds: the parameter ``name`` of ``later_params``."""
    if _sqlite(db):
        return func.datetime("now", bindparam(f"{name}_modifier"))
    return func.now() + bindparam(f"{name}_interval", type_=Interval())


def later_params(db: Database, name: str, seconds: float) -> dict[str, Any]:
    if db.is_sqlite:
        return {f"{name}_modifier": f"+{int(seconds)} seconds"}
    return {f"{name}_interval": timedelta(seconds=int(seconds))}


def seconds_since(db: Database, column: Any) -> ColumnElement[Any]:
    """Whole seconds from a stored time to now (a heartbeat's age)."""
    if db.is_sqlite:
        return func.strftime("%s", "now") - func.strftime("%s", column)
    return func.extract("epoch", func.now() - column)


def seconds_until(db: Database, column: Any) -> ColumnElement[Any]:
    """Whole seconds from now to a stored time (what is left of a lease; negative: past)."""
    if db.is_sqlite:
        return func.strftime("%s", column) - func.strftime("%s", "now")
    return func.extract("epoch", column - func.now())


def _sqlite(db: Database | str) -> bool:
    return db == "sqlite" if isinstance(db, str) else db.is_sqlite
