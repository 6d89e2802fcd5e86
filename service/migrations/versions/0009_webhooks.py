"""Webhooks: the URLs owners register, and the outbox of their deliveries (issue 20).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "regsearch_webhooks",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("url", sa.String(2000), nullable=False),
        sa.Column("events", sa.JSON, nullable=False),
        sa.Column("study_id", sa.Integer, sa.ForeignKey("regsearch_studies.id", ondelete="CASCADE")),
        sa.Column("secret", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_regsearch_webhooks_owner", "regsearch_webhooks", ["owner"])
    op.create_index("ix_regsearch_webhooks_study_id", "regsearch_webhooks", ["study_id"])
    op.create_table(
        "regsearch_webhook_deliveries",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("hook_id", sa.Integer, sa.ForeignKey("regsearch_webhooks.id", ondelete="CASCADE"), nullable=False),
        sa.Column("study_id", sa.Integer, sa.ForeignKey("regsearch_studies.id", ondelete="CASCADE"), nullable=False),
        sa.Column("event", sa.String(16), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_status_code", sa.Integer),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_regsearch_webhook_deliveries_hook_id", "regsearch_webhook_deliveries", ["hook_id"])
    op.create_index("ix_regsearch_webhook_deliveries_study_id", "regsearch_webhook_deliveries", ["study_id"])
    op.create_index("ix_regsearch_webhook_deliveries_due", "regsearch_webhook_deliveries", ["status", "next_attempt_at"])


def downgrade() -> None:
    op.drop_table("regsearch_webhook_deliveries")
    op.drop_table("regsearch_webhooks")
