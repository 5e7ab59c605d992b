"""asynchy sync and asynchy watch: copy batches of EPNs (the library: sync.sync, watch.watch)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from asynchy.cli.common import (
    DEST,
    SRC_PREFIX,
    accept_new_host_key_option,
    alert_options,
    bars,
    duration,
    epn_option,
    get_settings,
    json_flag,
    key_option,
    open_db,
    options,
    output_options,
    summary_out,
    take_output,
)
from asynchy.errors import AsynchyError, Interrupted, PartialFailure
from asynchy.sync_types import SyncOptions

if TYPE_CHECKING:
    from asynchy.config import Settings
    from asynchy.remote.base import Tree


def _default(name: str) -> Any:
    """An option's default: SyncOptions' own (declared once there)."""
    return SyncOptions.__dataclass_fields__[name].default


def _size_text(n: int) -> str:
    """1073741824 -> 1G: a size as it is typed."""
    for unit, size in (("T", 2**40), ("G", 2**30), ("M", 2**20), ("K", 2**10)):
        if n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


# The options of one sync batch, shared by `sync` and `watch`.
BATCH_OPTIONS = [
    DEST,
    SRC_PREFIX,
    click.option(
        "--order",
        type=click.Choice(["ASC", "DESC"], case_sensitive=False),
        default=_default("order"),
        show_default=True,
        help="Oldest (ASC) or newest (DESC) EPNs first, by their newest file.",
    ),
    click.option(
        "--limit",
        type=click.IntRange(min=1),
        default=_default("limit"),
        show_default=True,
        help="EPNs in this run (a watch: in each cycle).",
    ),
    click.option(
        "--retry",
        type=click.IntRange(min=0),
        default=_default("retry"),
        show_default=True,
        help="Patience, N: at most N+1 attempts of one EPN in this run (spaced); N+1 probes of a "
        "server that stopped answering before the run gives up (exit 1); ssh ConnectionAttempts "
        "N+1 (docs/sync.md).",
    ),
    key_option("threads", type=click.IntRange(1, 64), metavar="N"),
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
    key_option(
        "bwlimit",
        metavar="RATE",
    ),
    click.option(
        "--streams-per-epn",
        type=click.IntRange(min=1),
        metavar="N",
        help="Copy a big EPN in at most N parts at once, each its own rsync and ssh connection "
        "[default: --threads; 1: never split].",
    ),
    click.option(
        "--split-min",
        metavar="SIZE",
        default=_size_text(_default("split_min")),
        show_default=True,
        help="An EPN smaller than this is never split (e.g. 500M, 2G).",
    ),
    click.option(
        "--max-attempts",
        type=click.IntRange(min=1),
        default=_default("max_attempts"),
        show_default=True,
        help="Data failures in a row (over all runs) before an EPN is quarantined.",
    ),
    click.option(
        "--verify",
        type=click.Choice(["size", "checksum"]),
        default=_default("verify"),
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
    key_option(
        "exclude",
        multiple=True,
        metavar="PATTERN",
    ),
    key_option(
        "include",
        multiple=True,
        metavar="PATTERN",
    ),
    key_option("exclude_from", metavar="FILE"),
    key_option("include_from", metavar="FILE"),
    key_option(
        "metrics_file",
        metavar="FILE",
    ),
    key_option(
        "chmod",
        metavar="RULES",
    ),
    key_option("destinations", metavar="MAP"),
    click.option(
        "--stall-timeout",
        type=click.FloatRange(min=1),
        default=_default("stall_timeout"),
        show_default=True,
        metavar="SECONDS",
        help="Kill an rsync that shows no progress for this long (a link failure: not charged).",
    ),
    click.option(
        "--lease",
        type=click.FloatRange(min=2),
        default=_default("lease"),
        show_default=True,
        metavar="SECONDS",
        help="How long a claim lasts without a heartbeat (renewed every third of it).",
    ),
    key_option("timeout", type=click.FloatRange(min=0.1), metavar="SECONDS"),
]


def _sync_settings(ctx: click.Context, kw: dict[str, Any], **more: Any) -> Settings:
    return get_settings(
        ctx,
        dest=kw["dest"],
        src_prefix=kw["src_prefix"],
        destinations=kw["destinations"],
        timeout=kw["timeout"],
        threads=kw["threads"],
        copy_unmapped=kw["include_unmapped"],
        exclude=kw["exclude"] or None,
        include=kw["include"] or None,
        exclude_from=kw["exclude_from"],
        include_from=kw["include_from"],
        chmod=kw["chmod"],
        metrics_file=kw["metrics_file"],
        bwlimit=kw["bwlimit"],
        **more,
    )


def _size(text: str) -> int:
    from asynchy.reports import parse_size

    return parse_size(text, "--split-min")


def _sync_options(settings: Settings, kw: dict[str, Any], **more: Any) -> SyncOptions:
    """SyncOptions from the batch options and the settings."""
    from asynchy.destinations import copies_unmapped
    from asynchy.filters import from_settings
    from asynchy.sync import SyncOptions

    dest = Path(settings.require("dest")).expanduser().resolve()
    rules = from_settings(settings)
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
        bwlimit=settings.bwlimit,
        max_attempts=kw["max_attempts"],
        streams_per_epn=kw["streams_per_epn"],
        split_min=_size(kw["split_min"]),
        verify="checksum" if kw["checksum"] else kw["verify"],
        # With a destination map, only mapped EPNs are copied (as mxsync) unless asked otherwise.
        mapped_only=kw["mapped_only"]
        or not copies_unmapped(settings.destinations, settings.copy_unmapped),
        stall_timeout=kw["stall_timeout"],
        lease=kw["lease"],
        destinations=settings.destinations,
        rsync=settings.rsync,
        layout=settings.layout,
        include=rules.include,
        exclude=rules.exclude,
        chmod=settings.chmod,
        fixity=settings.fixity,
        checksum_algo=settings.checksum_algo,
        ignore_file=Path(settings.ignore_file).expanduser() if settings.ignore_file else None,
        metrics_file=Path(settings.metrics_file).expanduser() if settings.metrics_file else None,
        **more,
    )


@click.command("sync")
@options(BATCH_OPTIONS)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Show what would be copied; copy nothing, change nothing in the DB.",
)
@epn_option("Only this EPN (repeatable).")
@click.option(
    "--settle",
    callback=duration,
    metavar="DURATION",
    help="Only EPNs whose newest file is at least this old, e.g. 1h [default: any].",
)
@click.option(
    "--max-duration",
    callback=duration,
    metavar="DURATION",
    help="After this long (e.g. 6h) no new EPN starts and running copies stop, given back "
    "uncharged (the next run resumes them; keep their files with --partial).",
)
@click.option(
    "--stop-at",
    metavar="TIME",
    help="As --max-duration, at a local time: HH:MM (the next one) or 'YYYY-MM-DD HH:MM'.",
)
@output_options()
@click.pass_context
def sync_cmd(ctx: click.Context, /, **kw: Any) -> None:
    """Copy a batch of EPNs with rsync, verify each copy, record every attempt.

    EPNs are taken in order of their newest file (pending, changed, and
    failed for a data reason once their back-off has passed); an EPN is
    complete only when rsync succeeded and the local copy matches the
    inventory and the source.  A server outage or a setup mistake is never
    charged to an EPN (docs/failures.md).  --max-duration / --stop-at end
    the run at a time, nothing charged.  Exit code 3 when some EPNs were
    not completed, 2 for a setup problem, 1 when the server cannot be
    reached, 130 when interrupted.

    \b
    Example:
        asynchy sync --dest /srv/as/vault/data --src_prefix /data/mx --limit 30 --retry 5 --parallel --threads 2
        asynchy sync --epn 12282a --verify checksum
        asynchy sync --dry-run --limit 5
        asynchy sync --limit 500 --stop-at 07:00 --partial
    """
    from asynchy import texts
    from asynchy.progress import SyncBar
    from asynchy.sync import sync

    out = take_output(kw)
    settings = _sync_settings(ctx, kw)
    target = None if settings.is_local else settings.ssh_target()
    if kw["epns"]:
        from asynchy.names import parse_epn

        for name in kw["epns"]:
            parse_epn(name)
    limit, limit_text = _time_limit(kw["max_duration"], kw["stop_at"])
    opts = _sync_options(
        settings,
        kw,
        dry_run=kw["dry_run"],
        epns=tuple(kw["epns"]) or None,
        settle=kw["settle"],
        time_limit=limit,
        time_limit_text=limit_text,
    )
    from asynchy.remote.factory import open_tree

    summary = sync(
        open_db(ctx, settings.db),
        target,
        opts,
        progress=SyncBar(bars(ctx)),
        open_tree=lambda: open_tree(settings, workers=4),
    )
    data = summary.as_dict()
    summary_out(data, texts.sync_summary(data), out)
    if summary.stop_error is not None:
        raise summary.stop_error
    if summary.interrupted:
        raise Interrupted()  # the summary says so
    if summary.unfinished:
        raise PartialFailure()


def _time_limit(max_duration: float | None, stop_at: str | None) -> tuple[float | None, str]:
    """The run's time limit in seconds (the earlier of the two options) and how it was given."""
    from datetime import datetime

    from asynchy.render import compact_duration
    from asynchy.schedule import seconds_until

    limits = []
    if max_duration is not None:
        limits.append((max_duration, f"--max-duration {compact_duration(max_duration)}"))
    if stop_at is not None:
        limits.append((seconds_until(stop_at, datetime.now().astimezone()), f"--stop-at {stop_at}"))
    return min(limits) if limits else (None, "")


@click.command("watch")
@options(BATCH_OPTIONS)
@click.option(
    "--every",
    callback=duration,
    metavar="DURATION",
    help="Time from the start of one cycle to the next, e.g. 1h [config: every; default 1h].",
)
@click.option(
    "--settle",
    callback=duration,
    metavar="DURATION",
    help="Copy an EPN once its newest file is this old [config: settle; default 1h].",
)
@click.option(
    "--recent",
    callback=duration,
    default="7d",
    show_default=True,
    metavar="DURATION",
    help="Walk again, each cycle, the EPNs whose newest file is younger than this.",
)
@click.option("--once", is_flag=True, help="Run one cycle and exit (for cron or a systemd timer).")
@click.option("--no-alert", is_flag=True, help="No alert e-mails, even with alert_to configured.")
@accept_new_host_key_option
@json_flag("Print each cycle's summary as a JSON line.")
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
    from asynchy import render, texts, watch
    from asynchy.remote.factory import open_tree

    settings = _sync_settings(ctx, kw, every=kw["every"], settle=kw["settle"])
    target = None if settings.is_local else settings.ssh_target()
    sync_opts = _sync_options(settings, kw, settle=settings.settle)
    alert_opts = None if kw["no_alert"] else alert_options(settings)
    opts = watch.WatchOptions(
        sync=sync_opts,
        every=settings.every,
        recent=kw["recent"],
        once=kw["once"],
        alert=alert_opts,
        portal=settings.portal,
        destinations=settings.destinations,
        epn_pattern=settings.epn_pattern,
        strict_names=settings.strict_names,
        history_days=settings.history_days,
        audit_every=settings.audit_every,
    )

    def tree() -> Tree:
        return open_tree(settings, workers=32, accept_new_host_key=kw["accept_new_host_key"])

    def show(cycle: watch.CycleSummary) -> None:
        line = render.as_json_line(cycle.as_dict()) if kw["as_json"] else texts.cycle_line(cycle)
        click.echo(line)

    last = watch.watch(open_db(ctx, settings.db), tree, target, opts, on_cycle=show)
    if not last.ok:  # the cycle's line said why
        raise AsynchyError() if last.problems else PartialFailure()


COMMANDS = [sync_cmd, watch_cmd]
