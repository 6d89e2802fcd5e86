"""Fixtures of the service tests: auth off unless a test turns it on, a headless Chromium for the dashboard check."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from service.config import Settings
from service.db import create_engine, migrate, optuna_storage, session_factory

CHROMIUM = "/usr/bin/chromium"


def _apt_install(*packages: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *packages], env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's ``chromium``, installed with apt-get when missing (a skip only if apt cannot, a failure under CI)."""
    if not os.path.exists(CHROMIUM):
        if shutil.which("apt-get") is None:
            reason = "chromium is missing and apt-get is not available to install it"
        else:
            result = _apt_install("chromium")
            if result.returncode != 0:
                subprocess.run(["apt-get", "update"], capture_output=True, timeout=600)
                result = _apt_install("chromium")
            reason = f"apt-get install chromium failed: {(result.stderr or result.stdout).strip().splitlines()[-1:]}"
        if not os.path.exists(CHROMIUM):
            if os.environ.get("CI"):
                pytest.fail(reason)
            pytest.skip(reason)
    return CHROMIUM


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
