"""Lanes: K trials of one network shape trained at once, one jitted step advancing all of them (JAX).

A GPU spent on one small convnet trial sits nearly idle (issue 16: 1.5% of an H200's bf16 peak).
:class:`LaneEngine` stacks K trials' states along a leading axis and advances them together with one
``jax.jit(jax.vmap(step))``, through Keras' stateless API:

* **Per-lane state.** Each lane has its own weights, BatchNorm statistics, dropout seed states and
  regularization knobs (the model's trainable and non-trainable variables: :class:`trainer._models.Knobs`,
  l1, l2 and the two dropout rates, are weights of the search model), Adam state and learning rate (the
  optimizer's variables). ``model.stateless_call`` runs the network on a lane's values and
  ``optimizer.stateless_apply`` updates its weights; ``jax.vmap`` maps both over the lanes.
* **Per-lane data.** Each lane draws its own permutation per epoch (:func:`epoch_order`, the
  single-trial pipeline's order) and may have its own training set (a confirmation repeat has its own
  validation split). While the busy lanes share one training set (a study's search trials), it stays on
  the device and only the ``[K, batch]`` indices cross per step; otherwise each lane's batch is gathered
  on the host. A trial with ``data.augment`` has its batch flipped and shifted inside the jitted step,
  from its own per-batch seed (the single-trial pipeline's, :func:`trainer._pipeline.augment_seed`,
  passed as a ``[K]`` array): the same transformations as alone, drawn on the device; a lane of a
  trial without augmentation beside it keeps its batch as is.
* **Continuous.** Lanes start and end independently: a lane's epoch ends after its own
  ``len(x_train) // batch_size`` steps, then only that lane is validated (precise BatchNorm, the
  validation set, the gap sample: :mod:`trainer._train`'s metrics) and its metrics handed to its
  caller, while the step goes on for the others. When a trial completes or its caller stops it
  (pruned, study stopped, worker shutting down), its lane takes the next waiting trial.
* **Thread-friendly.** :meth:`LaneEngine.train` has :func:`trainer.train`'s signature and blocks like
  it; K callers (one per lane) call it from their own threads. One driver thread runs the steps; each
  caller's ``on_epoch_end`` runs in the caller's thread (its database writes and pruning decisions
  never stall the other lanes), and whatever it raises stops that trial and propagates to that caller.

A trial trained in a lane gives the same result as the same trial trained alone (K=1), within float
tolerance, with or without augmentation: lanes never share a number (tests/trainer/test_trainer_lanes.py;
it also checks the step against Keras' own ``model.fit`` on JAX). ``mixed_float16`` (loss scaling) is not
lane-able (:func:`lanes_unsupported` says why); the service trains such trials alone.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from trainer._best import BestConfig
from trainer._data import CifarData
from trainer._gap import train_sample_indices
from trainer._models import Knobs, build_search_model, penalized_kernels
from trainer._pipeline import _augmenter, augment, augment_seed
from trainer._settings import PRECISIONS, TrainSettings
from trainer._space import RegularizationConfig
from trainer._sparsity import weight_stats
from trainer._train import batch_moments, seeded_start

__all__ = ["LaneEngine", "LaneShape", "epoch_order", "lanes_unsupported", "resolve_lane_precision"]



def resolve_lane_precision(precision: str) -> str:
    """``auto`` -> ``mixed_bfloat16`` on a GPU/TPU (no loss scaling needed), else ``float32``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    import jax

    return "float32" if jax.default_backend() == "cpu" else "mixed_bfloat16"


def lanes_unsupported(settings: TrainSettings, data: CifarData | None = None) -> str | None:
    """Why a trial with these settings cannot train in a lane (None: it can)."""
    import keras

    if keras.backend.backend() != "jax":
        return f"lanes need KERAS_BACKEND=jax (this process runs {keras.backend.backend()})"
    if settings.precision == "mixed_float16":
        return "mixed_float16 needs loss scaling, which lanes do not do (use mixed_bfloat16)"
    if data is not None and len(data.y_train) < settings.batch_size:
        return f"lanes need at least batch_size={settings.batch_size} training images, got {len(data.y_train)}"
    return None


def epoch_order(seed: int, epoch: int, n_train: int, batch_size: int) -> np.ndarray:
    """A lane's training indices for ``epoch``: the first ``(n_train // batch_size) * batch_size`` of the
    permutation ``default_rng([seed, epoch])`` draws (the single-trial pipeline's order, so a lane sees its
    trial's batches in the same order as ``trainer.train``); the remainder is dropped (one static shape)."""
    steps = n_train // batch_size
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n_train)[: steps * batch_size]


@dataclasses.dataclass(frozen=True)
class LaneShape:
    """What must be equal for trials to share a compiled step."""

    model: str
    width: float
    batch_size: int
    input_shape: tuple[int, int, int]
    num_classes: int
    precision: str

    @classmethod
    def of(cls, settings: TrainSettings, data: CifarData) -> "LaneShape":
        num_classes = max(data.num_classes, int(max(data.y_train.max(), data.y_val.max())) + 1)
        return cls(settings.model, float(settings.width), settings.batch_size, data.input_shape, num_classes,
                   resolve_lane_precision(settings.precision))


class _Stop(Exception):
    """Raised in the driver for a job its caller abandoned."""


@dataclasses.dataclass(eq=False)
class _Job:
    config: RegularizationConfig
    data: CifarData
    settings: TrainSettings
    events: queue.Queue = dataclasses.field(default_factory=queue.Queue)
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event)
    lane: int = -1
    epoch: int = 0
    step: int = 0
    order: np.ndarray | None = None
    steps_per_epoch: int = 0
    started: float = 0.0
    epoch_started: float = 0.0
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)
    bn_rng: np.random.Generator | None = None
    gap_index: np.ndarray | None = None


class LaneEngine:
    """K lanes of one :class:`LaneShape`; :meth:`train` trains one trial in a lane (blocking, thread-safe)."""

    def __init__(self, shape: LaneShape, lanes: int) -> None:
        if lanes < 1:
            raise ValueError(f"lanes must be >= 1, got {lanes}")
        import jax
        import keras

        if keras.backend.backend() != "jax":
            raise RuntimeError(f"lanes need KERAS_BACKEND=jax (this process runs {keras.backend.backend()})")
        self.shape, self.lanes = shape, lanes
        self.steps_run = 0  # vmapped steps so far (each advances every lane)
        self.lane_steps = 0  # steps that advanced a lane holding a trial
        self.submitted = 0  # trials handed to train() so far
        self._cond = threading.Condition()
        self._waiting: list[_Job] = []
        self._jobs: list[_Job | None] = [None] * lanes
        self._closed = False
        self._driver: threading.Thread | None = None
        self._failure: BaseException | None = None

        dtype = None if shape.precision == "float32" else shape.precision
        self.knobs = Knobs(RegularizationConfig())
        self.model = build_search_model(self.knobs, shape.model, width=shape.width, input_shape=shape.input_shape,
                                        num_classes=shape.num_classes, dtype=dtype)
        self.optimizer = keras.optimizers.Adam(learning_rate=1e-3)
        self.optimizer.build(self.model.trainable_variables)
        self._trainable = list(self.model.trainable_variables)
        self._non_trainable = list(self.model.non_trainable_variables)
        self._knob_ids = {id(v) for v in self.knobs.weights}
        self._augmenter = _augmenter()  # float32 layers without weights: each lane's seed picks its transformation
        self._optimizer_start = [np.array(v.numpy()) for v in self.optimizer.variables]
        self._learning_rate_index = next(i for i, v in enumerate(self.optimizer.variables) if v is self.optimizer._learning_rate)
        trainable_ids = {id(v): i for i, v in enumerate(self._trainable)}
        self._kernel_index = [trainable_ids[id(kernel)] for kernel in penalized_kernels(self.model)]
        self._layers = self.model.layers[1:]  # both networks are chains; skip the InputLayer
        weight_ids = {id(v): ("t", i) for i, v in enumerate(self._trainable)}
        weight_ids.update({id(v): ("n", i) for i, v in enumerate(self._non_trainable)})
        # TrainResult's weights are the plain model's (trainer._models.plain_weights): the knobs left out.
        self._weight_order = [weight_ids[id(v)] for v in self.model.weights if id(v) not in self._knob_ids]

        lane = self._initial_lane(RegularizationConfig(), 1e-3, 0)
        self._state = jax.tree.map(lambda value: jax.numpy.stack([value] * lanes), lane)
        donate = (0,) if jax.default_backend() != "cpu" else ()
        self._step = jax.jit(jax.vmap(self._step_fn), donate_argnums=donate)
        # The same step with every lane's batch gathered on the device from one resident training set.
        self._step_gather = jax.jit(
            lambda state, x, y, index, *augmenting: jax.vmap(self._step_fn)(state, x[index], y[index], *augmenting),
            donate_argnums=donate)
        self._resident: tuple[CifarData, Any, Any] | None = None
        self._put = jax.jit(lambda state, index, lane: jax.tree.map(lambda s, v: s.at[index].set(v), state, lane),
                            donate_argnums=donate)
        self._take = jax.jit(lambda state, index: jax.tree.map(lambda s: s[index], state))
        self._predict = jax.jit(self._predict_fn)
        self._precise_bn = jax.jit(self._precise_bn_fn)

    # ------------------------------------------------------------------------------------------
    # The stateless functions (one lane's view; the step is vmapped over the lanes)
    # ------------------------------------------------------------------------------------------

    def _forward(self, trainable, non_trainable, images, training: bool):
        """(outputs, new non-trainable values, the regularization penalty) of one lane's network."""
        import keras

        outputs, non_trainable, losses = self.model.stateless_call(
            trainable, non_trainable, keras.ops.cast(images, "float32"), training=training, return_losses=True)
        penalty = sum((keras.ops.sum(keras.ops.cast(loss, "float32")) for loss in losses), 0.0)
        return outputs, non_trainable, penalty

    def _step_fn(self, lane, images, labels, seed=None, augmented=None):
        """One lane's training step; with ``seed`` and ``augmented`` (:meth:`_augmentation`) its batch is first
        augmented as :class:`trainer._pipeline.Batches` augments it for that seed, if ``augmented``."""
        import jax
        import keras

        if seed is not None:
            images = keras.ops.cast(images, "float32")
            images = keras.ops.where(augmented, augment(images, self._augmenter, seed), images)

        def loss_fn(trainable):
            probabilities, non_trainable, penalty = self._forward(trainable, lane["non_trainable"], images, True)
            loss = keras.ops.mean(keras.losses.sparse_categorical_crossentropy(labels, probabilities)) + penalty
            return loss, (probabilities, non_trainable)

        (loss, (probabilities, non_trainable)), grads = jax.value_and_grad(loss_fn, has_aux=True)(lane["trainable"])
        trainable, optimizer = self.optimizer.stateless_apply(lane["optimizer"], grads, lane["trainable"])
        correct = keras.ops.sum(keras.ops.cast(keras.ops.argmax(probabilities, axis=-1) == labels, "float32"))
        return {
            "trainable": trainable,
            "non_trainable": non_trainable,
            "optimizer": optimizer,
            "loss_sum": lane["loss_sum"] + loss,
            "correct": lane["correct"] + correct,
        }

    def _predict_fn(self, trainable, non_trainable, images):
        """(class probabilities, the regularization penalty) in inference mode."""
        probabilities, _, penalty = self._forward(trainable, non_trainable, images, False)
        return probabilities, penalty

    def _precise_bn_fn(self, trainable, non_trainable, grouped_images):
        """Every BN layer's moving statistics := its per-batch moments averaged over ``[groups, batch, ...]``
        (trainer._train's precise BatchNorm, :func:`trainer._train.batch_moments`, as one traced call); returns
        the new non-trainable values."""
        import keras

        mapping = [*zip(self._trainable, trainable), *zip(self._non_trainable, non_trainable)]
        with keras.StatelessScope(state_mapping=mapping) as scope:
            batchnorms = [layer for layer in self._layers if isinstance(layer, keras.layers.BatchNormalization)]
            for layer, (mean, variance) in zip(batchnorms, batch_moments(self._layers, grouped_images)[0]):
                layer.moving_mean.assign(keras.ops.reshape(mean, layer.moving_mean.shape))
                layer.moving_variance.assign(keras.ops.reshape(variance, layer.moving_variance.shape))
        return [scope.get_current_value(v) for v in self._non_trainable]

    # ------------------------------------------------------------------------------------------
    # Lane state
    # ------------------------------------------------------------------------------------------

    def _initial_lane(self, config: RegularizationConfig, learning_rate: float, seed: int) -> dict[str, Any]:
        """Where a freshly built model with this seed starts (trainer._train seeds the same way)."""
        values = {id(variable): np.asarray(value) for variable, value in seeded_start(self.model, seed)}
        for name, value in config.keras_values().items():
            values[id(getattr(self.knobs, name))] = np.asarray(value, dtype="float32")
        optimizer = [start.copy() for start in self._optimizer_start]
        optimizer[self._learning_rate_index] = np.asarray(learning_rate, dtype=optimizer[self._learning_rate_index].dtype)
        return {
            "trainable": [values[id(v)] for v in self._trainable],
            "non_trainable": [values.get(id(v), np.asarray(v.numpy())) for v in self._non_trainable],
            "optimizer": optimizer,
            "loss_sum": np.zeros((), "float32"),
            "correct": np.zeros((), "float32"),
        }

    # ------------------------------------------------------------------------------------------
    # The caller's side
    # ------------------------------------------------------------------------------------------

    def train(
        self,
        config: RegularizationConfig | BestConfig,
        data: CifarData,
        settings: TrainSettings,
        *,
        on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    ):
        """Train one trial in a lane: :func:`trainer.train`'s contract (a :class:`trainer.TrainResult`;
        ``on_epoch_end(epoch, metrics)`` after each validation, called in this thread; what it raises
        stops this trial, frees its lane and propagates). Blocks while every lane is taken."""
        from trainer._train import TrainResult

        if isinstance(config, BestConfig):
            config = config.regularization
        if not isinstance(config, RegularizationConfig):
            raise ValueError(f"config must be a RegularizationConfig, got {type(config).__name__}")
        reason = lanes_unsupported(settings, data)
        if reason:
            raise ValueError(reason)
        if LaneShape.of(settings, data) != self.shape:
            raise ValueError(f"this engine trains {self.shape}, not {LaneShape.of(settings, data)}")
        if len(data.y_val) == 0:
            raise ValueError("data.x_val is empty: load_cifar10(val_fraction=...) must leave a validation set")
        job = _Job(config, data, settings)
        with self._cond:
            if self._closed:
                raise RuntimeError("the lane engine is closed")
            self._waiting.append(job)
            self.submitted += 1
            self._start_driver()
            self._cond.notify_all()
        try:
            while True:
                kind, value = job.events.get()
                if kind == "epoch":
                    if on_epoch_end is not None:
                        on_epoch_end(value["epoch"] - 1, dict(value))
                elif kind == "done":
                    break
                else:
                    raise value
        except BaseException:
            job.cancelled.set()
            with self._cond:
                self._cond.notify_all()
            raise
        history, weights, started, ended = value
        last = history[-1]
        train_time = sum(epoch["train_time_s"] for epoch in history)
        images = sum(epoch["images_per_second"] * epoch["train_time_s"] for epoch in history)
        return TrainResult(
            history=history, val_accuracy=last["val_accuracy"], val_loss=last["val_loss"],
            train_accuracy=last["train_accuracy"], train_loss=last["loss"], gap=last["gap"],
            weight_norms={"l1": last["weight_l1"], "l2": last["weight_l2"]}, sparsity=last["sparsity"],
            wall_time_s=ended - started, images_per_second=images / train_time if train_time > 0 else float("nan"),
            epochs_run=len(history), precision=self.shape.precision, config=config, settings=settings,
            train_size=len(data.y_train), val_size=len(data.y_val), _weights=weights,
            _input_shape=data.input_shape, _num_classes=self.shape.num_classes,
        )

    def close(self) -> None:
        """Stop the driver; trials still running get a ``RuntimeError``."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._driver is not None:
            self._driver.join()

    @property
    def busy_lanes(self) -> int:
        with self._cond:
            return sum(job is not None for job in self._jobs) + len(self._waiting)

    # ------------------------------------------------------------------------------------------
    # The driver
    # ------------------------------------------------------------------------------------------

    def _start_driver(self) -> None:
        if self._driver is None or not self._driver.is_alive():
            self._driver = threading.Thread(target=self._drive, name="lanes", daemon=True)
            self._driver.start()

    def _drive(self) -> None:
        try:
            while self._cycle():
                pass
        except BaseException as error:  # noqa: BLE001 - handed to every caller
            self._failure = error
            with self._cond:
                jobs = [job for job in self._jobs if job is not None] + self._waiting
                self._jobs, self._waiting = [None] * self.lanes, []
            for job in jobs:
                job.events.put(("error", RuntimeError(f"the lane engine failed: {error.__class__.__name__}: {error}")))
            raise

    def _cycle(self) -> bool:
        """Fill free lanes, run one step of every lane, end the epochs that are due; False once closed."""
        with self._cond:
            for index, job in enumerate(self._jobs):
                if job is not None and job.cancelled.is_set():
                    self._jobs[index] = None
            self._waiting = [job for job in self._waiting if not job.cancelled.is_set()]
            while not self._closed and not self._waiting and not any(self._jobs):
                self._cond.wait()
            if self._closed:
                for job in [job for job in self._jobs if job is not None] + self._waiting:
                    job.events.put(("error", RuntimeError("the lane engine was closed")))
                self._resident = None
                return False
            starting = []
            for index in range(self.lanes):
                if self._jobs[index] is None and self._waiting:
                    job = self._waiting.pop(0)
                    job.lane, self._jobs[index] = index, job
                    starting.append(job)
            jobs = list(self._jobs)
        for job in starting:
            self._start_job(job)
        self._advance(jobs)
        self.steps_run += 1
        for job in jobs:
            if job is None:
                continue
            self.lane_steps += 1
            job.step += 1
            if job.step == job.steps_per_epoch and not job.cancelled.is_set():
                self._end_epoch(job)
        return True

    def _start_job(self, job: _Job) -> None:
        settings = job.settings
        lane = self._initial_lane(job.config, settings.learning_rate, settings.seed)
        self._state = self._put(self._state, job.lane, lane)
        job.steps_per_epoch = len(job.data.y_train) // settings.batch_size
        job.order = epoch_order(settings.seed, 0, len(job.data.y_train), settings.batch_size)
        job.bn_rng = np.random.default_rng(settings.seed + 17)
        # The gap's training side on as many images as validation has (at most gap_sample_images), as trainer.train.
        job.gap_index = train_sample_indices(len(job.data.y_train), min(settings.gap_sample_images, len(job.data.y_val)),
                                             settings.seed)
        job.started = job.epoch_started = time.perf_counter()

    def _advance(self, jobs: list[_Job | None]) -> None:
        """One step of every lane. When the busy lanes train on one data set (a study's search trials), its
        images stay on the device and only the ``[K, batch]`` indices cross per step; otherwise (a
        confirmation repeat's own split) each lane's batch is gathered on the host."""
        import jax

        datasets = {id(job.data): job.data for job in jobs if job is not None}
        augmenting = self._augmentation(jobs)
        if len(datasets) != 1:
            images, labels = self._batches(jobs)
            self._state = self._step(self._state, images, labels, *augmenting)
            return
        (data,) = datasets.values()
        if self._resident is None or self._resident[0] is not data:
            self._resident = None  # free the previous copy first
            self._resident = (data, jax.device_put(data.x_train), jax.device_put(data.y_train.astype(np.int32)))
        batch = self.shape.batch_size
        index = np.zeros((self.lanes, batch), np.int32)
        for lane, job in enumerate(jobs):
            if job is not None:
                index[lane] = job.order[job.step * batch : (job.step + 1) * batch]
        self._state = self._step_gather(self._state, self._resident[1], self._resident[2], index, *augmenting)

    def _augmentation(self, jobs: list[_Job | None]) -> tuple[np.ndarray, ...]:
        """The step's augmentation arguments: none while no busy lane augments (the plain step), else every
        lane's seed for this batch (:func:`trainer._pipeline.augment_seed`, as the single-trial pipeline draws
        it) and whether it augments. Only these ``[K]`` numbers cross per step: the flips and shifts are drawn
        and applied inside the jitted step, on the device."""
        if not any(job is not None and job.settings.data.augment for job in jobs):
            return ()
        seeds, augmented = np.zeros(self.lanes, np.uint32), np.zeros(self.lanes, bool)
        for lane, job in enumerate(jobs):
            if job is not None and job.settings.data.augment:
                seeds[lane], augmented[lane] = augment_seed(job.settings.seed, job.epoch, job.step), True
        return seeds, augmented

    def _batches(self, jobs: list[_Job | None]) -> tuple[np.ndarray, np.ndarray]:
        batch = self.shape.batch_size
        images = np.zeros((self.lanes, batch, *self.shape.input_shape), np.uint8)
        labels = np.zeros((self.lanes, batch), np.int32)
        for index, job in enumerate(jobs):
            if job is None:
                continue
            chosen = job.order[job.step * batch : (job.step + 1) * batch]
            images[index] = job.data.x_train[chosen]
            labels[index] = job.data.y_train[chosen]
        return images, labels

    def _end_epoch(self, job: _Job) -> None:
        """Validate the lane that finished its epoch, hand its metrics over, then start its next epoch or finish it."""
        import jax

        jax.block_until_ready(self._state)  # the steps are dispatched asynchronously: the epoch ends when they have run
        train_time = time.perf_counter() - job.epoch_started
        lane = self._take(self._state, job.lane)
        settings, data = job.settings, job.data
        loss = float(lane["loss_sum"]) / job.steps_per_epoch
        accuracy = float(lane["correct"]) / (job.steps_per_epoch * settings.batch_size)
        non_trainable = lane["non_trainable"]
        if settings.precise_bn_images > 0:
            sample = job.bn_rng.choice(len(data.x_train), size=min(len(data.x_train), settings.precise_bn_images), replace=False)
            per_group = min(settings.batch_size, len(sample))
            groups = max(1, len(sample) // per_group)
            grouped = data.x_train[sample[: groups * per_group]].reshape((groups, per_group, *data.input_shape))
            non_trainable = self._precise_bn(lane["trainable"], non_trainable, grouped)
        val_loss, val_accuracy = self._evaluate(lane["trainable"], non_trainable, data.x_val, data.y_val)
        _, train_accuracy = self._evaluate(lane["trainable"], non_trainable, data.x_train[job.gap_index],
                                           data.y_train[job.gap_index])
        weight_l1, weight_l2, sparsity = weight_stats(lane["trainable"][i] for i in self._kernel_index)  # as trainer.train
        job.epoch += 1
        metrics = {
            "epoch": job.epoch,
            "loss": loss,
            "accuracy": accuracy,
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
            "train_accuracy": train_accuracy,
            "gap": train_accuracy - val_accuracy,
            "weight_l1": weight_l1,
            "weight_l2": weight_l2,
            "sparsity": sparsity,
            "train_time_s": train_time,
            "epoch_time_s": time.perf_counter() - job.epoch_started,
            "images_per_second": job.steps_per_epoch * settings.batch_size / train_time if train_time > 0 else float("nan"),
        }
        job.history.append(metrics)
        job.events.put(("epoch", dict(metrics)))
        done = job.epoch >= settings.epochs
        if done:
            weights = [np.asarray((lane["trainable"] if kind == "t" else non_trainable)[i]) for kind, i in self._weight_order]
            job.events.put(("done", (job.history, weights, job.started, time.perf_counter())))
            with self._cond:
                if self._jobs[job.lane] is job:
                    self._jobs[job.lane] = None
            return
        reset = {**lane, "non_trainable": non_trainable, "loss_sum": jax.numpy.zeros((), "float32"),
                 "correct": jax.numpy.zeros((), "float32")}
        self._state = self._put(self._state, job.lane, reset)
        job.step = 0
        job.order = epoch_order(settings.seed, job.epoch, len(data.y_train), settings.batch_size)
        job.epoch_started = time.perf_counter()

    def _evaluate(self, trainable, non_trainable, images: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
        """(mean cross-entropy + penalty, accuracy) in inference mode, in batches of ``batch_size``."""
        batch = self.shape.batch_size
        cross_entropy, correct, penalty = 0.0, 0, 0.0
        for start in range(0, len(images), batch):
            chunk = images[start : start + batch]
            expected = labels[start : start + batch]
            if len(chunk) < batch:  # pad to the traced shape; the padding is not counted
                chunk = np.concatenate([chunk, np.zeros((batch - len(chunk), *chunk.shape[1:]), chunk.dtype)])
            probabilities, penalty = self._predict(trainable, non_trainable, chunk)
            probabilities = np.asarray(probabilities, np.float64)[: len(expected)]
            picked = np.clip(probabilities[np.arange(len(expected)), expected], 1e-7, 1.0)
            cross_entropy += float(-np.log(picked).sum())
            correct += int(np.sum(np.argmax(probabilities, axis=-1) == expected))
        return cross_entropy / len(images) + float(penalty), correct / len(images)
