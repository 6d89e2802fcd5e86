"""Training on real CIFAR-10 images: learning, meaningful short-trial validation, callbacks, reuse, memory."""

from __future__ import annotations


import keras
import numpy as np
import optuna
import psutil
import pytest

from trainer import RegularizationConfig, TrainResult, TrainSettings, load_cifar10, train

CONFIG = RegularizationConfig(weight_decay=1e-4, l1_ratio=0.2, dropout_conv=0.3, dropout_dense=0.3)
# One graph (baseline, width 0.25, batch 32) for most tests: the compiled model is built once for the module.
QUICK = TrainSettings(width=0.25, epochs=1, batch_size=32, seed=0)


@pytest.fixture(scope="module")
def data(cifar_dir):
    return load_cifar10(cifar_dir, val_fraction=0.2, seed=0)


class TrainingModeLoss(keras.callbacks.Callback):
    """Cross-entropy (no penalty) of the training images before and after training, BN on batch statistics."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        super().__init__()
        self.images, self.labels, self.values = images.astype("float32"), labels, []

    def measure(self) -> float:
        keras.utils.set_random_seed(123)  # same dropout draws before and after
        losses = []
        for start in range(0, len(self.labels), 64):
            probabilities = self.model(self.images[start : start + 64], training=True)
            losses.append(keras.ops.convert_to_numpy(keras.losses.sparse_categorical_crossentropy(self.labels[start : start + 64], probabilities)))
        return float(np.concatenate(losses).mean())

    def on_train_begin(self, logs=None):
        self.values.append(self.measure())

    def on_train_end(self, logs=None):
        self.values.append(self.measure())


def test_one_epoch_lowers_the_training_loss(data):
    probe = TrainingModeLoss(data.x_train, data.y_train)
    result = train(CONFIG, data, QUICK, callbacks=[probe])
    before, after = probe.values
    assert after < before - 0.1, probe.values
    assert isinstance(result, TrainResult) and result.epochs_run == 1


def test_short_trial_validation_accuracy_follows_training_accuracy(data):
    """The precise-BN fix: with BN's moving averages (momentum 0.99) a short trial validates near chance."""
    config = RegularizationConfig(weight_decay=1e-4, l1_ratio=0.2, dropout_conv=0.1, dropout_dense=0.1)
    settings = QUICK.model_copy(update=dict(epochs=2, learning_rate=3e-3))
    result = train(config, data, settings)
    assert result.train_accuracy > 0.18, result.history  # it learned something in 30 steps
    assert result.val_accuracy > 0.2, result.history  # chance is 0.1 on these 120 validation images
    assert abs(result.val_accuracy - result.history[-1]["accuracy"]) < 0.12, result.history  # Keras' running accuracy
    moving_averages = train(config, data, settings.model_copy(update=dict(precise_bn_images=0)))
    assert moving_averages.history[-1]["accuracy"] == pytest.approx(result.history[-1]["accuracy"], abs=1e-6)  # the same training
    assert moving_averages.val_accuracy < result.val_accuracy - 0.05, (moving_averages.history, result.history)


def test_metrics_reach_on_epoch_end_and_keras_callbacks(data):
    seen, logged = [], []

    class Recorder(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logged.append(dict(logs))

    result = train(CONFIG, data, QUICK.model_copy(update=dict(epochs=2)), callbacks=[Recorder()], on_epoch_end=lambda e, m: seen.append((e, m)))
    assert [epoch for epoch, _ in seen] == [0, 1]
    for _, metrics in seen:
        assert {"loss", "accuracy", "val_loss", "val_accuracy", "gap"} <= set(metrics)
        # The gap is measured in inference mode on a fixed training sample, not from Keras' running "accuracy".
        assert metrics["gap"] == pytest.approx(metrics["train_accuracy"] - metrics["val_accuracy"])
    assert [logs["val_accuracy"] for logs in logged] == [metrics["val_accuracy"] for _, metrics in seen]
    summary = result.to_dict()
    assert summary["epochs_run"] == 2 and len(summary["history"]) == 2
    assert summary["weight_norms"]["l2"] > 0 and 0 <= summary["sparsity"] <= 1
    assert summary["images_per_second"] > 0 and summary["wall_time_s"] > 0
    assert result.model.count_params() > 0 and isinstance(result.model.get_layer("classifier_dropout"), keras.layers.Dropout)


def test_pruning_from_on_epoch_end_stops_training_and_propagates(data):
    seen = []

    def prune(epoch, metrics):
        seen.append(epoch)
        raise optuna.TrialPruned(f"pruned at epoch {epoch}")

    with pytest.raises(optuna.TrialPruned):
        train(CONFIG, data, QUICK.model_copy(update=dict(epochs=3)), on_epoch_end=prune)
    assert seen == [0]


def test_reused_compiled_model_gives_a_fresh_models_results(data):
    """A trial on the cached model after another trial equals the same trial on a freshly built model."""
    settings = QUICK.model_copy(update=dict(seed=5))
    other = RegularizationConfig(weight_decay=1e-2, l1_ratio=1.0, dropout_conv=0.5, dropout_dense=0.5)
    train(other, data, settings)  # leaves different weights, knobs, optimizer state behind
    reused = train(CONFIG, data, settings)
    fresh = train(CONFIG, data, settings.model_copy(update=dict(reuse_compiled=False)))
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "weight_l2", "sparsity"):
        assert reused.history[0][key] == pytest.approx(fresh.history[0][key], rel=1e-4, abs=1e-6), key


@pytest.mark.one_backend  # another graph (vgg) to compile: the default backend's run is enough
def test_a_new_search_model_traces_its_train_step_once(data):
    """The compiled metrics exist before the first step: on TensorFlow a step that created them while traced was
    traced twice (about 1 s of a worker's first trial); one trace on every backend."""
    from trainer import _backend
    from trainer._pipeline import make_dataset
    from trainer._train import _SearchModel

    searchable = _SearchModel("baseline", 0.25, data.input_shape, data.num_classes, 32, "float32")
    traced = []
    train_step = searchable.model.train_step
    searchable.model.train_step = lambda *args: (traced.append(1), train_step(*args))[1]
    batches = make_dataset(data.x_train, data.y_train, 32, shuffle=True, seed=0, drop_remainder=True)
    fed, callbacks, steps = _backend.feed(batches, 2)
    searchable.model.fit(fed, epochs=2, steps_per_epoch=steps, verbose=0, shuffle=False, callbacks=callbacks)
    assert len(traced) == 1


def test_l1_raises_sparsity(data):
    settings = TrainSettings(model="vgg", width=0.25, epochs=1, batch_size=32, seed=0)
    pure_l2 = train(RegularizationConfig(weight_decay=1e-2, l1_ratio=0.0), data, settings)
    pure_l1 = train(RegularizationConfig(weight_decay=1e-2, l1_ratio=1.0), data, settings)
    assert pure_l1.sparsity > pure_l2.sparsity
    assert pure_l1.weight_norms["l1"] < pure_l2.weight_norms["l1"]


@pytest.mark.one_backend  # twenty trainings: the default backend's run is enough
def test_twenty_trainings_keep_resident_memory_bounded(cifar_dir):
    """Workers train trial after trial in one process, on the one compiled model."""
    small = load_cifar10(cifar_dir, train_size=100, val_fraction=0.2, seed=1)
    process = psutil.Process()
    resident = []
    for index in range(20):
        config = RegularizationConfig(weight_decay=10 ** -(2 + index % 4), l1_ratio=(index % 3) / 2, dropout_conv=0.3 + index / 100)
        result = train(config, small, QUICK.model_copy(update=dict(seed=index)))
        assert result.epochs_run == 1
        resident.append(process.memory_info().rss)
    growth_mib = (resident[-1] - resident[4]) / 2**20
    assert growth_mib < 32, [round(value / 2**20) for value in resident]


def test_invalid_settings_raise_value_error_naming_the_field(data):
    for kwargs, field in [
        ({"model": "resnet"}, "model"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": -1}, "batch_size"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"precision": "float8"}, "precision"),
        ({"width": -1}, "width"),
    ]:
        with pytest.raises(ValueError, match=field):
            TrainSettings(**kwargs)


def test_precise_batchnorm_sets_the_average_of_each_batchs_moments(data):
    """The one-pass precise BN equals, per BN layer, the mean over batches of the moments training normalizes with;
    the probabilities the same call returns are the model's own predictions under those statistics, also past
    the first chunk."""
    from trainer._train import _CACHE

    no_dropout = RegularizationConfig(weight_decay=1e-4, l1_ratio=0.2, dropout_conv=0.0, dropout_dense=0.0)
    train(no_dropout, data, QUICK)
    searchable = next(reversed(_CACHE.values()))  # the compiled model that just trained
    assert searchable.batch_size == QUICK.batch_size and len(searchable.batchnorms) == 6
    images = data.x_train[: 3 * QUICK.batch_size].astype("float32")
    expected = []
    for layer in searchable.batchnorms:
        # training=True: each BN normalizes with its batch's moments, as in a train step (dropout rate 0 = identity)
        features = keras.Model(searchable.model.input, layer.input)
        moments = [
            (np.mean(batch, axis=(0, 1, 2)), np.var(batch, axis=(0, 1, 2)))
            for batch in (keras.ops.convert_to_numpy(features(images[start : start + QUICK.batch_size], training=True)) for start in range(0, len(images), QUICK.batch_size))
        ]
        expected.append((np.mean([mean for mean, _ in moments], axis=0), np.mean([variance for _, variance in moments], axis=0)))
    others = data.x_val[np.arange(600) % len(data.x_val)].astype("float32")  # more than one chunk of 512
    probabilities = searchable.evaluate(images, len(images), others)
    np.testing.assert_allclose(probabilities, keras.ops.convert_to_numpy(searchable.model.predict_on_batch(others)), rtol=1e-4, atol=1e-6)
    for layer, (mean, variance) in zip(searchable.batchnorms, expected):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.moving_mean.value), mean, rtol=1e-3, atol=1e-5, err_msg=layer.name)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.moving_variance.value), variance, rtol=1e-3, atol=1e-5, err_msg=layer.name)
