"""What the commands share: options declared once, settings, the database, the output convention.

No SQL, no subprocess and no paramiko here (nor in any command module): each
command parses options, builds settings and option objects, calls one library
function and renders its result.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import click

from asynchy import __version__
from asynchy.config import KEYS

if TYPE_CHECKING:
    from asynchy.alert import AlertOptions
    from asynchy.config import Settings
    from asynchy.db import Database

F = TypeVar("F", bound=Callable[..., Any])
Decorator = Callable[[F], F]
CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@dataclass(frozen=True)
class GlobalOptions:
    config_path: str | None
    values: dict[str, Any]
    verbose: int
    quiet: bool


def global_options(ctx: click.Context) -> GlobalOptions:
    found = ctx.find_object(GlobalOptions)
    assert found is not None  # set by the group
    return found


def get_settings(ctx: click.Context, **command_values: Any) -> Settings:
    """Settings from file, environment and options; also sets up logging and logs the start line."""
    from asynchy import config, logs
    from asynchy.db import set_busy_timeout

    g = global_options(ctx)
    options = dict(g.values)
    options.update({k: v for k, v in command_values.items() if v is not None})
    settings = config.load_settings(config_path=g.config_path, env=os.environ, options=options)
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


def alert_options(settings: Settings, *, preview: bool = False) -> AlertOptions | None:
    """AlertOptions from the settings, or None when alert_to is not configured."""
    import os

    from asynchy.alert import options_from_settings

    prefix = settings.src_prefix or "?"
    source = prefix if settings.is_local else f"{settings.host}:{prefix}"
    return options_from_settings(settings, os.environ, source, preview=preview)


def open_db(ctx: click.Context, setting: str, *, create: bool = True) -> Database:
    """The database, closed when the command ends (however it ends)."""
    from asynchy.db import open_database

    db = open_database(setting, create=create)
    ctx.call_on_close(db.close)
    return db


def open_existing(ctx: click.Context, **command_values: Any) -> tuple[Settings, Database]:
    """Settings and an existing database (never created: read and manage commands)."""
    settings = get_settings(ctx, **command_values)
    return settings, open_db(ctx, settings.db, create=False)


def bars(ctx: click.Context) -> bool:
    """Progress bars: on a terminal, and not with -q."""
    from asynchy.progress import bars_wanted

    return bars_wanted(global_options(ctx).quiet)


# ------------------------------------------------------------------ options declared once
def sentence(text: str) -> str:
    """A key's help as the start of a sentence (a program's name keeps its case: rsync, ssh)."""
    first = text.split(" ", 1)[0]
    if first in ("rsync", "ssh", "ssh-agent", "known_hosts") or not text:
        return text
    return text[:1].upper() + text[1:]


def key_option(name: str, *more: str, **kw: Any) -> Decorator[Any]:
    """The option of config key ``name`` (``--src-prefix``, alias ``--src_prefix``), its help
    from config.KEYS (declared once there) and ending in ``[config: name]``; the value reaches
    Settings under that name."""
    spec = KEYS[name]
    names = [spec.option]
    if "_" in name:
        names.append("--" + name)
    kw.setdefault("metavar", {"path": "PATH", "text": "TEXT"}.get(spec.kind))
    text = sentence(spec.help) + (" (repeatable)." if kw.get("multiple") else ".")
    default = f"; default {spec.default}" if spec.default not in (None, False) else ""
    return click.option(*names, *more, name, help=f"{text} [config: {name}{default}]", **kw)


SRC_PREFIX = key_option("src_prefix", metavar="PATH")
DEST = key_option("dest")


def accept_new_host_key_option(f: F) -> F:
    return click.option(
        "--accept-new-host-key",
        is_flag=True,
        help="Record the server's host key if known_hosts does not know the host (never a changed key).",
    )(f)


def epn_option(help: str) -> Decorator[Any]:
    return click.option("--epn", "epns", multiple=True, metavar="EPN", help=help)


def json_flag(help: str) -> Decorator[Any]:
    """--json for commands whose output is not a listing (watch's cycle lines, alert)."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def duration(ctx: click.Context, param: click.Parameter, value: Any) -> float | None:
    """Option callback: 90, 90s, 30m, 1h, 1h30m, 2d -> seconds."""
    from asynchy.config import parse_duration

    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} {exc}") from None


def options(declared: list[Decorator[Any]]) -> Decorator[Any]:
    """One decorator for a list of options (shared by several commands)."""

    def decorate(f: F) -> F:
        for option in reversed(declared):
            f = option(f)
        return f

    return decorate


# ------------------------------------------------------------------ the output convention
def output_options(*, listing: bool = False) -> Decorator[Any]:
    """The one output convention (docs/reporting.md): --format table|json|csv|nl, --json and --csv
    as short forms; listings also --limit / --all.  The command passes its ``**output`` to
    ``take_output``."""
    declared = [
        click.option(
            "--format",
            "fmt",
            type=click.Choice(["table", "json", "csv", "nl"]),
            default=None,
            help="table for people (human units, local times with their zone) [default]; json, csv or nl (one "
            "JSON object a line) for scripts: raw numbers, UTC ISO 8601, never cut.",
        ),
        click.option("--json", "as_json", is_flag=True, help="Short for --format json."),
        click.option("--csv", "as_csv", is_flag=True, help="Short for --format csv."),
        click.option(
            "--csv-safe",
            is_flag=True,
            help="CSV for a spreadsheet: a text cell that starts with = + - @ gets a leading ' "
            "(implies --format csv).",
        ),
    ]
    if listing:
        declared += [
            click.option(
                "--limit",
                "rows_limit",
                type=click.IntRange(min=1),
                help="At most this many rows [default: 100 in a table on a terminal, else all].",
            ),
            click.option("--all", "all_rows", is_flag=True, help="Every row, also in a table."),
        ]
    return options(declared)


@dataclass(frozen=True)
class Output:
    fmt: str
    limit: int | None  # rows of a table; None: all


def take_output(kw: dict[str, Any]) -> Output:
    """Output from the options of output_options (removed from kw)."""
    fmt = kw.pop("fmt", None)
    as_json, as_csv = kw.pop("as_json", False), kw.pop("as_csv", False)
    chosen = [f for f, on in ((fmt, fmt is not None), ("json", as_json), ("csv", as_csv)) if on]
    if len(set(chosen)) > 1:
        raise click.UsageError(f"choose one output format, not {' and '.join(sorted(set(chosen)))}")
    fmt = chosen[0] if chosen else "table"
    if kw.pop("csv_safe", False):
        if fmt not in ("table", "csv"):
            raise click.UsageError(f"--csv-safe is a CSV option, not one for --format {fmt}")
        fmt = "csv-safe"
    limit, all_rows = kw.pop("rows_limit", None), kw.pop("all_rows", False)
    if all_rows:
        limit = None
    elif limit is None and fmt == "table" and sys.stdout.isatty():
        limit = 100
    return Output(str(fmt), limit)


def width() -> int | None:
    """The terminal's width for tables; None (nothing cut) when stdout is not a terminal."""
    from asynchy import render

    return render.terminal_width() if sys.stdout.isatty() else None


def summary_out(data: dict[str, Any], text: str, out: Output) -> None:
    """A run's summary (walk, sync, merge): its first line in the log, then shown as asked."""
    from asynchy import render

    logging.getLogger("asynchy").info("%s", text.splitlines()[0] if text else "")
    click.echo(render.data_out(data, out.fmt, lambda: text))
