"""The final training: a study's best config, on training + validation data, tested once.

The search chose the config on a validation split; the production model should learn from every
labelled training image, so :func:`retrain` loads the training set without a validation split
(``load_cifar10(val_fraction=0)``), trains with :func:`trainer.train`, and then evaluates the model
once on the test set, which nothing before has looked at.

Carrying the strength over (the lambda/(2n) rule)
-------------------------------------------------
Keras adds ``l1*sum|w| + l2*sum(w**2)`` to each batch's *mean* loss, while the textbook writes
E = E0 + lambda/(2n) * sum(w**2) with n the number of training examples. The quantity to keep when
n grows is lambda, so the Keras coefficients scale by ``n_study / n_full``
(:func:`trainer.rescale_for_train_size`; ``n_study`` is :attr:`BestConfig.train_size`, the images
the trials trained on after their validation split). Both configs go into ``provenance.json``;
``rescale=False`` (``--no-rescale``) keeps the study's coefficients as they are.

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

from trainer._data import CifarData, load_cifar10, make_dataset
from trainer._export import load_best
from trainer._space import BestConfig, rescale_for_train_size
from trainer._train import TrainResult, TrainSettings, train

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
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("regsearch", "tensorflow", "keras", "numpy", "optuna"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def _config_entry(regularization: Any) -> dict[str, Any]:
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
    is every training image of ``data_dir`` (or ``REGSEARCH_DATA_DIR``, or the download), without a
    validation split; pass ``data`` (a :class:`CifarData`) instead to choose the images yourself
    (its ``x_train`` and ``x_val`` are both trained on). ``epochs``, ``seed`` and ``batch_size``
    default to the study's; the coefficients are carried over by the lambda/(2n) rule unless
    ``rescale=False`` (see the module docstring). ``output`` receives ``model.keras`` and
    ``provenance.json``.
    """
    best = load_best(best)
    epochs = best.epochs if epochs is None else epochs
    if epochs is None:
        raise ValueError("epochs: the best config does not say how long the study trained; give epochs")
    seed = (best.seed if best.seed is not None else 0) if seed is None else seed
    if batch_size is None:
        batch_size = best.batch_size if best.batch_size is not None else TrainSettings.batch_size
    if learning_rate is None:
        learning_rate = TrainSettings.learning_rate  # the study spec's default too (BestConfig does not carry it)
    settings = TrainSettings(
        model=best.model,
        width=best.width,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        augment=best.augment,
        seed=seed,
        precision=precision,
    )

    if data is None:
        data = load_cifar10(data_dir, val_fraction=0.0, seed=seed)
    elif not isinstance(data, CifarData):
        raise ValueError(f"data must be a CifarData (from load_cifar10), got {type(data).__name__}")
    x_train = np.concatenate([data.x_train, data.x_val]) if len(data.y_val) else data.x_train
    y_train = np.concatenate([data.y_train, data.y_val]) if len(data.y_val) else data.y_train
    if len(data.y_test) == 0:
        raise ValueError("data has no test images: retrain evaluates the final model on the test set")
    n_full = len(y_train)

    found = best.regularization
    if rescale and best.train_size:
        trained = rescale_for_train_size(found, best.train_size, n_full)
        carry = {"applied": True, "n_study": best.train_size, "n_full": n_full, "factor": best.train_size / n_full}
    else:
        trained = found
        reason = "--no-rescale" if not rescale else "the best config does not record the study's train_size"
        carry = {"applied": False, "n_study": best.train_size, "n_full": n_full, "factor": 1.0, "reason": reason}
    carry["rule"] = (
        "keep the textbook lambda fixed (l2 = lambda/(2n), l1 = lambda_1/n): Keras coefficients scale by n_study/n_full"
    )

    rng = np.random.default_rng(seed + 7919)
    monitor = np.sort(rng.choice(n_full, size=min(n_full, MONITOR_IMAGES), replace=False))
    training_data = CifarData(
        x_train=x_train,
        y_train=y_train,
        x_val=x_train[monitor],
        y_val=y_train[monitor],
        x_test=data.x_test,
        y_test=data.y_test,
        source=data.source,
        class_names=data.class_names,
    )
    result = train(trained, training_data, settings, on_epoch_end=on_epoch_end)

    import keras

    model = result.model
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    # Build the optimizer's slots now, so the saved file loads without a variable-count mismatch warning
    # (its state is fresh: fine-tuning from model.keras starts Adam anew).
    model.optimizer.build(model.trainable_variables)
    evaluation = model.evaluate(make_dataset(data.x_test, data.y_test, batch_size), verbose=0, return_dict=True)
    test_accuracy = float(evaluation["accuracy"])
    test_loss = float(evaluation["loss"])

    history = [
        {("monitor_" + key.removeprefix("val_") if key.startswith("val_") else key): value for key, value in epoch.items()}
        for epoch in result.history
    ]
    provenance: dict[str, Any] = {
        "provenance_version": PROVENANCE_VERSION,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "study": best.study,
        "trial_number": best.trial_number,
        "study_objective": {"metric": best.metric, "value": best.value},
        "model": best.model,
        "width": best.width,
        "config": {"found": _config_entry(found), "trained": _config_entry(trained)},
        "train_size_rescale": carry,
        "best": best.to_dict(),
        "seed": seed,
        "epochs": epochs,
        "training": {
            "settings": settings.to_dict(),
            "precision": result.precision,
            "images": n_full,
            "wall_time_s": result.wall_time_s,
            "images_per_second": result.images_per_second,
            "final_train_accuracy": result.train_accuracy,
            "weight_norms": result.weight_norms,
            "sparsity": result.sparsity,
            "monitor": f"{len(monitor)} training images, inference mode, after each epoch (not a validation set)",
            "history": history,
        },
        "data": {
            "source": data.source,
            "fingerprint": "sha256 over the sorted sha256 of each (image, label) pair; independent of order",
            "train": {"images": n_full, "sha256": data_fingerprint(x_train, y_train)},
            "test": {"images": int(len(data.y_test)), "sha256": data_fingerprint(data.x_test, data.y_test)},
        },
        "test": {
            "accuracy": test_accuracy,
            "loss": test_loss,
            "loss_includes_penalty": True,
            "images": int(len(data.y_test)),
        },
        "versions": _versions(),
        "command": sys.argv if Path(sys.argv[0]).name == "regsearch" else None,
    }

    output_path = model_path = provenance_path = None
    if output is not None:
        output_path = Path(output)
        output_path.mkdir(parents=True, exist_ok=True)
        model_path = output_path / "model.keras"
        provenance_path = output_path / "provenance.json"
        model.save(model_path)
        provenance["files"] = {"model": model_path.name, "model_sha256": hashlib.sha256(model_path.read_bytes()).hexdigest()}
        provenance_path.write_text(json.dumps(provenance, indent=2) + "\n")
    return RetrainResult(
        model=model,
        test_accuracy=test_accuracy,
        test_loss=test_loss,
        provenance=provenance,
        training=result,
        output=output_path,
        model_path=model_path,
        provenance_path=provenance_path,
    )
