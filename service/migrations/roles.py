"""Least-privilege PostgreSQL roles: what the API and a worker may do, table by table, declared once.

Two NOLOGIN group roles, created by migration 0004; operators log in as them or as members
(``CREATE ROLE ... LOGIN PASSWORD '...' IN ROLE regsearch_worker``; docs/kubernetes.md, "Database roles"):

* ``regsearch_api`` reads and writes the rows of every table (the API creates, stops and deletes
  studies and keeps the tokens), and changes no schema.
* ``regsearch_worker`` does what a worker does: reads the studies, runs trials in Optuna's trial
  tables, moves its study's counters and status, appends best configs. It cannot read the tokens,
  delete anything, or change the schema.

The migrations (``regsearch migrate``) run as the tables' owner, the only role with DDL. Every table
of the service's and Optuna's metadata is classified in :data:`WORKER_PRIVILEGES`
(tests/deploy/test_deploy_roles.py fails on one that is not), and :func:`apply_grants` re-applies the
whole table after every migration, so Optuna's tables (created after Alembic's history) and any table
added later get exactly the declared grants. PostgreSQL only: SQLite has no roles.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa

from service._rdb import WORKER_PRIVILEGES as OPTUNA_WORKER_PRIVILEGES

__all__ = ["API_PRIVILEGES", "API_ROLE", "ROLES", "WORKER_PRIVILEGES", "WORKER_ROLE", "apply_grants", "create_roles"]

log = logging.getLogger(__name__)

API_ROLE = "regsearch_api"
WORKER_ROLE = "regsearch_worker"
ROLES = (API_ROLE, WORKER_ROLE)

_READ = ("SELECT",)
#: table -> the privileges of the worker role on it (empty: none at all).
WORKER_PRIVILEGES: dict[str, tuple[str, ...]] = {
    # Optuna's tables: read its studies, run trials (named in service._rdb, their one owner).
    **OPTUNA_WORKER_PRIVILEGES,
    # The service's tables: claims and statuses, best configs appended (the leader's row keeps its mean
    # and statistics up to date while the confirmation stage runs: migration 0005); never the tokens.
    "regsearch_studies": ("SELECT", "UPDATE"),
    "regsearch_best_configs": ("SELECT", "INSERT", "UPDATE"),
    "regsearch_alembic_version": _READ,
    "regsearch_tokens": (),
    # Webhooks: a worker reads the hooks (their URL and secret, to sign), writes the outbox of the events it
    # causes (completed, failed, new_best) and records each attempt; registering and removing is the API's.
    "regsearch_webhooks": _READ,
    "regsearch_webhook_deliveries": ("SELECT", "INSERT", "UPDATE"),
}
#: The API's privileges on every table: rows, never schema.
API_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")


def create_roles(connection: sa.Connection) -> None:
    """Create the NOLOGIN group roles if missing (roles are cluster-wide: several databases share them).

    A migrator without CREATEROLE (a managed database) skips this with a notice; an administrator then
    creates the roles once (docs/kubernetes.md) and the next migration grants to them.
    """
    for role in ROLES:
        connection.execute(sa.text(
            f"DO $$ BEGIN CREATE ROLE {role} NOLOGIN; "
            "EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; "
            f"WHEN insufficient_privilege THEN RAISE NOTICE 'cannot create role {role}: create it as an administrator'; END $$"
        ))


def apply_grants(connection: sa.Connection) -> bool:
    """Grant each role exactly its declared privileges on the tables that exist; True if it did.

    Only the tables' owner may grant: a process logged in as one of the roles (``migrate_on_start``
    with a role's URL) skips this silently.
    """
    if connection.dialect.name != "postgresql":
        return False
    owner = connection.execute(sa.text(
        "SELECT pg_has_role(current_user, tableowner, 'USAGE') FROM pg_tables "
        "WHERE schemaname = current_schema() AND tablename = 'regsearch_studies'"
    )).scalar()
    if not owner:
        return False
    roles = set(connection.execute(sa.text("SELECT rolname FROM pg_roles WHERE rolname = ANY(:roles)"),
                                   {"roles": list(ROLES)}).scalars())
    if not roles:
        log.warning("roles %s do not exist: no grants applied (docs/kubernetes.md, \"Database roles\")", ", ".join(ROLES))
        return False
    tables = set(connection.execute(sa.text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")).scalars())
    quote = connection.dialect.identifier_preparer.quote
    schema = quote(connection.execute(sa.text("SELECT current_schema()")).scalar_one())
    if schema == "public":
        connection.execute(sa.text("REVOKE CREATE ON SCHEMA public FROM PUBLIC"))  # the default since PostgreSQL 15
    connection.execute(sa.text(f"GRANT USAGE ON SCHEMA {schema} TO {', '.join(sorted(roles))}"))
    for table in sorted(tables & set(WORKER_PRIVILEGES)):
        name = quote(table)
        connection.execute(sa.text(f"REVOKE ALL ON {name} FROM {', '.join(sorted(roles))}"))
        if API_ROLE in roles:
            connection.execute(sa.text(f"GRANT {', '.join(API_PRIVILEGES)} ON {name} TO {API_ROLE}"))
        if WORKER_ROLE in roles and WORKER_PRIVILEGES[table]:
            connection.execute(sa.text(f"GRANT {', '.join(WORKER_PRIVILEGES[table])} ON {name} TO {WORKER_ROLE}"))
    # The id sequences of the tables a role inserts into.
    sequences = connection.execute(sa.text(
        "SELECT s.relname, t.relname FROM pg_class s JOIN pg_depend d ON d.objid = s.oid AND d.deptype IN ('a', 'i') "
        "JOIN pg_class t ON t.oid = d.refobjid JOIN pg_namespace n ON n.oid = s.relnamespace "
        "WHERE s.relkind = 'S' AND n.nspname = current_schema()"
    )).all()
    for sequence, table in sequences:
        if table not in WORKER_PRIVILEGES:
            continue
        connection.execute(sa.text(f"REVOKE ALL ON SEQUENCE {quote(sequence)} FROM {', '.join(sorted(roles))}"))
        grantees = [API_ROLE] if API_ROLE in roles else []
        if WORKER_ROLE in roles and "INSERT" in WORKER_PRIVILEGES[table]:
            grantees.append(WORKER_ROLE)
        if grantees:
            connection.execute(sa.text(f"GRANT USAGE, SELECT ON SEQUENCE {quote(sequence)} TO {', '.join(grantees)}"))
    unclassified = sorted(table for table in tables - set(WORKER_PRIVILEGES) if not table.startswith("pg_"))
    if unclassified:
        log.warning("tables no role is granted (classify them in service/migrations/roles.py): %s", ", ".join(unclassified))
    return True


def revoke_grants(connection: sa.Connection) -> None:
    """Undo :func:`apply_grants` in this database (the roles stay: other databases may use them)."""
    if connection.dialect.name != "postgresql":
        return
    roles = list(connection.execute(sa.text("SELECT rolname FROM pg_roles WHERE rolname = ANY(:roles)"),
                                    {"roles": list(ROLES)}).scalars())
    if roles:
        schema = connection.dialect.identifier_preparer.quote(connection.execute(sa.text("SELECT current_schema()")).scalar_one())
        connection.execute(sa.text(f"REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {', '.join(roles)}"))
        connection.execute(sa.text(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {schema} FROM {', '.join(roles)}"))
        connection.execute(sa.text(f"REVOKE ALL ON SCHEMA {schema} FROM {', '.join(roles)}"))
