"""API tokens: hashed, scoped (read < write < admin), revocable.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "regsearch_tokens",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("scope", sa.String(8), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True)),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("scope IN ('read', 'write', 'admin')", name="ck_regsearch_tokens_scope"),
        sa.UniqueConstraint("name", name="uq_regsearch_tokens_name"),
        sa.UniqueConstraint("token_hash", name="uq_regsearch_tokens_token_hash"),
    )


def downgrade() -> None:
    op.drop_table("regsearch_tokens")
