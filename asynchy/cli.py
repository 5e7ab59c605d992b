"""The command line: parse options, build settings, call one library function, render.

No SQL, no subprocess and no paramiko here.  AsynchyError becomes one line
on stderr and its exit code (see docs/exit-codes.md) in ``AsynchyGroup.invoke``.
"""

from __future__ import annotations

import getpass
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import click

from asynchy import __version__
from asynchy.errors import AsynchyError, ExitCode

CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class _Exit(click.ClickException):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.exit_code = code


class AsynchyGroup(click.Group):
    """Translates asynchy's exceptions (and Ctrl+C) into one line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AsynchyError as exc:
            raise _Exit(str(exc), int(exc.exit_code)) from None
        except KeyboardInterrupt:
            raise _Exit("interrupted", int(ExitCode.INTERRUPTED)) from None


@dataclass(frozen=True)
class GlobalOptions:
    config_path: str | None
    values: dict[str, Any]
    verbose: int
    quiet: bool


def _settings(ctx: click.Context, **command_values: Any) -> Any:
    """Settings from file, environment and options; also sets up logging."""
    from asynchy import config, logs

    g: GlobalOptions = ctx.find_object(GlobalOptions)  # type: ignore[assignment]
    options = dict(g.values)
    options.update({k: v for k, v in command_values.items() if v is not None})
    settings = config.load_settings(config_path=g.config_path, env=os.environ, options=options)
    logs.setup(
        verbose=g.verbose, quiet=g.quiet, log_file=settings.log_file, log_level=settings.log_level
    )
    return settings


@click.group(cls=AsynchyGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "--version", prog_name="asynchy", message="%(prog)s %(version)s")
@click.option(
    "--config",
    "config_path",
    metavar="PATH",
    help="Config file [default: $ASYNCHY_CONFIG or ~/.as.yaml].",
)
@click.option(
    "--db",
    metavar="PATH|URL",
    help="Inventory database: SQLite file or SQLAlchemy URL [config: db].",
)
@click.option(
    "--host", help="Facility ssh host; empty or 'local' for a local folder [config: host]."
)
@click.option("--port", type=click.IntRange(1, 65535), help="ssh port [config: port; default 22].")
@click.option("--user", help="ssh user [config: user; default: your login name].")
@click.option("--keypath", metavar="FILE", help="ssh private key [config: keypath].")
@click.option(
    "--known-hosts",
    "--known_hosts",
    "known_hosts",
    metavar="FILE",
    help="known_hosts file with the server's key [config: known_hosts; default ~/.ssh/known_hosts].",
)
@click.option(
    "--log-file",
    "--log_file",
    "log_file",
    metavar="FILE",
    help="Also log to this file [config: log_file].",
)
@click.option(
    "--log-level",
    "--log_level",
    "log_level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="Level of the log file [config: log_level; default INFO].",
)
@click.option(
    "--rsync", metavar="PATH", help="The rsync program, >= 3.4.1 [config: rsync; default rsync]."
)
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
@click.option(
    "-q", "--quiet", is_flag=True, help="No progress bars, only errors and the final summary."
)
@click.pass_context
def cli(
    ctx: click.Context, /, config_path: str | None, verbose: int, quiet: bool, **values: Any
) -> None:
    """asynchy: bring experiment data (EPNs) home from a facility.

    Global options go before the command, command options after it.
    Settings come from the config file, then ASYNCHY_<KEY> environment
    variables, then options (options win).

    \b
    Example:
        asynchy init
        asynchy walk
        asynchy --db shard1.db walk --shard 1/3
    """
    ctx.obj = GlobalOptions(config_path=config_path, values=values, verbose=verbose, quiet=quiet)


# ---------------------------------------------------------------------------- init
INIT_KEYS = ("host", "port", "user", "keypath", "known_hosts", "db", "src_prefix", "dest")


@cli.command("init")
@click.option(
    "--config_path",
    "--config-path",
    "target",
    metavar="PATH",
    help="Where to write [default: --config, $ASYNCHY_CONFIG or ~/.as.yaml].",
)
@click.option("--host", "i_host", help="Facility ssh host ('local' for a local folder).")
@click.option("--port", "i_port", type=click.IntRange(1, 65535), help="ssh port [default: 22].")
@click.option("--user", "i_user", help="ssh user.")
@click.option("--keypath", "i_keypath", metavar="FILE", help="ssh private key file.")
@click.option(
    "--known-hosts", "--known_hosts", "i_known_hosts", metavar="FILE", help="known_hosts file."
)
@click.option("--db", "i_db", metavar="PATH|URL", help="Inventory database [default: ./files.db].")
@click.option(
    "--src-prefix",
    "--src_prefix",
    "i_src_prefix",
    metavar="PATH",
    help="Folder of EPN folders on the source.",
)
@click.option("--dest", "i_dest", metavar="PATH", help="Local folder to copy EPNs into.")
@click.option("--overwrite", is_flag=True, help="Replace an existing config file.")
@click.option(
    "--interactive/--no-interactive",
    default=None,
    help="Prompt for each value [default: when stdin is a terminal].",
)
@click.pass_context
def init_cmd(
    ctx: click.Context,
    /,
    target: str | None,
    overwrite: bool,
    interactive: bool | None,
    **given: Any,
) -> None:
    """Write a config file (prompts on a terminal; takes options otherwise).

    An existing file is never replaced silently: pass --overwrite, or confirm
    at the prompt.

    \b
    Example:
        asynchy init --host sftp.synchrotron.org.au --user me --keypath ~/.ssh/as_key \\
            --src-prefix /data/mx --dest /srv/as/vault/data --db ~/asynchy/files.db
    """
    from asynchy import config

    g: GlobalOptions = ctx.find_object(GlobalOptions)  # type: ignore[assignment]
    path = Path(target or g.config_path or config.default_config_path(os.environ)[0]).expanduser()
    values: dict[str, Any] = {}
    for key in INIT_KEYS:
        values[key] = (
            given.get(f"i_{key}") if given.get(f"i_{key}") is not None else g.values.get(key)
        )
    if interactive is None:
        interactive = sys.stdin.isatty()
    if interactive:
        defaults = {
            "port": 22,
            "user": getpass.getuser(),
            "known_hosts": "~/.ssh/known_hosts",
            "db": "files.db",
        }
        for key in INIT_KEYS:
            spec = config.KEYS[key]
            default = values[key] if values[key] is not None else defaults.get(key, "")
            answer = click.prompt(f"{key} ({spec.help})", default=default, show_default=True)
            values[key] = answer if answer != "" else None
        if path.exists() and not overwrite:
            overwrite = click.confirm(f"{path} exists. Replace it?", default=False)
            if not overwrite:
                raise _Exit(f"config file {path} left unchanged", int(ExitCode.USAGE))
    for key in ("keypath", "known_hosts", "dest"):
        if values.get(key):
            values[key] = str(Path(values[key]).expanduser())
    if values.get("db") and "://" not in values["db"]:
        values["db"] = str(Path(values["db"]).expanduser().resolve())
    try:
        config.write_config(path, values, overwrite=overwrite)
    except AsynchyError as exc:
        raise _Exit(str(exc), int(exc.exit_code)) from None
    click.echo(f"wrote {path}")
    kh = Path(values.get("known_hosts") or "~/.ssh/known_hosts").expanduser()
    host = values.get("host")
    if host and host != "local" and not kh.is_file():
        port = values.get("port") or 22
        click.echo(
            f"note: {kh} does not exist yet; add the server's host key after checking its fingerprint, e.g. "
            f"ssh-keyscan -p {port} {host} >> {kh}",
            err=True,
        )


# ---------------------------------------------------------------------------- walk
def _shard(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    from asynchy.inventory import Shard

    try:
        return Shard.parse(value)
    except AsynchyError as exc:
        raise click.BadParameter(str(exc).split(": ", 1)[-1]) from None


@cli.command("walk")
@click.option(
    "--src-prefix",
    "--src_prefix",
    "src_prefix",
    metavar="PATH",
    help="Folder on the source whose sub-folders are EPNs [config: src_prefix].",
)
@click.option(
    "--epn", "epns", multiple=True, metavar="EPN", help="Walk just this EPN (repeatable)."
)
@click.option(
    "--epn-file",
    "--epn_file",
    "epn_file",
    metavar="FILE",
    help="Walk the EPNs listed in FILE, one a line.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=32,
    show_default=True,
    help="Folders listed at once (SFTP requests kept in flight).",
)
@click.option(
    "--refresh",
    is_flag=True,
    help="Walk EPNs already walked again: add new files, update changed ones, drop vanished ones.",
)
@click.option(
    "--shard",
    callback=_shard,
    metavar="K/N",
    help="Walk only share K of N (by a hash of the EPN name), for several hosts walking at once.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    metavar="SECONDS",
    help="Deadline of every connection step and SFTP request [config: timeout; default 30].",
)
@click.option(
    "--accept-new-host-key",
    is_flag=True,
    help="Record the server's host key if known_hosts does not know the host (never a changed key).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def walk_cmd(
    ctx: click.Context,
    src_prefix: str | None,
    epns: tuple[str, ...],
    epn_file: str | None,
    workers: int,
    refresh: bool,
    shard: Any,
    timeout: float | None,
    accept_new_host_key: bool,
    as_json: bool,
) -> None:
    """List every EPN folder under src_prefix into the inventory database.

    Each EPN is recorded in one transaction; an interrupted walk continues
    where it stopped when run again.  Exit code 3 when some folders could
    not be read (see the walk_errors table).

    \b
    Example:
        asynchy walk
        asynchy walk --epn 12282a --epn 12283b --refresh
        asynchy --db shard2.db walk --shard 2/3
    """
    from asynchy import inventory, render
    from asynchy.db import open_database
    from asynchy.progress import WalkBar, bars_wanted
    from asynchy.remote.factory import open_tree
    from asynchy.signals import terminate_as_interrupt

    g: GlobalOptions = ctx.find_object(GlobalOptions)  # type: ignore[assignment]
    settings = _settings(ctx, src_prefix=src_prefix, timeout=timeout)
    settings.require("src_prefix")
    chosen: list[str] = list(epns)
    if epn_file:
        chosen += inventory.read_epn_file(epn_file)
    selection = tuple(chosen) if (epns or epn_file) else None
    if selection is not None:
        for name in selection:
            inventory.parse_epn(name)
    opts = inventory.WalkOptions(epns=selection, refresh=refresh, shard=shard, workers=workers)
    tree = open_tree(settings, workers=workers, accept_new_host_key=accept_new_host_key)
    db = open_database(settings.db)
    try:
        with terminate_as_interrupt():
            summary = inventory.walk(db, tree, opts, progress=WalkBar(bars_wanted(g.quiet)))
    finally:
        db.close()
    data = summary.as_dict()
    click.echo(render.as_json(data) if as_json else render.walk_summary(data))
    if summary.error_count:
        ctx.exit(int(ExitCode.PARTIAL))


# ---------------------------------------------------------------------------- sync
@cli.command("sync")
@click.option(
    "--dest", metavar="PATH", help="Local folder the EPNs are copied into [config: dest]."
)
@click.option(
    "--src-prefix",
    "--src_prefix",
    "src_prefix",
    metavar="PATH",
    help="Folder on the source whose sub-folders are EPNs [config: src_prefix].",
)
@click.option(
    "--order",
    type=click.Choice(["ASC", "DESC"], case_sensitive=False),
    default="ASC",
    show_default=True,
    help="Oldest (ASC) or newest (DESC) EPNs first, by their newest file.",
)
@click.option(
    "--limit", type=click.IntRange(min=1), default=50, show_default=True, help="EPNs in this run."
)
@click.option(
    "--retry",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Retries of a retryable failure within this run (with back-off); also ssh ConnectionAttempts.",
)
@click.option(
    "--threads",
    type=click.IntRange(1, 64),
    default=2,
    show_default=True,
    help="EPNs copied at once.",
)
@click.option(
    "--parallel", is_flag=True, help="Run the --threads workers as processes instead of threads."
)
@click.option(
    "--partial",
    is_flag=True,
    help=f"Keep partly copied files in {'.asynchy-partial'} to resume them.",
)
@click.option("--compress", is_flag=True, help="Compress data in transit (rsync -z).")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Show what would be copied; copy nothing, change nothing in the DB.",
)
@click.option("--epn", "epns", multiple=True, metavar="EPN", help="Only this EPN (repeatable).")
@click.option(
    "--bwlimit", metavar="RATE", help="rsync --bwlimit, e.g. 50M (bytes per second, rsync units)."
)
@click.option(
    "--max-attempts",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Failed attempts in a row (over all runs) before an EPN is quarantined.",
)
@click.option(
    "--verify",
    type=click.Choice(["size", "checksum"]),
    default="size",
    show_default=True,
    help="After rsync: compare size and mtime with the inventory; 'checksum' also compares content "
    "with the source (reads everything again).",
)
@click.option(
    "--mapped-only", is_flag=True, help="Skip EPNs whose number has no destinations entry."
)
@click.option(
    "--destinations",
    metavar="MAP",
    help="EPN number -> folder, e.g. '12282=ny79,12283=ab12' [config: destinations].",
)
@click.option(
    "--stall-timeout",
    type=click.FloatRange(min=1),
    default=300,
    show_default=True,
    metavar="SECONDS",
    help="Kill an rsync that shows no progress for this long (counted as a retryable failure).",
)
@click.option(
    "--lease",
    type=click.FloatRange(min=2),
    default=300,
    show_default=True,
    metavar="SECONDS",
    help="How long a claim lasts without a heartbeat (renewed every third of it).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    metavar="SECONDS",
    help="ssh ConnectTimeout [config: timeout; default 30].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def sync_cmd(ctx: click.Context, /, as_json: bool, **kw: Any) -> None:
    """Copy a batch of EPNs with rsync, verify each copy, record every attempt.

    EPNs are taken in order of their newest file (pending, changed, and
    failed for a retryable cause); an EPN is complete only when rsync
    succeeded and the local copy matches the inventory.  Exit code 3 when
    some EPNs failed, 130 when interrupted.

    \b
    Example:
        asynchy sync --dest /srv/as/vault/data --src_prefix /data/mx --limit 30 --retry 5 --parallel --threads 2
        asynchy sync --epn 12282a --verify checksum
        asynchy sync --dry-run --limit 5
    """
    from asynchy import render
    from asynchy.db import open_database
    from asynchy.progress import SyncBar, bars_wanted
    from asynchy.sync import SyncOptions, sync

    g: GlobalOptions = ctx.find_object(GlobalOptions)  # type: ignore[assignment]
    settings = _settings(
        ctx,
        dest=kw["dest"],
        src_prefix=kw["src_prefix"],
        destinations=kw["destinations"],
        timeout=kw["timeout"],
    )
    dest = Path(settings.require("dest")).expanduser().resolve()
    prefix = settings.require("src_prefix")
    target = None if settings.is_local else settings.ssh_target()
    if kw["epns"]:
        from asynchy.inventory import parse_epn

        for name in kw["epns"]:
            parse_epn(name)
    opts = SyncOptions(
        dest=dest,
        src_prefix=prefix,
        order=kw["order"].upper(),
        limit=kw["limit"],
        retry=kw["retry"],
        threads=kw["threads"],
        parallel=kw["parallel"],
        partial=kw["partial"],
        compress=kw["compress"],
        dry_run=kw["dry_run"],
        epns=tuple(kw["epns"]) or None,
        bwlimit=kw["bwlimit"],
        max_attempts=kw["max_attempts"],
        verify=kw["verify"],
        mapped_only=kw["mapped_only"],
        stall_timeout=kw["stall_timeout"],
        lease=kw["lease"],
        destinations=settings.destinations,
        rsync=settings.rsync,
    )
    db = open_database(settings.db)
    try:
        summary = sync(db, target, opts, progress=SyncBar(bars_wanted(g.quiet)))
    finally:
        db.close()
    data = summary.as_dict()
    click.echo(render.as_json(data) if as_json else render.sync_summary(data))
    if summary.interrupted:
        ctx.exit(int(ExitCode.INTERRUPTED))
    if summary.failed:
        ctx.exit(int(ExitCode.PARTIAL))


# ---------------------------------------------------------------------------- demo
@cli.command("demo")
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
    from asynchy import demo, render

    _settings(ctx)
    result = demo.run(Path(folder))
    click.echo(f"made-up facility: {result.folder / 'facility'}")
    click.echo(render.walk_summary(result.walked.as_dict()))
    click.echo(render.sync_summary(result.synced.as_dict()))
    states = ", ".join(f"{n} {status}" for status, n in sorted(result.statuses.items()))
    click.echo(f"inventory {result.folder / 'demo.db'}: {states}")
    click.echo(f"copies in {result.folder / 'vault'}; next, try:")
    click.echo(
        f"  sqlite3 {result.folder / 'demo.db'} 'select epn, status, size, file_count from epns'"  # noqa: S608
    )
    click.echo(f"  asynchy --config {result.folder / 'as.yaml'} sync --dry-run")
    if result.synced.failed:
        ctx.exit(int(ExitCode.PARTIAL))


# ---------------------------------------------------------------------------- db
@cli.group("db")
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

    settings = _settings(ctx)
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

    settings = _settings(ctx)
    status = schema_status(settings.db)
    notes = {
        "current": "(head)",
        "empty": "(no asynchy schema yet: run `asynchy db upgrade`)",
        "older": f"(run `asynchy db upgrade` to reach {status.head})",
        "newer": f"(newer than this asynchy, which knows up to {status.head}: upgrade asynchy)",
    }
    click.echo(f"{status.revision or 'none'} {notes[status.state]}")
    if status.state == "newer":
        _fail_usage()


def _fail_usage() -> NoReturn:
    sys.exit(int(ExitCode.USAGE))


def main() -> None:
    cli(prog_name="asynchy")
