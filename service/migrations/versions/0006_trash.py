"""Deletes are recoverable: a deleted study keeps its row (and trials, best and models) in the trash.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("regsearch_studies", sa.Column("deleted_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    with op.batch_alter_table("regsearch_studies") as batch:
        batch.drop_column("deleted_at")
