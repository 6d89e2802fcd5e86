"""The confirmation stage: its trial slots, and the best's statistics with each best-config row.

``confirm_trials`` is the number of confirmation trials a study planned when its search ended (0
before, and with confirmation off): they take slots of their own on top of ``n_trials``, so the
slot check becomes ``claimed <= n_trials + confirm_trials``. ``summary`` holds the best's mean,
interval, ties and robust ranges (:class:`service.confirmation.Confirmation`) on best-config rows.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("regsearch_studies") as batch:
        batch.add_column(sa.Column("confirm_trials", sa.Integer, nullable=False, server_default="0"))
        batch.drop_constraint("ck_regsearch_studies_claimed", type_="check")
        batch.create_check_constraint("ck_regsearch_studies_claimed", "claimed >= 0 AND claimed <= n_trials + confirm_trials")
    op.add_column("regsearch_best_configs", sa.Column("summary", sa.JSON))


def downgrade() -> None:
    with op.batch_alter_table("regsearch_best_configs") as batch:
        batch.drop_column("summary")
    with op.batch_alter_table("regsearch_studies") as batch:
        batch.drop_constraint("ck_regsearch_studies_claimed", type_="check")
        batch.create_check_constraint("ck_regsearch_studies_claimed", "claimed >= 0 AND claimed <= n_trials")
        batch.drop_column("confirm_trials")
