"""Fixtures shared by every test module: the CIFAR-10 subset, real databases and a headless browser."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from tests.support import CIFAR_DIR

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_configure(config) -> None:
    """One JAX compilation cache for the whole run, this process (the JAX pass) and every JAX subprocess: the same
    network compiles to the same XLA program in each new model, each lanes worker and each benchmark child, and is
    compiled once (the programs are XLA's own output either way). Set before any test module imports Keras; a cache
    the caller names is kept."""
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        directory = tempfile.mkdtemp(prefix="regsearch-jax-cache-")
        os.environ["JAX_COMPILATION_CACHE_DIR"] = directory
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        config.add_cleanup(lambda: shutil.rmtree(directory, ignore_errors=True))

POSTGRES_ADMIN_URL = os.environ.get("REGSEARCH_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session", autouse=True)
def _artifacts_in_a_temporary_directory(tmp_path_factory) -> Iterator[None]:
    """Every process the tests start keeps its stored models under a temporary directory, never the checkout."""
    previous = os.environ.get("REGSEARCH_ARTIFACT_URL")
    os.environ["REGSEARCH_ARTIFACT_URL"] = str(tmp_path_factory.mktemp("artifacts"))
    yield
    if previous is None:
        os.environ.pop("REGSEARCH_ARTIFACT_URL", None)
    else:
        os.environ["REGSEARCH_ARTIFACT_URL"] = previous


#: Debian's chromium: ``make test`` installs it once before the tests (the Makefile's ``test-tools``).
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's headless ``chromium`` for page tests; a skip when absent (a failure under CI, where ``make test``
    installs it)."""
    if not os.path.exists(CHROMIUM):
        reason = f"{CHROMIUM} is missing: `make test-tools` installs Debian's chromium"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return CHROMIUM


@pytest.fixture(scope="session")
def cifar_dir() -> str:
    """The shipped CIFAR-10 subset (official layout under ``cifar-10-batches-py/``)."""
    assert (CIFAR_DIR / "cifar-10-batches-py" / "data_batch_1").exists()
    return str(CIFAR_DIR)


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'regsearch.db'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh database on the local PostgreSQL, dropped afterwards."""
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"regsearch_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as error:
        admin.dispose()
        if os.environ.get("CI"):
            raise
        pytest.skip(f"local PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {error.orig}")
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request) -> str:
    """One test body, run against each storage (Optuna's pattern)."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")
