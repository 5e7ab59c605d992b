"""reporting: epns.skip_reason and the views v_epn_progress, v_status_summary, v_failures, v_daily_transfers

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 18:10:00
"""

from alembic import op
import sqlalchemy as sa

from asynchy import views

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("epns", schema=None) as batch_op:
        batch_op.add_column(sa.Column("skip_reason", sa.Text(), nullable=True))
    for statement in views.create_sql(op.get_bind().dialect.name, views.VIEWS_0003):
        op.execute(statement)


def downgrade() -> None:
    for statement in views.drop_sql(views.VIEWS_0003):
        op.execute(statement)
    with op.batch_alter_table("epns", schema=None) as batch_op:
        batch_op.drop_column("skip_reason")
