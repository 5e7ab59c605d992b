"""Setting up: asynchy init writes a config file (config.init_config), asynchy config shows the
effective settings and where each came from (config.effective), asynchy check runs the preflight
on its own (asynchy.check)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from asynchy.config import Settings

from asynchy.cli.common import (
    DEST,
    SRC_PREFIX,
    get_settings,
    global_options,
    json_flag,
    options,
    output_options,
    take_output,
)
from asynchy.config import INIT_KEYS, KEYS
from asynchy.errors import AsynchyError, ExitCode, UsageError

# One option per key init asks for (its values under i_<key>: the group has --host etc. too).
INIT_OPTIONS = [
    click.option(
        KEYS[key].option,
        *(["--" + key] if "_" in key else []),
        f"i_{key}",
        type=click.IntRange(1, 65535) if key == "port" else None,
        metavar={"path": "PATH", "integer": None}.get(KEYS[key].kind, "TEXT"),
        help=KEYS[key].help[:1].upper() + KEYS[key].help[1:] + ".",
    )
    for key in INIT_KEYS
]


@click.command("init")
@click.option(
    "--config_path",
    "--config-path",
    "target",
    metavar="PATH",
    help="Where to write [default: --config, $ASYNCHY_CONFIG or ~/.as.yaml].",
)
@options(INIT_OPTIONS)
@click.option("--overwrite", is_flag=True, help="Replace an existing config file.")
@click.option(
    "--interactive/--no-interactive",
    default=None,
    help="Prompt for each value [default: when stdin is a terminal].",
)
@click.option(
    "--check/--no-check",
    "run_check",
    default=None,
    help="Then run asynchy check on the new file [default: ask on a terminal, else no].",
)
@click.pass_context
def init_cmd(
    ctx: click.Context,
    /,
    target: str | None,
    overwrite: bool,
    interactive: bool | None,
    run_check: bool | None,
    **given: Any,
) -> None:
    """Write a config file (prompts on a terminal; takes options otherwise).

    An existing file is never replaced silently: pass --overwrite, or confirm
    at the prompt.  Afterwards, asynchy check can try the new settings
    (--check; on a terminal init asks).

    \b
    Example:
        asynchy init --host sftp.synchrotron.org.au --user me --keypath ~/.ssh/as_key \\
            --src-prefix /data/mx --dest /srv/as/vault/data --db ~/asynchy/files.db
    """
    from asynchy import config

    g = global_options(ctx)
    path = Path(target or g.config_path or config.default_config_path(os.environ)[0]).expanduser()
    values = {
        key: given[f"i_{key}"] if given.get(f"i_{key}") is not None else g.values.get(key)
        for key in INIT_KEYS
    }
    if interactive is None:
        interactive = sys.stdin.isatty()

    def ask(key: str, help: str, default: Any) -> Any:
        return click.prompt(f"{key} ({help})", default=default, show_default=True)

    def confirm(question: str) -> bool:
        return click.confirm(question, default=False)

    note = config.init_config(
        path,
        values,
        overwrite=overwrite,
        ask=ask if interactive else None,
        confirm=confirm if interactive else None,
    )
    click.echo(f"wrote {path}")
    if note:
        click.echo(note, err=True)
    if run_check is None:
        run_check = interactive and click.confirm("Check the setup now?", default=True)
    if run_check:
        options = global_options(ctx).values
        _check(
            config.load_settings(config_path=path, env=os.environ, options=options), as_json=False
        )


@click.command("config")
@output_options()
@click.pass_context
def config_cmd(ctx: click.Context, /, **output: Any) -> None:
    """Show the effective settings and where each came from.

    One row per key: its value and its source - default, the config file,
    an ASYNCHY_<KEY> environment variable or a global option.  Passwords
    (the database URL's, the portal's, SMTP's) are masked.

    \b
    Example:
        asynchy config
        asynchy --db other.db config --json
        ASYNCHY_THREADS=4 asynchy config --format csv
    """
    from asynchy import config, render, texts

    out = take_output(output)
    settings = get_settings(ctx)
    rows = config.effective(settings, os.environ)
    columns = ["key", "value", "source"]
    if out.fmt != "table":
        click.echo(render.rows_out(columns, rows, out.fmt))
        return
    human = [(k, texts.setting_value(v), where) for k, v, where in rows]
    click.echo(render.rows_out(columns, rows, "table", human_rows=human))
    if not settings.config_exists:
        click.echo(f"(no config file at {settings.config_path}: asynchy init writes one)")


@click.command("check")
@SRC_PREFIX
@DEST
@json_flag("Print the checks as JSON.")
@click.pass_context
def check_cmd(
    ctx: click.Context, /, as_json: bool, src_prefix: str | None, dest: str | None
) -> None:
    """Check the setup without changing anything, one line per check.

    The configuration, the local rsync, the server (reachable, host key,
    login), the remote rsync and src_prefix, a sample of EPN folder names
    against epn_pattern, dest (writable), the database, and SMTP and the
    portal when configured: what walk, sync, watch and alert would meet.
    Nothing is claimed, written or sent.  Exit code 2 when a check found a
    setup problem, 1 when a server or service cannot be reached, else 0.

    \b
    Example:
        asynchy check
        asynchy --config /etc/asynchy/as.yaml check --json
    """
    settings = get_settings(ctx, src_prefix=src_prefix, dest=dest)
    _check(settings, as_json=as_json)


def _check(settings: Settings, *, as_json: bool) -> None:
    from asynchy import check, render, texts

    show = None if as_json else (lambda c: click.echo(texts.check_line(c)))
    checks = check.run_checks(settings, os.environ, on_check=show)
    if as_json:
        data = {"checks": [c.as_dict() for c in checks], "exit_code": check.exit_code(checks)}
        click.echo(render.as_json_data(data))
    code = check.exit_code(checks)
    if code:
        failed = sum(1 for c in checks if c.state == "fail")
        kind = AsynchyError if code == int(ExitCode.ERROR) else UsageError
        raise kind() if as_json else kind(f"{render.plural(failed, 'check')} failed")


COMMANDS = [init_cmd, config_cmd, check_cmd]
