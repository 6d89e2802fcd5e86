"""DRAFT, not yet a migration: least-privilege PostgreSQL roles (issue 12, item 4).

Kept out of service/migrations/versions/ until the tokens migration "0003" (issue 9) is merged, so
that ``alembic upgrade head`` keeps working on every branch meanwhile. To activate: move this file to
service/migrations/versions/0004_roles.py and write the tests (a worker running as
``regsearch_worker`` completes a study; the same role is refused SELECT on regsearch_tokens,
DROP TABLE and DELETE FROM regsearch_studies).

Three NOLOGIN group roles; operators create the login users and grant them membership (passwords never
live in a migration)::

    CREATE ROLE worker_login LOGIN PASSWORD '...' IN ROLE regsearch_worker;

* ``regsearch_migrator`` owns the schema: the migration Job connects as a member (DDL).
* ``regsearch_api``: reads and writes every service table, tokens included; no DDL.
* ``regsearch_worker``: reads the studies, writes trials (Optuna's trial tables, heartbeats), moves
  its study's counters and status, appends best configs; no DELETE anywhere, no tokens, no DDL.

Grants are per table (not ALL TABLES), so a table added later is closed to the worker until a
migration opens it. Optuna's tables need the worker's grants for ``study.optimize`` (RDBStorage
inserts trials, params, values, intermediate values, attributes and heartbeats; it deletes nothing
during a trial). Worker column grants on regsearch_studies list exactly what service/studies.py
updates (``id`` for the ``SET id = id`` row lock).
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

ROLES = ("regsearch_migrator", "regsearch_api", "regsearch_worker")

OPTUNA_READ = (
    "studies", "study_directions", "study_user_attributes", "study_system_attributes", "version_info", "alembic_version",
)
OPTUNA_TRIAL_TABLES = (
    "trials", "trial_params", "trial_values", "trial_intermediate_values", "trial_user_attributes",
    "trial_system_attributes", "trial_heartbeats",
)
SERVICE_TABLES = ("regsearch_studies", "regsearch_best_configs", "regsearch_alembic_version")
TOKENS_TABLE = "regsearch_tokens"
WORKER_STUDY_COLUMNS = ("id", "status", "claimed", "claims_total", "failed_trials", "error", "started_at", "last_claim_at", "finished_at")


def _create_role(name: str) -> str:
    return f"DO $$ BEGIN CREATE ROLE {name} NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite has no roles: the embedded mode is one process owner
    for role in ROLES:
        op.execute(_create_role(role))
    every_table = (*OPTUNA_READ, *OPTUNA_TRIAL_TABLES, *SERVICE_TABLES, TOKENS_TABLE)
    op.execute("GRANT USAGE ON SCHEMA public TO regsearch_api, regsearch_worker")
    op.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    op.execute("GRANT CREATE, USAGE ON SCHEMA public TO regsearch_migrator")

    # API: data, not schema. Deleting a study deletes its Optuna rows too.
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {', '.join(every_table)} TO regsearch_api")
    op.execute("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO regsearch_api")

    # Worker: the least a trial needs.
    op.execute(f"GRANT SELECT ON {', '.join((*OPTUNA_READ, *OPTUNA_TRIAL_TABLES, *SERVICE_TABLES))} TO regsearch_worker")
    op.execute(f"GRANT INSERT, UPDATE ON {', '.join((*OPTUNA_TRIAL_TABLES, 'study_system_attributes'))} TO regsearch_worker")
    op.execute(f"GRANT UPDATE ({', '.join(WORKER_STUDY_COLUMNS)}) ON regsearch_studies TO regsearch_worker")
    # Optuna locks the study row (SELECT ... FOR UPDATE) when it creates a trial; PostgreSQL asks for
    # UPDATE on at least one column for that. The key column alone: the lock, nothing else to change.
    op.execute("GRANT UPDATE (study_id) ON studies TO regsearch_worker")
    op.execute("GRANT INSERT ON regsearch_best_configs TO regsearch_worker")
    op.execute("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO regsearch_worker")
    op.execute(f"REVOKE ALL ON {TOKENS_TABLE} FROM regsearch_worker")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for role in ROLES:
        op.execute(f"DO $$ BEGIN REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}; "
                   f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {role}; REVOKE ALL ON SCHEMA public FROM {role}; "
                   f"DROP ROLE {role}; EXCEPTION WHEN undefined_object THEN NULL; END $$")
    op.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
