"""asynchy alert and asynchy destinations: EPNs that no destination mapping claims."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from asynchy.cli.common import (
    SRC_PREFIX,
    accept_new_host_key_option,
    alert_options,
    get_settings,
    json_flag,
    key_option,
    open_db,
    open_existing,
    output_options,
    take_output,
)
from asynchy.errors import ConfigError


@click.command("alert")
@click.option(
    "--dry-run", is_flag=True, help="Print the message instead of sending it; record nothing."
)
@key_option(
    "realert_days",
    type=click.FloatRange(min=0),
    metavar="DAYS",
)
@SRC_PREFIX
@accept_new_host_key_option
@click.option(
    "--html",
    "html_path",
    metavar="FILE",
    help="With --dry-run: write the HTML part of the message to this file.",
)
@json_flag("Print the summary as JSON.")
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
    from asynchy import alert, render, texts
    from asynchy.portal import Portal
    from asynchy.remote.factory import open_tree

    settings = get_settings(ctx, src_prefix=src_prefix, realert_days=realert_days)
    opts = alert_options(settings, preview=dry_run)
    if opts is None:
        raise ConfigError(
            f"alert_to is not set: add 'alert_to: [you@example.org]' to {settings.config_path} "
            "or set ASYNCHY_ALERT_TO"
        )
    names = alert.epns_on_server(
        open_tree(settings, workers=1, accept_new_host_key=accept_new_host_key)
    )
    summary = alert.alert(
        open_db(ctx, settings.db),
        names,
        settings.destinations,
        opts,
        portal=Portal(settings.portal) if settings.portal else None,
        dry_run=dry_run,
    )
    if html_path is not None and summary.html is not None:
        try:
            Path(html_path).expanduser().write_text(summary.html, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--html {html_path} cannot be written: {exc.strerror}") from None
    if as_json:
        click.echo(render.as_json_data(summary.as_dict()))
    elif dry_run and summary.text is not None and (summary.all_copied is None or summary.damaged):
        click.echo(texts.alert_preview(summary, html_path))
    else:
        click.echo(texts.alert_summary(summary.as_dict()))


@click.command("destinations")
@click.option(
    "--unmapped",
    is_flag=True,
    help="Only the EPNs sync leaves behind for want of a destination (the ones alert names).",
)
@output_options(listing=True)
@click.pass_context
def destinations_cmd(ctx: click.Context, /, unmapped: bool, **output: Any) -> None:
    """List the inventory's EPNs with where they go (config `destinations`, `layout`).

    An EPN number (the digits of `12282a`) mapped to a folder goes to
    dest/<folder>/<epn> (or as `layout` says).  With destinations
    configured, an unmapped one is not copied unless copy_unmapped is set;
    without destinations every EPN goes to dest/<epn>.  `asynchy alert`
    e-mails the ones left behind.

    \b
    Example:
        asynchy destinations --unmapped
        asynchy destinations --format csv
    """
    from asynchy import render, reports

    settings, db = open_existing(ctx)
    rows = reports.destinations(
        db, settings.destinations, settings.dest, settings.layout, settings.copy_unmapped
    )
    if unmapped:
        rows = [r for r in rows if not r["copied"]]
    columns = ["epn", "number", "mapped", "folder", "copied", "dest_path", "status"]
    values = [tuple(r[c] for c in columns) for r in rows]
    out = take_output(output)
    click.echo(render.rows_out(columns, values, out.fmt, limit=out.limit, empty="no EPNs"))


COMMANDS = [alert_cmd, destinations_cmd]
