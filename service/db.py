"""Database access: engines, sessions, migrations and Optuna's storage, on one URL.

SQLite (the embedded default) and PostgreSQL behave the same from the caller's side: every engine
pings connections before use (a dropped connection is replaced, not fatal), and SQLite runs in WAL
mode with a busy timeout so the API and several workers can write to the same file.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from service.backoff import backoff
from service.config import Settings

__all__ = [
    "create_engine",
    "engine_kwargs",
    "is_sqlite",
    "migrate",
    "optuna_storage",
    "session_factory",
    "session_scope",
    "VERSION_TABLE",
]

log = logging.getLogger(__name__)
_migrate_lock = threading.Lock()  # Alembic's context is process-global: one migration per process at a time

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: Optuna keeps its own Alembic history in ``alembic_version``; ours must not share it.
VERSION_TABLE = "regsearch_alembic_version"
_MIGRATION_LOCK_KEY = 0x7265_6773  # "regs": PostgreSQL advisory lock serializing concurrent migrators

def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def engine_kwargs(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for every engine on ``settings.database_url`` (ours and Optuna's)."""
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    kwargs.update(pool_size=settings.db_pool_size, max_overflow=settings.db_max_overflow)  # sized to the API's threads
    if is_sqlite(settings.database_url):
        kwargs["connect_args"] = {"timeout": settings.sqlite_busy_timeout_s}
    return kwargs


def create_engine(settings: Settings) -> sa.Engine:
    engine = sa.create_engine(settings.database_url, **engine_kwargs(settings))
    if is_sqlite(settings.database_url):
        busy_ms = int(settings.sqlite_busy_timeout_s * 1000)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001 - DBAPI objects
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

    return engine


def session_factory(engine: sa.Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session committed on success and rolled back on error."""
    with factory() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def optuna_storage(
    settings: Settings,
    *,
    heartbeat: bool = False,
    on_stale_trial: Callable[[Any, Any], None] | None = None,
    create_tables: bool = False,
):
    """Optuna's ``RDBStorage`` on the service's database.

    With ``heartbeat=True`` (workers) every running trial records a heartbeat each
    ``heartbeat_interval`` s; a trial silent for ``grace_period`` s (its worker was killed) is failed
    by the next worker that asks for a trial, and ``on_stale_trial`` is called with it.
    """
    from service._rdb import quiet

    with quiet():  # heartbeats are experimental
        return _storage_class()(
            settings.database_url,
            engine_kwargs=engine_kwargs(settings),
            heartbeat_interval=settings.heartbeat_interval if heartbeat else None,
            grace_period=settings.grace_period if heartbeat else None,
            heartbeat_stale_trial_callback=on_stale_trial if heartbeat else None,
            skip_table_creation=not create_tables,
        )


@functools.cache
def _storage_class():
    """``RDBStorage`` whose trials are created (:class:`service._rdb.IdempotentTrialCreation`) and queued trials
    taken exactly once, even through a dropped connection, and whose heartbeat survives a failed write.

    Optuna records heartbeats from a background thread that ends at the first exception, so one
    write lost to a dropped connection would leave a live trial silent until another worker fails
    it as stale. Here a failed write is retried, then skipped until the next interval.
    """
    import optuna

    from service._rdb import IdempotentTrialCreation, take_waiting

    class RDBStorage(IdempotentTrialCreation, optuna.storages.RDBStorage):
        def set_trial_state_values(self, trial_id: int, state: Any, values: Any = None) -> bool:
            # Optuna pops a queued trial (the reference, an enqueued config, a warm start's, a retry, a
            # confirmation repeat) by reading it WAITING, then setting it RUNNING; its row lock does not
            # exist on SQLite, where two workers could both take the trial. One conditional UPDATE
            # instead: exactly one worker's statement matches, and a loser's ``ask`` tries the next.
            if state == optuna.trial.TrialState.RUNNING and values is None:
                taken = take_waiting(self.engine, trial_id)
                if taken:
                    self.mark_started(trial_id)
                return taken
            return super().set_trial_state_values(trial_id, state, values)

        def record_heartbeat(self, trial_id: int) -> None:
            try:
                backoff(first=0.2, cap=0.4, attempts=3)(super().record_heartbeat, trial_id)
            except Exception as error:  # noqa: BLE001 - the heartbeat thread must not die
                log.warning("heartbeat of trial id %d not recorded (%s); retrying at the next interval", trial_id, error)

    return RDBStorage


def _alembic_config(connection: sa.Connection):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision of the service's migrations (what :func:`migrate` brings a database to)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(config).get_current_head() or ""


def migrate(settings: Settings, attempts: int = 5) -> str:
    """Apply the service's Alembic migrations and create Optuna's tables; return the head revision.

    Safe to run from several processes at once (API and workers starting together): PostgreSQL
    serializes them with an advisory lock; SQLite's losers retry once the winner has committed.
    """
    logging.getLogger("alembic").setLevel(logging.WARNING)
    with _migrate_lock:
        return _migrate(settings, attempts)


def _migrate(settings: Settings, attempts: int) -> str:
    engine = create_engine(settings)

    def log_retry(attempt: int, error: BaseException, _wait: float) -> None:
        reason = str(getattr(error, "orig", error)).strip().splitlines()[0]
        log.warning("migration attempt %d failed (%s); retrying", attempt, reason)

    try:
        upgrade = backoff(first=0.5, cap=2.0, attempts=attempts, retry_on=sa.exc.OperationalError, on_retry=log_retry)
        return upgrade(_upgrade, engine, settings)
    finally:
        engine.dispose()


def _upgrade(engine: sa.Engine, settings: Settings) -> str:
    """One migration attempt: PostgreSQL's migrators take turns under an advisory lock."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    postgres = engine.dialect.name == "postgresql"
    with engine.connect() as connection:
        if postgres:
            connection.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
            connection.commit()
        try:
            command.upgrade(_alembic_config(connection), "head")
            connection.commit()
            optuna_storage(settings, create_tables=True).engine.dispose()
            if postgres:  # the roles' grants cover Optuna's tables too, created just now on a fresh database
                from service.migrations.roles import apply_grants

                apply_grants(connection)
                connection.commit()
            revision = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision()
        finally:
            if postgres:
                connection.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": _MIGRATION_LOCK_KEY})
                connection.commit()
    return revision or ""
