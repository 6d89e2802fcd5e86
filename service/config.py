"""The service's settings, read from the environment in one place (prefix ``REGSEARCH_``).

Every process (API, worker, dashboard, CLI client) builds its :class:`Settings` from the same
variables, so a container or a test configures the whole system by setting environment variables.
"""

from __future__ import annotations

import functools
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "artifact_location", "default_token_file", "get_settings", "settings_table"]


from trainer._service_token import default_token_file  # the file's format is declared there (load_best reads it too)


class Settings(BaseSettings):
    """Environment-driven settings, each declared once here; docs/settings.md shows :func:`settings_table`."""

    model_config = SettingsConfigDict(env_prefix="REGSEARCH_", extra="ignore", hide_input_in_errors=True)  # no secret in a log

    database_url: str = Field(
        "sqlite:///regsearch.db",
        description="SQLAlchemy URL of the database holding both the service's tables and Optuna's "
        "(e.g. postgresql+psycopg://user@host:5432/regsearch).",
    )
    data_dir: str | None = Field(
        None, description="CIFAR-10 in the official layout (cifar-10-batches-py/ or cifar-10-python.tar.gz); unset: "
        "keras.datasets downloads it. `make run` sets it to the shipped subset tests/data."
    )
    artifact_url: str | None = Field(
        None,
        description="Where the best trials' models are kept (Optuna's artifact store): a directory, file:///dir or "
        "s3://bucket/prefix (any S3-compatible service: boto3 reads AWS_ENDPOINT_URL and the usual credentials). Unset: "
        "regsearch-artifacts/ next to a SQLite database file, else under the working directory. The API and every worker "
        "must see the same store: with workers on several machines, use S3 or a shared volume.",
    )

    host: str = Field("127.0.0.1", description="Address `regsearch serve` binds.")
    port: int = Field(8000, ge=1, le=65535, description="Port `regsearch serve` listens on.")
    max_trials: int = Field(1000, ge=1, description="Cap on a study's n_trials (422 above it).")
    url: str = Field("http://127.0.0.1:8000", description="Server URL the command-line client talks to (--url overrides it).")

    # Workers and fault tolerance.
    poll_interval: float = Field(2.0, gt=0, description="Seconds an idle worker waits before looking for work again.")
    lanes: int = Field(
        1, ge=1, le=256, description="Trials a `regsearch worker` trains at once in one compiled step (`--lanes` overrides it; "
        "above 1 needs KERAS_BACKEND=jax: docs/workers.md, \"Lanes\").",
    )
    heartbeat_interval: int = Field(
        10, ge=1, description="Seconds between a running trial's heartbeats (Optuna RDBStorage)."
    )
    grace_period: int = Field(
        60, ge=1, description="Seconds without a heartbeat after which a running trial counts as dead: "
        "it is failed and retried with the same params by the next worker that looks."
    )
    trash_days: float = Field(
        7.0, ge=0, description="Days a deleted study stays in the trash (restorable) before it is purged for good."
    )
    max_retries: int = Field(2, ge=0, description="How many times a failed trial is re-run with the same params.")
    gpu_memory_fraction: float | None = Field(
        None, gt=0, le=1, description="Most of each GPU's memory one worker process may take (JAX: "
        "XLA_PYTHON_CLIENT_MEM_FRACTION, no preallocation; TensorFlow: memory growth), so that several workers share "
        "a card. Unset: the backend's default (one worker per card); `regsearch serve --workers N` gives its N workers "
        "0.9/N each.",
    )
    max_failed_trials: int = Field(
        5, ge=1, description="A study whose trials raised this many times is marked failed (e.g. a bad data dir)."
    )
    db_retry_max_s: float = Field(
        30.0, gt=0, description="Longest back-off between a worker's attempts while the database is unreachable."
    )
    sqlite_busy_timeout_s: float = Field(30.0, gt=0, description="SQLite busy timeout for concurrent writers (SQLite runs in WAL mode).")
    db_pool_size: int = Field(
        40, ge=1, description="Connections each engine keeps open; the API serves up to 40 requests at once "
        "(its thread pool), so this matches it and no request waits for a connection."
    )
    db_max_overflow: int = Field(10, ge=0, description="Extra connections an engine may open beyond db_pool_size.")

    # Trust (docs/security.md).
    auth: bool = Field(
        True, description="Require a bearer token on the API and the dashboard (read scope to read, write to change); "
        "false only for a trusted loopback setup."
    )
    token: str | None = Field(None, description="The token the command-line client and load_best send (REGSEARCH_TOKEN).")
    token_file: str = Field(
        default_factory=default_token_file,
        description="The token file (JSON, mode 0600): the first start of each server writes its admin token there under the "
        "server's URL, and the client reads the entry of the URL it calls (`regsearch token show`).",
    )
    admin_token: SecretStr | None = Field(
        None, description="An admin token to install when the database has no token yet (e.g. from the Kubernetes "
        "Secret regsearch-admin-token): `regsearch migrate` and the API store only its hash, log nothing of it, and "
        "write no token file. At least 24 characters; ignored once any token exists.",
    )
    metrics_public: bool = Field(
        False, description="Serve /metrics without a token. Only where the API's port is reachable by the scraper "
        "alone (docs/kubernetes.md, \"Metrics\"); otherwise a scrape needs a read token like every read.",
    )
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest request body accepted (413 beyond it).")
    header_timeout_s: float = Field(
        10.0, gt=0, description="Seconds a connection may take to send a request's headers, counted from when it "
        "opens or its previous answer ends; then it is closed (slow or idle clients hold no connection)."
    )
    auth_cache_s: float = Field(
        2.0, ge=0, description="Seconds the API trusts a token it has checked (a revoked token stops working within twice this)."
    )
    read_cache_s: float = Field(
        1.0, ge=0, description="Seconds GET /v1/studies/NAME and .../best answers are served from memory "
        "(writes through the same process clear them at once; 0: off)."
    )
    migrate_on_start: bool = Field(
        True, description="`regsearch serve`, `worker` and `dashboard` apply the migrations when they start (one machine). "
        "False where a migration job runs first and the processes log in as roles without DDL (deploy/kubernetes, "
        "docker-compose.yml).",
    )

    # Webhooks (docs/api.md, "Webhooks").
    webhook_allowed_hosts: str = Field(
        "", description="Comma-separated hosts webhooks may be delivered to (`hooks.example.com`, or `*.example.com` for "
        "its subdomains; IP addresses as written in the URL); any other host is refused at registration (422) and again "
        "at delivery. Empty: no webhook can be registered.",
    )
    webhook_schemes: str = Field(
        "https", description="Comma-separated URL schemes webhooks may use (add `http` only for a receiver on a trusted network)."
    )
    webhook_timeout_s: float = Field(10.0, gt=0, description="Seconds a webhook receiver has to answer one delivery attempt.")
    webhook_max_attempts: int = Field(
        10, ge=1, le=100, description="Attempts of a delivery before it is marked failed (a 2xx answer ends it delivered)."
    )
    webhook_retry_s: float = Field(
        10.0, gt=0, description="Seconds before a failed delivery's first retry; each later wait doubles, up to an hour."
    )

    @field_validator("admin_token")
    @classmethod
    def _admin_token_is_strong(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        token = value.get_secret_value()
        if len(token) < 24 or len(token) > 256 or not token.isascii() or any(char.isspace() for char in token):
            raise ValueError("must be 24 to 256 ASCII characters without spaces (e.g. `openssl rand -base64 32`)")
        return value


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings (cached; tests that change the environment call ``get_settings.cache_clear()``)."""
    return Settings()


def settings_table() -> str:
    """The Markdown table of every setting, derived from :class:`Settings` (docs/settings.md embeds it)."""
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        if field.default_factory is default_token_file:
            default = "`~/.config/regsearch/tokens.json` (under `$XDG_CONFIG_HOME` when set)"
        else:
            default = "unset" if field.default is None else f"`{str(field.default).lower() if isinstance(field.default, bool) else field.default}`"
        rows.append(f"| `REGSEARCH_{name.upper()}` | {default} | {field.description} |")
    return "\n".join(rows) + "\n"


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
