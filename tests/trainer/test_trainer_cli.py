"""``regsearch train`` as a user runs it: a real subprocess on the shipped CIFAR-10 subset."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.support import REGSEARCH, base_env


@pytest.mark.one_backend  # a whole process of TensorFlow start-up and training: the default backend's run is enough
def test_train_command_writes_its_metrics(cifar_dir, tmp_path):
    out = tmp_path / "metrics" / "out.json"
    completed = subprocess.run(
        [
            REGSEARCH, "train", "--model", "baseline", "--weight-decay", "1e-4", "--l1-ratio", "0.2",
            "--dropout-conv", "0.3", "--dropout-dense", "0.5", "--epochs", "1", "--train-size", "200",
            "--width", "0.25", "--batch-size", "32", "--data-dir", cifar_dir, "--json", str(out),
        ],
        env=base_env(REGSEARCH_DATA_DIR="/nonexistent"),  # --data-dir wins over the environment
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "epoch 1/1" in completed.stderr  # the progress bar
    assert "final val_accuracy" in completed.stdout  # the summary
    metrics = json.loads(out.read_text())
    assert metrics["config"] == {"weight_decay": 1e-4, "l1_ratio": 0.2, "dropout_conv": 0.3, "dropout_dense": 0.5}
    assert metrics["keras"]["l1"] == 1e-4 * 0.2 and metrics["keras"]["l2"] == 1e-4 * 0.8
    assert (metrics["train_size"], metrics["val_size"], metrics["epochs_run"]) == (180, 20, 1)
    epoch = metrics["history"][0]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "gap", "weight_l1", "weight_l2", "sparsity", "images_per_second"):
        assert isinstance(epoch[key], float), key
    assert metrics["val_accuracy"] == epoch["val_accuracy"] and metrics["images_per_second"] > 0


@pytest.mark.one_backend  # refused before any training, flags from the recipe: nothing of the backend's
def test_train_command_reports_bad_input_in_one_line(cifar_dir, tmp_path):
    bad_ratio = subprocess.run([REGSEARCH, "train", "--l1-ratio", "1.5"], env=base_env(), capture_output=True, text=True, timeout=60)
    assert bad_ratio.returncode == 1
    assert bad_ratio.stderr.strip() == "regsearch train: l1_ratio must be in [0, 1], got 1.5"
    no_data = subprocess.run([REGSEARCH, "train", "--data-dir", str(tmp_path)], env=base_env(), capture_output=True, text=True, timeout=60)
    assert no_data.returncode == 1 and "Traceback" not in no_data.stderr
    assert f"no CIFAR-10 data in {tmp_path}" in no_data.stderr and "data_batch_1" in no_data.stderr


@pytest.mark.one_backend  # refused before any training, flags from the recipe: nothing of the backend's
def test_recipe_flags_are_generated_from_the_recipe():
    """train's defaults are TrainSettings'; submit and retrain leave unset flags out (the spec's / the study's)."""
    from service.cli import build_parser
    from service.cli.options import values_from_args
    from service.schemas import StudySpec
    from trainer import Recipe, TrainSettings

    train = build_parser("train").parse_args(["train"])
    assert TrainSettings(**values_from_args(train, TrainSettings, exclude=("reuse_compiled",))) == TrainSettings()
    assert (train.epochs, train.batch_size, train.learning_rate, train.augment) == (10, 128, 1e-3, False)
    submit = build_parser("submit").parse_args(["submit", "--learning-rate", "0.05", "--augment", "--train-size", "200"])
    assert values_from_args(submit, StudySpec, exclude=("search_space",)) == {
        "learning_rate": 0.05, "data": {"train_size": 200, "augment": True},
    }  # fmt: skip
    retrain = build_parser("retrain").parse_args(["retrain", "study", "--learning-rate", "0.05"])
    assert values_from_args(retrain, Recipe, only=("epochs", "batch_size", "learning_rate", "seed")) == {"learning_rate": 0.05}
