"""Fixtures of the service tests: auth off unless a test turns it on, databases for in-process workers."""

from __future__ import annotations

import pytest

from service.config import Settings
from service.db import create_engine, migrate, optuna_storage, session_factory

@pytest.fixture(scope="session", autouse=True)
def _auth_off_by_default(tmp_path_factory):
    """In-process apps built from ``Settings(...)`` run without tokens and never touch ~/.config
    (the tests of auth pass ``auth=True`` or ``REGSEARCH_AUTH=true`` explicitly). Session-scoped, so
    that module-scoped apps see it too."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REGSEARCH_AUTH", "false")
        patch.setenv("REGSEARCH_TOKEN_FILE", str(tmp_path_factory.mktemp("auth") / "token"))
        patch.delenv("REGSEARCH_TOKEN", raising=False)
        yield


@pytest.fixture
def grace_period() -> int:
    """Seconds without a heartbeat before a trial counts as dead (a module may override this fixture)."""
    return 1


@pytest.fixture
def database(storage_url, grace_period):
    """Migrated settings, session factory and Optuna storage on each storage, for driving workers in-process."""
    settings = Settings(database_url=storage_url, heartbeat_interval=1, grace_period=grace_period, poll_interval=0.05)
    migrate(settings)
    engine = create_engine(settings)
    storage = optuna_storage(settings)
    yield settings, session_factory(engine), storage
    storage.engine.dispose()
    engine.dispose()
