"""The fair gap (inference mode, fixed training sample) and the trained model as a loadable .keras artifact."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import optuna
import pytest

from service.confirmation import ConfirmSpec, summarize
from service.features import (
    MODEL_ATTR,
    NoBestModel,
    disk_usage,
    download_model,
    enqueue_reference,
    make_artifact_store,
    model_of,
    store_model,
)
from trainer import SEARCH_SPACE, RegularizationConfig, TrainSettings, build_model, load_cifar10, train
from trainer._gap import inference_accuracy, measure_gap, train_sample_indices
from trainer._keras_file import regularization_of, save_keras_model

CONFIG = RegularizationConfig(weight_decay=2e-4, l1_ratio=0.25, dropout_conv=0.35, dropout_dense=0.45)


@pytest.fixture(scope="module")
def data(cifar_dir):
    return load_cifar10(cifar_dir, train_size=300, val_fraction=0.2, seed=0, include_test=False)


@pytest.fixture(scope="module")
def result(data):
    return train(CONFIG, data, TrainSettings(width=0.25, epochs=1, batch_size=32, seed=0))


@pytest.mark.one_backend  # no Keras: nothing of the backend's
def test_training_sample_is_fixed_by_the_seed():
    first = train_sample_indices(240, 100, seed=3)
    assert len(first) == 100 and np.array_equal(first, train_sample_indices(240, 100, seed=3))
    assert not np.array_equal(first, train_sample_indices(240, 100, seed=4))
    assert len(train_sample_indices(50, 100)) == 50
    with pytest.raises(ValueError, match="sample_size"):
        train_sample_indices(50, 0)


def test_gap_is_measured_in_inference_mode_on_the_fixed_sample(data, result):
    model = result.model
    measured = measure_gap(model, data, sample_size=100, seed=0)
    indices = train_sample_indices(len(data.y_train), 100, seed=0)
    assert measured.sample_size == 100
    # Keras' own inference path (predict: dropout off, BN population statistics) agrees.
    predicted = model.predict(data.x_train[indices], verbose=0).argmax(axis=-1)
    assert measured.train_accuracy == pytest.approx(np.mean(predicted == data.y_train[indices]), abs=1e-6)
    # Validation as the trainer measured it (same weights, same BN statistics).
    assert measured.val_accuracy == pytest.approx(result.val_accuracy, abs=1e-6)
    assert measured.gap == pytest.approx(measured.train_accuracy - measured.val_accuracy)
    # Deterministic: measuring again gives the same numbers (no dropout draws involved).
    assert measure_gap(model, data, sample_size=100, seed=0) == measured
    assert measure_gap(model, data, sample_size=100, val_accuracy=0.5).val_accuracy == 0.5
    assert inference_accuracy(model, data.x_val, data.y_val) == pytest.approx(result.val_accuracy, abs=1e-6)


def test_keras_file_loads_without_custom_objects_with_the_trials_regularization(result, data, tmp_path):
    path = save_keras_model(result, tmp_path / "model.keras")
    loaded = keras.models.load_model(path)
    carried = regularization_of(loaded)
    assert carried == pytest.approx(CONFIG.keras_values())
    assert [type(layer).__name__ for layer in loaded.layers if "dropout" in layer.name] == ["Dropout"] * 4
    np.testing.assert_allclose(loaded.predict(data.x_val[:8], verbose=0), result.model.predict(data.x_val[:8], verbose=0), atol=1e-6)
    with pytest.raises(ValueError, match=r"must end in \.keras"):
        save_keras_model(result, tmp_path / "model.h5")


def test_keras_file_written_on_one_backend_loads_on_the_other(result, data, tmp_path):
    """The file is Keras' own format: TensorFlow's file loads on JAX and JAX's on TensorFlow (make test runs both ways)."""
    path = save_keras_model(result, tmp_path / "model.keras")
    np.save(tmp_path / "images.npy", data.x_val[:8])
    other = "jax" if keras.backend.backend() == "tensorflow" else "tensorflow"
    script = (
        "import json, sys, numpy as np, keras; from trainer._keras_file import regularization_of; "
        "model = keras.models.load_model(sys.argv[1]); "
        "np.save(sys.argv[3], keras.ops.convert_to_numpy(model.predict_on_batch(np.load(sys.argv[2]).astype('float32')))); "
        "print(json.dumps([keras.backend.backend(), regularization_of(model)]))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script, str(path), str(tmp_path / "images.npy"), str(tmp_path / "out.npy")],
        env={**os.environ, "KERAS_BACKEND": other, "TF_CPP_MIN_LOG_LEVEL": "3"}, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    backend, carried = json.loads(completed.stdout.strip().splitlines()[-1])
    assert backend == other and carried == pytest.approx(CONFIG.keras_values())
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), result.model.predict(data.x_val[:8], verbose=0), atol=1e-5)


def _storing_study(storage, name, store, confirm=None):
    """A study and ``run(value, model)``: one trial that draws its params and stores its model from inside the
    objective, as the worker does; returns what ``store_model`` returned."""
    study = optuna.create_study(direction="maximize", storage=storage, study_name=name, sampler=optuna.samplers.RandomSampler(seed=0))

    def run(value, model):
        stored = []

        def objective(trial):
            for spec in SEARCH_SPACE:
                trial.suggest_float(spec.name, spec.low, spec.high, log=spec.log)
            stored.append(store_model(study, trial, value, model, store, confirm))
            return value

        study.optimize(objective, n_trials=1)
        return stored[0]

    return study, run


def _files(store_dir):
    return sorted(path.name for path in store_dir.iterdir() if path.is_file())


@pytest.mark.one_backend  # which files the store keeps; the .keras file on each backend: the two tests above
def test_the_best_configs_model_is_kept_and_older_ones_removed(result, sqlite_url, tmp_path):
    store = make_artifact_store(tmp_path / "artifacts")
    better = build_model(RegularizationConfig(weight_decay=1e-3, l1_ratio=0.0, dropout_conv=0.4, dropout_dense=0.3), width=0.25)
    study, run = _storing_study(sqlite_url, "art", store)

    record = run(0.40, result)
    assert record.trial_number == 0 and model_of(study, 0) == record
    assert disk_usage(study, store) == {"artifacts": 1, "bytes": record.size_bytes} and record.size_bytes > 10_000
    assert study.get_trials()[0].system_attrs[MODEL_ATTR]["artifact_id"] == record.artifact_id

    record = run(0.55, better)
    assert record.trial_number == 1
    assert _files(tmp_path / "artifacts") == [record.artifact_id]  # the old best's file is gone
    assert run(0.50, result) is None  # not the best: nothing uploaded
    assert model_of(study, 2) is None and disk_usage(study, store)["artifacts"] == 1
    # The dashboard's view: the artifact is listed under its trial.
    metas = optuna.artifacts.get_all_artifact_meta(study.get_trials()[1], storage=study._storage)
    assert [meta.artifact_id for meta in metas] == [record.artifact_id]
    assert optuna.artifacts.get_all_artifact_meta(study.get_trials()[2], storage=study._storage) == []

    out = tmp_path / "best.keras"
    assert download_model(study, store, 1, out) == record
    carried = regularization_of(keras.models.load_model(out))
    assert carried == pytest.approx({"l1": 0.0, "l2": 1e-3, "dropout_conv": 0.4, "dropout_dense": 0.3})


@pytest.mark.one_backend  # which files the store keeps; the .keras file on each backend: the two tests above
def test_with_confirmation_the_top_configs_and_the_reference_keep_their_models(result, sqlite_url, tmp_path):
    """Any of them can be the best once the confirmation stage has ranked them by their mean."""
    store = make_artifact_store(tmp_path / "artifacts")
    confirm = ConfirmSpec(top_k=2)
    study, run = _storing_study(sqlite_url, "top", store, confirm)
    enqueue_reference(study)
    reference = run(0.30, result)  # the reference runs first: kept whatever its rank
    first, second = run(0.50, result), run(0.40, result)
    assert [record.trial_number for record in (reference, first, second)] == [0, 1, 2]
    third = run(0.45, result)  # ranks second: trial 2's model goes, the reference's stays
    assert third.trial_number == 3 and run(0.35, result) is None
    assert _files(tmp_path / "artifacts") == sorted(record.artifact_id for record in (reference, first, third))
    assert disk_usage(study, make_artifact_store(tmp_path / "artifacts"), confirm)["artifacts"] == 3


@pytest.mark.one_backend  # which files the store keeps; the .keras file on each backend: the two tests above
def test_tied_trials_finishing_in_any_order_keep_the_model_of_the_best(result, sqlite_url, tmp_path):
    """Two workers' tied trials: the later-numbered one finishes first, yet the best (ties: the lower number)
    has its model, and the other's file goes."""
    store = make_artifact_store(tmp_path / "artifacts")
    study = optuna.create_study(direction="maximize", storage=sqlite_url, study_name="tie")
    first, second, third = (study.ask({spec.name: optuna.distributions.FloatDistribution(spec.low, spec.high, log=spec.log)
                                       for spec in SEARCH_SPACE}) for _ in range(3))
    later = store_model(study, second, 0.5, result, store)  # trial 1 finishes first, trial 0 still runs
    assert later.trial_number == 1
    study.tell(second, 0.5)
    earlier = store_model(study, first, 0.5, result, store)  # the tie goes to trial 0, which names the best
    study.tell(first, 0.5)
    assert earlier.trial_number == 0 and _files(tmp_path / "artifacts") == [earlier.artifact_id]
    assert store_model(study, third, 0.5, result, store) is None  # a later tie never displaces it
    study.tell(third, 0.5)
    best = summarize(study.get_trials(), ConfirmSpec(top_k=0)).best
    assert best.trial_number == 0 and download_model(study, store, 0, tmp_path / "best.keras") == earlier


@pytest.mark.one_backend  # no Keras: nothing of the backend's
def test_no_stored_model_is_a_clear_lookup_error(sqlite_url, tmp_path):
    study = optuna.create_study(direction="maximize", storage=sqlite_url, study_name="empty")
    with pytest.raises(NoBestModel, match="'empty': no model is stored for the best config"):
        download_model(study, make_artifact_store(tmp_path / "a"), 0, tmp_path / "x.keras")
    assert disk_usage(study, make_artifact_store(tmp_path / "a")) == {"artifacts": 0, "bytes": 0}


@pytest.mark.one_backend  # no Keras: nothing of the backend's
def test_artifact_store_urls(tmp_path):
    assert type(make_artifact_store(f"file://{tmp_path}/a")).__name__ == "FileSystemArtifactStore"
    assert (tmp_path / "a").is_dir()
    with pytest.raises(ValueError, match="expected s3://bucket/prefix"):
        make_artifact_store("gs://bucket/x")
    with pytest.raises(ValueError, match="names no bucket"):
        make_artifact_store("s3:///prefix")


def test_gap_can_be_measured_on_the_search_model_at_each_epoch_end(data):
    """What wiring it into trainer.train amounts to: measure_gap on the compiled search model after validation."""

    class FairGap(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.measured = []

        def on_epoch_end(self, epoch, logs=None):
            self.measured.append(measure_gap(self.model, data, sample_size=100, val_accuracy=logs["val_accuracy"]))

    callback = FairGap()
    trained = train(CONFIG, data, TrainSettings(width=0.25, epochs=1, batch_size=32, seed=1), callbacks=[callback])
    (during,) = callback.measured
    after = measure_gap(trained.model, data, sample_size=100)  # the plain model with the same weights
    assert during.train_accuracy == pytest.approx(after.train_accuracy, abs=1e-6)
    assert during.val_accuracy == pytest.approx(after.val_accuracy, abs=1e-6) == pytest.approx(trained.val_accuracy, abs=1e-6)
    # trainer.train reports exactly this gap (its sample: as many images as validation has, seeded by the
    # recipe's seed) for every trial.
    reported = measure_gap(trained.model, data, sample_size=len(data.y_val), seed=1)
    assert trained.gap == pytest.approx(reported.gap, abs=1e-6) and trained.train_accuracy == pytest.approx(reported.train_accuracy, abs=1e-6)
    assert trained.history[-1]["gap"] == pytest.approx(trained.gap)
