"""fixity: the tables checksums (a source-side checksum per regular file) and audits, the view v_fixity_gaps

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
        sa.Column("audited_at", asynchy.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("damage", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["epn"], ["epns.epn"], name=op.f("fk_checksums_epn_epns"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("epn", "path", name=op.f("pk_checksums")),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "audits",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("epn", sa.Text(), nullable=False),
        sa.Column("started_at", asynchy.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", asynchy.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("files", sa.Integer(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("mismatched", sa.Integer(), nullable=False),
        sa.Column("missing", sa.Integer(), nullable=False),
        sa.Column("unexpected", sa.Integer(), nullable=True),
        sa.Column("result", sa.Text(), nullable=False),
        sa.Column("resume_after", sa.Text(), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("alerted_at", asynchy.models.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["epn"], ["epns.epn"], name=op.f("fk_audits_epn_epns"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audits")),
    )
    op.create_index(
        op.f("ix_audits_epn_finished_at"), "audits", ["epn", "finished_at"], unique=False
    )
    for statement in views.create_sql(op.get_bind().dialect.name, views.ADDED_0009):
        op.execute(statement)


def downgrade() -> None:
    for statement in views.drop_sql(views.ADDED_0009):
        op.execute(statement)
    op.drop_index(op.f("ix_audits_epn_finished_at"), table_name="audits")
    op.drop_table("audits")
    op.drop_table("checksums")
