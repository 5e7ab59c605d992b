"""asynchy init: write a config file (the logic is config.init_config)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from asynchy.cli.common import global_options, options
from asynchy.config import INIT_KEYS, KEYS

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


COMMANDS = [init_cmd]
