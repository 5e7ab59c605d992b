"""multi-host: workers.lease_seconds (how long a silent worker is presumed alive)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 18:40:00
"""

from alembic import op
import sqlalchemy as sa

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lease_seconds", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.drop_column("lease_seconds")
