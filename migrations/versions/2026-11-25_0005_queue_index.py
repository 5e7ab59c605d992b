"""multi-host: ix_epns_queue, a partial index on (modified, epn) of the EPNs sync may claim

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 19:00:00
"""

from alembic import op
import sqlalchemy as sa

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

CONDITION = "status IN ('pending', 'changed', 'failed', 'running')"


def upgrade() -> None:
    op.create_index(
        "ix_epns_queue",
        "epns",
        ["modified", "epn"],
        postgresql_where=sa.text(CONDITION),
        sqlite_where=sa.text(CONDITION),
    )


def downgrade() -> None:
    op.drop_index("ix_epns_queue", table_name="epns")
