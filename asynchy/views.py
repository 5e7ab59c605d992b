"""SQL views that make the common questions one-liners (documented in docs/reporting.md).

Each schema revision that changes a view gets a new, frozen constant here, and
its alembic migration uses that constant; ``CURRENT`` is what a new database
gets.  The SQL differs between SQLite and PostgreSQL only where dates are
concerned.
"""

from __future__ import annotations

from collections.abc import Mapping

_EPN_PROGRESS = """
CREATE VIEW v_epn_progress AS
SELECT epn, status, size, file_count, modified, walked_at, completed_at, dest_path,
       CASE WHEN status = 'complete' THEN size ELSE 0 END AS done_bytes,
       CASE WHEN status IN ('complete', 'skipped') THEN 0 ELSE size END AS remaining_bytes,
       attempts, failures, last_error_class, last_error
FROM epns
"""

_STATUS_SUMMARY = """
CREATE VIEW v_status_summary AS
SELECT status, count(*) AS epns, coalesce(sum(size), 0) AS bytes, coalesce(sum(file_count), 0) AS files
FROM epns GROUP BY status
"""

_FAILURES = """
CREATE VIEW v_failures AS
SELECT e.epn, e.status, e.failures, e.attempts, e.last_exit_code, e.last_error_class, e.last_error,
       (SELECT max(t.finished_at) FROM transfers t WHERE t.epn = e.epn) AS last_attempt_at
FROM epns e
WHERE e.status IN ('failed', 'quarantined') OR (e.status = 'changed' AND e.last_error IS NOT NULL)
"""

_DAILY = {
    "sqlite": """
CREATE VIEW v_daily_transfers AS
SELECT date(finished_at) AS day,
       count(*) AS attempts,
       sum(CASE WHEN outcome = 'complete' THEN 1 ELSE 0 END) AS epns_completed,
       sum(CASE WHEN outcome IN ('failed', 'quarantined') THEN 1 ELSE 0 END) AS failures,
       coalesce(sum(bytes_transferred), 0) AS bytes_transferred
FROM transfers GROUP BY date(finished_at)
""",
    "postgresql": """
CREATE VIEW v_daily_transfers AS
SELECT CAST(finished_at AT TIME ZONE 'UTC' AS date) AS day,
       count(*) AS attempts,
       sum(CASE WHEN outcome = 'complete' THEN 1 ELSE 0 END) AS epns_completed,
       sum(CASE WHEN outcome IN ('failed', 'quarantined') THEN 1 ELSE 0 END) AS failures,
       coalesce(sum(bytes_transferred), 0) AS bytes_transferred
FROM transfers GROUP BY CAST(finished_at AT TIME ZONE 'UTC' AS date)
""",
}


def _for(dialect: str) -> dict[str, str]:
    return {
        "v_epn_progress": _EPN_PROGRESS,
        "v_status_summary": _STATUS_SUMMARY,
        "v_failures": _FAILURES,
        "v_daily_transfers": _DAILY["postgresql" if dialect == "postgresql" else "sqlite"],
    }


# Revision 0003 (frozen: later revisions add new constants, never edit this one).
VIEWS_0003: Mapping[str, Mapping[str, str]] = {
    "sqlite": _for("sqlite"),
    "postgresql": _for("postgresql"),
}

# Revision 0009: complete EPNs with regular files that have no current checksum (docs/fixity.md).
_FIXITY_GAPS = """
CREATE VIEW v_fixity_gaps AS
SELECT f.epn, e.status, count(*) AS files_without_checksum,
       coalesce(sum(f.size), 0) AS bytes_without_checksum
FROM files f
JOIN epns e ON e.epn = f.epn
LEFT JOIN checksums c
       ON c.epn = f.epn AND c.path = f.path AND c.size = f.size AND c.modified = f.modified
WHERE f.kind = 'file' AND e.status = 'complete' AND c.epn IS NULL
GROUP BY f.epn, e.status
"""
ADDED_0009: Mapping[str, Mapping[str, str]] = {
    "sqlite": {"v_fixity_gaps": _FIXITY_GAPS},
    "postgresql": {"v_fixity_gaps": _FIXITY_GAPS},
}
VIEWS_0009: Mapping[str, Mapping[str, str]] = {
    d: {**VIEWS_0003[d], **ADDED_0009[d]} for d in ("sqlite", "postgresql")
}
CURRENT = VIEWS_0009


def create_sql(dialect: str, views: Mapping[str, Mapping[str, str]] = CURRENT) -> list[str]:
    return [
        sql.strip() for sql in views["postgresql" if dialect == "postgresql" else "sqlite"].values()
    ]


def drop_sql(views: Mapping[str, Mapping[str, str]] = CURRENT) -> list[str]:
    return [f"DROP VIEW IF EXISTS {name}" for name in views["sqlite"]]
