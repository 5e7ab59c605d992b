"""The ``asynchy`` group: global options, the commands, and the one place that turns exceptions
into a line and an exit code (docs/exit-codes.md)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from typing import Any, NoReturn

import click

from asynchy import __version__
from asynchy.cli import alert, fixity, hosts, init, manage, merge, report, schema, sync, walk
from asynchy.cli.common import CONTEXT_SETTINGS, GlobalOptions, key_option, options
from asynchy.errors import AsynchyError, ExitCode, Interrupted


def shown(text: str) -> str:
    """A message as one line, control characters escaped (asynchy.render.shown, imported only
    when there is something to say)."""
    from asynchy.render import shown as one_line

    return one_line(text)


def _exit_with(message: str, code: int) -> click.ClickException:
    """click's one-line ``Error: message`` with our exit code (``exit_code`` is a class attribute in
    click's types, so the code is set on a subclass, not on the instance)."""
    kind: type[click.ClickException] = type(
        f"AsynchyExit{code}", (click.ClickException,), {"exit_code": code}
    )
    return kind(message)


class AsynchyGroup(click.Group):
    """Translates asynchy's exceptions (and Ctrl+C) into one line and an exit code.

    Commands return normally (0) or raise: an AsynchyError says its message as ``Error: ...``
    with its exit code; one with no message (the command already showed why, e.g. a summary
    with failures: PartialFailure, 3) only sets the code; Interrupted (130) is a stop, not an error.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Interrupted as exc:  # a normal stop (Ctrl+C, systemctl stop): said, not an error
            if str(exc):
                logging.getLogger("asynchy").info("%s", exc)
                click.echo(f"asynchy: {shown(str(exc))}", err=True)
            raise click.exceptions.Exit(int(exc.exit_code)) from None
        except AsynchyError as exc:
            if not str(exc):
                raise click.exceptions.Exit(int(exc.exit_code)) from None
            # one line, whatever a server-chosen name in it holds (a newline, ESC, BEL)
            raise _exit_with(shown(str(exc)), int(exc.exit_code)) from None
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
            raise _exit_with(shown(str(err)), int(err.exit_code)) from None


GLOBAL_OPTIONS = [
    click.version_option(
        __version__, "--version", "-V", prog_name="asynchy", message="%(prog)s %(version)s"
    ),
    click.option(
        "--config",
        "config_path",
        metavar="PATH",
        help="Config file [default: $ASYNCHY_CONFIG or ~/.as.yaml].",
    ),
    key_option("db", metavar="PATH|URL"),
    key_option("host"),
    key_option("port", type=click.IntRange(1, 65535)),
    key_option("user"),
    key_option("keypath", metavar="FILE"),
    key_option("known_hosts", metavar="FILE"),
    key_option("log_file", metavar="FILE"),
    key_option(
        "log_level",
        type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    ),
    key_option("rsync", metavar="PATH"),
    click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug)."),
    click.option(
        "-q", "--quiet", is_flag=True, help="No progress bars, only errors and the final summary."
    ),
]


@click.group(cls=AsynchyGroup, context_settings=CONTEXT_SETTINGS)
@options(GLOBAL_OPTIONS)
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
    # Output is never stripped of escape sequences: a table shows them escaped already, and
    # CSV keeps every byte of a name (click would alter names when stdout is a pipe).
    ctx.color = True


for module in (init, walk, sync, alert, report, manage, fixity, merge, hosts, schema):
    for command in module.COMMANDS:
        cli.add_command(command)


def main() -> None:
    """The console script (and ``python -m asynchy``).

    A stop ends with exit code 130.  Under ``python -m``, CPython ends the process by SIGINT
    instead when the Ctrl+C landed inside an ``exec`` of a string (dataclasses and SQLAlchemy
    build code that way while modules load): its ``run_eval_code_obj`` marks the interrupt as
    unhandled although asynchy handled it.  So a stop leaves with os._exit(130), once everything
    is flushed (the run has already wound down: claims given back, workers ended)."""
    _sigterm_stops()
    try:
        cli(prog_name="asynchy")
    except KeyboardInterrupt:  # a Ctrl+C that landed while a stop was already unwinding
        _leave(int(ExitCode.INTERRUPTED))
    except SystemExit as exc:
        if exc.code == int(ExitCode.INTERRUPTED):
            _leave(int(ExitCode.INTERRUPTED))
        raise


def _sigterm_stops() -> None:
    """From the start, SIGTERM stops a command as Ctrl+C does (exit 130, nothing half-written):
    before a command installs its own handling (walk, sync, watch), the default would end the
    process by the signal - `systemctl stop` during sync's preflight, for one."""

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, stop)


def _leave(code: int) -> NoReturn:
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
