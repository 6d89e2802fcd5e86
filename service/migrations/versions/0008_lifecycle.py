"""A study's lifecycle: budgets, the rule that ended its search, and the confirmation stage's open flag.

``max_runtime_s`` and ``max_trial_hours`` mirror the spec's budgets (read fresh by the workers, changed by
PATCH); ``search_ended_by`` says which rule ended the search (n_trials, a budget or a stopping rule);
``confirm_open`` is false while a confirmation plan is being enqueued (no slot can be claimed).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("regsearch_studies", sa.Column("max_runtime_s", sa.Float()))
    op.add_column("regsearch_studies", sa.Column("max_trial_hours", sa.Float()))
    op.add_column("regsearch_studies", sa.Column("search_ended_by", sa.String(32)))
    op.add_column("regsearch_studies", sa.Column("confirm_open", sa.Boolean(), nullable=False, server_default=sa.true()))
    # A plan being enqueued was marked by confirm_trials = 0 while confirming.
    op.execute("UPDATE regsearch_studies SET confirm_open = false WHERE status = 'confirming' AND confirm_trials = 0")
    # A study past its search ended it by its n_trials (the only rule there was).
    op.execute("UPDATE regsearch_studies SET search_ended_by = 'n_trials' WHERE status IN ('confirming', 'completed')")


def downgrade() -> None:
    with op.batch_alter_table("regsearch_studies") as batch:
        for column in ("confirm_open", "search_ended_by", "max_trial_hours", "max_runtime_s"):
            batch.drop_column(column)
