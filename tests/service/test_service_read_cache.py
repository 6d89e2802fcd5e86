"""The read cache in front of GET study / GET best: writes through the API clear it at once, and
reads of one study never go back in time (in-process app, real SQLite, cache on a long TTL)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.support import seed_leader
from service.api import create_app
from service.config import Settings

SPEC = {"name": "cached", "n_trials": 3, "epochs": 1, "width": 0.25, "data": {"train_size": 300}}
PARAMS = {"weight_decay": 1e-4, "l1_ratio": 0.5, "dropout_conv": 0.4, "dropout_dense": 0.4}


def test_cached_reads_are_cleared_by_writes_and_stay_monotonic(tmp_path):
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'cache.db'}", read_cache_s=60), dashboard=False)
    factory = app.state.session_factory
    with TestClient(app) as client:
        assert client.post("/v1/studies", json=SPEC).status_code == 201
        storage = app.state.optuna_storage
        assert seed_leader(factory, storage, "cached", 0.30, PARAMS, 300)
        assert client.get("/v1/studies/cached/best").json()["value"] == 0.30
        assert seed_leader(factory, storage, "cached", 0.40, PARAMS, 300)  # a worker's write, elsewhere
        assert client.get("/v1/studies/cached/best").json()["value"] == 0.30  # served from memory (TTL 60 s here)
        assert client.get("/v1/studies/cached/trials").status_code == 200  # a fresh read of the study...
        assert client.get("/v1/studies/cached/best").json()["value"] == 0.40  # ...retires the older answers
        assert client.get("/v1/studies/cached").json()["status"] == "queued"
        assert client.post("/v1/studies/cached/stop").status_code == 200  # a write through the API
        assert client.get("/v1/studies/cached").json()["status"] == "stopped"
        assert client.delete("/v1/studies/cached").status_code == 204
        assert client.get("/v1/studies/cached/best").status_code == 404
        assert client.get("/v1/studies/cached").status_code == 404
    app.state.engine.dispose()
    app.state.optuna_storage.engine.dispose()
