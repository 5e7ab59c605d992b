"""asynchy db (the schema) and asynchy demo (a first run on this machine)."""

from __future__ import annotations

from pathlib import Path

import click

from asynchy.cli.common import get_settings
from asynchy.errors import PartialFailure, SchemaError


@click.command("demo")
@click.option(
    "--dir",
    "folder",
    default="asynchy-demo",
    show_default=True,
    metavar="DIR",
    help="Folder for the made-up facility, the copies and the database (new or a previous demo).",
)
@click.pass_context
def demo_cmd(ctx: click.Context, /, folder: str) -> None:
    """Try asynchy end to end on this machine: make a small facility, walk it, sync it.

    Needs only rsync. Everything goes into one folder, with a config file
    (as.yaml) for trying the other commands on it.

    \b
    Example:
        asynchy demo
        asynchy --config asynchy-demo/as.yaml walk --refresh
    """
    from asynchy import demo, texts

    get_settings(ctx)
    result = demo.run(Path(folder))
    click.echo(f"made-up facility: {result.folder / 'facility'}")
    click.echo(texts.walk_summary(result.walked.as_dict()))
    click.echo(texts.sync_summary(result.synced.as_dict()))
    states = ", ".join(f"{n} {status}" for status, n in sorted(result.statuses.items()))
    click.echo(f"inventory {result.folder / 'demo.db'}: {states}")
    click.echo(f"copies in {result.folder / 'vault'}; next, try:")
    click.echo(
        f"  sqlite3 {result.folder / 'demo.db'} 'select epn, status, size, file_count from epns'"  # noqa: S608
    )
    click.echo(f"  asynchy --config {result.folder / 'as.yaml'} sync --dry-run")
    if result.synced.failed:
        raise PartialFailure()


@click.group("db")
def db_group() -> None:
    """Inspect or upgrade the database schema."""


@db_group.command("upgrade")
@click.pass_context
def db_upgrade_cmd(ctx: click.Context) -> None:
    """Create the schema in a new database or bring an older one up to date.

    Every command does this on its own when it opens the database; this
    command does only that.  Back up a database before upgrading it.

    \b
    Example:
        asynchy --db /srv/asynchy/files.db db upgrade
    """
    from asynchy.db import upgrade_database

    settings = get_settings(ctx)
    db, result = upgrade_database(settings.db)
    db.close()
    if result.before == result.after:
        click.echo(f"{db.display}: schema is current (revision {result.after})")
    else:
        click.echo(
            f"{db.display}: schema upgraded from {result.before or 'empty'} to revision {result.after}"
        )


@db_group.command("current")
@click.pass_context
def db_current_cmd(ctx: click.Context) -> None:
    """Show the schema revision of the database (changes nothing).

    \b
    Example:
        asynchy --db files.db db current
    """
    from asynchy.db import schema_status

    settings = get_settings(ctx)
    status = schema_status(settings.db)
    notes = {
        "current": "(head)",
        "empty": "(no asynchy schema yet: run `asynchy db upgrade`)",
        "older": f"(run `asynchy db upgrade` to reach {status.head})",
        "newer": f"(newer than this asynchy, which knows up to {status.head}: upgrade asynchy)",
    }
    click.echo(f"{status.revision or 'none'} {notes[status.state]}")
    if status.state == "newer":
        raise SchemaError()  # the line above says why


COMMANDS = [demo_cmd, db_group]
