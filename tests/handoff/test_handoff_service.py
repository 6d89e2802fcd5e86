"""The hand-off against a running service: a real `regsearch serve` with a worker completes a study, then
the three forms of `best`, `regsearch best -o`, `load_best` and `regsearch retrain` all agree."""

from __future__ import annotations

import json
import subprocess

import httpx
import keras
import pytest

from tests.support import REGSEARCH, ROOT, base_env, free_port, kill_group, spawn, wait_healthy, wait_until
from trainer import (
    BestConfigUnavailable,
    RegularizationConfig,
    apply_regularization,
    build_model,
    keras_settings,
    load_best,
    python_snippet,
)

STUDY = "handoff-e2e"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """`regsearch serve` (SQLite, one worker) with one completed 1-trial study on the shipped subset."""
    directory = tmp_path_factory.mktemp("handoff-service")
    url = f"http://127.0.0.1:{free_port()}"
    env = base_env(REGSEARCH_DATABASE_URL=f"sqlite:///{directory / 'regsearch.db'}", REGSEARCH_URL=url)
    port = url.rsplit(":", 1)[1]
    server = spawn([REGSEARCH, "serve", "--port", port, "--workers", "1", "--no-dashboard"], env, directory / "serve.log")
    try:
        wait_healthy(url, timeout=90)
        spec = {"name": STUDY, "model": "vgg", "width": 0.125, "n_trials": 1, "epochs": 1, "batch_size": 64,
                "learning_rate": 2e-3, "data": {"train_size": 200}, "confirm": {"top_k": 0}}  # fmt: skip
        assert httpx.post(f"{url}/v1/studies", json=spec, timeout=10).status_code == 201
        wait_until(
            lambda: httpx.get(f"{url}/v1/studies/{STUDY}", timeout=5).json()["status"] == "completed",
            timeout=240,
            what=f"study {STUDY} to complete (log: {directory / 'serve.log'})",
        )
        yield url, env, directory
    finally:
        kill_group(server)


def test_the_three_forms_of_best_and_regsearch_best_o_agree(service):
    url, env, directory = service
    best_file = directory / "best.json"
    completed = subprocess.run([REGSEARCH, "best", STUDY, "-o", str(best_file)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr

    from_file = load_best(best_file)
    assert from_file.study == STUDY and from_file.model == "vgg" and from_file.width == 0.125
    assert from_file.train_size == 180  # 200 images minus the 10% validation split: the n of lambda/(2n)
    assert (from_file.learning_rate, from_file.batch_size, from_file.data.train_size) == (2e-3, 64, 200)  # the recipe
    served = httpx.get(f"{url}/v1/studies/{STUDY}/best", timeout=10).json()  # the response model, honoured
    assert served["keras"] == from_file.regularization.keras_values() and served["augment"] is False
    assert served["direction"] == "maximize" and served["best_since"] and served["learning_rate"] == 2e-3
    assert load_best(url, study=STUDY) == from_file
    assert load_best(f"{url}/v1/studies/{STUDY}/best") == from_file

    settings = httpx.get(f"{url}/v1/studies/{STUDY}/best", params={"format": "keras"}, timeout=10).json()
    assert settings == json.loads(json.dumps(keras_settings(from_file)))
    regularizer = keras.regularizers.L1L2(l1=from_file.regularization.l1, l2=from_file.regularization.l2)
    assert settings["kernel_regularizer"] == keras.regularizers.serialize(regularizer)

    snippet = httpx.get(f"{url}/v1/studies/{STUDY}/best", params={"format": "python"}, timeout=10)
    assert snippet.headers["content-type"].startswith("text/x-python")
    assert snippet.text == python_snippet(from_file)
    namespace: dict = {"__name__": "snippet"}
    exec(compile(snippet.text, "snippet.py", "exec"), namespace)  # noqa: S102 - the served snippet, run as pasted
    ours = build_model(from_file)
    assert namespace["model"].count_params() == ours.count_params()
    namespace["model"].set_weights(ours.get_weights())
    assert float(sum(namespace["model"].losses)) == pytest.approx(float(sum(ours.losses)), rel=1e-6)

    # And the user's own model, built with another regularization, takes the served config.
    user = build_model(RegularizationConfig(weight_decay=1e-2, l1_ratio=1.0), from_file.model, width=from_file.width)
    user.set_weights(ours.get_weights())
    assert float(sum(user.losses)) != pytest.approx(float(sum(ours.losses)), rel=1e-3)
    regularized = apply_regularization(user, load_best(url, study=STUDY))
    assert float(sum(regularized.losses)) == pytest.approx(float(sum(ours.losses)), rel=1e-6)


def test_load_best_and_retrain_name_an_unknown_study(service):
    url, env, directory = service
    with pytest.raises(BestConfigUnavailable, match="no-such-study"):
        load_best(url, study="no-such-study")
    completed = subprocess.run(
        [REGSEARCH, "retrain", "no-such-study", "--url", url], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 1
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and "no-such-study" in lines[0] and "Traceback" not in completed.stderr


def test_retrain_from_the_service_with_no_rescale(service):
    url, env, directory = service
    output = directory / "production"
    completed = subprocess.run(
        [REGSEARCH, "retrain", STUDY, "--output", str(output), "--no-rescale"],  # URL: REGSEARCH_URL, data: REGSEARCH_DATA_DIR
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "kept as found (--no-rescale)" in completed.stdout
    provenance = json.loads((output / "provenance.json").read_text())
    best = load_best(url, study=STUDY)
    assert provenance["study"] == STUDY and provenance["trial_number"] == best.trial_number
    assert provenance["config"]["found"]["params"] == best.regularization.to_dict()
    assert provenance["config"]["trained"] == provenance["config"]["found"]
    carry = provenance["train_size_rescale"]
    assert (carry["applied"], carry["n_study"], carry["n_full"]) == (False, 180, 600)  # trained on train + val
    assert provenance["training"]["images"] == 600
    assert provenance["learning_rate"] == best.learning_rate == 2e-3  # the study's, not the 1e-3 default
    model = keras.models.load_model(output / "model.keras")
    kernels = [layer for layer in model.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))]
    assert kernels
    for layer in kernels:
        assert layer.kernel_regularizer.get_config() == {"l1": best.regularization.l1, "l2": best.regularization.l2}
