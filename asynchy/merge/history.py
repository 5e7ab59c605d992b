"""History of the inputs - walks, walk errors, workers, transfers - copied once into the target."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from sqlalchemy import Connection, insert, select

from asynchy.merge.inspect import Source
from asynchy.merge.read import aware
from asynchy.merge.summary import MergeSummary
from asynchy.models import transfers_table, walk_errors_table, walks_table, workers_table

HISTORY = {
    "workers": (
        "worker_id",
        "host",
        "pid",
        "command",
        "started_at",
        "heartbeat_at",
        "finished_at",
        "status",
        "lease_seconds",
    ),
    "transfers": (
        "epn",
        "attempt",
        "started_at",
        "finished_at",
        "worker_id",
        "host",
        "pid",
        "claim_token",
        "argv",
        "dest",
        "exit_code",
        "classification",
        "outcome",
        "reason",
        "bytes_transferred",
        "files_transferred",
        "stdout_tail",
        "stderr_tail",
        "parts",  # revision 0008
    ),
    "walks": (
        "id",
        "started_at",
        "finished_at",
        "status",
        "source",
        "host",
        "pid",
        "options",
        "epns_total",
        "epns_walked",
        "epns_skipped",
        "epns_changed",
        "files",
        "bytes",
        "errors",
        "reconnects",
        "message",
    ),
    "walk_errors": ("walk_id", "epn", "path", "kind", "message", "at"),
}


def history_rows(
    con: sqlite3.Connection, schema: str, source: Source, table: str
) -> list[dict[str, Any]]:
    if table not in source.tables:
        return []
    cols = [c for c in HISTORY[table] if c in source.tables[table]]
    return [
        dict(zip(cols, row, strict=True))
        for row in con.execute(f"SELECT {', '.join(cols)} FROM {schema}.{table}")
    ]


Loaded = list[
    tuple[int, dict[str, list[dict[str, Any]]]]
]  # (input number, its history rows by table)


def _sort_key(*values: Any) -> tuple[Any, ...]:
    return tuple((v is None, "" if v is None else v) for v in values)


def copy_walks(conn: Connection, loaded: Loaded, walk_ids: dict[tuple[int, int], int]) -> None:
    """The inputs' walks, each once, under new ids.

    History rows are written in an order that depends only on their content, so the ids they
    get do not depend on the order of the inputs.
    """
    w = walks_table.c
    known_walks: dict[tuple[Any, ...], int] = {
        (r.source, r.host, r.pid, aware(r.started_at)): r.id
        for r in conn.execute(select(w.id, w.source, w.host, w.pid, w.started_at))
    }
    walks = [(src, walk) for src, rows in loaded for walk in rows["walks"]]
    walks.sort(
        key=lambda sw: _sort_key(
            aware(sw[1]["started_at"]), sw[1]["source"], sw[1]["host"], sw[1]["pid"]
        )
    )
    for src, walk in walks:
        walk_key: tuple[Any, ...] = (
            walk["source"],
            walk["host"],
            walk["pid"],
            aware(walk["started_at"]),
        )
        new_id = known_walks.get(walk_key)
        if new_id is None:
            values = {c: v for c, v in walk.items() if c != "id"}
            values["started_at"], values["finished_at"] = (
                aware(walk["started_at"]),
                aware(walk.get("finished_at")),
            )
            if isinstance(values.get("options"), str):
                values["options"] = json.loads(values["options"] or "{}")
            new_id = conn.execute(insert(walks_table).values(**values).returning(w.id)).scalar_one()
            known_walks[walk_key] = new_id
        walk_ids[(src, walk["id"])] = new_id


def copy_rest_of_history(
    conn: Connection, loaded: Loaded, walk_ids: dict[tuple[int, int], int], summary: MergeSummary
) -> None:
    """Walk errors, workers and transfers (after the EPN rows they refer to)."""
    t, k, we = transfers_table.c, workers_table.c, walk_errors_table.c
    known_errors = {
        tuple(r) for r in conn.execute(select(we.walk_id, we.epn, we.path, we.kind, we.message))
    }
    errors = []
    for src, rows in loaded:
        for err in rows["walk_errors"]:
            new_walk = walk_ids.get((src, err["walk_id"]))
            error_key: tuple[Any, ...] = (
                new_walk,
                err["epn"],
                err["path"],
                err["kind"],
                err["message"],
            )
            if new_walk is not None and error_key not in known_errors:
                known_errors.add(error_key)
                errors.append({**err, "walk_id": new_walk, "at": aware(err["at"])})
    if errors:
        errors.sort(
            key=lambda r: _sort_key(r["walk_id"], r["epn"], r["path"], r["kind"], r["message"])
        )
        conn.execute(insert(walk_errors_table), errors)

    known_workers = {r[0] for r in conn.execute(select(k.worker_id))}
    workers = {}
    for _src, rows in loaded:
        for worker in rows["workers"]:
            if worker["worker_id"] not in known_workers:
                times = {
                    c: aware(worker.get(c)) for c in ("started_at", "heartbeat_at", "finished_at")
                }
                status = "finished" if worker["status"] == "running" else worker["status"]
                workers[worker["worker_id"]] = (
                    {c: worker.get(c) for c in HISTORY["workers"]} | times | {"status": status}
                )
    if workers:
        conn.execute(insert(workers_table), [workers[key] for key in sorted(workers)])

    known_transfers: set[tuple[Any, ...]] = {
        (r.epn, aware(r.started_at), r.worker_id, r.attempt, r.claim_token)
        for r in conn.execute(select(t.epn, t.started_at, t.worker_id, t.attempt, t.claim_token))
    }
    transfers: dict[tuple[Any, ...], dict[str, Any]] = {}
    for _src, rows in loaded:
        for tr in rows["transfers"]:
            key = (
                tr["epn"],
                aware(tr["started_at"]),
                tr["worker_id"],
                tr["attempt"],
                tr["claim_token"],
            )
            if key not in known_transfers and key not in transfers:
                argv = json.loads(tr["argv"]) if isinstance(tr["argv"], str) else tr["argv"]
                parts = tr.get("parts")
                transfers[key] = {c: tr.get(c) for c in HISTORY["transfers"]} | {
                    "argv": argv,
                    "parts": json.loads(parts) if isinstance(parts, str) else parts,
                    "started_at": key[1],
                    "finished_at": aware(tr["finished_at"]),
                }
    if transfers:
        conn.execute(
            insert(transfers_table),
            [transfers[key] for key in sorted(transfers, key=lambda k: _sort_key(*k))],
        )
        summary.transfers_added += len(transfers)
