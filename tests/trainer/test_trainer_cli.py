"""``regsearch train`` as a user runs it: a real subprocess on the shipped CIFAR-10 subset."""

from __future__ import annotations

import json
import subprocess

from tests.support import REGSEARCH, base_env


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


def test_train_command_reports_bad_input_in_one_line(cifar_dir, tmp_path):
    bad_ratio = subprocess.run([REGSEARCH, "train", "--l1-ratio", "1.5"], env=base_env(), capture_output=True, text=True, timeout=60)
    assert bad_ratio.returncode == 1
    assert bad_ratio.stderr.strip() == "regsearch train: l1_ratio must be in [0, 1], got 1.5"
    no_data = subprocess.run([REGSEARCH, "train", "--data-dir", str(tmp_path)], env=base_env(), capture_output=True, text=True, timeout=60)
    assert no_data.returncode == 1 and "Traceback" not in no_data.stderr
    assert f"no CIFAR-10 data in {tmp_path}" in no_data.stderr and "data_batch_1" in no_data.stderr
