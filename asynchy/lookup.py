"""EPNs named by a user, looked up in the inventory: a name it does not have (a typo) is a usage
error (exit 2) that offers the closest names, the same for every command that takes EPN names."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, select

from asynchy.db import Database
from asynchy.errors import UsageError
from asynchy.models import epns_table

e = epns_table.c


def similar_epns(conn: Connection, epn: str, n: int = 5) -> list[str]:
    """Inventory EPNs close to a name that is not there: same start, or the closest names."""
    near = [
        r[0]
        for r in conn.execute(
            select(e.epn).where(e.epn.like(epn[:5] + "%")).order_by(e.epn).limit(200)
        )
    ]
    close = difflib.get_close_matches(epn, near, n=n, cutoff=0.5)
    return close or near[:n]


def unknown_epn(conn: Connection, epn: str) -> UsageError:
    near = similar_epns(conn, epn)
    hint = f" (did you mean {', '.join(near)}?)" if near else ""
    return UsageError(f"EPN {epn!r} is not in the inventory{hint}")


def known_rows(conn: Connection, epns: Sequence[str]) -> dict[str, Any]:
    """The rows of the named EPNs (epn, status, lease_until); UsageError for the first one the
    inventory does not have."""
    rows = conn.execute(select(e.epn, e.status, e.lease_until).where(e.epn.in_(list(epns)))).all()
    known = {r.epn: r for r in rows}
    for epn in epns:
        if epn not in known:
            raise unknown_epn(conn, epn)
    return known


def require_known(db: Database, epns: Sequence[str]) -> None:
    """UsageError (with close matches) unless the inventory has every one of ``epns``."""
    with db.read() as conn:
        known_rows(conn, list(dict.fromkeys(epns)))
