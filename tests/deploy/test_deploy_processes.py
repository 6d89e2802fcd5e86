"""The Kubernetes manifests' containers as processes: the migration Job, the API, two workers, one study.

Rendered with kustomize and run as the kubelet would start each container (command, args, ConfigMap
and Secret environment), on a fresh local PostgreSQL database: PostgreSQL's init script creates the
login roles, the migration Job runs as the owner and installs the admin token of the Secret, the API
logs in as ``regsearch_api`` and the workers as ``regsearch_worker``. The client sends the admin
token; Prometheus scrapes ``/metrics`` with a read token (made the operator's way, ``regsearch token
create`` in the API's container) on the port the pod's scrape annotation names while the study runs:
the trial counts move, the queue depth drains, heartbeats of running trials show up and the best
value appears.
"""

from __future__ import annotations

import subprocess
import time

import httpx
import sqlalchemy as sa
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.kube_stack import BASE, KubeStack, render
from service.migrations.roles import API_ROLE, WORKER_ROLE
from tests.support import CIFAR_DIR, ROOT, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

STUDY = {
    "name": "k8s-tiny",
    "model": "baseline",
    "width": 0.25,
    "n_trials": 2,
    "epochs": 1,
    "batch_size": 64,
    "sampler": "random",
    "pruner": "none",
    "data": {"train_size": 200},
    "confirm": {"top_k": 0},
    "seed": 3,
}


def scrape(url: str, token: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """One scrape, parsed by prometheus-client: {(sample name, sorted labels): value}."""
    response = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def series(samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: sample for (sample_name, labels), sample in samples.items() if sample_name == name}


def test_manifests_run_as_processes_and_metrics_follow_a_study(postgres_url, tmp_path):
    stack = KubeStack(render(BASE), postgres_url, tmp_path / "pods", extra_env={"REGSEARCH_DATA_DIR": str(CIFAR_DIR)})
    try:
        # `kubectl apply -k`: PostgreSQL initializes (login roles), the migration Job runs to completion
        # (schema, grants, the admin token's hash); the API passes its readiness probe.
        stack.init_database()
        stack.run_job("migrate")
        migrate_log = stack.log_path("migrate", 0).read_text()
        assert "database at revision" in migrate_log and "installed the admin token" in migrate_log, migrate_log
        admin_token = stack.declared_environment("api")["REGSEARCH_ADMIN_TOKEN"]
        assert admin_token not in stack.logs(), "the admin token is never logged"
        assert sa.engine.make_url(stack.environment("api")["REGSEARCH_DATABASE_URL"]).username == API_ROLE
        assert sa.engine.make_url(stack.environment("worker")["REGSEARCH_DATABASE_URL"]).username == WORKER_ROLE
        stack.start("api")
        readiness = stack.probe("api", "readinessProbe")
        wait_until(lambda: httpx.get(readiness, timeout=3).status_code == 200, timeout=90, what="the API's readiness probe")
        annotations = stack.workload("api")["spec"]["template"]["metadata"]["annotations"]
        api_url = stack.url("api", int(annotations["prometheus.io/port"]))

        # The scraper's read token: `kubectl exec deploy/regsearch-api -- regsearch token create --scope read`.
        created = subprocess.run([stack.argv("api")[0], "regsearch", "token", "create", "--scope", "read", "--name", "prometheus"],
                                 env=stack.environment("api"), cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert created.returncode == 0, created.stderr
        read_token = created.stdout.strip()
        assert httpx.get(f"{api_url}/metrics", timeout=10).status_code == 401
        assert httpx.post(f"{api_url}/v1/studies", json=STUDY, headers={"Authorization": f"Bearer {read_token}"}, timeout=30).status_code == 403

        # The dashboard (as regsearch_api): ready on its probe, its pages behind a read token.
        stack.start("dashboard")
        dashboard_probe = stack.probe("dashboard", "readinessProbe")
        wait_until(lambda: httpx.get(dashboard_probe, timeout=3).status_code == 200, timeout=90, what="the dashboard's readiness probe")
        dashboard_url = stack.url("dashboard", 8080)
        assert httpx.get(f"{dashboard_url}/dashboard", timeout=10).status_code == 401
        assert httpx.get(f"{dashboard_url}/dashboard", auth=("prometheus", read_token), timeout=10).status_code == 200

        before = scrape(api_url, read_token)
        assert value(before, "regsearch_database_up") == 1.0
        assert value(before, "regsearch_studies", status="queued") == 0.0
        assert value(before, "regsearch_open_trial_slots") == 0.0

        with httpx.Client(base_url=api_url, timeout=30, headers={"Authorization": f"Bearer {admin_token}"}) as client:
            assert client.post("/v1/studies", json=STUDY).status_code == 201
            queued = scrape(api_url, read_token)
            assert value(queued, "regsearch_open_trial_slots") == STUDY["n_trials"]
            assert value(queued, "regsearch_studies", status="queued") == 1.0

            # `kubectl scale deployment/regsearch-worker --replicas=2`
            stack.start("worker")
            stack.start("worker")

            # Scrape as Prometheus would while the study runs, until it has ended.
            snapshots = []
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                snapshots.append(scrape(api_url, read_token))
                status = client.get(f"/v1/studies/{STUDY['name']}").json()["status"]
                if status in ("completed", "failed", "stopped"):
                    break
                assert all(process.poll() is None for process in stack.processes["worker"]), stack.logs()
                time.sleep(0.3)
            assert status == "completed", f"{status}\n{stack.logs()}"
        final = scrape(api_url, read_token)

        complete = [value(snapshot, "regsearch_trials", study=STUDY["name"], state="complete") or 0.0 for snapshot in snapshots + [final]]
        assert complete[0] == 0.0 and complete[-1] == STUDY["n_trials"], complete
        assert complete == sorted(complete), f"finished trials only ever go up: {complete}"
        running = [value(snapshot, "regsearch_trials_running") for snapshot in snapshots]
        assert max(running) >= 1.0, f"no scrape saw a running trial: {running}"
        heartbeats = [series(snapshot, "regsearch_worker_heartbeat_age_seconds") for snapshot in snapshots]
        seen = {dict(labels)["worker"] for beat in heartbeats for labels in beat}
        assert seen and all(age >= 0 for beat in heartbeats for age in beat.values()), heartbeats
        worker_pids = {str(process.pid) for process in stack.processes["worker"]}
        assert {name.rsplit(":", 1)[-1] for name in seen} <= worker_pids, (seen, worker_pids)

        assert value(final, "regsearch_open_trial_slots") == 0.0
        assert value(final, "regsearch_trials_running") == 0.0
        assert value(final, "regsearch_studies", status="completed") == 1.0
        assert value(final, "regsearch_trial_duration_seconds_count", study=STUDY["name"], state="complete") == STUDY["n_trials"]
        assert value(final, "regsearch_trial_duration_seconds_sum", study=STUDY["name"], state="complete") > 0
        best = httpx.get(f"{api_url}/v1/studies/{STUDY['name']}/best", headers={"Authorization": f"Bearer {read_token}"}, timeout=10).json()
        assert value(final, "regsearch_study_best_value", study=STUDY["name"]) == pytest.approx(best["value"])
        # The best model: written by a worker, served by the API, through the claim both pods mount (artifacts.yaml).
        model = httpx.get(f"{api_url}/v1/studies/{STUDY['name']}/best/model", headers={"Authorization": f"Bearer {read_token}"}, timeout=30)
        assert model.status_code == 200 and len(model.content) > 0, model.text[:500]
        claim = stack.container_path("api", stack.declared_environment("api")["REGSEARCH_ARTIFACT_URL"])
        assert claim.is_relative_to(tmp_path) and any(path.is_file() for path in claim.rglob("*")), f"no stored model under {claim}"
        # HTTP metrics by route template and status, from the instrumentation middleware.
        assert value(final, "http_requests_total", handler="/v1/studies", method="POST", status="201") == 1.0
        assert value(final, "http_requests_total", handler="/v1/studies/{name}", method="GET", status="200") >= len(snapshots)
        assert series(final, "http_request_duration_seconds_count")
    finally:
        stack.down()
