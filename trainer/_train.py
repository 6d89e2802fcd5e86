"""Training one regularization config: the loop the workers run many times per process.

Three choices shape this module:

* **One compiled step per worker.** Building, compiling and tracing a Keras model costs a few
  seconds, comparable to a whole short trial. :func:`train` therefore keeps, per process, a small
  cache of *search models* (see :mod:`trainer._models`) keyed by everything that changes the graph
  (model, width, input shape, classes, batch size, precision). The regularization coefficients and
  dropout rates are backend variables, so a new trial assigns them, re-initialises every weight from
  its layer's own initializer (seeded), restores the optimizer's initial state and sets the learning
  rate: the same starting point as a freshly built model, without rebuilding or retracing.
  ``TrainSettings(reuse_compiled=False)`` builds afresh (after ``keras.backend.clear_session()``).

* **Validation that means something after one epoch ("precise BatchNorm").** BatchNormalization
  normalizes with batch statistics while training but with moving averages (momentum 0.99) at
  inference; after a few hundred steps those averages still remember their initial values, and a
  short trial's validation accuracy sits near chance while its training accuracy climbs. Before
  each validation we recompute every BN layer's population statistics from training batches
  (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021; fvcore's ``update_bn_stats``): a forward
  pass in inference mode except that each BN layer normalizes with its batch's moments, whose
  per-batch means and variances are averaged and written into ``moving_mean``/``moving_variance``.
  The pass is one compiled call over all sampled images (BN normalizes each batch-sized group with
  its own moments), a small Keras model over the search model's layers, so each backend compiles
  it: one forward pass and no per-batch Python; the same call validates (below). The architecture
  keeps the book's BN layers and momentum.

* **Metrics that explain regularization.** Each epoch records train/val loss and accuracy, the
  generalization gap (``train_accuracy - val_accuracy``, both in inference mode, the training side on
  a fixed sample: :mod:`trainer._gap`; ``accuracy`` stays Keras' running training-mode mean), the L1 and L2 norms of the penalized kernels and
  their sparsity (share of |w| < 1e-3, which L1 raises), the epoch's wall time and images/s.
  Losses include the regularization penalty (Keras adds it to both). Validation and the gap's
  training side go through precise BN's call, each BN layer on the statistics just computed (what
  the model predicts once they are its moving statistics), scored on the host.

Everything here is ``keras``/``keras.ops`` and runs on any Keras backend; what differs between
backends lives in :mod:`trainer._backend`.
"""

from __future__ import annotations

import collections
import ctypes
import dataclasses
import functools
import gc
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import keras
import numpy as np

from trainer import _backend
from trainer._data import CifarData
from trainer._gap import train_sample_indices
from trainer._models import Knobs, build_model, build_search_model, penalized_kernels, plain_weights, tunable_dropouts
from trainer._pipeline import make_dataset, on_device, take
from trainer._recipe import TrialMetrics
from trainer._settings import PRECISIONS, TrainSettings
from trainer._best import BestConfig
from trainer._space import RegularizationConfig
from trainer._sparsity import SPARSITY_THRESHOLD, weight_stats

__all__ = [
    "PRECISIONS",
    "SPARSITY_THRESHOLD",
    "TrainResult",
    "TrainSettings",
    "clear_compiled_cache",
    "resolve_precision",
    "train",
]

#: Whether benchmarks/trainer_throughput.py has shown mixed_bfloat16 within 1 point of float32
#: validation accuracy (mean of 3 seeds). Until it has, ``auto`` keeps float32 on CPUs even where
#: AVX512_BF16/AMX would make bfloat16 fast.
BF16_PARITY_SHOWN = False


def compile_like_training(model: Any, learning_rate: float) -> Any:
    """Compile ``model`` as the study trained it: Adam at ``learning_rate``, sparse categorical
    cross-entropy, accuracy; the optimizer's slots built now (fresh), so a saved file loads without a
    variable-count warning and ``fit`` goes on under the same penalty, rates and optimizer."""
    import keras

    model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.optimizer.build(model.trainable_variables)
    return model


@dataclasses.dataclass
class TrainResult:
    """What one training returns. ``history`` holds one dict per epoch (the keys of :meth:`to_dict`'s ``history``).

    ``weight_norms`` = ``{"l1": sum|w|, "l2": sqrt(sum w**2)}`` over the penalized (Conv2D/Dense)
    kernels; ``sparsity`` is their share of |w| < 1e-3. ``model`` is the trained network as a plain
    Keras model (:func:`trainer.build_model`'s layers, float32), materialized on first access.
    """

    history: list[dict[str, float]]
    val_accuracy: float
    val_loss: float
    train_accuracy: float
    train_loss: float
    gap: float
    weight_norms: dict[str, float]
    sparsity: float
    wall_time_s: float
    images_per_second: float
    epochs_run: int
    precision: str
    config: RegularizationConfig
    settings: TrainSettings
    train_size: int
    val_size: int
    _weights: list[np.ndarray] | None = dataclasses.field(default=None, repr=False)
    _model: Any = dataclasses.field(default=None, repr=False)
    _input_shape: tuple[int, int, int] = dataclasses.field(default=(32, 32, 3), repr=False)
    _num_classes: int = dataclasses.field(default=10, repr=False)

    @property
    def model(self) -> Any:
        """The trained Keras model (plain layers), or None when no weights were kept."""
        if self._model is None and self._weights is not None:
            model = build_model(
                self.config,
                self.settings.model,
                width=self.settings.width,
                input_shape=self._input_shape,
                num_classes=self._num_classes,
            )
            model.set_weights(self._weights)
            compile_like_training(model, self.settings.learning_rate)  # evaluate() and fit() work on it as it is
            self._model = model
        return self._model

    def metrics(self) -> TrialMetrics:
        """The per-trial metrics (:class:`trainer._recipe.TrialMetrics`) of this training."""
        return TrialMetrics.model_validate(self, from_attributes=True)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready metrics (no model)."""
        return {
            "model": self.settings.model,
            "width": self.settings.width,
            "config": self.config.to_dict(),
            "keras": self.config.keras_values(),
            "settings": self.settings.to_dict(),
            "precision": self.precision,
            "train_size": self.train_size,
            "val_size": self.val_size,
            "epochs_run": self.epochs_run,
            "val_accuracy": self.val_accuracy,
            "val_loss": self.val_loss,
            "train_accuracy": self.train_accuracy,
            "train_loss": self.train_loss,
            "gap": self.gap,
            "weight_norms": dict(self.weight_norms),
            "sparsity": self.sparsity,
            "wall_time_s": self.wall_time_s,
            "images_per_second": self.images_per_second,
            "history": [dict(epoch) for epoch in self.history],
        }


# --------------------------------------------------------------------------------------------------
# Precision
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _cpu_has_fast_bfloat16() -> bool:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = cpuinfo.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str) -> str:
    """``auto`` -> ``mixed_float16`` on a GPU; ``mixed_bfloat16`` on a CPU with AVX512_BF16/AMX once
    parity is shown (:data:`BF16_PARITY_SHOWN`); else ``float32``. Other values pass through."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    if _backend.has_gpu():
        return "mixed_float16"
    if BF16_PARITY_SHOWN and _cpu_has_fast_bfloat16():
        return "mixed_bfloat16"
    return "float32"


# --------------------------------------------------------------------------------------------------
# The compiled search model
# --------------------------------------------------------------------------------------------------

_PARAMETERS = ("kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance")


def seeded_start(model: Any, seed: int) -> Iterator[tuple[Any, Any]]:
    """``(variable, value)``: where a freshly built search ``model`` with this trial ``seed`` starts, the one
    rule that :func:`train` and the lanes engine (:mod:`trainer._lanes`) share. Each initialized parameter
    drawn by its own initializer with a seed of (trial seed, layer, parameter); each dropout's seed state set
    from (trial seed, dropout)."""
    for index, layer in enumerate(model.layers):
        for offset, name in enumerate(_PARAMETERS):
            variable = getattr(layer, name, None)
            initializer = getattr(layer, f"{name}_initializer", None)
            if variable is None or initializer is None:
                continue
            initializer_config = initializer.get_config()
            if "seed" in initializer_config:
                initializer = type(initializer).from_config({**initializer_config, "seed": seed * 1009 + index * 7 + offset})
            yield variable, initializer(variable.shape, dtype=variable.dtype)
    for index, layer in enumerate(tunable_dropouts(model)):
        state = layer.seed_generator.state
        yield state, np.array([seed * 1009 + 500 + index, 0], dtype=state.dtype)

#: Images per compiled inference call (validation and the gap's training sample, together).
_PREDICT_CHUNK = 512


def batch_moments(layers: Iterable[Any], grouped: Any, images: Any = None) -> tuple[list[tuple[Any, Any]], Any]:
    """Precise BN's statistics pass, in ``keras.ops`` (:class:`_Evaluation` compiles it; the lanes engine
    traces it per lane): ``[groups, per_group, H, W, C]`` images through a chain of ``layers``, dropout off,
    each BN layer normalizing every group with that group's own moments (as in training); for each BN layer,
    the mean over the groups of each group's mean and variance. ``images``, if given, go through the same
    layers in inference mode, each BN layer normalizing with those new statistics: what the network predicts
    once they are its moving statistics, in the same pass (second item; None without ``images``)."""
    per_group, shape = int(grouped.shape[1]), tuple(grouped.shape[2:])
    x = keras.ops.reshape(keras.ops.cast(grouped, "float32"), (-1, *shape))
    y = None if images is None else keras.ops.cast(images, "float32")
    moments = []
    for layer in layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            values = keras.ops.cast(x, "float32")
            features = tuple(values.shape[1:])
            groups = keras.ops.reshape(values, (-1, per_group, *features))
            mean, variance = keras.ops.moments(groups, axes=[1, 2, 3], keepdims=True)
            inverse = keras.ops.rsqrt(variance + layer.epsilon) * layer.gamma  # in keras.ops.batch_normalization's order
            normalized = groups * inverse + (layer.beta - mean * inverse)
            x = keras.ops.cast(keras.ops.reshape(normalized, (-1, *features)), x.dtype)
            statistics = (keras.ops.mean(mean, axis=(0, 1, 2, 3)), keras.ops.mean(variance, axis=(0, 1, 2, 3)))
            moments.append(statistics)
            if y is not None:  # as BatchNormalization.call in inference mode, on the new statistics
                y = keras.ops.cast(keras.ops.batch_normalization(
                    keras.ops.cast(y, "float32"), mean=statistics[0], variance=statistics[1], axis=layer.axis,
                    offset=layer.beta, scale=layer.gamma, epsilon=layer.epsilon), layer.compute_dtype)
        else:
            x = layer(x, training=False)
            y = None if y is None else layer(y, training=False)
    return moments, y


class _Evaluation(keras.Model):
    """:func:`batch_moments` over a chain of layers (shared with the search model, so no weights of its own),
    as a model: ``[grouped sample, images]`` in, ``[mean_0, variance_0, mean_1, ..., probabilities]`` out.
    ``predict_on_batch`` compiles it on any backend: one call per epoch sets precise BN and validates."""

    def __init__(self, layers: list) -> None:
        super().__init__(name="evaluation")
        self.chain = list(layers)

    def call(self, inputs):
        grouped, images = inputs
        moments, probabilities = batch_moments(self.chain, grouped, images)
        return [value for pair in moments for value in pair] + [probabilities]


class _SearchModel:
    """A compiled search model plus what it takes to start a new trial on it."""

    def __init__(self, model_name: str, width: float, input_shape: tuple[int, int, int], num_classes: int, batch_size: int, precision: str) -> None:
        self.batch_size = batch_size
        self.precision = precision
        self.knobs = Knobs(RegularizationConfig())
        dtype = None if precision == "float32" else precision
        self.model = build_search_model(
            self.knobs, model_name, width=width, input_shape=input_shape, num_classes=num_classes, dtype=dtype
        )
        optimizer = keras.optimizers.Adam(learning_rate=1e-3)
        if precision == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        self.model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        optimizer.build(self.model.trainable_variables)
        # The compiled metrics' variables, created now (any backend): on TensorFlow, Keras otherwise creates them while
        # tracing the first train step, and a tf.function that creates variables is traced twice (the
        # second trace was about 1 s of the first trial's 3 s of build and trace). start_trial resets them.
        self.model.compute_metrics(None, np.zeros((1,), "int32"), np.full((1, num_classes), 1.0 / num_classes, "float32"))
        self.optimizer = optimizer
        self._optimizer_start = [keras.ops.convert_to_numpy(variable.value).copy() for variable in optimizer.variables]
        self.kernels = penalized_kernels(self.model)
        self.batchnorms = [layer for layer in self.model.layers if isinstance(layer, keras.layers.BatchNormalization)]
        self._evaluation: _Evaluation | None = None

    def start_trial(self, config: RegularizationConfig, learning_rate: float, seed: int) -> None:
        """Put the model where a freshly built one with this seed would start."""
        # Every random draw of a trial is seeded explicitly (initializers, dropout seed generators,
        # shuffling, augmentation). Not keras.utils.set_random_seed: tf.random.set_seed clears
        # TensorFlow's kernel cache, which made the first step of every trial cost ~1.3 s here.
        self.knobs.assign(config)
        for variable, value in seeded_start(self.model, seed):
            variable.assign(value)
        for variable, start in zip(self.optimizer.variables, self._optimizer_start):
            variable.assign(start)
        self.optimizer.learning_rate = learning_rate
        self.model.reset_metrics()

    def evaluate(self, sample: Any, max_sample: int, images: Any) -> np.ndarray:
        """Precise BN, then inference: every BN layer's moving statistics set to the average of its batch
        moments over whole batches of ``batch_size`` from ``sample`` (training images, at most ``max_sample``
        but at least one batch; skipped when ``sample`` is None, ``max_sample`` 0 or the network has no BN),
        then the class probabilities of ``images`` under them (float32 or uint8, numpy or a backend tensor).

        The statistics and the first ``_PREDICT_CHUNK`` images are one compiled call (:class:`_Evaluation`,
        built once); more images follow in chunks of that size (the last one padded), one call each.
        """
        count = int(images.shape[0])
        head = min(count, _PREDICT_CHUNK)
        size = 0 if sample is None else int(sample.shape[0])
        if self.batchnorms and max_sample > 0 and size > 0:
            per_group = min(self.batch_size, size)
            groups = max(1, min(size, max(max_sample, per_group)) // per_group)
            grouped = keras.ops.reshape(keras.ops.cast(sample[: groups * per_group], "float32"), (groups, per_group, *tuple(sample.shape[1:])))
            if self._evaluation is None:
                self._evaluation = _Evaluation(self.model.layers[1:])
            values = self._evaluation.predict_on_batch([grouped, keras.ops.cast(images[:head], "float32")])
            for layer, mean, variance in zip(self.batchnorms, values[0:-1:2], values[1:-1:2]):
                layer.moving_mean.assign(np.reshape(mean, layer.moving_mean.shape))
                layer.moving_variance.assign(np.reshape(variance, layer.moving_variance.shape))
            outputs = [np.asarray(values[-1], dtype=np.float64)]
        else:
            outputs = [np.asarray(self.model.predict_on_batch(keras.ops.cast(images[:head], "float32")), dtype=np.float64)]
        for start in range(head, count, _PREDICT_CHUNK):
            part = keras.ops.cast(images[start : start + _PREDICT_CHUNK], "float32")
            size = int(part.shape[0])
            if size < _PREDICT_CHUNK:  # one shape for every chunk: one trace
                part = keras.ops.pad(part, [[0, _PREDICT_CHUNK - size]] + [[0, 0]] * (len(part.shape) - 1))
            outputs.append(np.asarray(self.model.predict_on_batch(part), dtype=np.float64)[:size])
        return np.concatenate(outputs)

    def weight_stats(self) -> tuple[float, float, float]:
        """(sum |w|, sqrt(sum w**2), share of |w| < 1e-3) over the penalized kernels (:mod:`trainer._sparsity`)."""
        return weight_stats(self.kernels)


_CACHE: collections.OrderedDict[tuple, _SearchModel] = collections.OrderedDict()
_CACHE_SIZE = 2
_LOCK = threading.Lock()  # one training at a time per process: the compiled models are shared state


def clear_compiled_cache() -> None:
    """Drop this process's compiled search models and reset Keras' global state."""
    _CACHE.clear()
    keras.backend.clear_session()
    gc.collect()
    _release_freed_memory()


def _release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise, and RSS creeps up per build)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _search_model(settings: TrainSettings, precision: str, input_shape: tuple[int, int, int], num_classes: int) -> _SearchModel:
    key = (settings.model, float(settings.width), tuple(input_shape), num_classes, settings.batch_size, precision)
    if settings.reuse_compiled and key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    if not settings.reuse_compiled or len(_CACHE) >= _CACHE_SIZE:
        clear_compiled_cache()  # keeps memory bounded: nothing of earlier graphs survives
    searchable = _SearchModel(settings.model, float(settings.width), tuple(input_shape), num_classes, settings.batch_size, precision)
    if settings.reuse_compiled:
        _CACHE[key] = searchable
    return searchable


# --------------------------------------------------------------------------------------------------
# train()
# --------------------------------------------------------------------------------------------------


def _epoch_reporter(
    searchable: _SearchModel,
    data: CifarData,
    settings: TrainSettings,
    config: RegularizationConfig,
    history: list[dict[str, float]],
    on_epoch_end: Callable[[int, dict[str, float]], None] | None,
) -> Any:
    steps_per_epoch = len(data.y_train) // settings.batch_size or 1
    images_per_epoch = min(len(data.y_train), steps_per_epoch * settings.batch_size)
    rng = np.random.default_rng(settings.seed + 17)
    x_train, x_val = on_device(data.x_train), on_device(data.x_val)
    # The gap's training side on as many images as validation has (at most gap_sample_images): both sides
    # equally precise, and measuring it costs no more than validating (it was a pass over up to 2,000
    # training images per epoch, a third of a 2,000-image epoch's compute).
    gap_sample = train_sample_indices(len(data.y_train), min(settings.gap_sample_images, len(data.y_val)), settings.seed)
    val_count = len(data.y_val)
    scored = keras.ops.concatenate([take(x_val, np.arange(val_count)), take(x_train, gap_sample)])  # validated each epoch
    keras_values = config.keras_values()

    class EpochReporter(keras.callbacks.Callback):
        """Runs first at each epoch end: precise BN, validation, metrics into ``logs`` and ``history``."""

        def on_epoch_begin(self, epoch: int, logs: Mapping | None = None) -> None:
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = logs if logs is not None else {}
            train_time = time.perf_counter() - self._start
            sample = None
            if settings.precise_bn_images > 0:
                sample = take(x_train, rng.choice(len(data.y_train), size=min(len(data.y_train), settings.precise_bn_images), replace=False))
            l1_sum, l2_norm, sparsity = searchable.weight_stats()
            # Precise BN, validation and the gap's training side in inference mode: one compiled call; the loss
            # includes the penalty as Keras' evaluate reports it (l1 * sum|w| + l2 * sum w**2).
            penalty = keras_values["l1"] * l1_sum + keras_values["l2"] * l2_norm**2
            probabilities = searchable.evaluate(sample, settings.precise_bn_images, scored)
            val_probabilities, gap_probabilities = probabilities[:val_count], probabilities[val_count:]
            val_accuracy = float(np.mean(np.argmax(val_probabilities, axis=-1) == data.y_val))
            val_loss = _cross_entropy(val_probabilities, data.y_val) + penalty
            # The gap measured alike for every trial: inference mode on a fixed training sample (see trainer._gap),
            # not Keras' running training-mode "accuracy" (dropout on, weights moving).
            train_accuracy = float(np.mean(np.argmax(gap_probabilities, axis=-1) == data.y_train[gap_sample]))
            metrics = {
                "epoch": epoch + 1,
                "loss": float(logs["loss"]),
                "accuracy": float(logs["accuracy"]),
                "val_loss": val_loss,
                "val_accuracy": val_accuracy,
                "train_accuracy": train_accuracy,
                "gap": train_accuracy - val_accuracy,
                "weight_l1": l1_sum,
                "weight_l2": l2_norm,
                "sparsity": sparsity,
                "train_time_s": train_time,
                "epoch_time_s": time.perf_counter() - self._start,
                "images_per_second": images_per_epoch / train_time if train_time > 0 else float("nan"),
            }
            logs.update({key: metrics[key] for key in ("val_loss", "val_accuracy", "gap")})
            history.append(metrics)
            if on_epoch_end is not None:
                on_epoch_end(epoch, dict(metrics))

    return EpochReporter()


def _cross_entropy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean sparse categorical cross-entropy of probabilities, clipped as Keras clips them (epsilon 1e-7)."""
    epsilon = keras.config.epsilon()
    picked = np.clip(probabilities[np.arange(len(labels)), labels], epsilon, 1.0 - epsilon)
    return float(-np.mean(np.log(picked)))


def train(
    config: RegularizationConfig | BestConfig,
    data: CifarData,
    settings: TrainSettings | None = None,
    *,
    callbacks: Iterable[Any] = (),
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train ``settings.model`` under ``config`` on ``data``; validate on ``data.x_val`` after every epoch.

    ``on_epoch_end(epoch, metrics)`` (epoch counted from 0) is called after each epoch's validation
    with ``loss, accuracy, val_loss, val_accuracy, gap`` and the other per-epoch metrics; anything it
    raises (e.g. ``optuna.TrialPruned``) stops training and propagates. ``callbacks`` are Keras
    callbacks; they see ``val_loss``/``val_accuracy``/``gap`` in ``logs`` at epoch end (so
    ``optuna_integration.KerasPruningCallback(trial, "val_accuracy")`` works). Runs are seeded by
    ``settings.seed``. Not thread-safe across threads of one process by design: calls are serialized.
    """
    settings = settings or TrainSettings()
    if isinstance(config, BestConfig):
        config = config.regularization
    if not isinstance(config, RegularizationConfig):
        raise ValueError(f"config must be a RegularizationConfig, got {type(config).__name__}")
    if not isinstance(data, CifarData):
        raise ValueError(f"data must be a CifarData (from load_cifar10), got {type(data).__name__}")
    if len(data.y_train) == 0:
        raise ValueError("data.x_train is empty: nothing to train on")
    if len(data.y_val) == 0:
        raise ValueError("data.x_val is empty: load_cifar10(val_fraction=...) must leave a validation set")
    callbacks = list(callbacks)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    with _LOCK:
        started = time.perf_counter()
        precision = resolve_precision(settings.precision)
        num_classes = max(data.num_classes, int(max(data.y_train.max(), data.y_val.max())) + 1)
        searchable = _search_model(settings, precision, data.input_shape, num_classes)
        searchable.start_trial(config, settings.learning_rate, settings.seed)

        train_batches = make_dataset(
            data.x_train,
            data.y_train,
            settings.batch_size,
            shuffle=True,
            augment=settings.data.augment,
            seed=settings.seed,
            drop_remainder=True,  # static batch shape: one trace serves every trial
        )
        history: list[dict[str, float]] = []
        reporter = _epoch_reporter(searchable, data, settings, config, history, on_epoch_end)
        try:
            fed, followers, steps = _backend.feed(train_batches, settings.epochs)
            searchable.model.fit(fed, epochs=settings.epochs, steps_per_epoch=steps, verbose=0, shuffle=False, callbacks=[*followers, reporter, *callbacks])
            weights = plain_weights(searchable.model)
        finally:
            if not settings.reuse_compiled:
                clear_compiled_cache()
        wall_time = time.perf_counter() - started

    if not history:
        raise RuntimeError("training stopped before completing an epoch")
    last = history[-1]
    train_time = sum(epoch["train_time_s"] for epoch in history)
    images = sum(epoch["images_per_second"] * epoch["train_time_s"] for epoch in history)
    return TrainResult(
        history=history,
        val_accuracy=last["val_accuracy"],
        val_loss=last["val_loss"],
        train_accuracy=last["train_accuracy"],
        train_loss=last["loss"],
        gap=last["gap"],
        weight_norms={"l1": last["weight_l1"], "l2": last["weight_l2"]},
        sparsity=last["sparsity"],
        wall_time_s=wall_time,
        images_per_second=images / train_time if train_time > 0 else float("nan"),
        epochs_run=len(history),
        precision=precision,
        config=config,
        settings=settings,
        train_size=len(data.y_train),
        val_size=len(data.y_val),
        _weights=weights,
        _input_shape=data.input_shape,
        _num_classes=num_classes,
    )
