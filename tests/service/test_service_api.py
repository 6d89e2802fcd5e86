"""The HTTP API's contract, in-process (FastAPI's TestClient) on real SQLite and PostgreSQL databases.

Fast: no training here. Every bad input gets its 4xx naming the field and the reason.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from fastapi.testclient import TestClient

from service.api.dashboard_view import listed_name
from service.models import ADMIN_OWNER
from service.api import create_app
from service.config import Settings

SPEC = {"name": "api-demo", "n_trials": 3, "epochs": 1, "width": 0.25, "data": {"train_size": 300}}


@pytest.fixture
def client(storage_url):
    app = create_app(Settings(database_url=storage_url, max_trials=50), dashboard=False)
    with TestClient(app) as test_client:
        yield test_client
    app.state.engine.dispose()
    app.state.optuna_storage.engine.dispose()


@pytest.fixture(scope="module")
def sqlite_client(tmp_path_factory):
    """One app for the read-only checks below (they create nothing that matters to each other)."""
    database = tmp_path_factory.mktemp("api") / "regsearch.db"
    app = create_app(Settings(database_url=f"sqlite:///{database}", max_trials=50), dashboard=False)
    with TestClient(app) as test_client:
        yield test_client
    app.state.engine.dispose()


def test_submit_read_repeat_conflict_stop_delete(client):
    created = client.post("/v1/studies", json=SPEC)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["status"] == "queued"
    assert body["n_trials"] == 3 and body["trials_finished"] == 0
    # The reference config is queued as the first trial (issue 11).
    assert body["counts"] == {"complete": 0, "pruned": 0, "failed": 0, "stopped": 0, "running": 0, "waiting": 1}
    assert body["best"] is None
    # Defaults come from the trainer's declaration of the search space.
    assert body["spec"]["search_space"]["dropout_conv"] == {"low": 0.3, "high": 0.5}
    assert body["links"]["best"] == "/v1/studies/api-demo/best"
    assert body["links"]["dashboard"].startswith("/dashboard/studies/")

    repeat = client.post("/v1/studies", json=SPEC)
    assert repeat.status_code == 200
    assert repeat.json()["created_at"] == body["created_at"]

    conflict = client.post("/v1/studies", json={**SPEC, "n_trials": 4})
    assert conflict.status_code == 409
    assert "different spec" in conflict.json()["detail"]

    listing = client.get("/v1/studies").json()["studies"]
    assert [study["name"] for study in listing] == ["api-demo"]
    assert client.get("/v1/studies/api-demo").json()["spec"]["width"] == 0.25
    (queued,) = client.get("/v1/studies/api-demo/trials").json()["trials"]  # the reference, waiting for a worker
    assert (queued["number"], queued["state"], queued["stage"], queued["value"]) == (0, "waiting", "reference", None)
    # A reference clipped into narrowed bounds says so.
    narrowed = client.post("/v1/studies", json={**SPEC, "name": "api-narrow", "search_space": {"dropout_dense": {"high": 0.4}}})
    assert narrowed.status_code == 201, narrowed.text
    reference = narrowed.json()["reference"]
    assert reference["params"]["dropout_dense"] == 0.4 and reference["clipped"] == {"dropout_dense": [0.5, 0.4]}
    assert "dropout_dense 0.5 -> 0.4" in reference["note"]
    assert client.get("/v1/studies/api-narrow/trials").json()["trials"][0]["params"]["dropout_dense"] == 0.4
    assert client.delete("/v1/studies/api-narrow").status_code == 204

    best = client.get("/v1/studies/api-demo/best")
    assert best.status_code == 404
    assert "no completed trial yet" in best.json()["detail"]

    stopped = client.post("/v1/studies/api-demo/stop")
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
    assert client.post("/v1/studies/api-demo/stop").json()["status"] == "stopped"  # idempotent

    # A delete moves the study to the trash: hidden, its name taken, everything kept until purged.
    assert client.delete("/v1/studies/api-demo").status_code == 204
    assert client.get("/v1/studies/api-demo").status_code == 404
    assert client.delete("/v1/studies/api-demo").status_code == 404
    assert [study["name"] for study in client.get("/v1/studies").json()["studies"]] == []
    trashed, narrow = client.get("/v1/trash").json()["studies"]  # most recently deleted first
    assert (trashed["name"], narrow["name"]) == ("api-demo", "api-narrow")
    assert trashed["status"] == "stopped" and trashed["deleted_at"].endswith("Z")
    taken = client.post("/v1/studies", json={**SPEC, "n_trials": 4})
    assert taken.status_code == 409 and "in the trash" in taken.json()["detail"]
    restored = client.post("/v1/trash/api-demo/restore")
    assert restored.status_code == 200 and restored.json()["deleted_at"] is None
    assert restored.json()["created_at"] == body["created_at"]
    assert [study["name"] for study in client.get("/v1/trash").json()["studies"]] == ["api-narrow"]
    assert client.post("/v1/trash/api-demo/restore").status_code == 404  # not in the trash any more
    # Purge: only from the trash, for good (the Optuna study too); the name is free again.
    assert client.delete("/v1/trash/api-demo").status_code == 404
    assert client.delete("/v1/studies/api-demo").status_code == 204
    assert client.delete("/v1/trash/api-demo").status_code == 204
    with pytest.raises(KeyError):
        client.app.state.optuna_storage.get_study_id_from_name("api-demo")
    assert client.post("/v1/studies", json={**SPEC, "n_trials": 4}).status_code == 201
    # ?replace deletes for good a study of the name with another spec (or in the trash) and creates the new one.
    assert client.post("/v1/studies", json={**SPEC, "n_trials": 5}).status_code == 409
    replaced = client.post("/v1/studies", params={"replace": "true"}, json={**SPEC, "n_trials": 5})
    assert replaced.status_code == 201 and replaced.json()["n_trials"] == 5
    assert client.delete("/v1/studies/api-demo").status_code == 204
    assert client.post("/v1/studies", params={"replace": "true"}, json={**SPEC, "n_trials": 5}).status_code == 201
    assert [study["name"] for study in client.get("/v1/trash").json()["studies"]] == ["api-narrow"]


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"search_space": {"l1_ratio": {"low": 0.8, "high": 0.2}}}, "search_space.l1_ratio", "must not exceed high"),
        ({"search_space": {"weight_decay": {"low": 1e-2, "high": 1e-5}}}, "search_space.weight_decay", "must not exceed high"),
        ({"search_space": {"dropout_conv": {"low": 0.3, "high": 1.0}}}, "search_space.dropout_conv.high", "less than 1"),
        ({"search_space": {"dropout_dense": {"low": -0.1, "high": 0.5}}}, "search_space.dropout_dense.low", "greater than or equal to 0"),
        ({"search_space": {"momentum": {"low": 0.1, "high": 0.5}}}, "search_space.momentum", "Extra inputs are not permitted"),
        ({"n_trials": 0}, "n_trials", "greater than or equal to 1"),
        ({"n_trials": -3}, "n_trials", "greater than or equal to 1"),
        ({"n_trials": 51}, "n_trials", "at most 50"),
        ({"model": "resnet"}, "model", "'baseline' or 'vgg'"),
        ({"pruner": "asha"}, "pruner", "'median', 'fair', 'hyperband' or 'none'"),
        ({"sampler": "cmaes"}, "sampler", "'tpe' or 'random'"),
        ({"name": "Not A Slug!"}, "name", "must be a slug"),
        ({"name": "-leading-dash"}, "name", "must be a slug"),
        ({"data": {"val_fraction": 1.5}}, "data.val_fraction", "less than 0.75"),
        # Specs that could not run: each refused at POST, naming the field.
        ({"data": {"val_fraction": 0.75}}, "data.val_fraction", "less than 0.75"),  # a class of 2 keeps no training image
        ({"data": {"train_size": 19}}, "data.train_size", "greater than or equal to 20"),
        ({"width": 0.015625}, "width", "greater than 0.015625"),  # the 32-filter layers would round to 0 units
        ({"seed": 2**32}, "seed", "less than or equal to 4294967295"),
        ({"seed": -1}, "seed", "greater than or equal to 0"),
        ({"search_space": {"weight_decay": {"low": 1e-3, "high": 1e299}}}, "search_space.weight_decay.high", "less than or equal to 1"),
        ({"search_space": {"weight_decay": {"low": 0, "high": 1e-3}}}, "search_space.weight_decay.low", "greater than 0"),
        ({"learning_rate": True}, "learning_rate", "valid number"),
        ({"n_trials": True}, "n_trials", "not a boolean"),
        ({"epochs": "many"}, "epochs", "valid integer"),
        ({"max_gap": 0}, "max_gap", "greater than 0"),
        ({"reference": "maybe"}, "reference", "valid boolean"),
        ({"max_runtime_s": 0}, "max_runtime_s", "greater than 0"),
        ({"max_trial_hours": "lots"}, "max_trial_hours", "valid number"),
        ({"stop_when": {"target": 2}}, "stop_when.target", "less than or equal to 1"),
        ({"stop_when": {"no_improvement_trials": 0}}, "stop_when.no_improvement_trials", "greater than or equal to 1"),
        ({"confirm": {"max_hours": -1}}, "confirm.max_hours", "greater than 0"),
    ],
)
def test_bad_input_is_422_naming_field_and_reason(sqlite_client, change, field, reason):
    response = sqlite_client.post("/v1/studies", json={**SPEC, **change})
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    locations = {".".join(str(part) for part in error["loc"][1:]): error["msg"] for error in errors}
    assert field in locations, errors
    assert reason in locations[field]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"enqueue": [{"weight_decay": 1.0}]}, "enqueue[0].weight_decay must be within the study's search bounds [1e-06, 0.01]"),
        ({"enqueue": [{}, {"momentum": 0.1}]}, "enqueue[1] has unknown parameter(s) momentum"),
        ({"enqueue": [{"dropout_conv": 0.45}], "search_space": {"dropout_conv": {"high": 0.4}}}, "enqueue[0].dropout_conv"),
        ({"warm_start_from": "api-demo"}, "warm_start_from must name another study"),
    ],
)
def test_bad_study_features_are_422_naming_the_field(sqlite_client, change, reason):
    response = sqlite_client.post("/v1/studies", json={**SPEC, **change})
    assert response.status_code == 422, response.text
    assert reason in response.json()["detail"][0]["msg"]


def test_missing_name_malformed_json_and_unknown_study(sqlite_client):
    client = sqlite_client
    missing = client.post("/v1/studies", json={"n_trials": 3})
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["body", "name"]
    malformed = client.post("/v1/studies", content=b"{not json", headers={"content-type": "application/json"})
    assert malformed.status_code == 422
    for method, path in [
        ("GET", "/v1/studies/ghost"),
        ("GET", "/v1/studies/ghost/trials"),
        ("GET", "/v1/studies/ghost/best"),
        ("POST", "/v1/studies/ghost/stop"),
        ("DELETE", "/v1/studies/ghost"),
    ]:
        response = client.request(method, path)
        assert response.status_code == 404, (method, path)
        assert response.json()["detail"] == "study 'ghost' not found"
    client.post("/v1/studies", json={**SPEC, "name": "format-check"})
    bad_format = client.get("/v1/studies/format-check/best", params={"format": "yaml"})
    assert bad_format.status_code == 422 and bad_format.json()["detail"][0]["loc"] == ["query", "format"]


def test_patch_changes_n_trials_and_budgets_and_refuses_every_other_field(sqlite_client):
    client = sqlite_client
    assert client.post("/v1/studies", json={**SPEC, "name": "patch-check"}).status_code == 201
    edited = client.patch("/v1/studies/patch-check", json={"n_trials": 5, "max_runtime_s": 60, "max_trial_hours": 2})
    assert edited.status_code == 200, edited.text
    body = edited.json()
    assert (body["n_trials"], body["spec"]["n_trials"], body["spec"]["max_runtime_s"], body["spec"]["max_trial_hours"]) == (5, 5, 60, 2)
    assert body["search_ended_by"] is None and body["usage"] == {"runtime_s": None, "trial_hours": 0.0, "confirm_trial_hours": 0.0}
    removed = client.patch("/v1/studies/patch-check", json={"max_runtime_s": None}).json()
    assert (removed["spec"]["max_runtime_s"], removed["spec"]["max_trial_hours"], removed["n_trials"]) == (None, 2, 5)
    for change, message in [
        ({"epochs": 2}, "field 'epochs' cannot be changed on an existing study; mutable: n_trials, max_runtime_s, max_trial_hours"),
        ({"n_trials": 6, "stop_when": {"target": 0.5}}, "field 'stop_when' cannot be changed"),
        ({"colour": "red"}, "field 'colour' is not a study field"),
        ({"n_trials": 0}, "greater than or equal to 1"),
        ({"n_trials": None}, "valid integer"),
        ({"n_trials": 51}, "n_trials must be at most 50"),
        ({"max_trial_hours": -1}, "greater than 0"),
    ]:
        refused = client.patch("/v1/studies/patch-check", json=change)
        assert refused.status_code == 422 and message in refused.text, (change, refused.text)
    assert client.get("/v1/studies/patch-check").json()["spec"]["n_trials"] == 5  # nothing changed by a refused edit
    assert client.patch("/v1/studies/ghost", json={"n_trials": 2}).status_code == 404
    assert client.post("/v1/studies/patch-check/stop").status_code == 200
    stopped = client.patch("/v1/studies/patch-check", json={"n_trials": 9})
    assert stopped.status_code == 409 and "is stopped" in stopped.json()["detail"]


def test_health_and_openapi(sqlite_client):
    client = sqlite_client
    assert client.get("/healthz").json() == {"status": "ok", "database": "ok"}
    schema = client.get("/openapi.json").json()
    assert {"/v1/studies", "/v1/studies/{name}", "/v1/studies/{name}/trials", "/v1/studies/{name}/best",
            "/v1/studies/{name}/stop", "/healthz"} <= set(schema["paths"])
    # The search space in the schema is the trainer's declaration.
    from trainer import SEARCH_SPACE

    assert set(schema["components"]["schemas"]["SearchSpace"]["properties"]) == {spec.name for spec in SEARCH_SPACE}
    assert client.get("/docs").status_code == 200


def test_api_process_never_imports_tensorflow(tmp_path):
    """The API serves every endpoint (best formats included) without TensorFlow or Keras loaded."""
    script = textwrap.dedent(
        f"""
        import sys
        from fastapi.testclient import TestClient
        from service.api import create_app
        from service.config import Settings
        from tests.support import seed_leader
        app = create_app(Settings(database_url="sqlite:///{tmp_path}/api.db"))
        client = TestClient(app)
        assert client.post("/v1/studies", json={{"name": "no-tf", "n_trials": 2}}).status_code == 201
        # A best config, recorded as a worker records it, so that every format has something to render.
        assert seed_leader(app.state.session_factory, app.state.optuna_storage, "no-tf", 0.5,
                           {{"weight_decay": 1e-4, "l1_ratio": 0.2, "dropout_conv": 0.3, "dropout_dense": 0.4}}, 270)
        for path in ["/healthz", "/v1/studies", "/v1/studies/no-tf", "/v1/studies/no-tf/trials",
                     "/v1/studies/no-tf/best", "/v1/studies/no-tf/best?format=keras",
                     "/v1/studies/no-tf/best?format=python", "/dashboard", "/docs"]:
            assert client.get(path).status_code == 200, path
        loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("tensorflow", "keras"))
        assert not loaded, loaded[:5]
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


def test_train_size_beyond_the_servers_data_is_422_and_the_schema_says_so(tmp_path):
    from tests.support import CIFAR_DIR

    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'db'}", data_dir=str(CIFAR_DIR)), dashboard=False)
    with TestClient(app) as client:
        too_many = client.post("/v1/studies", json={**SPEC, "data": {"train_size": 601}})  # tests/data holds 600
        assert too_many.status_code == 422
        [error] = too_many.json()["detail"]
        assert error["loc"] == ["body", "data", "train_size"] and "at most 600" in error["msg"]
        assert client.post("/v1/studies", json={**SPEC, "data": {"train_size": 600}}).status_code == 201
        schema = client.get("/openapi.json").json()["components"]["schemas"]
        train_size = next(option for option in schema["DataRecipe"]["properties"]["train_size"]["anyOf"] if option.get("type") == "integer")
        assert (train_size["minimum"], train_size["maximum"]) == (20, 600)
        assert schema["WeightDecayBounds"]["properties"]["high"]["maximum"] == 1.0
        assert schema["WeightDecayBounds"]["properties"]["low"]["exclusiveMinimum"] == 0.0
    app.state.engine.dispose()


def test_the_dashboard_lists_no_study_in_the_trash(sqlite_url):
    app = create_app(Settings(database_url=sqlite_url), dashboard=True)
    with TestClient(app) as client:
        for name in ("kept", "binned"):
            assert client.post("/v1/studies", json={**SPEC, "name": name}).status_code == 201
        listed = lambda: sorted(study["study_name"] for study in client.get("/api/studies").json()["study_summaries"])  # noqa: E731
        binned, kept = listed_name("binned", ADMIN_OWNER), listed_name("kept", ADMIN_OWNER)  # with auth off, the admin's
        assert listed() == [binned, kept]
        assert client.delete("/v1/studies/binned").status_code == 204
        assert listed() == [kept]
        assert client.post("/v1/trash/binned/restore").status_code == 200
        assert listed() == [binned, kept]
    app.state.engine.dispose()
    app.state.optuna_storage.engine.dispose()
