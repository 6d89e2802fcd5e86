"""Least-privilege PostgreSQL roles regsearch_api and regsearch_worker (a no-op on SQLite).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25

The roles and their table-by-table grants are declared in service/migrations/roles.py; ``regsearch
migrate`` re-applies the grants after every migration (Optuna's tables are created after this runs on
a fresh database). The downgrade revokes this database's grants and keeps the roles, which are
cluster-wide.
"""

from alembic import op

from service.migrations import roles

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    connection = op.get_bind()
    if connection.dialect.name != "postgresql":
        return
    roles.create_roles(connection)
    roles.apply_grants(connection)


def downgrade() -> None:
    roles.revoke_grants(op.get_bind())
