"""The study features of issue 11 over real HTTP: a real ``regsearch serve``, two real workers training
real Keras networks on the shipped CIFAR-10 subset, and the real CLI.

One server, one pair of workers and three small studies serve the whole module (the tests run in
order): ``feat-main`` (the reference, two enqueued configs, ten trials: enough for importance),
``feat-warm`` (warm-started from it) and ``feat-gap`` (a tiny ``max_gap``).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import httpx
import keras
import optuna
import pytest

from service.features import COLUMNS, TrialRow
from tests.support import LocalService
from trainer import RegularizationConfig, regularization_of

pytestmark = pytest.mark.slow

TINY = {"width": 0.25, "epochs": 1, "batch_size": 32, "learning_rate": 3e-3, "data": {"train_size": 500, "val_fraction": 0.2},
        "pruner": "none", "confirm": {"top_k": 0}}
ENQUEUED = [{"weight_decay": 1e-3, "l1_ratio": 0.5}, {"dropout_conv": 0.45}]
DEFAULTS = {"weight_decay": 1e-4, "l1_ratio": 0.0, "dropout_conv": 0.3, "dropout_dense": 0.5}
MAIN_TRIALS = 10  # importance needs ten complete trials


class Service(LocalService):
    """The module's server and workers, with their model store and the study's rows and Optuna study."""

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    def rows(self, name: str) -> list[dict[str, str]]:
        response = self.get(f"/v1/studies/{name}/trials", params={"format": "csv"})
        assert response.status_code == 200, response.text
        return list(csv.DictReader(io.StringIO(response.text)))

    def optuna_study(self, name: str) -> optuna.Study:
        return optuna.load_study(study_name=name, storage=f"sqlite:///{self.root / 'regsearch.db'}")


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("service-features")
    svc = Service.at(root, REGSEARCH_ARTIFACT_URL=str(root / "artifacts"))
    try:
        svc.start_server("--no-dashboard")
        # feat-main from the CLI: the enqueued configs come from the spec file, the rest from flags.
        spec_file = svc.root / "feat-main.json"
        spec_file.write_text(json.dumps({"name": "feat-main", "enqueue": ENQUEUED, **TINY}))
        submitted = svc.cli("submit", str(spec_file), "--n-trials", str(MAIN_TRIALS))
        assert submitted.returncode == 0, submitted.stderr
        svc.start_workers(2)
        yield svc
    finally:
        svc.stop()


def test_reference_runs_first_then_the_enqueued_configs_in_order_and_best_reports_its_margin(service, tmp_path):
    watched = service.cli("watch", "feat-main", "--interval", "0.5")  # returns when the study ends
    assert watched.returncode == 0, watched.stderr + service.logs()
    assert f"study feat-main completed: {MAIN_TRIALS}/{MAIN_TRIALS} trials" in watched.stdout
    assert "over the reference" in watched.stdout + watched.stderr  # the margin, shown live and at the end

    trials = service.get("/v1/studies/feat-main/trials").json()["trials"]
    assert len(trials) == MAIN_TRIALS and all(trial["state"] == "complete" for trial in trials)
    reference, *enqueued = trials[:3]
    assert (reference["number"], reference["stage"]) == (0, "reference")
    assert reference["params"] == pytest.approx(DEFAULTS)
    assert [trial["stage"] for trial in enqueued] == ["enqueued", "enqueued"]
    assert enqueued[0]["params"] == pytest.approx({**DEFAULTS, **ENQUEUED[0]})  # filled from the defaults, in order
    assert enqueued[1]["params"] == pytest.approx({**DEFAULTS, **ENQUEUED[1]})
    assert {trial["stage"] for trial in trials[3:]} == {"search"}
    for trial in trials:  # the gap, measured in inference mode on the fixed training sample, for every trial
        assert trial["gap"] == pytest.approx(trial["train_accuracy"] - trial["value"])
        assert trial["history"][-1]["gap"] == pytest.approx(trial["gap"])

    best = service.get("/v1/studies/feat-main/best").json()
    top = max(trials, key=lambda trial: trial["value"])
    assert best["value"] == pytest.approx(top["value"])
    margin = best["margin"]
    assert margin["reference"] == pytest.approx(reference["value"]) and margin["best"] == pytest.approx(best["value"])
    assert margin["value"] == pytest.approx(best["value"] - reference["value"]) and margin["value"] >= 0
    assert (margin["n_best"], margin["n_reference"], margin["low"]) == (1, 1, None)
    study = service.get("/v1/studies/feat-main").json()
    assert study["margin"] == margin and study["counts"]["complete"] == MAIN_TRIALS

    shown = service.cli("best", "feat-main")
    assert shown.returncode == 0 and f"{margin['value']:+.4f} over the reference" in shown.stdout


def test_best_model_downloads_as_a_loadable_keras_file_with_the_best_regularization(service, tmp_path):
    best = service.get("/v1/studies/feat-main/best").json()
    response = service.get("/v1/studies/feat-main/best/model")
    assert response.status_code == 200, response.text
    assert response.headers["x-regsearch-trial"] == str(best["trial_number"])
    path = tmp_path / "best.keras"
    path.write_bytes(response.content)
    model = keras.models.load_model(path)
    assert regularization_of(model) == pytest.approx(RegularizationConfig.from_dict(best["params"]).keras_values())
    assert model.output_shape == (None, 10)

    # One model file per study: the study reports it, and its size is the disk its artifacts use.
    study = service.get("/v1/studies/feat-main").json()
    assert study["model"]["trial_number"] == best["trial_number"] and study["model"]["size_bytes"] == len(response.content)
    assert int(response.headers["x-regsearch-disk-bytes"]) == len(response.content)
    model_files = [file for file in service.artifacts.iterdir() if file.is_file()]
    assert [file.name for file in model_files] == [study["model"]["artifact_id"]]  # old bests' files were removed

    downloaded = service.cli("best", "feat-main", "--model", str(tmp_path / "cli.keras"))
    assert downloaded.returncode == 0, downloaded.stderr
    assert (tmp_path / "cli.keras").read_bytes() == response.content


def test_trials_export_as_csv_and_json_with_the_stated_columns(service):
    rows = service.rows("feat-main")
    response = service.get("/v1/studies/feat-main/trials", params={"format": "csv"})
    assert response.headers["content-type"].startswith("text/csv")
    assert list(csv.DictReader(io.StringIO(response.text)).fieldnames) == list(COLUMNS)
    assert [int(row["number"]) for row in rows] == list(range(MAIN_TRIALS))
    assert [row["stage"] for row in rows[:3]] == ["reference", "enqueued", "enqueued"]
    assert all(row["state"] == "complete" and row["feasible"] == "True" and int(row["epochs_run"]) == 1 for row in rows)

    as_json = service.get("/v1/studies/feat-main/trials", params={"format": "json"}).json()
    assert [list(row) for row in as_json] == [list(COLUMNS)] * MAIN_TRIALS
    assert all(TrialRow.model_validate(row) for row in as_json)  # the documented row schema
    nested = service.get("/v1/studies/feat-main/trials").json()["trials"]  # the default shape is unchanged
    for row, trial in zip(as_json, nested):
        assert row["value"] == pytest.approx(trial["value"]) and row["gap"] == pytest.approx(trial["gap"])
        assert {name: row[name] for name in DEFAULTS} == pytest.approx(trial["params"])

    from_cli = service.cli("trials", "feat-main", "--csv")
    assert from_cli.returncode == 0, from_cli.stderr
    assert from_cli.stdout == response.text  # the same columns and rows as the API
    table = service.cli("trials", "feat-main")
    assert table.returncode == 0 and table.stdout.splitlines()[1].split()[:3] == ["0", "complete", "reference"]
    assert service.get("/v1/studies/ghost/trials", params={"format": "csv"}).status_code == 404


def test_importance_matches_optunas_own_evaluators_and_needs_enough_trials(service):
    study = service.optuna_study("feat-main")
    expected = {
        "ped-anova": optuna.importance.get_param_importances(study, evaluator=optuna.importance.PedAnovaImportanceEvaluator()),
        "fanova": optuna.importance.get_param_importances(study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)),
    }
    for evaluator, values in expected.items():
        response = service.get("/v1/studies/feat-main/importance", params={"evaluator": evaluator})
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["evaluator"], body["n_trials"]) == (evaluator, MAIN_TRIALS)
        assert list(body["importances"]) == list(values) and body["importances"] == pytest.approx(values)
    default = service.get("/v1/studies/feat-main/importance").json()
    assert default["evaluator"] == "ped-anova"
    shown = service.cli("importance", "feat-main")
    assert shown.returncode == 0 and f"{MAIN_TRIALS} complete trials" in shown.stdout
    assert service.get("/v1/studies/feat-main/importance", params={"evaluator": "shap"}).status_code == 422


def test_warm_start_from_a_compatible_study_seeds_the_sampler_and_an_incompatible_one_is_refused(service):
    refused = service.post("/v1/studies", json={"name": "feat-wide", **TINY, "width": 0.5, "warm_start_from": "feat-main"})
    assert refused.status_code == 422
    (error,) = refused.json()["detail"]
    assert error["loc"] == ["body", "warm_start_from"] and "width 0.25 != 0.5" in error["msg"]
    missing = service.post("/v1/studies", json={"name": "feat-none", **TINY, "warm_start_from": "ghost"})
    assert missing.status_code == 404 and "study 'ghost' not found" in missing.text
    assert service.get("/v1/studies/feat-wide").status_code == 404  # nothing was created
    from_cli = service.cli("submit", "--name", "feat-wide", "--width", "0.5", "--warm-start-from", "feat-main")
    assert from_cli.returncode == 1 and "warm_start_from: " in from_cli.stderr and "Traceback" not in from_cli.stderr

    source = {trial["number"]: trial for trial in service.get("/v1/studies/feat-main/trials").json()["trials"]}
    created = service.post("/v1/studies", json={"name": "feat-warm", **TINY, "n_trials": 2, "reference": False,
                                                "seed": 1, "warm_start_from": "feat-main"})
    assert created.status_code == 201, created.text
    assert created.json()["warm_start"] == {"source": "feat-main", "trials": MAIN_TRIALS, "skipped_out_of_bounds": 0,
                                            "skipped_no_gap": 0}
    study = service.wait_status("feat-warm")
    assert study["trials_finished"] == 2 and study["counts"]["complete"] == 2  # warm-start trials are not its own

    # What the sampler reads: the source's complete trials, in this study, with their params and values.
    trials = service.optuna_study("feat-warm").get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    copied = [trial for trial in trials if trial.user_attrs.get("stage") == "warm_start"]
    assert len(copied) == MAIN_TRIALS and len(trials) == MAIN_TRIALS + 2
    for trial in copied:
        original = source[trial.user_attrs["warm_start_from"]["number"]]
        assert trial.params == pytest.approx(original["params"]) and trial.value == pytest.approx(original["value"])
    best = service.get("/v1/studies/feat-warm/best").json()  # the best is one of its own trials
    assert best["trial_number"] >= MAIN_TRIALS and best["margin"] is None  # no reference run here


def test_an_infeasible_trial_is_never_the_best(service):
    max_gap = 0.01  # tiny: most trials of this recipe overshoot it (their gaps run from about 0 to 0.1)
    assert service.post("/v1/studies", json={"name": "feat-gap", **TINY, "n_trials": 3, "seed": 2, "max_gap": max_gap}).status_code == 201
    service.wait_status("feat-gap")
    rows = service.rows("feat-gap")
    assert len(rows) == 3 and all(row["state"] == "complete" for row in rows)
    for row in rows:
        assert row["feasible"] == str(float(row["gap"]) <= max_gap)
    feasible = [row for row in rows if row["feasible"] == "True"]
    assert len(feasible) < len(rows), "expected at least one trial above the tiny max_gap"
    best = service.get("/v1/studies/feat-gap/best")
    model = service.get("/v1/studies/feat-gap/best/model")
    if feasible:
        top = max(feasible, key=lambda row: float(row["value"]))
        assert best.json()["trial_number"] == int(top["number"])
        assert model.headers["x-regsearch-trial"] == top["number"]
    else:
        assert best.status_code == 404 and model.status_code == 404
        assert "a model is stored when a feasible trial becomes the best" in model.json()["detail"]
    # Optuna agrees: its best trial is the best feasible one.
    study = service.optuna_study("feat-gap")
    if feasible:
        assert study.best_trial.number == int(max(feasible, key=lambda row: float(row["value"]))["number"])
    # Importance needs ten complete trials: 409, saying so.
    too_few = service.get("/v1/studies/feat-gap/importance")
    assert too_few.status_code == 409 and "needs at least 10" in too_few.json()["detail"]


def test_delete_removes_the_studys_stored_model(service):
    study = service.get("/v1/studies/feat-warm").json()
    model_file = service.artifacts / study["model"]["artifact_id"]
    assert model_file.exists()
    assert httpx.delete(f"{service.url}/v1/studies/feat-warm", timeout=30).status_code == 204
    assert not model_file.exists()
    assert (service.artifacts / service.get("/v1/studies/feat-main").json()["model"]["artifact_id"]).exists()
    gone = service.get("/v1/studies/feat-warm/best/model")
    assert gone.status_code == 404 and "not found" in gone.json()["detail"]
