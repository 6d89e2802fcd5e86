"""The service's tables: study specs and status, best-config history.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "regsearch_studies",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("n_trials", sa.Integer, nullable=False),
        sa.Column("claimed", sa.Integer, nullable=False),
        sa.Column("claims_total", sa.Integer, nullable=False),
        sa.Column("failed_trials", sa.Integer, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("claimed >= 0 AND claimed <= n_trials", name="ck_regsearch_studies_claimed"),
    )
    op.create_index("ix_regsearch_studies_status", "regsearch_studies", ["status"])
    op.create_table(
        "regsearch_best_configs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "study_id", sa.Integer, sa.ForeignKey("regsearch_studies.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("trial_number", sa.Integer, nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("train_size", sa.Integer),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_regsearch_best_configs_study_id", "regsearch_best_configs", ["study_id"])


def downgrade() -> None:
    op.drop_table("regsearch_best_configs")
    op.drop_table("regsearch_studies")
