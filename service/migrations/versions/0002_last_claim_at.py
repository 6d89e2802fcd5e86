"""Record when a study's last trial slot was claimed, so leaked slots can be reclaimed safely.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("regsearch_studies", sa.Column("last_claim_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    with op.batch_alter_table("regsearch_studies") as batch:
        batch.drop_column("last_claim_at")
