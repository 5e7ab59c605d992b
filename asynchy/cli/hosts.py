"""Several hosts on one database: asynchy workers and asynchy release (the library: claims)."""

from __future__ import annotations

from typing import Any

import click

from asynchy.cli.common import open_existing, output_options, take_output, width
from asynchy.errors import UsageError


@click.command("workers")
@click.option(
    "--all", "all_workers", is_flag=True, help="Also finished, interrupted and dead workers."
)
@output_options()
@click.pass_context
def workers_cmd(ctx: click.Context, /, all_workers: bool, **output: Any) -> None:
    """List sync workers (on every host), their claims and how old their leases are.

    A worker whose heartbeat is older than its lease is shown as stale: its
    claims are taken over by others, or freed by `asynchy release --stale`.

    \b
    Example:
        asynchy workers
    """
    from asynchy import render, texts, workers

    _, db = open_existing(ctx)
    rows = workers.workers(db, all_workers=all_workers)
    out = take_output(output)
    if out.fmt == "table":
        click.echo(texts.workers(rows, width()))
        return
    dicts = [texts.workers_dict(r) for r in rows]
    columns = list(dicts[0]) if dicts else ["worker_id"]
    click.echo(render.rows_out(columns, [tuple(d.values()) for d in dicts], out.fmt))


@click.command("release")
@click.option("--stale", is_flag=True, help="Free every claim whose lease has expired.")
@click.option(
    "--worker",
    "worker_id",
    metavar="ID",
    help="Free every claim of this worker (e.g. a host that is gone).",
)
@click.pass_context
def release_cmd(ctx: click.Context, /, stale: bool, worker_id: str | None) -> None:
    """Give claims of dead workers back to the queue.

    Safe even if such a worker is still alive: its late result is refused
    (fencing token).

    \b
    Example:
        asynchy release --stale
        asynchy release --worker 3f2a9c0d1e4b5a69
    """
    from asynchy import render, workers

    if stale == (worker_id is not None):
        raise UsageError("give --stale or --worker ID (one of them)")
    _, db = open_existing(ctx)
    freed, dead = workers.release_stale(db, worker_id=worker_id)
    click.echo(
        f"released {render.plural(len(freed), 'claim')}"
        + (f": {', '.join(render.shown(e) for e in freed)}" if freed and len(freed) <= 10 else "")
    )
    if dead:
        click.echo(f"marked {render.plural(len(dead), 'worker')} dead: {', '.join(dead)}")


COMMANDS = [workers_cmd, release_cmd]
