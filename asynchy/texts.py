"""The texts people read from asynchy's commands: run summaries (walk, sync, merge, alert),
status and show, the workers' table, reset/skip/verify, config and check lines, a watch's cycle
line.  Built from asynchy.render's basics (units, times, tables, escaping); every name from the
server is shown through ``render.shown``."""

from __future__ import annotations

import json
import textwrap
from typing import TYPE_CHECKING, Any

from asynchy.render import (
    human_bytes,
    human_seconds,
    local_time,
    machine,
    plural,
    short_time,
    shown,
    table,
)
from asynchy.sums import damage_words

if TYPE_CHECKING:
    from asynchy.reports import StatusReport
    from asynchy.watch import CycleSummary


def walk_summary(summary: dict[str, Any]) -> str:
    parts = [
        f"walk {summary['status']}: {plural(summary['epns_walked'], 'EPN')} walked",
    ]
    if summary["epns_skipped"]:
        parts.append(f"{summary['epns_skipped']} already walked")
    if summary["epns_changed"]:
        parts.append(f"{summary['epns_changed']} changed")
    parts.append(plural(summary["files"], "file"))
    parts.append(human_bytes(summary["bytes"]))
    parts.append(plural(summary["errors"], "error"))
    if summary["reconnects"]:
        parts.append(plural(summary["reconnects"], "reconnect"))
    line = ", ".join(parts) + f" in {human_seconds(summary['elapsed_seconds'])}"
    lines = [line]
    if summary["epns_gone"]:
        lines.append(
            f"note: {plural(summary['epns_gone'], 'EPN')} in the database "
            f"{'was' if summary['epns_gone'] == 1 else 'were'} not found on the source"
        )

    details = summary["error_details"]
    for err in details:
        where = (
            f"{err['epn']}/{err['path']}"
            if err["epn"] and err["path"]
            else (err["epn"] or err["path"] or ".")
        )
        lines.append(f"  error: {shown(where)}: {shown(err['message'])} ({err['kind']})")
    if summary["errors"] > len(details):
        lines.append(
            f"  ... and {summary['errors'] - len(details)} more in the walk_errors table "
            f"(walk_id {summary['walk_id']})"
        )
    return "\n".join(lines)


def names_warning(odd: dict[str, Any], pattern: str) -> str:
    """The walk's one warning about folders under src_prefix that do not look like EPNs."""
    n = odd["count"]
    names = ", ".join(shown(repr(x)) for x in odd["names"][:5]) + (" ..." if n > 5 else "")
    what = (
        "left out (strict_names)"
        if odd["left_out"]
        else ("recorded as an EPN" if n == 1 else "recorded as EPNs")
    )
    return (
        f"{plural(n, 'folder')} under src_prefix {'does' if n == 1 else 'do'} not look like "
        f"{'an EPN' if n == 1 else 'EPNs'} (epn_pattern {pattern}) and {'was' if n == 1 else 'were'} "
        f"{what}: {names}; {odd['hint']}"
    )


def plan_lines(plan: list[dict[str, Any]]) -> list[str]:
    """A dry run's plan: the order EPNs would start in, and which are split into parts."""
    if not plan:
        return []
    lines = ["  plan, in start order (the largest first):"]
    for step, entry in enumerate(plan, 1):
        parts = entry["parts"]
        how = (
            f"in {plural(len(parts), 'part')} of {', '.join(human_bytes(p) for p in parts)}"
            if parts
            else "whole"
        )
        lines.append(f"    {step}. {shown(entry['epn'])}: {human_bytes(entry['bytes'])} {how}")
    return lines


def sync_summary(summary: dict[str, Any]) -> str:
    """The end of a sync: one line of counts (EPNs, not attempts), then a line per EPN left over."""
    elapsed = summary["elapsed_seconds"]
    if summary["dry_run"]:
        changes = summary["would_change"]
        lines = [
            f"sync dry run: {plural(len(changes), 'EPN')} checked, "
            f"{plural(sum(changes.values()), 'item')} would be transferred, "
            f"{len(summary['failed']):,} failed in {human_seconds(elapsed)}"
        ]
        lines += [f"  {shown(epn)}: {plural(n, 'item')}" for epn, n in changes.items()]
        lines += plan_lines(summary.get("plan", []))
    else:
        state = "interrupted" if summary["interrupted"] else "finished"
        if summary.get("stopped"):
            state = "stopped"
        elif summary.get("time_limit_reached"):
            state = f"stopped at the time limit ({summary['time_limit_reached']})"
        rate = human_bytes(summary["bytes_per_second"]) + "/s"
        parts = [
            f"{plural(len(summary['complete']), 'EPN')} complete",
            f"{len(summary['failed']):,} failed",
        ]
        if summary.get("repaired"):
            parts.insert(1, f"{len(summary['repaired']):,} repaired")
        if summary["changed"]:
            parts.append(f"{len(summary['changed'])} changed")
        if summary["given_back"]:
            parts.append(f"{len(summary['given_back'])} given back")
        if summary.get("refused"):
            parts.append(f"{len(summary['refused'])} refused")
        parts += [f"{len(summary['skipped'])} skipped", f"{len(summary['cancelled'])} cancelled"]
        lines = [
            f"sync {state}: {', '.join(parts)}, "
            f"{human_bytes(summary['bytes'])} in {human_seconds(elapsed)} ({rate})"
        ]
    for failure in summary["failed"]:
        lines.append(f"  {failure['outcome']}: {shown(failure['epn'])}: {shown(failure['reason'])}")
    for item in summary.get("changed", []):
        lines.append(
            f"  changed: {shown(item['epn'])}: {shown(item['reason'])} (the next run copies it)"
        )
    for item in summary.get("given_back", []):
        lines.append(f"  given back: {shown(item['epn'])}: {shown(item['reason'])} (not charged)")
    for item in summary.get("refused", []):
        lines.append(f"  refused: {shown(item['epn'])}: {shown(item['reason'])}")
    if summary.get("time_limit_reached") and summary.get("cancelled"):
        stopped = ", ".join(shown(e) for e in summary["cancelled"][:5])
        more = ", ..." if len(summary["cancelled"]) > 5 else ""
        lines.append(
            f"  stopped at the time limit: {stopped}{more} (not charged; the next run copies them)"
        )
    for w in summary.get("not_taken", []):
        n = w["epns"]
        lines.append(f"  not taken: {plural(n, 'EPN')} {w['reason']} ({w['hint']})")
    by_reason: dict[str, list[str]] = {}
    for epn, why in summary["skipped"].items():
        by_reason.setdefault(why, []).append(epn)
    for why, epns in by_reason.items():
        if len(epns) <= 3:
            lines += [f"  skipped: {shown(epn)}: {why}" for epn in epns]
        else:  # one line per reason, with its count: an unmapped archive is not a wall of text
            first = ", ".join(shown(e) for e in epns[:3])
            lines.append(f"  skipped {plural(len(epns), 'EPN')} ({first}, ...): {why}")
    return "\n".join(lines)


# ------------------------------------------------------------------ config and check
def setting_value(value: Any) -> str:
    """A setting as ``asynchy config`` shows it in a table."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(machine(value), default=str)
    return str(value)


CHECK_MARKS = {"ok": "ok  ", "warn": "warn", "fail": "FAIL", "skip": "skip"}


def check_line(check: Any) -> str:
    """One line of ``asynchy check``: state, name, what was found (names escaped)."""
    return f"{CHECK_MARKS[check.state]}  {check.name:<13} {shown(check.detail)}"


# ------------------------------------------------------------------ status, epns, show
def status(data: StatusReport, width: int | None = 80) -> str:
    """``asynchy status``: the counts by status, then one line per question people ask."""
    lines = [f"asynchy status at {local_time(data['generated_at'])} of {data['database']}"]
    rows = [
        (status, v["epns"], human_bytes(v["bytes"]), f"{v['files']:,}")
        for status, v in sorted(data["epns"]["by_status"].items())
    ]
    rows.append(
        (
            "total",
            data["epns"]["total"],
            human_bytes(data["bytes"]["total"]),
            f"{data['files']['total']:,}",
        )
    )
    lines.append(
        table(
            ["status", "EPNs", "size", "files"], rows, width=width, right={"EPNs", "size", "files"}
        )
    )
    b = data["bytes"]
    lines.append(
        f"progress:   {human_bytes(b['done'])} of {human_bytes(b['total'])} done ({b['percent_done']:.1f} %), "
        f"{human_bytes(b['remaining'])} to go"
    )
    unmapped = data.get("unmapped") or {}
    if unmapped.get("epns"):
        n = unmapped["epns"]
        lines.append(
            f"unmapped:   {plural(n, 'EPN')} ({human_bytes(unmapped['bytes'])}) not copied: "
            "no destinations entry (asynchy destinations --unmapped; copy_unmapped copies them)"
        )
    lines += _runs(data, width) + _pace(data) + _failures_and_claims(data, width)
    return "\n".join(lines)


def _runs(data: StatusReport, width: int | None) -> list[str]:
    """The last walk (and why it failed; the last complete one) and the last sync."""
    lines = []
    walk = data["last_walk"]
    if walk:
        lines.append(f"last walk:  {_walk_line(walk)}")
        if walk["status"] != "complete" and walk.get("message"):
            lines += _wrapped("why:", shown(walk["message"]), width)
        if "last_complete" in walk:
            good = walk["last_complete"]
            lines.append(f"last complete walk: {_walk_line(good) if good else 'never'}")
    else:
        lines.append("last walk:  never (run asynchy walk)")
    sync = data["last_sync"]
    if sync:
        took = human_seconds(sync["seconds"]) if sync["seconds"] is not None else "still running"
        lines.append(
            f"last sync:  {local_time(sync['started_at'])}, {took}, {sync['status']} "
            f"({sync['complete']} complete, {sync['failed']} failed)"
        )
    else:
        lines.append("last sync:  never (run asynchy sync)")
    return lines + fixity_lines(data["fixity"])


def fixity_lines(fx: dict[str, Any], pad: int = 12) -> list[str]:
    """Checksums on record for the copied files, damaged EPNs, the last audit (docs/fixity.md)."""
    have, gaps = fx["files_with_checksum"], fx["files_without_checksum"]
    line = (
        f"{'fixity:':<{pad}}{have:,} of {plural(have + gaps, 'copied file')} with a source checksum"
    )
    if fx["damaged_epns"]:
        line += (
            f"; {plural(fx['damaged_epns'], 'EPN')} damaged (the next sync repairs from the source)"
        )
    audit = fx["last_audit"]
    if audit is None:
        done = f"{'last audit:':<{pad}}never (run asynchy audit)"
    else:
        done = (
            f"{'last audit:':<{pad}}{local_time(audit['finished_at'])}, {shown(audit['epn'])} "
            f"{audit['result']} ({plural(audit['files'], 'file')}, {human_bytes(audit['bytes'])})"
        )
    return [line, done]


def _pace(data: StatusReport) -> list[str]:
    """The rate while copying, and what is left at that rate."""
    t = data["throughput"]
    eta = data["eta_seconds"]
    if t["last_day_copying_seconds"]:
        lines = [
            f"throughput: {human_bytes(t['last_day_copying_bytes_per_second'])}/s while copying "
            f"(last day: {human_bytes(t['last_day_bytes'])} in "
            f"{human_seconds(t['last_day_copying_seconds'])})"
        ]
    else:
        lines = ["throughput: nothing copied in the last day"]
    if eta:
        lines.append(
            f"to go:      {human_seconds(eta)} of copying at that rate ({local_time(data['eta_at'])})"
        )
    else:
        lines.append(
            "to go:      "
            + ("nothing left to copy" if eta == 0 else "unknown (nothing copied in the last day)")
        )
    return lines


def _failures_and_claims(data: StatusReport, width: int | None) -> list[str]:
    lines = []
    for n, failure in enumerate(data["top_failures"]):
        label = "failures:  " if n == 0 else "           "
        lines.append(
            f"{label} {failure['epns']:>4}  {shown(failure['reason'] or failure['class'] or '?')}"[
                :width
            ]
        )
    for n, claim in enumerate(data["active_claims"]):
        label = "claims:    " if n == 0 else "           "
        lines.append(
            f"{label} {shown(claim['epn'])} by {claim['host']}:{claim['pid']} since {short_time(claim['claimed_at'])}, "
            f"lease until {short_time(claim['lease_until'])}"
        )
    return lines


def _wrapped(label: str, text: str, width: int | None, indent: int = 12) -> list[str]:
    """``label text`` under the status lines' indent, wrapped to the terminal (never cut)."""

    lead = " " * indent + label + " "
    if width is None:
        return [lead + text]
    return textwrap.wrap(
        text, width=max(40, width), initial_indent=lead, subsequent_indent=" " * len(lead)
    )


def _walk_line(walk: dict[str, Any]) -> str:
    took = human_seconds(walk["seconds"]) if walk["seconds"] is not None else "still running"
    return (
        f"{local_time(walk['started_at'])}, {took}, {walk['status']} "
        f"({plural(walk['epns_walked'], 'EPN')}, {plural(walk['errors'], 'error')})"
    )


EPN_COLUMNS = ["epn", "status", "size", "files", "modified", "attempts", "last_error"]


def epn_rows(items: list[dict[str, Any]], human: bool) -> list[tuple[Any, ...]]:
    return [
        tuple(human_bytes(item[c]) if (human and c == "size") else item[c] for c in EPN_COLUMNS)
        for item in items
    ]


def show(data: dict[str, Any], width: int | None = 80) -> str:
    e = data["epn"]
    lines = [
        f"EPN {shown(e['epn'])}: {e['status']}"
        + (f" ({shown(e['skip_reason'])})" if e.get("skip_reason") else "")
    ]
    lines.append(
        f"  inventory:   {plural(e['file_count'], 'file')}, {human_bytes(e['size'])}, newest file {local_time(e['modified'])}"
    )
    lines.append(
        f"  walked:      {local_time(e['walked_at'])}"
        + ("" if e["walk_complete"] else " (incomplete: see walk errors)")
    )
    lines.append(f"  destination: {shown(e['dest_path'] or '-')}")
    lines.append(
        f"  transfers:   {plural(e['attempts'], 'attempt')}, {plural(e['failures'], 'failure')} in a row, "
        f"{human_bytes(e['bytes_transferred'])} moved, completed {local_time(e['completed_at'])}"
    )
    if e["last_error"]:
        lines.append(f"  last error:  {shown(e['last_error'])}")
    if data.get("fixity"):
        lines += ["  " + x for x in fixity_lines(data["fixity"], pad=13)]
    if e["status"] == "running":
        lines.append(
            f"  claimed by:  {e['claim_owner']} since {local_time(e['claimed_at'])}, "
            f"lease until {local_time(e['lease_until'])}"
        )
    if data["transfers"]:
        rows = [
            (
                x["attempt"],
                local_time(x["started_at"]),
                human_seconds(x["seconds"] or 0),
                "" if x["exit_code"] is None else x["exit_code"],
                x["classification"],
                x["outcome"],
                human_bytes(x["bytes"]),
            )
            for x in data["transfers"]
        ]
        lines.append("")
        lines.append(
            table(
                ["#", "started", "took", "exit", "class", "outcome", "bytes"],
                rows,
                width=width,
                right={"#", "exit", "bytes"},
            )
        )
        for x in data["transfers"]:
            if x["reason"] or x["stderr_tail"]:
                lines.append(f"  attempt {x['attempt']}: {shown(x['reason'] or '')}")
                for line in (x["stderr_tail"] or "").strip().splitlines()[-5:]:
                    lines.append(f"    {shown(line)}"[:width])
    if data["walk_errors"]:
        lines.append("")
        lines.append("walk errors:")
        for err in data["walk_errors"]:
            lines.append(
                f"  {shown(err['path'] or '.')}: {shown(err['message'])} ({err['kind']})"[:width]
            )
    return "\n".join(lines)


# ------------------------------------------------------------------ workers
def workers_dict(row: Any) -> dict[str, Any]:
    return {
        "worker_id": row.worker_id,
        "host": row.host,
        "pid": row.pid,
        "command": row.command,
        "status": "stale" if row.stale else row.status,
        "started_at": row.started_at,
        "heartbeat_seconds_ago": row.heartbeat_seconds_ago,
        "lease_seconds": row.lease_seconds,
        "claims": [{"epn": epn, "lease_seconds_left": left} for epn, left in row.claims],
    }


def workers(rows: list[Any], width: int | None = 80) -> str:
    if not rows:
        return "no running workers"
    table_rows = []
    for r in rows:
        left = [x for _, x in r.claims if x is not None]
        table_rows.append(
            (
                r.worker_id,
                f"{r.host}:{r.pid}",
                "stale" if r.stale else r.status,
                "-"
                if r.heartbeat_seconds_ago is None
                else human_seconds(r.heartbeat_seconds_ago) + " ago",
                len(r.claims),
                "-"
                if not left
                else human_seconds(min(left))
                if min(left) >= 0
                else f"expired {human_seconds(-min(left))} ago",
            )
        )
    text = table(
        ["worker", "host:pid", "status", "heartbeat", "claims", "next lease end"],
        table_rows,
        width=width,
        right={"claims"},
    )
    detail = [
        f"  {r.worker_id}: {', '.join(shown(e) for e, _ in r.claims)}" for r in rows if r.claims
    ]
    return text + ("\n" + "\n".join(detail) if detail else "")


def merge_summary(data: dict[str, Any]) -> str:
    lines = [
        f"merged {plural(len(data['inputs']), 'input')} into a target of {plural(data['epns'], 'EPN')} "
        f"({data['epns_added']:,} new), "
        f"{plural(data['files_added'], 'file')} added, {data['files_updated']:,} updated, {data['files_removed']:,} removed; "
        f"{plural(data['epns_completed'], 'EPN')} completed, {data['epns_changed']:,} changed, "
        f"{plural(data['conflicts_resolved'], 'conflict')} resolved, {plural(data['transfers_added'], 'transfer')} added"
    ]
    lines += [f"  {shown(i['path'])}: {i['kind']}" for i in data["inputs"]]
    if data.get("legacy_timezone"):
        lines.append(f"  legacy local times read in {data['legacy_timezone']} (--legacy-timezone)")
    return "\n".join(lines)


def alert_preview(summary: Any, html_path: str | None) -> str:
    """``alert --dry-run``: who would get it, the text part as sent, and what the HTML part holds."""
    html = summary.html or ""
    to = ", ".join(summary.to) if getattr(summary, "to", None) else "(alert_to not set)"
    rows = html.count("<tr")
    where = f"written to {html_path}" if html_path else "--html FILE writes it"
    lines = [
        f"alert (dry run): {plural(len(summary.alerted), 'EPN')}, to {to}; nothing sent, nothing recorded",
        "",
        summary.text.rstrip("\n"),
        "",
        f"[HTML part: {len(html):,} characters, {rows} table rows; {where}]",
    ]
    return "\n".join(lines)


def alert_summary(data: dict[str, Any]) -> str:
    unmapped, alerted = len(data["unmapped"]), len(data["alerted"])
    damaged = data.get("damaged") or []
    verb = "alert sent naming" if data.get("sent") else "the alert would name"
    named = f"{verb} {plural(len(damaged), 'damaged EPN')}: " + ", ".join(
        shown(e) for e in damaged[:10]
    )
    if damaged and not alerted:
        return named
    if data.get("all_copied"):
        return f"no alert needed: {data['all_copied']}" if not damaged else named
    if not alerted:
        line = (
            f"no alert needed: {plural(unmapped, 'unmapped EPN')} on the server, all named in "
            "earlier alerts"
        )
        if not unmapped:
            line = "no alert needed: every EPN on the server has a destination mapping"
    else:
        line = (
            f"alert sent naming {plural(alerted, 'EPN')} ({unmapped:,} unmapped on the server, "
            f"{data['already_alerted']} named before): {', '.join(shown(e) for e in data['alerted'][:10])}"
            + (" ..." if alerted > 10 else "")
        )
    lines = [line]
    if data["refused_recipients"]:
        lines.append("  refused by the SMTP server: " + ", ".join(data["refused_recipients"]))
    lines += [f"  portal: {p}" for p in data["portal_errors"]]
    return "\n".join(lines)


# ------------------------------------------------------------------ reset, skip, verify
def changed(data: dict[str, Any], verb: str, to: str) -> str:
    """reset and skip: what was (or, in a dry run, would be) changed."""
    done = data["epns"]
    head = ("would " + ("reset" if verb == "reset" else "skip")) if data["dry_run"] else verb
    line = f"{head} {plural(len(done), 'EPN')}" + (f" {to}" if to else "")
    if data["dry_run"] and done:
        line += ": " + ", ".join(shown(e) for e in done[:20]) + (" ..." if len(done) > 20 else "")
    return line


def refusals(data: dict[str, Any], verb: str) -> list[str]:
    """reset and skip: the EPNs left as they were, and why (for stderr)."""
    return [f"  not {verb}: {shown(r['epn'])}: {r['reason']}" for r in data["refused"]]


def verified(data: dict[str, Any]) -> str:
    """verify: a line per copy that differs or could not be checked, then the counts."""
    lines = [f"differs: {shown(d['epn'])}: {shown(d['reason'])}" for d in data["differ"]]
    lines += [f"not verified: {shown(d['epn'])}: {d['reason']}" for d in data["not_verified"]]
    differ = len(data["differ"])
    line = f"verified {plural(data['checked'], 'EPN')}: {len(data['match']):,} match, {differ:,} differ"
    if differ:
        line += (
            f"; {'it is' if differ == 1 else 'they are'} now 'changed' and the next sync copies "
            f"{'it' if differ == 1 else 'them'} again"
        )
    return "\n".join([*lines, line])


def audited(data: dict[str, Any]) -> str:
    """audit: a line per damaged EPN, then the counts."""
    lines = [
        f"damaged: {shown(d['epn'])}: {damage_words(d['mismatched'], d['missing'])}: "
        + ", ".join(repr(shown(n)) for n in d["files"][:3])
        + (" ..." if len(d["files"]) > 3 else "")
        for d in data["audits"]
        if d["result"] == "damaged"
    ]
    rate = data["bytes"] / data["elapsed"] if data["elapsed"] > 0 else 0.0
    line = (
        f"audit finished: {plural(len(data['audits']), 'EPN')}, {plural(data['files'], 'file')}, "
        f"{human_bytes(data['bytes'])} read in {data['elapsed']:.1f} s ({human_bytes(rate)}/s); "
        f"{len(lines):,} damaged"
    )
    if data["stopped"]:
        line += f"; stopped: {data['stopped']} (the next audit goes on from there)"
    if lines:
        line += "; `asynchy sync` repairs damaged files from the source while it still has them"
    return "\n".join([*lines, line])


def cycle_line(c: CycleSummary) -> str:
    """The one line each cycle logs."""
    parts = [
        f"watch cycle {c.number}: walked {plural(c.walked, 'EPN')} ({c.new:,} new, "
        f"{c.changed:,} changed"
        + (f", {plural(c.walk_errors, 'error')})" if c.walk_errors else ")"),
        f"alerted {c.alerted}",
        f"copied {c.complete} ({human_bytes(c.bytes)}), {c.failed} failed",
        f"{c.waiting} settling",
    ]
    if c.audited_bytes is not None:
        parts.append(
            f"audited {human_bytes(c.audited_bytes)}"
            + (f", damaged: {', '.join(shown(x) for x in c.damaged)}" if c.damaged else "")
        )
    parts.append(f"in {c.elapsed:.1f} s")
    if c.not_taken:
        parts.append("not taken: " + ", ".join(f"{n} {why}" for why, n in c.not_taken.items()))
    line = "; ".join(parts)
    if c.problems:
        line += "; problems: " + " | ".join(c.problems)
    if c.interrupted:
        line += "; interrupted"
    elif c.next_at is not None:
        line += f"; next at {c.next_at.astimezone().strftime('%H:%M:%S')}"
    return line
