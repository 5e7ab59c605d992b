"""sync: transfer state on epns, the transfers history and the workers table

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 17:29:26.671202
"""

from alembic import op
import sqlalchemy as sa
import asynchy.models


revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("worker_id", sa.Text(), nullable=False),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("command", sa.Text(), nullable=False),
        sa.Column("started_at", asynchy.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", asynchy.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", asynchy.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("status", sa.Text(), server_default=sa.text("'running'"), nullable=False),
        sa.PrimaryKeyConstraint("worker_id", name=op.f("pk_workers")),
    )
    op.create_table(
        "transfers",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("epn", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("started_at", asynchy.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", asynchy.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("worker_id", sa.Text(), nullable=False),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("claim_token", sa.BigInteger(), nullable=False),
        sa.Column("argv", sa.JSON(), nullable=False),
        sa.Column("dest", sa.Text(), nullable=False),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("classification", sa.Text(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column(
            "bytes_transferred", sa.BigInteger(), server_default=sa.text("0"), nullable=False
        ),
        sa.Column("files_transferred", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("stdout_tail", sa.Text(), nullable=True),
        sa.Column("stderr_tail", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["epn"], ["epns.epn"], name=op.f("fk_transfers_epn_epns"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_transfers")),
    )
    with op.batch_alter_table("transfers", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_transfers_epn"), ["epn"], unique=False)
        batch_op.create_index(batch_op.f("ix_transfers_finished_at"), ["finished_at"], unique=False)

    with op.batch_alter_table("epns", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
        batch_op.add_column(
            sa.Column("failures", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
        batch_op.add_column(sa.Column("last_exit_code", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("last_error", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("last_error_class", sa.Text(), nullable=True))
        batch_op.add_column(
            sa.Column(
                "bytes_transferred", sa.BigInteger(), server_default=sa.text("0"), nullable=False
            )
        )
        batch_op.add_column(
            sa.Column("completed_at", asynchy.models.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("dest_path", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("claim_owner", sa.Text(), nullable=True))
        batch_op.add_column(
            sa.Column("claim_token", sa.BigInteger(), server_default=sa.text("0"), nullable=False)
        )
        batch_op.add_column(
            sa.Column("claimed_at", asynchy.models.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("lease_until", asynchy.models.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("claimed_from", sa.Text(), nullable=True))
        batch_op.create_index(batch_op.f("ix_epns_claim_owner"), ["claim_owner"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("epns", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_epns_claim_owner"))
        batch_op.drop_column("claimed_from")
        batch_op.drop_column("lease_until")
        batch_op.drop_column("claimed_at")
        batch_op.drop_column("claim_token")
        batch_op.drop_column("claim_owner")
        batch_op.drop_column("dest_path")
        batch_op.drop_column("completed_at")
        batch_op.drop_column("bytes_transferred")
        batch_op.drop_column("last_error_class")
        batch_op.drop_column("last_error")
        batch_op.drop_column("last_exit_code")
        batch_op.drop_column("failures")
        batch_op.drop_column("attempts")

    with op.batch_alter_table("transfers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_transfers_finished_at"))
        batch_op.drop_index(batch_op.f("ix_transfers_epn"))

    op.drop_table("transfers")
    op.drop_table("workers")
