"""fixity: the checksums table (a source-side checksum per regular file) and the view v_fixity_gaps

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 17:00:00
"""

from alembic import op
import sqlalchemy as sa

import asynchy.models
from asynchy import views

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "checksums",
        sa.Column("epn", sa.Text(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("algo", sa.Text(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("modified", asynchy.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("obtained", sa.Text(), nullable=False),
        sa.Column("recorded_at", asynchy.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["epn"], ["epns.epn"], name=op.f("fk_checksums_epn_epns"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("epn", "path", name=op.f("pk_checksums")),
        sqlite_with_rowid=False,
    )
    for statement in views.create_sql(op.get_bind().dialect.name, views.ADDED_0009):
        op.execute(statement)


def downgrade() -> None:
    for statement in views.drop_sql(views.ADDED_0009):
        op.execute(statement)
    op.drop_table("checksums")
