"""The service's settings, read from the environment in one place (prefix ``REGSEARCH_``).

Every process (API, worker, dashboard, CLI client) builds its :class:`Settings` from the same
variables, so a container or a test configures the whole system by setting environment variables.
"""

from __future__ import annotations

import functools

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "get_settings"]


class Settings(BaseSettings):
    """Environment-driven settings. ``REGSEARCH_DATABASE_URL`` etc.; see README.md, "Settings"."""

    model_config = SettingsConfigDict(env_prefix="REGSEARCH_", extra="ignore")

    database_url: str = Field(
        "sqlite:///regsearch.db",
        description="SQLAlchemy URL of the database holding both the service's tables and Optuna's "
        "(e.g. postgresql+psycopg://user@host:5432/regsearch).",
    )
    data_dir: str | None = Field(
        None, description="CIFAR-10 directory in the official layout; unset: keras.datasets downloads it."
    )
    artifact_url: str | None = Field(
        None,
        description="Where the best trials' models are kept (Optuna's artifact store): a directory, file:///dir or "
        "s3://bucket/prefix. Unset: regsearch-artifacts/ next to a SQLite database file, else under the working directory.",
    )

    host: str = Field("127.0.0.1", description="Address `regsearch serve` binds.")
    port: int = Field(8000, ge=1, le=65535, description="Port `regsearch serve` listens on.")
    max_trials: int = Field(1000, ge=1, description="Cap on a study's n_trials.")
    url: str = Field("http://127.0.0.1:8000", description="Server URL the command-line client talks to.")

    # Workers and fault tolerance.
    poll_interval: float = Field(2.0, gt=0, description="Seconds an idle worker waits before looking for work again.")
    heartbeat_interval: int = Field(
        10, ge=1, description="Seconds between a running trial's heartbeats (Optuna RDBStorage)."
    )
    grace_period: int = Field(
        60, ge=1, description="Seconds without a heartbeat after which a running trial counts as dead: "
        "it is failed and retried with the same params by the next worker that looks."
    )
    max_retries: int = Field(2, ge=0, description="How many times a failed trial is re-run with the same params.")
    max_failed_trials: int = Field(
        5, ge=1, description="A study whose trials raised this many times is marked failed (e.g. a bad data dir)."
    )
    db_retry_max_s: float = Field(
        30.0, gt=0, description="Longest back-off between a worker's attempts while the database is unreachable."
    )
    sqlite_busy_timeout_s: float = Field(30.0, gt=0, description="SQLite busy timeout for concurrent writers.")


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings (cached; tests that change the environment call ``get_settings.cache_clear()``)."""
    return Settings()


def artifact_location(settings: Settings) -> str:
    """``settings.artifact_url``, or its default: ``regsearch-artifacts/`` beside a SQLite database file, else in
    the working directory (the API and the workers must share it: set ``REGSEARCH_ARTIFACT_URL`` when they run apart)."""
    if settings.artifact_url:
        return settings.artifact_url
    from pathlib import Path

    from sqlalchemy.engine import make_url

    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return str(Path(url.database).resolve().parent / "regsearch-artifacts")
    return str(Path.cwd() / "regsearch-artifacts")
