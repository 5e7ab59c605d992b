"""inventory: epns, files, walks, walk_errors (the first schema of asynchy)

Revision ID: 0001
Revises:
Create Date: 2026-11-25 16:58:24.360217
"""

from alembic import op
import sqlalchemy as sa
import asynchy.models


revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "walks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("started_at", asynchy.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", asynchy.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("status", sa.Text(), server_default=sa.text("'running'"), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("epns_total", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("epns_walked", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("epns_skipped", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("epns_changed", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("files", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("bytes", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("errors", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("reconnects", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_walks")),
    )
    op.create_table(
        "epns",
        sa.Column("epn", sa.Text(), nullable=False),
        sa.Column("size", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("file_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("modified", asynchy.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("walked_at", asynchy.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("walk_id", sa.Integer(), nullable=True),
        sa.Column("walk_complete", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("walk_error_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("status", sa.Text(), server_default=sa.text("'pending'"), nullable=False),
        sa.Column("changed_at", asynchy.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("first_seen_at", asynchy.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["walk_id"], ["walks.id"], name=op.f("fk_epns_walk_id_walks"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("epn", name=op.f("pk_epns")),
    )
    with op.batch_alter_table("epns", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_epns_status_modified"), ["status", "modified"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_epns_walk_id"), ["walk_id"], unique=False)

    op.create_table(
        "walk_errors",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("walk_id", sa.Integer(), nullable=False),
        sa.Column("epn", sa.Text(), nullable=True),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("at", asynchy.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["walk_id"], ["walks.id"], name=op.f("fk_walk_errors_walk_id_walks"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_walk_errors")),
    )
    with op.batch_alter_table("walk_errors", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_walk_errors_epn"), ["epn"], unique=False)
        batch_op.create_index(batch_op.f("ix_walk_errors_walk_id"), ["walk_id"], unique=False)

    op.create_table(
        "files",
        sa.Column("epn", sa.Text(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("modified", asynchy.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.Text(), server_default=sa.text("'file'"), nullable=False),
        sa.ForeignKeyConstraint(
            ["epn"], ["epns.epn"], name=op.f("fk_files_epn_epns"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("epn", "path", name=op.f("pk_files")),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    op.drop_table("files")
    with op.batch_alter_table("walk_errors", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_walk_errors_walk_id"))
        batch_op.drop_index(batch_op.f("ix_walk_errors_epn"))

    op.drop_table("walk_errors")
    with op.batch_alter_table("epns", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_epns_walk_id"))
        batch_op.drop_index(batch_op.f("ix_epns_status_modified"))

    op.drop_table("epns")
    op.drop_table("walks")
