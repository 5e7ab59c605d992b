"""watch and alerts: visits (the facility portal's visits, cached) and alerts (EPNs named in sent alerts)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25 20:30:00
"""

from alembic import op
import sqlalchemy as sa

import asynchy.models

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "visits",
        sa.Column("epn", sa.Text(), nullable=False),
        sa.Column("equipment_id", sa.Text(), nullable=False),
        sa.Column("start_time", asynchy.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("end_time", asynchy.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("principal_first_names", sa.Text(), nullable=True),
        sa.Column("principal_last_name", sa.Text(), nullable=True),
        sa.Column("principal_email", sa.Text(), nullable=True),
        sa.Column("data_scientists", sa.JSON(), nullable=False),
        sa.Column("fetched_at", asynchy.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("epn", name=op.f("pk_visits")),
    )
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("epn", sa.Text(), nullable=False),
        sa.Column("sent_at", asynchy.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("recipients", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alerts")),
    )
    op.create_index("ix_alerts_epn_sent_at", "alerts", ["epn", "sent_at"])


def downgrade() -> None:
    op.drop_index("ix_alerts_epn_sent_at", table_name="alerts")
    op.drop_table("alerts")
    op.drop_table("visits")
