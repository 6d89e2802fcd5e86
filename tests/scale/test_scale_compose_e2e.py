"""The compose topology end to end, as processes: migrations, one API, the dashboard, two workers.

Everything runs from docker-compose.yml (entrypoint, command, environment) against a fresh
PostgreSQL database. One stack serves several checks so that the TensorFlow workers start once:
50 concurrent identical POSTs create one study, two studies side by side are both served, the
API killed and restarted mid-study loses nothing, and the studies complete with real training.
"""

from __future__ import annotations

import signal
import threading

import httpx
import pytest
import sqlalchemy as sa

from service.api.dashboard_view import listed_name
from service.models import ADMIN_OWNER
from tests.scale.compose_stack import ComposeStack, wait_for_status
from tests.support import CIFAR_DIR, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def tiny_study(name: str, n_trials: int, seed: int = 0) -> dict:
    return {
        "name": name,
        "model": "baseline",
        "width": 0.25,
        "n_trials": n_trials,
        "epochs": 1,
        "batch_size": 64,
        "sampler": "random",
        "pruner": "none",
        "data": {"train_size": 300},
        "confirm": {"top_k": 0},
        "seed": seed,
    }


def finished_trials(client: httpx.Client, name: str) -> dict[int, dict]:
    trials = client.get(f"/v1/studies/{name}/trials").json()["trials"]
    return {trial["number"]: trial for trial in trials if trial["state"] in ("complete", "pruned")}


def test_compose_stack_end_to_end(postgres_url, tmp_path):
    stack = ComposeStack(postgres_url, tmp_path / "stack", extra_env={"REGSEARCH_DATA_DIR": str(CIFAR_DIR), "REGSEARCH_AUTH": "false"})
    try:
        # `docker compose up api dashboard` then `--scale worker=2`: migrate runs first, once.
        (api,) = stack.up("api")
        stack.wait_healthy("api")
        stack.up("dashboard")
        stack.up("worker", scale=2)
        assert stack.completed == ["migrate"], "the one-shot migrations ran once, before the services that need them"
        assert "database at revision" in stack.log_path("migrate", 0).read_text()
        api_url = stack.url("api", 8000)

        # 50 concurrent identical POSTs: exactly one creates the study, the rest get it back.
        spec = tiny_study("side-a", n_trials=3, seed=1)
        codes: list[int] = []
        barrier = threading.Barrier(50)

        def post() -> None:
            with httpx.Client(base_url=api_url, timeout=60) as client:
                barrier.wait()
                codes.append(client.post("/v1/studies", json=spec).status_code)

        threads = [threading.Thread(target=post) for _ in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(codes) == [200] * 49 + [201], codes

        with httpx.Client(base_url=api_url, timeout=30) as client:
            # A second study side by side.
            assert client.post("/v1/studies", json=tiny_study("side-b", n_trials=2, seed=2)).status_code == 201
            names = [study["name"] for study in client.get("/v1/studies").json()["studies"]]
            assert sorted(names) == ["side-a", "side-b"]
            engine = sa.create_engine(postgres_url)
            with engine.connect() as conn:
                assert conn.execute(sa.text("SELECT COUNT(*) FROM regsearch_studies WHERE name = 'side-a'")).scalar_one() == 1
                assert conn.execute(sa.text("SELECT COUNT(*) FROM studies WHERE study_name = 'side-a'")).scalar_one() == 1
            engine.dispose()

            # Kill the API (its whole process group, no clean shutdown) once a trial has finished.
            wait_until(lambda: finished_trials(client, "side-a") or finished_trials(client, "side-b"), timeout=150,
                       interval=0.5, what="a first finished trial")
            before = {name: finished_trials(client, name) for name in ("side-a", "side-b")}

        api = stack.restart("api", api, signal.SIGKILL)
        stack.wait_healthy("api")

        with httpx.Client(base_url=api_url, timeout=30) as client:
            # Nothing the dead server had served is lost or changed.
            for name, trials in before.items():
                after = finished_trials(client, name)
                for number, trial in trials.items():
                    changed = {key: (value, after[number].get(key)) for key, value in trial.items() if after[number].get(key) != value}
                    assert not changed, f"{name} trial {number} changed across the API restart: {changed}"

            # Both studies are served to completion by the two workers, with real training.
            results = {name: wait_for_status(client, name, ("completed", "failed", "stopped"), 240, stack) for name in ("side-a", "side-b")}
            for name, study in results.items():
                assert study["status"] == "completed", f"{name}: {study}\n{stack.logs()}"
                assert study["trials_finished"] == study["n_trials"]
                assert study["counts"]["running"] == 0 and study["counts"]["failed"] == 0
                trials = client.get(f"/v1/studies/{name}/trials").json()["trials"]
                assert len(trials) == study["n_trials"]
                assert all(0.0 <= trial["value"] <= 1.0 and trial["train_accuracy"] is not None for trial in trials)
                best = client.get(f"/v1/studies/{name}/best").json()
                assert best["value"] == max(trial["value"] for trial in trials)
            # Trials ran in the worker processes (their names end in the pid), not in the API.
            worker_pids = {str(process.pid) for process in stack.processes["worker"]}
            ran_in = {trial["worker"].rsplit(":", 1)[-1] for name in results for trial in client.get(f"/v1/studies/{name}/trials").json()["trials"]}
            assert ran_in <= worker_pids, (ran_in, worker_pids)

        # The dashboard (its own process, API image) reads the same storage.
        stack.wait_healthy("dashboard")  # its own healthcheck command from the compose file
        dashboard_url = stack.url("dashboard", 8080)
        studies = httpx.get(f"{dashboard_url}/api/studies", timeout=30).json()["study_summaries"]
        assert {study["study_name"] for study in studies} == {listed_name("side-a", ADMIN_OWNER), listed_name("side-b", ADMIN_OWNER)}
        assert all(process.poll() is None for process in stack.processes["worker"]), stack.logs("worker")
    finally:
        stack.down()
