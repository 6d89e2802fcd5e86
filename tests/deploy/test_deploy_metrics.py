"""``/metrics`` on a real ``regsearch serve`` (SQLite), the Grafana dashboard against it, and a scrape
that survives an unreadable database. The study-in-progress scrape is in test_deploy_processes.py.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess

import httpx
import sqlalchemy as sa
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import sessionmaker

from service.metrics import DOMAIN_METRICS, SearchCollector
from service.tokens import token_hash
from tests.support import REGSEARCH, ROOT, base_env, free_port, kill_group, spawn, wait_healthy

DASHBOARD = ROOT / "deploy" / "grafana" / "regsearch-dashboard.json"
HTTP_METRICS = ("http_requests", "http_request_duration_seconds")  # counter families are named without _total


SUFFIXES = {"gauge": ("",), "counter": ("_total",), "summary": ("_sum", "_count", ""), "histogram": ("_bucket", "_sum", "_count")}


def families(text: str) -> dict[str, set[str]]:
    """family name -> the sample names its type allows (a family without samples yet included)."""
    return {family.name: {family.name + suffix for suffix in SUFFIXES[family.type]} for family in text_string_to_metric_families(text)}


def test_real_server_exposes_every_declared_metric_and_the_dashboard_uses_only_those(tmp_path):
    port = free_port()
    env = base_env(REGSEARCH_DATABASE_URL=f"sqlite:///{tmp_path / 'metrics.db'}")
    server = spawn([REGSEARCH, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "0", "--no-dashboard"], env,
                   log_path=tmp_path / "serve.log")
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, timeout=90)
        spec = {"name": "m", "width": 0.25, "n_trials": 3, "epochs": 1}
        assert httpx.post(f"{url}/v1/studies", json=spec, timeout=30).status_code == 201
        assert httpx.get(f"{url}/v1/studies/nope", timeout=30).status_code == 404
        response = httpx.get(f"{url}/metrics", timeout=30)
    finally:
        kill_group(server, signal.SIGTERM)
    assert response.status_code == 200, (tmp_path / "serve.log").read_text()
    exposed = families(response.text)
    # Each declared domain family is exposed (the heartbeat and best-value families may be empty).
    assert set(DOMAIN_METRICS) <= set(exposed), sorted(set(DOMAIN_METRICS) - set(exposed))
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text) for sample in family.samples
    }
    assert samples[("regsearch_open_trial_slots", ())] == 3.0
    assert samples[("regsearch_studies", (("status", "queued"),))] == 1.0
    # HTTP metrics are labelled by route template and exact status, never by raw path.
    assert samples[("http_requests_total", (("handler", "/v1/studies/{name}"), ("method", "GET"), ("status", "404")))] == 1.0
    assert not any("/v1/studies/nope" in dict(labels).get("handler", "") for _, labels in samples)

    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {name for expr in expressions for name in re.findall(r"\b((?:regsearch|http)_[a-z_]+)", expr)}
    all_samples = set().union(*exposed.values())
    assert used <= all_samples, f"the dashboard queries metrics /metrics does not expose: {sorted(used - all_samples)}"
    used_families = {family for family in exposed if any(name in exposed[family] for name in used)}
    assert set(DOMAIN_METRICS) | set(HTTP_METRICS) <= used_families, sorted((set(DOMAIN_METRICS) | set(HTTP_METRICS)) - used_families)


def test_a_scrape_reports_an_unreadable_database_instead_of_failing(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SearchCollector(sessionmaker(engine)))
    exposed = families(generate_latest(registry).decode())
    assert set(exposed) == {"regsearch_database_up"}
    text = generate_latest(registry).decode()
    assert "regsearch_database_up 0.0" in text
    engine.dispose()


def test_metrics_need_a_read_token_unless_metrics_public_and_the_admin_token_is_installed_hashed(tmp_path):
    """Auth on, the first admin token from REGSEARCH_ADMIN_TOKEN (a Secret): /metrics answers 401 without
    a token and 200 with a read one; REGSEARCH_METRICS_PUBLIC=true opens /metrics (and only /metrics)."""
    admin_token = "k8s-secret-" + "a1b2c3d4" * 4
    database = f"sqlite:///{tmp_path / 'auth.db'}"
    env = base_env(REGSEARCH_DATABASE_URL=database, REGSEARCH_AUTH="true", REGSEARCH_ADMIN_TOKEN=admin_token,
                   REGSEARCH_TOKEN_FILE=str(tmp_path / "token-file"))
    migrated = subprocess.run([REGSEARCH, "migrate"], env=env, capture_output=True, text=True, timeout=120)
    assert migrated.returncode == 0 and "installed the admin token" in migrated.stdout, migrated.stderr
    created = subprocess.run([REGSEARCH, "token", "create", "--scope", "read"], env=env, capture_output=True, text=True, timeout=120)
    assert created.returncode == 0, created.stderr
    read_token = created.stdout.strip()

    def serve(log_name: str, **extra: str):
        port = free_port()
        process = spawn([REGSEARCH, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "0", "--no-dashboard"],
                        {**env, **extra}, log_path=tmp_path / log_name)
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, timeout=90)
        return process, url

    server, url = serve("closed.log")
    try:
        assert httpx.get(f"{url}/metrics", timeout=30).status_code == 401
        assert httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer rgs_unknown"}, timeout=30).status_code == 401
        response = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {read_token}"}, timeout=30)
        assert response.status_code == 200 and "regsearch_database_up 1.0" in response.text
        spec = {"name": "secret-admin", "width": 0.25, "n_trials": 1, "epochs": 1}
        assert httpx.post(f"{url}/v1/studies", json=spec, headers={"Authorization": f"Bearer {admin_token}"}, timeout=30).status_code == 201
    finally:
        kill_group(server, signal.SIGTERM)
    server, url = serve("public.log", REGSEARCH_METRICS_PUBLIC="true")
    try:
        assert httpx.get(f"{url}/metrics", timeout=30).status_code == 200
        assert httpx.get(f"{url}/v1/studies", timeout=30).status_code == 401, "only /metrics is opened"
    finally:
        kill_group(server, signal.SIGTERM)
    logs = migrated.stdout + migrated.stderr + (tmp_path / "closed.log").read_text() + (tmp_path / "public.log").read_text()
    assert admin_token not in logs, "the admin token is never logged"
    assert not (tmp_path / "token-file").exists(), "with REGSEARCH_ADMIN_TOKEN no token file is written"
    engine = sa.create_engine(database)
    with engine.connect() as connection:
        hashes = set(connection.execute(sa.text("SELECT token_hash FROM regsearch_tokens")).scalars())
    engine.dispose()
    assert token_hash(admin_token) in hashes and admin_token not in hashes
