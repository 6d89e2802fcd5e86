"""Least-privilege PostgreSQL roles (service/migrations/roles.py, migration 0004).

The worker role completing a study is shown by test_deploy_processes.py (the manifests' workers log in
as ``regsearch_worker``); here the same role is refused what a worker never does, on a migrated
database, through a login that is a member of the role (as operators of a managed database create it).
And every table the code or Optuna declares is classified, so a new table cannot slip past the grants.
"""

from __future__ import annotations

import importlib
import pkgutil
import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

import service
from service.config import Settings
from service.db import VERSION_TABLE, migrate
from service.migrations.roles import API_ROLE, WORKER_PRIVILEGES, WORKER_ROLE

#: Optuna's own Alembic history table (not in its models' metadata).
OPTUNA_VERSION_TABLE = "alembic_version"


def declared_tables() -> set[str]:
    """Every table of the service's metadata (all its modules imported) and of Optuna's RDB storage."""
    from optuna.storages._rdb.models import BaseModel

    for module in pkgutil.walk_packages(service.__path__, "service."):
        if ".migrations" not in module.name:
            importlib.import_module(module.name)
    from service.models import Base

    return set(Base.metadata.tables) | set(BaseModel.metadata.tables) | {VERSION_TABLE, OPTUNA_VERSION_TABLE}


def test_every_declared_table_is_classified_for_the_roles():
    tables = declared_tables()
    unclassified = sorted(tables - set(WORKER_PRIVILEGES))
    assert not unclassified, f"classify {unclassified} in service/migrations/roles.py WORKER_PRIVILEGES (the worker's grants)"
    stale = sorted(set(WORKER_PRIVILEGES) - tables)
    assert not stale, f"WORKER_PRIVILEGES names tables nothing declares: {stale}"
    assert WORKER_PRIVILEGES["regsearch_tokens"] == (), "a worker never touches the tokens"
    assert not any("DELETE" in privilege for privileges in WORKER_PRIVILEGES.values() for privilege in privileges)


@pytest.fixture
def role_logins(postgres_url):
    """A fresh database at head, and logins that are members of each role (dropped afterwards)."""
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    suffix = uuid.uuid4().hex[:8]
    logins = {API_ROLE: f"rgs_test_api_{suffix}", WORKER_ROLE: f"rgs_test_worker_{suffix}"}
    assert migrate(Settings(database_url=postgres_url)) == "0008"
    with admin.connect() as connection:
        for role, login in logins.items():
            connection.execute(sa.text(f"CREATE ROLE {login} LOGIN IN ROLE {role}"))
        connection.execute(sa.text("INSERT INTO regsearch_tokens (name, scope, token_hash, prefix, created_at) "
                                   "VALUES ('t', 'admin', 'hash', 'rgs_x', now())"))
    urls = {role: make_url(postgres_url).set(username=login).render_as_string(hide_password=False) for role, login in logins.items()}
    try:
        yield urls
    finally:
        with admin.connect() as connection:
            for login in logins.values():
                connection.execute(sa.text(f"DROP OWNED BY {login}"))
                connection.execute(sa.text(f"DROP ROLE {login}"))
        admin.dispose()


def outcome(url: str, statement: str) -> str:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(sa.text(statement))
        return "allowed"
    except sa.exc.ProgrammingError as error:
        return "refused" if "permission denied" in str(error.orig) or "must be owner" in str(error.orig) else str(error.orig)
    finally:
        engine.dispose()


WORKER_REFUSED = [
    "SELECT * FROM regsearch_tokens",
    "UPDATE regsearch_tokens SET scope = 'admin'",
    "DROP TABLE regsearch_best_configs",
    "DELETE FROM regsearch_studies",
    "DELETE FROM trials",
    "TRUNCATE trials",
    "CREATE TABLE stolen (a int)",
    "ALTER TABLE regsearch_studies ADD COLUMN x int",
    "INSERT INTO regsearch_studies (name) VALUES ('forged')",
]


@pytest.mark.postgres
def test_worker_role_is_refused_tokens_deletes_and_ddl_by_postgresql(role_logins):
    worker = role_logins[WORKER_ROLE]
    refused = {statement: outcome(worker, statement) for statement in WORKER_REFUSED}
    assert all(result == "refused" for result in refused.values()), refused
    # ...while what a worker does is allowed (a real study by this role: test_deploy_processes.py).
    for statement in ("SELECT count(*) FROM regsearch_studies", "SELECT count(*) FROM trials",
                      "UPDATE regsearch_studies SET claimed = claimed WHERE false",
                      "SELECT study_id FROM studies FOR UPDATE"):
        assert outcome(worker, statement) == "allowed", statement


@pytest.mark.postgres
def test_worker_role_settles_a_dead_workers_trial(role_logins, postgres_url):
    """The heartbeat check's path, as the worker role: the stale trial is failed, its fail_reason and
    settlement recorded and its retry queued, with the statements the role may run (no DELETE)."""
    import time
    import warnings

    import optuna

    from service import coordination, studies, sweeps
    from service.db import create_engine, optuna_storage, session_factory
    from service.retries import SETTLED, WORKER_LOST, RetryFailedTrial
    from service.schemas import StudySpec

    owner = Settings(database_url=postgres_url)
    owner_engine, owner_storage = create_engine(owner), optuna_storage(owner)
    row, _ = studies.submit_study(session_factory(owner_engine), owner_storage,
                                  StudySpec(name="stale", n_trials=2, reference=False, confirm={"top_k": 0}))
    worker = Settings(database_url=role_logins[WORKER_ROLE], heartbeat_interval=1, grace_period=1)
    engine = create_engine(worker)
    factory = session_factory(engine)
    storage = optuna_storage(worker, heartbeat=True, on_stale_trial=RetryFailedTrial(factory, max_retries=2))
    try:
        assert coordination.claim_slot(factory, row.id) == 1
        study = optuna.load_study(study_name="stale", storage=storage)
        with warnings.catch_warnings():  # a trial asked outside optimize, then its worker "dies"
            warnings.simplefilter("ignore", UserWarning)
            dead = study.ask({"dropout_conv": optuna.distributions.FloatDistribution(0.3, 0.5)})
        storage.record_heartbeat(dead._trial_id)
        time.sleep(2.5)
        sweeps.fail_stale_trials(factory, storage, study, "stale", grace_period=1)

        failed = storage.get_trial(dead._trial_id)
        assert failed.state == optuna.trial.TrialState.FAIL
        assert failed.user_attrs["fail_reason"] == WORKER_LOST and failed.system_attrs[SETTLED] == WORKER_LOST
        (retry,) = [trial for trial in study.get_trials() if trial.state == optuna.trial.TrialState.WAITING]
        assert retry.params == failed.params
    finally:
        storage.engine.dispose()
        engine.dispose()
        owner_storage.engine.dispose()
        owner_engine.dispose()


@pytest.mark.postgres
def test_api_role_reads_and_writes_rows_but_no_schema(role_logins):
    api = role_logins[API_ROLE]
    for statement in ("SELECT count(*) FROM regsearch_tokens", "DELETE FROM regsearch_studies WHERE false",
                      "UPDATE regsearch_tokens SET last_used_at = now() WHERE false"):
        assert outcome(api, statement) == "allowed", statement
    for statement in ("DROP TABLE regsearch_best_configs", "CREATE TABLE stolen (a int)", "ALTER TABLE trials ADD COLUMN x int"):
        assert outcome(api, statement) == "refused", statement


@pytest.mark.postgres
def test_every_table_in_the_migrated_database_is_classified_and_migrating_again_keeps_the_grants(postgres_url, role_logins):
    engine = sa.create_engine(postgres_url)
    try:
        with engine.connect() as connection:
            tables = set(connection.execute(sa.text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")).scalars())
        assert tables == set(WORKER_PRIVILEGES), sorted(tables ^ set(WORKER_PRIVILEGES))
    finally:
        engine.dispose()
    # A second `regsearch migrate` (an upgrade) re-applies the same grants; the roles cannot migrate.
    assert migrate(Settings(database_url=postgres_url)) == "0008"
    assert outcome(role_logins[WORKER_ROLE], "SELECT * FROM regsearch_tokens") == "refused"
    assert outcome(role_logins[WORKER_ROLE], "SELECT count(*) FROM trials") == "allowed"
