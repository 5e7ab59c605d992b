"""failure model: epns.not_before (a failed EPN waits until then: back-off over runs)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 01:10:00
"""

from alembic import op
import sqlalchemy as sa

import asynchy.models

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("epns", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("not_before", asynchy.models.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("epns", schema=None) as batch_op:
        batch_op.drop_column("not_before")
