"""Owners: every token acts for a user, every study belongs to the owner of the token that created it.

Existing tokens and studies get the admin's owner ("admin"): every existing token keeps acting on every
existing study, as before owners.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

ADMIN_OWNER = "admin"  # service.models.ADMIN_OWNER, frozen as this revision wrote it


def upgrade() -> None:
    for table in ("regsearch_tokens", "regsearch_studies"):
        op.add_column(table, sa.Column("owner", sa.String(64), nullable=False, server_default=ADMIN_OWNER))
    op.create_index("ix_regsearch_studies_owner", "regsearch_studies", ["owner"])


def downgrade() -> None:
    op.drop_index("ix_regsearch_studies_owner", table_name="regsearch_studies")
    for table in ("regsearch_studies", "regsearch_tokens"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("owner")
