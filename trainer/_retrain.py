"""The final training: a study's best config, on training + validation data, tested once.

The search chose the config on a validation split; the production model should learn from every
labelled training image, so :func:`retrain` loads the training set without a validation split
(``load_cifar10(val_fraction=0)``), trains with :func:`trainer.train`, and then evaluates the model
once on the test set, which nothing before has looked at.

It trains with the study's recipe (model, width, epochs, batch size, learning rate, augmentation,
seed: :class:`BestConfig` carries it), each overridable. The strength is carried over to the larger
training set by the lambda/(2n) rule (:func:`trainer.rescale_for_train_size`; ``n_study`` is
:attr:`BestConfig.train_size`); both configs go into ``provenance.json``; ``rescale=False``
(``--no-rescale``) keeps the study's coefficients as they are.

Per-epoch monitoring
--------------------
:func:`trainer.train` validates after every epoch (with BatchNorm statistics recomputed on
training batches). Here there is no validation set any more, and the test set must be seen once
only, so the per-epoch "validation" runs on a fixed sample of the training images in inference
mode (``monitor_*`` in the history): it tracks fitting, not generalization.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import platform
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from trainer._data import CifarData, load_cifar10
from trainer._pipeline import make_dataset
from trainer._export import load_best
from trainer._best import BestConfig
from trainer._settings import TrainSettings
from trainer._space import RegularizationConfig, rescale_for_train_size
from trainer._train import TrainResult, train

__all__ = ["MONITOR_IMAGES", "RetrainResult", "data_fingerprint", "retrain"]

#: Training images evaluated (inference mode) after each epoch to monitor the fit.
MONITOR_IMAGES = 1000

PROVENANCE_VERSION = 1


@dataclasses.dataclass
class RetrainResult:
    """What :func:`retrain` produced. ``model`` is the trained, compiled Keras model."""

    model: Any
    test_accuracy: float
    test_loss: float
    provenance: dict[str, Any]
    training: TrainResult
    output: Path | None
    model_path: Path | None
    provenance_path: Path | None


def data_fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    """sha256 of a labelled image set, independent of its order.

    Each (image, label) pair is hashed; the sorted pair digests are hashed again. The same images with
    the same labels give the same fingerprint whatever the shuffle seed; any changed pixel or label
    changes it.
    """
    if len(images) != len(labels):
        raise ValueError(f"images ({len(images)}) and labels ({len(labels)}) differ in length")
    images = np.ascontiguousarray(images)
    labels = np.asarray(labels, dtype=np.int64)
    digests = sorted(
        hashlib.sha256(image.tobytes() + int(label).to_bytes(8, "little", signed=True)).digest()
        for image, label in zip(images, labels)
    )
    total = hashlib.sha256()
    total.update(f"{images.dtype.str}{images.shape[1:]}".encode())
    for digest in digests:
        total.update(digest)
    return total.hexdigest()


def _versions() -> dict[str, str | None]:
    import keras

    versions: dict[str, str | None] = {"python": platform.python_version(), "keras_backend": keras.backend.backend()}
    for package in ("regsearch", "tensorflow", "jax", "keras", "numpy", "optuna"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def _config_entry(regularization: RegularizationConfig) -> dict[str, Any]:
    return {"params": regularization.to_dict(), "keras": regularization.keras_values()}


def retrain(
    best: BestConfig | str | os.PathLike | Mapping[str, Any],
    *,
    output: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    data: CifarData | None = None,
    epochs: int | None = None,
    seed: int | None = None,
    rescale: bool = True,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    precision: str = "auto",
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
) -> RetrainResult:
    """Train the best config on all training images, test it once, and (with ``output``) save it.

    ``best`` is a :class:`BestConfig` or anything :func:`trainer.load_best` reads. The training set
    is every training image of ``data_dir`` (None: the keras.datasets download), without a validation
    split; pass ``data`` (a :class:`CifarData`) instead to choose the images yourself (its ``x_train``
    and ``x_val`` are both trained on). ``epochs``, ``seed``, ``batch_size`` and ``learning_rate``
    default to the study's; the coefficients are carried over by the lambda/(2n) rule unless
    ``rescale=False``. ``output`` receives ``model.keras`` and ``provenance.json``.
    """
    best = load_best(best)
    settings = TrainSettings.from_recipe(
        best, epochs=epochs, seed=seed, batch_size=batch_size, learning_rate=learning_rate, precision=precision
    )
    data = _all_training_images(data, data_dir, settings.seed)
    n_full = len(data.y_train)
    trained, carry = _carry_over(best, n_full, rescale)
    result = train(trained, data, settings, on_epoch_end=on_epoch_end)
    test = _test_once(result.model, data, settings)
    provenance = _provenance(best, trained, carry, settings, result, data, test)
    paths = _save(result.model, provenance, output)
    return RetrainResult(
        model=result.model,
        test_accuracy=test["accuracy"],
        test_loss=test["loss"],
        provenance=provenance,
        training=result,
        output=paths[0],
        model_path=paths[1],
        provenance_path=paths[2],
    )


def _all_training_images(data: CifarData | None, data_dir: Any, seed: int) -> CifarData:
    """Training + validation images as the training set; a fixed sample of them as the per-epoch monitor."""
    if data is None:
        data = load_cifar10(data_dir, val_fraction=0.0, seed=seed)
    elif not isinstance(data, CifarData):
        raise ValueError(f"data must be a CifarData (from load_cifar10), got {type(data).__name__}")
    if len(data.y_test) == 0:
        raise ValueError("data has no test images: retrain evaluates the final model on the test set")
    x_train = np.concatenate([data.x_train, data.x_val]) if len(data.y_val) else data.x_train
    y_train = np.concatenate([data.y_train, data.y_val]) if len(data.y_val) else data.y_train
    rng = np.random.default_rng(seed + 7919)
    monitor = np.sort(rng.choice(len(y_train), size=min(len(y_train), MONITOR_IMAGES), replace=False))
    return dataclasses.replace(data, x_train=x_train, y_train=y_train, x_val=x_train[monitor], y_val=y_train[monitor])


def _carry_over(best: BestConfig, n_full: int, rescale: bool) -> tuple[RegularizationConfig, dict[str, Any]]:
    """The config to train on ``n_full`` images (the lambda/(2n) rule) and a record of what was done."""
    if rescale and best.train_size:
        trained = rescale_for_train_size(best.regularization, best.train_size, n_full)
        carry = {"applied": True, "n_study": best.train_size, "n_full": n_full, "factor": best.train_size / n_full}
    else:
        trained = best.regularization
        reason = "--no-rescale" if not rescale else "the best config does not record the study's train_size"
        carry = {"applied": False, "n_study": best.train_size, "n_full": n_full, "factor": 1.0, "reason": reason}
    carry["rule"] = (
        "keep the textbook lambda fixed (l2 = lambda/(2n), l1 = lambda_1/n): Keras coefficients scale by n_study/n_full"
    )
    return trained, carry


def _test_once(model: Any, data: CifarData, settings: TrainSettings) -> dict[str, float]:
    """Compile with the training's optimizer settings and evaluate once on the test set."""
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=settings.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    # Build the optimizer's slots now, so the saved file loads without a variable-count mismatch warning
    # (its state is fresh: fine-tuning from model.keras starts Adam anew).
    model.optimizer.build(model.trainable_variables)
    evaluation = model.evaluate(make_dataset(data.x_test, data.y_test, settings.batch_size), verbose=0, return_dict=True)
    return {"accuracy": float(evaluation["accuracy"]), "loss": float(evaluation["loss"])}


def _provenance(
    best: BestConfig,
    trained: RegularizationConfig,
    carry: dict[str, Any],
    settings: TrainSettings,
    result: TrainResult,
    data: CifarData,
    test: dict[str, float],
) -> dict[str, Any]:
    """What was trained, on what, how, and how it tested (``provenance.json``)."""
    n_full = len(data.y_train)
    history = [
        {("monitor_" + key.removeprefix("val_") if key.startswith("val_") else key): value for key, value in epoch.items()}
        for epoch in result.history
    ]
    return {
        "provenance_version": PROVENANCE_VERSION,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "study": best.study,
        "trial_number": best.trial_number,
        "study_objective": {
            "metric": best.metric, "value": best.value, "n": best.n, "ci_low": best.ci_low, "ci_high": best.ci_high,
            "confirmed": best.confirmed, "ties": [tie.trial_number for tie in best.ties],
            "robust_ranges": {name: span.model_dump() for name, span in best.robust_ranges.items()},
        },
        "model": best.model,
        "width": best.width,
        "config": {"found": _config_entry(best.regularization), "trained": _config_entry(trained)},
        "train_size_rescale": carry,
        "best": best.to_dict(),
        "seed": settings.seed,
        "epochs": settings.epochs,
        "learning_rate": settings.learning_rate,
        "training": {
            "settings": settings.to_dict(),
            "precision": result.precision,
            "images": n_full,
            "wall_time_s": result.wall_time_s,
            "images_per_second": result.images_per_second,
            "final_train_accuracy": result.train_accuracy,
            "weight_norms": result.weight_norms,
            "sparsity": result.sparsity,
            "monitor": f"{len(data.y_val)} training images, inference mode, after each epoch (not a validation set)",
            "history": history,
        },
        "data": {
            "source": data.source,
            "fingerprint": "sha256 over the sorted sha256 of each (image, label) pair; independent of order",
            "train": {"images": n_full, "sha256": data_fingerprint(data.x_train, data.y_train)},
            "test": {"images": int(len(data.y_test)), "sha256": data_fingerprint(data.x_test, data.y_test)},
        },
        "test": {**test, "loss_includes_penalty": True, "images": int(len(data.y_test))},
        "versions": _versions(),
        "command": sys.argv if Path(sys.argv[0]).name == "regsearch" else None,
    }


def _save(model: Any, provenance: dict[str, Any], output: Any) -> tuple[Path | None, Path | None, Path | None]:
    """``output/model.keras`` and ``output/provenance.json`` (with the model file's sha256); nothing without ``output``."""
    if output is None:
        return None, None, None
    output_path = Path(output)
    output_path.mkdir(parents=True, exist_ok=True)
    model_path = output_path / "model.keras"
    provenance_path = output_path / "provenance.json"
    model.save(model_path)
    provenance["files"] = {"model": model_path.name, "model_sha256": hashlib.sha256(model_path.read_bytes()).hexdigest()}
    provenance_path.write_text(json.dumps(provenance, indent=2) + "\n")
    return output_path, model_path, provenance_path
