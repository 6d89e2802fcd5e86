"""`regsearch retrain`: the final training of a best config on the shipped CIFAR-10 subset, for real."""

from __future__ import annotations

import json
import subprocess

import keras
import numpy as np
import pytest

from tests.support import REGSEARCH, ROOT, base_env, free_port
from trainer import BestConfig, RegularizationConfig, load_best, load_cifar10, rescale_for_train_size
from trainer._retrain import data_fingerprint

FOUND = RegularizationConfig(weight_decay=2e-3, l1_ratio=0.25, dropout_conv=0.35, dropout_dense=0.45)
STUDY_TRAIN_SIZE = 540  # the study's 600 images minus its 10% validation split
FULL_TRAIN_SIZE = 600  # tests/data: all training images, no validation split


def write_best(tmp_path, width: float = 0.25, learning_rate: float = 2e-3) -> str:
    best = BestConfig(
        learning_rate=learning_rate,
        model="baseline",
        regularization=FOUND,
        width=width,
        study="handoff-retrain",
        trial_number=4,
        value=0.31,
        train_size=STUDY_TRAIN_SIZE,
        epochs=3,
        batch_size=64,
        seed=0,
    )
    path = tmp_path / "best.json"
    path.write_text(json.dumps(best.to_dict() | {"best_since": "2026-11-24T20:00:00+00:00", "direction": "maximize"}))
    return str(path)


def test_retrain_command_writes_a_loadable_model_and_its_provenance(tmp_path, cifar_dir):
    output = tmp_path / "production"
    completed = subprocess.run(
        [REGSEARCH, "retrain", "handoff-retrain", "--config", write_best(tmp_path), "--data-dir", cifar_dir,
         "--epochs", "1", "--output", str(output)],
        env=base_env(), cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "test accuracy" in completed.stdout and "lambda/(2n)" in completed.stdout

    provenance = json.loads((output / "provenance.json").read_text())
    model = keras.models.load_model(output / "model.keras")

    # The saved model carries the carried-over config: lambda fixed, Keras coefficients x 540/600.
    expected = rescale_for_train_size(FOUND, STUDY_TRAIN_SIZE, FULL_TRAIN_SIZE)
    assert expected.weight_decay == pytest.approx(FOUND.weight_decay * 0.9)
    kernels = [layer for layer in model.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))]
    assert len(kernels) == 7
    for layer in kernels:
        assert isinstance(layer.kernel_regularizer, keras.regularizers.L1L2)
        assert layer.kernel_regularizer.l1 == pytest.approx(expected.l1)
        assert layer.kernel_regularizer.l2 == pytest.approx(expected.l2)
    rates = {layer.name: layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)}
    assert rates == {"block1_dropout": 0.35, "block2_dropout": 0.35, "block3_dropout": 0.35, "classifier_dropout": 0.45}

    assert provenance["study"] == "handoff-retrain" and provenance["trial_number"] == 4
    assert provenance["seed"] == 0 and provenance["epochs"] == 1
    assert provenance["learning_rate"] == 2e-3 == provenance["training"]["settings"]["learning_rate"]  # the study's
    assert "learning rate 0.002" in completed.stdout
    assert provenance["config"]["found"]["params"] == FOUND.to_dict()
    assert provenance["config"]["trained"]["params"] == pytest.approx(expected.to_dict())
    assert provenance["train_size_rescale"] | {"rule": None} == {
        "applied": True, "n_study": STUDY_TRAIN_SIZE, "n_full": FULL_TRAIN_SIZE, "factor": pytest.approx(0.9), "rule": None,
    }  # fmt: skip
    assert provenance["versions"]["keras"] == keras.__version__ and provenance["versions"]["tensorflow"]

    # The fingerprints identify the images trained and tested on: all 600 training images, the 200 test ones.
    data = load_cifar10(cifar_dir, val_fraction=0.0)
    assert provenance["data"]["train"] == {"images": 600, "sha256": data_fingerprint(data.x_train, data.y_train)}
    assert provenance["data"]["test"] == {"images": 200, "sha256": data_fingerprint(data.x_test, data.y_test)}

    # The recorded test accuracy is the saved model's.
    predictions = model.predict(data.x_test.astype(np.float32), verbose=0)
    accuracy = float(np.mean(predictions.argmax(axis=1) == data.y_test))
    assert provenance["test"]["accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert provenance["test"]["images"] == 200


def test_retrain_trains_at_the_studys_learning_rate(tmp_path, cifar_dir):
    """The best config carries the study's recipe; retrain's optimizer runs at its learning rate, not 1e-3."""
    from trainer import retrain
    from trainer._train import _CACHE

    best = load_best(write_best(tmp_path, learning_rate=0.05))
    assert best.learning_rate == 0.05 and best.to_dict()["learning_rate"] == 0.05
    result = retrain(best, data_dir=cifar_dir, epochs=1)
    assert result.training.settings.learning_rate == 0.05
    searchable = next(reversed(_CACHE.values()))  # the compiled model retrain trained with
    assert float(searchable.optimizer.learning_rate) == pytest.approx(0.05)
    assert float(result.model.optimizer.learning_rate) == pytest.approx(0.05)
    assert result.provenance["learning_rate"] == 0.05 and result.provenance["best"]["learning_rate"] == 0.05
    overridden = retrain(best, data_dir=cifar_dir, epochs=1, learning_rate=1e-3)
    assert overridden.provenance["learning_rate"] == 1e-3


def test_data_fingerprint_ignores_order_and_sees_every_label():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(20, 4, 4, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=20)
    order = rng.permutation(20)
    assert data_fingerprint(images[order], labels[order]) == data_fingerprint(images, labels)
    changed = labels.copy()
    changed[3] = (changed[3] + 1) % 10
    assert data_fingerprint(images, changed) != data_fingerprint(images, labels)


def test_retrain_against_an_unreachable_server_prints_one_line(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    completed = subprocess.run(
        [REGSEARCH, "retrain", "some-study", "--url", url, "--output", str(tmp_path / "out")],
        env=base_env(), cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert completed.returncode != 0
    assert "Traceback" not in completed.stderr
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, completed.stderr
    assert lines[0].startswith("regsearch retrain: cannot reach the regsearch service at") and url in lines[0]
    assert not (tmp_path / "out").exists()


def test_retrain_refuses_a_config_file_with_a_bad_field(tmp_path):
    path = tmp_path / "best.json"
    values = json.loads(open(write_best(tmp_path)).read())
    values["params"]["dropout_dense"] = 1.2
    path.write_text(json.dumps(values))
    completed = subprocess.run(
        [REGSEARCH, "retrain", "handoff-retrain", "--config", str(path)],
        env=base_env(), cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert completed.returncode == 1
    assert completed.stderr.strip().splitlines() == [
        f"regsearch retrain: {path}: dropout_dense must be in [0, 1), got 1.2"
    ]
