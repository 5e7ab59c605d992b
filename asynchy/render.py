"""Turning results into text for people (and JSON for scripts)."""

from __future__ import annotations

import json
from typing import Any

UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(n: float) -> str:
    value = float(n)
    for unit in UNITS:
        if abs(value) < 1024 or unit == UNITS[-1]:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_seconds(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s"
    minutes, sec = divmod(round(s), 60)
    if minutes < 60:
        return f"{minutes} min {sec} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def walk_summary(summary: dict[str, Any]) -> str:
    parts = [
        f"walk {summary['status']}: {summary['epns_walked']} EPNs walked",
    ]
    if summary["epns_skipped"]:
        parts.append(f"{summary['epns_skipped']} already walked")
    if summary["epns_changed"]:
        parts.append(f"{summary['epns_changed']} changed")
    parts.append(f"{summary['files']:,} files")
    parts.append(human_bytes(summary["bytes"]))
    parts.append(f"{summary['errors']} errors")
    if summary["reconnects"]:
        parts.append(f"{summary['reconnects']} reconnects")
    line = ", ".join(parts) + f" in {human_seconds(summary['elapsed_seconds'])}"
    lines = [line]
    if summary["epns_gone"]:
        lines.append(
            f"note: {summary['epns_gone']} EPNs in the database were not found on the source"
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


def as_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False, default=str)


def shown(text: str) -> str:
    """A stored name made safe for one line of a terminal: control characters escaped."""
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text
    )


def sync_summary(summary: dict[str, Any]) -> str:
    elapsed = summary["elapsed_seconds"]
    if summary["dry_run"]:
        changes = summary["would_change"]
        lines = [
            f"sync dry run: {len(changes)} EPNs checked, {sum(changes.values()):,} items would be transferred, "
            f"{len(summary['failed'])} failed in {human_seconds(elapsed)}"
        ]
        lines += [f"  {shown(epn)}: {n:,} items" for epn, n in changes.items()]
    else:
        state = "interrupted" if summary["interrupted"] else "finished"
        rate = human_bytes(summary["bytes_per_second"]) + "/s"
        lines = [
            f"sync {state}: {len(summary['complete'])} EPNs complete, {len(summary['failed'])} failed, "
            f"{len(summary['skipped'])} skipped, {len(summary['cancelled'])} cancelled, "
            f"{human_bytes(summary['bytes'])} in {human_seconds(elapsed)} ({rate})"
        ]
    for failure in summary["failed"]:
        lines.append(f"  {failure['outcome']}: {shown(failure['epn'])}: {shown(failure['reason'])}")
    for epn, why in summary["skipped"].items():
        lines.append(f"  skipped: {shown(epn)}: {why}")
    return "\n".join(lines)
