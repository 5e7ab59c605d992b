"""The command line: parse options, build settings, call one library function, render.

No SQL, no subprocess and no paramiko here.  AsynchyError becomes one line
on stderr and its exit code (see docs/exit-codes.md) in ``AsynchyGroup.invoke``.
"""

from __future__ import annotations

import getpass
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import click

from asynchy import __version__
from asynchy.errors import AsynchyError, ConfigError, ExitCode, Interrupted

CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _Exit(message: str, code: int) -> click.ClickException:
    """click's one-line ``Error: message`` with our exit code (``exit_code`` is a class attribute in
    click's types, so the code is set on a subclass, not on the instance)."""
    kind: type[click.ClickException] = type(
        f"AsynchyExit{code}", (click.ClickException,), {"exit_code": code}
    )
    return kind(message)


class AsynchyGroup(click.Group):
    """Translates asynchy's exceptions (and Ctrl+C) into one line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Interrupted as exc:  # a normal stop (Ctrl+C, systemctl stop): said, not an error
            logging.getLogger("asynchy").info("%s", exc)
            click.echo(f"asynchy: {exc}", err=True)
            raise click.exceptions.Exit(int(exc.exit_code)) from None
        except AsynchyError as exc:
            raise _Exit(str(exc), int(exc.exit_code)) from None
        except KeyboardInterrupt:  # a stop, not an error
            click.echo("asynchy: interrupted", err=True)
            raise click.exceptions.Exit(int(ExitCode.INTERRUPTED)) from None
        except click.NoSuchOption as exc:  # `asynchy status --db x.db`: a global option too late
            own = {o for p in self.params for o in (*p.opts, *p.secondary_opts)}
            if exc.option_name not in own or exc.ctx is None:
                raise
            raise click.UsageError(
                f"{exc.message.rstrip('.')}: {exc.option_name} is a global option, it goes "
                f"before the command (asynchy {exc.option_name} ... {exc.ctx.info_name} ...)",
                ctx=exc.ctx,
            ) from None
        except Exception as exc:
            if not type(exc).__module__.startswith(("sqlalchemy", "sqlite3", "psycopg")):
                raise  # anything else is a bug: its traceback is wanted
            from asynchy.db import as_database_error

            err = as_database_error(exc)
            raise _Exit(str(err), int(err.exit_code)) from None


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
    from asynchy.db import set_busy_timeout

    set_busy_timeout(settings.db_timeout)
    logs.setup(
        verbose=g.verbose,
        quiet=g.quiet,
        log_file=settings.log_file,
        log_level=settings.log_level,
        alert_log_file=settings.alert_log_file,
    )
    for level, note in settings.notes:
        logging.getLogger("asynchy.config").log(level, "%s", note)
    where = str(settings.config_path) if settings.config_exists else "none"
    shown_db = settings.db if "://" not in settings.db else settings.db.split("@")[-1]
    logging.getLogger("asynchy").info(
        "asynchy %s started: config %s, db %s (asynchy %s)",
        ctx.info_name,
        where,
        shown_db,
        __version__,
    )
    return settings


def _width() -> int | None:
    """The terminal's width for tables; None (nothing cut) when stdout is not a terminal."""
    from asynchy import render

    return render.terminal_width() if sys.stdout.isatty() else None


def _log_summary(text: str) -> None:
    """The command's summary line, in the log file too."""
    logging.getLogger("asynchy").info("%s", text.splitlines()[0] if text else "")


def output_options(*, listing: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The one output convention (docs/reporting.md): --format table|json|csv|nl, --json and --csv
    as short forms; listings also --limit / --all.  The command gets ``out: Output``."""

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        options = [
            click.option(
                "--format",
                "fmt",
                type=click.Choice(["table", "json", "csv", "nl"]),
                default=None,
                help="table for people (human units, local times) [default]; json, csv or nl (one "
                "JSON object a line) for scripts: raw numbers, UTC ISO 8601, never cut.",
            ),
            click.option("--json", "as_json", is_flag=True, help="Short for --format json."),
            click.option("--csv", "as_csv", is_flag=True, help="Short for --format csv."),
        ]
        if listing:
            options += [
                click.option(
                    "--limit",
                    "rows_limit",
                    type=click.IntRange(min=1),
                    help="At most this many rows [default: 100 in a table on a terminal, else all].",
                ),
                click.option("--all", "all_rows", is_flag=True, help="Every row, also in a table."),
            ]
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


@dataclass(frozen=True)
class Output:
    fmt: str
    limit: int | None  # rows of a table; None: all


def _output(kw: dict[str, Any]) -> Output:
    """Output from the options of output_options (removed from kw)."""
    fmt = kw.pop("fmt", None)
    as_json, as_csv = kw.pop("as_json", False), kw.pop("as_csv", False)
    chosen = [f for f, on in ((fmt, fmt is not None), ("json", as_json), ("csv", as_csv)) if on]
    if len(set(chosen)) > 1:
        raise click.UsageError(f"choose one output format, not {' and '.join(sorted(set(chosen)))}")
    fmt = chosen[0] if chosen else "table"
    limit, all_rows = kw.pop("rows_limit", None), kw.pop("all_rows", False)
    if all_rows:
        limit = None
    elif limit is None and fmt == "table" and sys.stdout.isatty():
        limit = 100
    return Output(str(fmt), limit)


@click.group(cls=AsynchyGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(
    __version__, "--version", "-V", prog_name="asynchy", message="%(prog)s %(version)s"
)
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
    if path.exists() and not overwrite:
        raise _Exit(
            f"config file {path} already exists: pass --overwrite to replace it",
            int(ExitCode.USAGE),
        )
    if overwrite and path.is_file():  # what the file already says stays, unless given anew
        kept = config.existing_values(path)
        values = {**kept, **{k: v for k, v in values.items() if v is not None}}
    missing = config.missing_for_init(values)
    if missing and not interactive:
        raise _Exit(
            f"not writing {path}: give {', '.join('--' + k.replace('_', '-') for k in missing)} "
            "(asynchy walk and sync need them)",
            int(ExitCode.USAGE),
        )
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
@output_options()
@click.pass_context
def walk_cmd(
    ctx: click.Context,
    /,
    src_prefix: str | None,
    epns: tuple[str, ...],
    epn_file: str | None,
    workers: int,
    refresh: bool,
    shard: Any,
    timeout: float | None,
    accept_new_host_key: bool,
    **output: Any,
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
    from asynchy.names import parse_epn, read_epn_file
    from asynchy.remote.factory import open_tree

    out = _output(output)
    g: GlobalOptions = ctx.find_object(GlobalOptions)  # type: ignore[assignment]
    settings = _settings(ctx, src_prefix=src_prefix, timeout=timeout)
    settings.require("src_prefix")
    chosen: list[str] = list(epns)
    if epn_file:
        chosen += read_epn_file(epn_file)
    selection = tuple(chosen) if (epns or epn_file) else None
    for name in selection or ():
        parse_epn(name)
    # The connection opens while the database modules load (start-up, docs/benchmarks.md).
    tree = open_tree(
        settings, workers=workers, accept_new_host_key=accept_new_host_key, connect_ahead=True
    )
    try:
        from asynchy import inventory
        from asynchy.db import open_database

        db = open_database(settings.db)
    except BaseException:
        tree.close()
        raise
    from asynchy import render
    from asynchy.progress import WalkBar, bars_wanted
    from asynchy.signals import StopSignals

    opts = inventory.WalkOptions(epns=selection, refresh=refresh, shard=shard, workers=workers)
    try:
        with StopSignals():
            summary = inventory.walk(db, tree, opts, progress=WalkBar(bars_wanted(g.quiet)))
    finally:
        db.close()
    data = summary.as_dict()
    text = render.walk_summary(data)
    _log_summary(text)
    click.echo(render.data_out(data, out.fmt, lambda: text))
    if summary.error_count:
        ctx.exit(int(ExitCode.PARTIAL))


# ---------------------------------------------------------------------------- sync
def _duration(ctx: click.Context, param: click.Parameter, value: Any) -> float | None:
    """90, 90s, 30m, 1h, 1h30m, 2d -> seconds."""
    from asynchy.config import parse_duration

    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} {exc}") from None


def _batch_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options of one sync batch, shared by `sync` and `watch`."""
    options = [
        click.option(
            "--dest", metavar="PATH", help="Local folder the EPNs are copied into [config: dest]."
        ),
        click.option(
            "--src-prefix",
            "--src_prefix",
            "src_prefix",
            metavar="PATH",
            help="Folder on the source whose sub-folders are EPNs [config: src_prefix].",
        ),
        click.option(
            "--order",
            type=click.Choice(["ASC", "DESC"], case_sensitive=False),
            default="ASC",
            show_default=True,
            help="Oldest (ASC) or newest (DESC) EPNs first, by their newest file.",
        ),
        click.option(
            "--limit",
            type=click.IntRange(min=1),
            default=50,
            show_default=True,
            help="EPNs in this run (a watch: in each cycle).",
        ),
        click.option(
            "--retry",
            type=click.IntRange(min=0),
            default=0,
            show_default=True,
            help="Attempts of one EPN after the first in this run (spaced); also the breaker's probes "
            "of a server that stopped answering, and ssh ConnectionAttempts.",
        ),
        click.option(
            "--threads",
            type=click.IntRange(1, 64),
            help="EPNs copied at once [config: threads; default 2].",
        ),
        click.option(
            "--parallel",
            is_flag=True,
            help="Run the --threads workers as processes instead of threads.",
        ),
        click.option(
            "--partial",
            is_flag=True,
            help="Keep partly copied files (in <dest>/.asynchy-tmp) to resume them.",
        ),
        click.option("--compress", is_flag=True, help="Compress data in transit (rsync -z)."),
        click.option(
            "--bwlimit",
            metavar="RATE",
            help="rsync --bwlimit, e.g. 50M (bytes per second, rsync units).",
        ),
        click.option(
            "--max-attempts",
            type=click.IntRange(min=1),
            default=5,
            show_default=True,
            help="Data failures in a row (over all runs) before an EPN is quarantined.",
        ),
        click.option(
            "--verify",
            type=click.Choice(["size", "checksum"]),
            default="size",
            show_default=True,
            help="After rsync: compare size and mtime with the inventory; 'checksum' also compares "
            "content with the source (reads everything again) and copies again what differs.",
        ),
        click.option(
            "--checksum",
            is_flag=True,
            help="Short for --verify checksum (as `asynchy verify --checksum`).",
        ),
        click.option(
            "--mapped-only",
            is_flag=True,
            help="Skip EPNs whose number has no destinations entry (the default when "
            "destinations are configured).",
        ),
        click.option(
            "--include-unmapped",
            is_flag=True,
            default=None,
            help="With destinations: copy unmapped EPNs too, into dest/EPN [config: copy_unmapped].",
        ),
        click.option(
            "--exclude",
            "exclude",
            multiple=True,
            metavar="PATTERN",
            help="rsync exclude pattern (repeatable); verification skips what it leaves out "
            "[config: exclude].",
        ),
        click.option(
            "--include",
            "include",
            multiple=True,
            metavar="PATTERN",
            help="rsync include pattern, checked before the excludes (repeatable) [config: include].",
        ),
        click.option(
            "--metrics-file",
            metavar="FILE",
            help="Write Prometheus metrics here after the run (each watch cycle) [config: metrics_file].",
        ),
        click.option(
            "--chmod",
            metavar="RULES",
            help="rsync --chmod rules, with --perms, e.g. Dg+s,ug+w,o-wx,ug+X [config: chmod].",
        ),
        click.option(
            "--destinations",
            metavar="MAP",
            help="EPN number -> folder, e.g. '12282=ny79,12283=ab12' [config: destinations].",
        ),
        click.option(
            "--stall-timeout",
            type=click.FloatRange(min=1),
            default=300,
            show_default=True,
            metavar="SECONDS",
            help="Kill an rsync that shows no progress for this long (a link failure: not charged).",
        ),
        click.option(
            "--lease",
            type=click.FloatRange(min=2),
            default=300,
            show_default=True,
            metavar="SECONDS",
            help="How long a claim lasts without a heartbeat (renewed every third of it).",
        ),
        click.option(
            "--timeout",
            type=click.FloatRange(min=0.1),
            metavar="SECONDS",
            help="ssh ConnectTimeout [config: timeout; default 30].",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _sync_settings(ctx: click.Context, kw: dict[str, Any], **more: Any) -> Any:
    return _settings(
        ctx,
        dest=kw["dest"],
        src_prefix=kw["src_prefix"],
        destinations=kw["destinations"],
        timeout=kw["timeout"],
        threads=kw["threads"],
        copy_unmapped=kw["include_unmapped"],
        exclude=kw["exclude"] or None,
        include=kw["include"] or None,
        chmod=kw["chmod"],
        metrics_file=kw["metrics_file"],
        **more,
    )


def _sync_options(settings: Any, kw: dict[str, Any], **more: Any) -> Any:
    """SyncOptions from the batch options and the settings."""
    from asynchy.sync import SyncOptions

    dest = Path(settings.require("dest")).expanduser().resolve()
    return SyncOptions(
        dest=dest,
        src_prefix=settings.require("src_prefix"),
        order=kw["order"].upper(),
        limit=kw["limit"],
        retry=kw["retry"],
        threads=settings.threads,
        parallel=kw["parallel"],
        partial=kw["partial"],
        compress=kw["compress"],
        bwlimit=kw["bwlimit"],
        max_attempts=kw["max_attempts"],
        verify="checksum" if kw["checksum"] else kw["verify"],
        # With a destination map, only mapped EPNs are copied (as mxsync) unless asked otherwise.
        mapped_only=kw["mapped_only"]
        or (bool(settings.destinations) and not settings.copy_unmapped),
        stall_timeout=kw["stall_timeout"],
        lease=kw["lease"],
        destinations=settings.destinations,
        rsync=settings.rsync,
        layout=settings.layout,
        include=settings.include or (),
        exclude=settings.exclude or (),
        chmod=settings.chmod,
        ignore_file=Path(settings.ignore_file).expanduser() if settings.ignore_file else None,
        metrics_file=Path(settings.metrics_file).expanduser() if settings.metrics_file else None,
        **more,
    )


@cli.command("sync")
@_batch_options
@click.option(
    "--dry-run",
    is_flag=True,
    help="Show what would be copied; copy nothing, change nothing in the DB.",
)
@click.option("--epn", "epns", multiple=True, metavar="EPN", help="Only this EPN (repeatable).")
@click.option(
    "--settle",
    callback=_duration,
    metavar="DURATION",
    help="Only EPNs whose newest file is at least this old, e.g. 1h [default: any].",
)
@output_options()
@click.pass_context
def sync_cmd(ctx: click.Context, /, **kw: Any) -> None:
    """Copy a batch of EPNs with rsync, verify each copy, record every attempt.

    EPNs are taken in order of their newest file (pending, changed, and
    failed for a data reason once their back-off has passed); an EPN is
    complete only when rsync succeeded and the local copy matches the
    inventory and the source.  A server outage or a setup mistake is never
    charged to an EPN (docs/failures.md).  Exit code 3 when some EPNs were
    not completed, 2 for a setup problem, 1 when the server cannot be
    reached, 130 when interrupted.

    \b
    Example:
        asynchy sync --dest /srv/as/vault/data --src_prefix /data/mx --limit 30 --retry 5 --parallel --threads 2
        asynchy sync --epn 12282a --verify checksum
        asynchy sync --dry-run --limit 5
    """
    from asynchy import render
    from asynchy.db import open_database
    from asynchy.progress import SyncBar, bars_wanted
    from asynchy.sync import sync

    out = _output(kw)
    g: GlobalOptions = ctx.find_object(GlobalOptions)  # type: ignore[assignment]
    settings = _sync_settings(ctx, kw)
    target = None if settings.is_local else settings.ssh_target()
    if kw["epns"]:
        from asynchy.names import parse_epn

        for name in kw["epns"]:
            parse_epn(name)
    opts = _sync_options(
        settings,
        kw,
        dry_run=kw["dry_run"],
        epns=tuple(kw["epns"]) or None,
        settle=kw["settle"],
    )
    from asynchy.remote.factory import open_tree

    db = open_database(settings.db)
    try:
        summary = sync(
            db,
            target,
            opts,
            progress=SyncBar(bars_wanted(g.quiet)),
            open_tree=lambda: open_tree(settings, workers=4),
        )
    finally:
        db.close()
    data = summary.as_dict()
    text = render.sync_summary(data)
    _log_summary(text)
    click.echo(render.data_out(data, out.fmt, lambda: text))
    if summary.stop_error is not None:
        raise summary.stop_error
    if summary.interrupted:
        ctx.exit(int(ExitCode.INTERRUPTED))
    if summary.unfinished:
        ctx.exit(int(ExitCode.PARTIAL))


# ---------------------------------------------------------------------------- watch and alerts
def _alert_options(settings: Any, source: str, *, preview: bool = False) -> Any:
    """AlertOptions from the settings, or None when alert_to is not configured."""
    from asynchy.alert import options_from_settings

    return options_from_settings(settings, os.environ, source, preview=preview)


@cli.command("watch")
@_batch_options
@click.option(
    "--every",
    callback=_duration,
    metavar="DURATION",
    help="Time from the start of one cycle to the next, e.g. 1h [config: every; default 1h].",
)
@click.option(
    "--settle",
    callback=_duration,
    metavar="DURATION",
    help="Copy an EPN once its newest file is this old [config: settle; default 1h].",
)
@click.option(
    "--recent",
    callback=_duration,
    default="7d",
    show_default=True,
    metavar="DURATION",
    help="Walk again, each cycle, the EPNs whose newest file is younger than this.",
)
@click.option("--once", is_flag=True, help="Run one cycle and exit (for cron or a systemd timer).")
@click.option("--no-alert", is_flag=True, help="No alert e-mails, even with alert_to configured.")
@click.option(
    "--accept-new-host-key",
    is_flag=True,
    help="Record the server's host key if known_hosts does not know the host (never a changed key).",
)
@click.option("--json", "as_json", is_flag=True, help="Print each cycle's summary as a JSON line.")
@click.pass_context
def watch_cmd(ctx: click.Context, /, **kw: Any) -> None:
    """Keep repatriating: walk new and growing EPNs, alert, copy settled ones, sleep, repeat.

    Each cycle walks the new EPNs and those that may still grow, e-mails
    the EPNs without a destination mapping (when alert_to is configured),
    and copies one batch (--limit) of the EPNs whose newest file is older
    than --settle.  One line per cycle.  One watch per database.  SIGTERM or
    Ctrl+C ends the current cycle cleanly (exit code 130).  See
    docs/operations.md for a systemd unit, a timer and a crontab line.

    \b
    Example:
        asynchy watch --every 1h --settle 2h --limit 20
        asynchy watch --once
    """
    from asynchy import render, watch
    from asynchy.db import open_database
    from asynchy.remote.factory import open_tree

    settings = _sync_settings(ctx, kw, every=kw["every"], settle=kw["settle"])
    target = None if settings.is_local else settings.ssh_target()
    sync_opts = _sync_options(settings, kw, settle=settings.settle)
    alert_opts = None if kw["no_alert"] else _alert_options(settings, _source(settings))
    opts = watch.WatchOptions(
        sync=sync_opts,
        every=settings.every,
        recent=kw["recent"],
        once=kw["once"],
        alert=alert_opts,
        portal=settings.portal,
        destinations=settings.destinations,
    )

    def tree() -> Any:
        return open_tree(settings, workers=32, accept_new_host_key=kw["accept_new_host_key"])

    def show(cycle: Any) -> None:
        line = render.as_json_line(cycle.as_dict()) if kw["as_json"] else watch.cycle_line(cycle)
        click.echo(line)

    db = open_database(settings.db)
    try:
        last = watch.watch(db, tree, target, opts, on_cycle=show)
    finally:
        db.close()
    if not last.ok:
        ctx.exit(int(ExitCode.ERROR if last.problems else ExitCode.PARTIAL))


def _source(settings: Any) -> str:
    prefix = settings.src_prefix or "?"
    return prefix if settings.is_local else f"{settings.host}:{prefix}"


@cli.command("alert")
@click.option(
    "--dry-run", is_flag=True, help="Print the message instead of sending it; record nothing."
)
@click.option(
    "--realert-days",
    type=click.FloatRange(min=0),
    metavar="DAYS",
    help="Name an EPN again when its last alert is older than this [config: realert_days; default never].",
)
@click.option(
    "--src-prefix",
    "--src_prefix",
    "src_prefix",
    metavar="PATH",
    help="Folder on the source whose sub-folders are EPNs [config: src_prefix].",
)
@click.option(
    "--accept-new-host-key",
    is_flag=True,
    help="Record the server's host key if known_hosts does not know the host (never a changed key).",
)
@click.option(
    "--html",
    "html_path",
    metavar="FILE",
    help="With --dry-run: write the HTML part of the message to this file.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def alert_cmd(
    ctx: click.Context,
    /,
    dry_run: bool,
    realert_days: float | None,
    src_prefix: str | None,
    accept_new_host_key: bool,
    as_json: bool,
    html_path: str | None,
) -> None:
    """E-mail the EPNs on the server that no destination mapping claims (once each).

    Lists the EPN folders under src_prefix, keeps those whose EPN number
    has no `destinations` entry and that no earlier alert named (or, with
    realert_days, not lately), and sends one message (text and HTML) with
    each EPN's visit from the facility portal when `portal` is configured.
    Needs alert_to (and smtp_* settings); see docs/operations.md.  A dry
    run needs neither: it prints the text part and writes the HTML part to
    --html FILE.

    \b
    Example:
        asynchy alert --dry-run --html /tmp/alert.html
        asynchy alert --realert-days 7
    """
    from asynchy import alert, render
    from asynchy.db import open_database
    from asynchy.portal import Portal
    from asynchy.remote.factory import open_tree

    settings = _settings(ctx, src_prefix=src_prefix, realert_days=realert_days)
    opts = _alert_options(settings, _source(settings), preview=dry_run)
    if opts is None:
        raise ConfigError(
            f"alert_to is not set: add 'alert_to: [you@example.org]' to {settings.config_path} "
            "or set ASYNCHY_ALERT_TO"
        )
    names = alert.epns_on_server(
        open_tree(settings, workers=1, accept_new_host_key=accept_new_host_key)
    )
    db = open_database(settings.db)
    try:
        summary = alert.alert(
            db,
            names,
            settings.destinations,
            opts,
            portal=Portal(settings.portal) if settings.portal else None,
            dry_run=dry_run,
        )
    finally:
        db.close()
    if html_path is not None and summary.html is not None:
        try:
            Path(html_path).expanduser().write_text(summary.html, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--html {html_path} cannot be written: {exc.strerror}") from None
    if as_json:
        click.echo(render.as_json_data(summary.as_dict()))
    elif dry_run and summary.text is not None:
        click.echo(render.alert_preview(summary, html_path))
    else:
        click.echo(render.alert_summary(summary.as_dict()))


@cli.command("destinations")
@click.option("--unmapped", is_flag=True, help="Only EPNs whose number has no destination.")
@output_options(listing=True)
@click.pass_context
def destinations_cmd(ctx: click.Context, /, unmapped: bool, **output: Any) -> None:
    """List the inventory's EPNs with where they go (config `destinations`, `layout`).

    An EPN number (the digits of `12282a`) mapped to a folder goes to
    dest/<folder>/<epn> (or as `layout` says); an unmapped one is not copied
    unless copy_unmapped is set.  `asynchy alert` e-mails the unmapped ones.

    \b
    Example:
        asynchy destinations --unmapped
        asynchy destinations --format csv
    """
    from asynchy import render, reports

    settings, db = _open_existing(ctx)
    try:
        rows = reports.destinations(db, settings.destinations, settings.dest, settings.layout)
    finally:
        db.close()
    if unmapped:
        rows = [r for r in rows if not r["mapped"]]
    columns = ["epn", "number", "mapped", "folder", "dest_path", "status"]
    values = [tuple(r[c] for c in columns) for r in rows]
    out = _output(output)
    click.echo(render.rows_out(columns, values, out.fmt, limit=out.limit, empty="no EPNs"))


# ---------------------------------------------------------------------------- reporting
def _open_existing(ctx: click.Context) -> Any:
    from asynchy.db import open_database

    settings = _settings(ctx)
    return settings, open_database(settings.db, create=False)


@cli.command("status")
@output_options()
@click.pass_context
def status_cmd(ctx: click.Context, /, **output: Any) -> None:
    """Where the repatriation stands, on one screen.

    EPNs and bytes by status, progress, the last walk and sync, throughput
    and ETA, the most common failures, and the EPNs being copied right now.

    \b
    Example:
        asynchy status
        asynchy status --json | jq .bytes.percent_done
    """
    from asynchy import render, reports

    settings, db = _open_existing(ctx)
    try:
        data = reports.status(db, settings.destinations, settings.copy_unmapped)
    finally:
        db.close()
    click.echo(render.data_out(data, _output(output).fmt, lambda: render.status(data, _width())))


@cli.command("epns")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    metavar="STATUS",
    help="Only EPNs in this status (repeatable): pending, running, complete, changed, failed, "
    "quarantined, skipped.",
)
@click.option(
    "--since", metavar="DATE", help="Only EPNs whose newest file is from this date on (UTC)."
)
@click.option(
    "--until", metavar="DATE", help="Only EPNs whose newest file is before this date (UTC)."
)
@click.option("--min-size", metavar="SIZE", help="Only EPNs at least this big, e.g. 10G.")
@click.option(
    "--order",
    type=click.Choice(["ASC", "DESC"], case_sensitive=False),
    default="ASC",
    show_default=True,
    help="Oldest or newest first (by newest file).",
)
@output_options(listing=True)
@click.pass_context
def epns_cmd(
    ctx: click.Context,
    /,
    statuses: tuple[str, ...],
    since: str | None,
    until: str | None,
    min_size: str | None,
    order: str,
    **output: Any,
) -> None:
    """List EPNs with their status, size, files, newest file, attempts and last error.

    \b
    Example:
        asynchy epns --status failed --status quarantined
        asynchy epns --since 2024-01-01 --min-size 100G --format csv > big.csv
    """
    from asynchy import render, reports

    out = _output(output)
    flt = reports.EpnFilter(
        statuses=statuses,
        since=reports.parse_when(since, "--since") if since else None,
        until=reports.parse_when(until, "--until") if until else None,
        min_size=reports.parse_size(min_size) if min_size else None,
        order=order.upper(),
        limit=out.limit + 1 if out.limit is not None and out.fmt != "table" else None,
    )
    _, db = _open_existing(ctx)
    try:
        items = reports.list_epns(db, flt)
    finally:
        db.close()
    if out.fmt != "table" and out.limit is not None:
        items = items[: out.limit]  # an explicit --limit cuts the machine formats too
    click.echo(
        render.rows_out(
            render.EPN_COLUMNS,
            render.epn_rows(items, human=False),
            out.fmt,
            human_rows=render.epn_rows(items, human=True),
            limit=out.limit,
            right={"size", "files", "attempts"},
            empty="no EPNs",
        )
    )


@cli.command("show")
@click.argument("epn")
@output_options()
@click.pass_context
def show_cmd(ctx: click.Context, /, epn: str, **output: Any) -> None:
    """Everything about one EPN: inventory, status, destination, every attempt, walk errors.

    \b
    Example:
        asynchy show 12282a
    """
    from asynchy import render, reports

    _, db = _open_existing(ctx)
    try:
        data = reports.show(db, epn)
    finally:
        db.close()
    click.echo(render.data_out(data, _output(output).fmt, lambda: render.show(data, _width())))


@cli.command("sql")
@click.argument("query")
@click.option(
    "-p",
    "--param",
    "params",
    nargs=2,
    multiple=True,
    metavar="NAME VALUE",
    help="A value for :NAME in the query (repeatable); numbers stay numbers.",
)
@output_options(listing=True)
@click.pass_context
def sql_cmd(
    ctx: click.Context, /, query: str, params: tuple[tuple[str, str], ...], **output: Any
) -> None:
    """Run one read-only SQL query against the inventory (anything that writes is refused).

    The views v_epn_progress, v_status_summary, v_daily_transfers and
    v_failures make common questions short; docs/reporting.md has recipes.

    \b
    Example:
        asynchy sql "SELECT * FROM v_daily_transfers ORDER BY day DESC LIMIT 7"
        asynchy sql "SELECT epn, size FROM epns WHERE status = 'pending'" --format csv
        asynchy sql "SELECT epn FROM epns WHERE size > :n" -p n 1000000000
        asynchy sql - < report.sql
    """
    from asynchy import render, sqlquery

    out = _output(output)
    settings = _settings(ctx)
    if query == "-":
        query = sys.stdin.read()
    columns, rows = sqlquery.run(settings.db, query, dict(params))
    click.echo(
        render.rows_out(
            columns,
            rows,
            out.fmt,
            human_rows=render.human_units(columns, rows),
            limit=out.limit,
            empty="(no rows)",
        )
    )


@cli.command("reset")
@click.argument("epns", nargs=-1)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    metavar="STATUS",
    help="Reset every EPN in this status (repeatable): failed, quarantined, skipped, changed.",
)
@click.pass_context
def reset_cmd(ctx: click.Context, /, epns: tuple[str, ...], statuses: tuple[str, ...]) -> None:
    """Put EPNs back in the queue (status pending); their attempt history is kept.

    \b
    Example:
        asynchy reset 12282a 12283b
        asynchy reset --status quarantined
    """
    from asynchy import ops, render

    _, db = _open_existing(ctx)
    try:
        result = ops.reset(db, epns, statuses)
    finally:
        db.close()
    click.echo(f"reset {render.plural(len(result.done), 'EPN')} to pending")
    for epn, why in result.refused.items():
        click.echo(f"  not reset: {epn}: {why}", err=True)
    if result.refused and epns:
        ctx.exit(int(ExitCode.PARTIAL))


@cli.command("skip")
@click.argument("epns", nargs=-1, required=True)
@click.option(
    "--reason",
    default="skipped by an operator",
    show_default=True,
    help="Why (shown by show and epns).",
)
@click.pass_context
def skip_cmd(ctx: click.Context, /, epns: tuple[str, ...], reason: str) -> None:
    """Never transfer these EPNs (until asynchy reset).

    \b
    Example:
        asynchy skip 12290a --reason "test data, not to be kept"
    """
    from asynchy import ops, render

    _, db = _open_existing(ctx)
    try:
        result = ops.skip(db, epns, reason)
    finally:
        db.close()
    click.echo(f"skipped {render.plural(len(result.done), 'EPN')}")
    for epn, why in result.refused.items():
        click.echo(f"  not skipped: {epn}: {why}", err=True)
    if result.refused:
        ctx.exit(int(ExitCode.PARTIAL))


@cli.command("verify")
@click.option(
    "--epn",
    "epns",
    multiple=True,
    metavar="EPN",
    help="Only this EPN (repeatable); default: all complete.",
)
@click.option(
    "--checksum",
    is_flag=True,
    help="Also compare every file's content with the source (rsync -c, slow).",
)
@click.option("--dest", metavar="PATH", help="Where the copies are [config: dest].")
@click.option(
    "--src-prefix", "--src_prefix", "src_prefix", metavar="PATH", help="[config: src_prefix]"
)
@click.pass_context
def verify_cmd(
    ctx: click.Context,
    /,
    epns: tuple[str, ...],
    checksum: bool,
    dest: str | None,
    src_prefix: str | None,
) -> None:
    """Check complete EPNs' local copies against the inventory (and the source with --checksum).

    A copy that differs makes its EPN 'changed', so the next sync copies it
    again.  Exit code 3 when any differs.

    \b
    Example:
        asynchy verify
        asynchy verify --epn 12282a --checksum
    """
    from asynchy import ops
    from asynchy.db import open_database

    settings = _settings(ctx, dest=dest, src_prefix=src_prefix)
    target_dest = Path(settings.require("dest")).expanduser().resolve()
    target = None if (settings.is_local or not checksum) else settings.ssh_target()
    db = open_database(settings.db, create=False)
    try:
        result = ops.verify(
            db,
            dest=target_dest,
            epns=epns,
            checksum=checksum,
            target=target,
            src_prefix=settings.src_prefix,
            destinations=settings.destinations,
            layout=settings.layout,
            include=settings.include or (),
            exclude=settings.exclude or (),
            rsync=settings.rsync,
        )
    finally:
        db.close()
    for epn, why in result.differ.items():
        click.echo(f"differs: {epn}: {why}")
    for epn, why in result.missing.items():
        click.echo(f"not verified: {epn}: {why}")
    click.echo(
        f"verified {len(result.checked)} EPNs: {len(result.checked) - len(result.differ)} match, "
        f"{len(result.differ)} differ (now 'changed')"
    )
    if result.differ or (result.missing and epns):
        ctx.exit(int(ExitCode.PARTIAL))


@cli.command("report")
@click.option(
    "--html", "html_path", required=True, metavar="FILE", help="Write the report to this HTML file."
)
@click.option("--title", default="asynchy progress", show_default=True, help="Title of the page.")
@click.pass_context
def report_cmd(ctx: click.Context, /, html_path: str, title: str) -> None:
    """Write a self-contained HTML progress report (charts drawn in SVG, no network needed).

    \b
    Example:
        asynchy report --html /var/www/asynchy/index.html
    """
    from asynchy import html_report

    _, db = _open_existing(ctx)
    try:
        try:
            size = html_report.write(db, html_path, title)
        except OSError as exc:
            raise _Exit(f"cannot write {html_path}: {exc.strerror}", int(ExitCode.USAGE)) from None
    finally:
        db.close()
    click.echo(f"wrote {html_path} ({size:,} bytes)")


# ---------------------------------------------------------------------------- merge
@cli.command("merge")
@click.argument("sources", nargs=-1, metavar="SOURCE...")
@click.option(
    "--into",
    "target",
    metavar="PATH|URL",
    help="The database to merge into [default: the configured db].",
)
@click.option(
    "--ignore-yml",
    "ignore_yml",
    multiple=True,
    metavar="FILE",
    help="An HPC ASSyncy ignore.yml: its EPNs count as transferred (also recognised as a SOURCE).",
)
@click.option(
    "--legacy-timezone",
    metavar="ZONE",
    help="Time zone the older tools wrote their local times in, e.g. Australia/Melbourne "
    "[default: this machine's].",
)
@output_options()
@click.pass_context
def merge_cmd(
    ctx: click.Context,
    /,
    sources: tuple[str, ...],
    target: str | None,
    ignore_yml: tuple[str, ...],
    legacy_timezone: str | None,
    **output: Any,
) -> None:
    """Combine inventories: sharded walks, older asynchy databases, as-walker and MeRC asynchy databases.

    Inputs are recognised by their tables, checked before anything is
    written, and merged in one transaction: a failure leaves the target as
    it was.  Merging the same inputs again, or in another order, gives the
    same database (rules in docs/merge.md).

    \b
    Example:
        asynchy merge shard1.db shard2.db shard3.db --into files.db
        asynchy merge files0.db files1.db files2.db files3.db old-asynchy.db ignore.yml
    """
    from asynchy import merge, render
    from asynchy.progress import MergeBar, bars_wanted

    g: GlobalOptions = ctx.find_object(GlobalOptions)  # type: ignore[assignment]
    settings = _settings(ctx)
    inputs = [Path(p) for p in (*sources, *ignore_yml)]
    summary = merge.merge(
        target or settings.db,
        inputs,
        legacy_timezone=legacy_timezone,
        progress=MergeBar(bars_wanted(g.quiet)),
    )
    data = summary.as_dict()
    text = render.merge_summary(data)
    _log_summary(text)
    click.echo(render.data_out(data, _output(output).fmt, lambda: text))


# ---------------------------------------------------------------------------- several hosts
@cli.command("workers")
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
    from asynchy import claims, render

    _, db = _open_existing(ctx)
    try:
        rows = claims.workers(db, all_workers=all_workers)
    finally:
        db.close()
    out = _output(output)
    if out.fmt == "table":
        click.echo(render.workers(rows, _width()))
        return
    dicts = [render.workers_dict(r) for r in rows]
    columns = list(dicts[0]) if dicts else ["worker_id"]
    click.echo(render.rows_out(columns, [tuple(d.values()) for d in dicts], out.fmt))


@cli.command("release")
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
    from asynchy import claims

    if stale == (worker_id is not None):
        raise _Exit("give --stale or --worker ID (one of them)", int(ExitCode.USAGE))
    _, db = _open_existing(ctx)
    try:
        freed, dead = claims.release_stale(db, worker_id=worker_id)
    finally:
        db.close()
    click.echo(
        f"released {len(freed)} claims"
        + (f": {', '.join(freed)}" if freed and len(freed) <= 10 else "")
    )
    if dead:
        click.echo(f"marked {len(dead)} workers dead: {', '.join(dead)}")


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
