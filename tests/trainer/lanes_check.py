"""Runs on KERAS_BACKEND=jax in a subprocess of tests/trainer/test_trainer_lanes.py; prints one JSON object.

Every scenario shares the process so the lane engines compile once: width 0.25, batch 32, 240 images.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
import time

os.environ["KERAS_BACKEND"] = "jax"

import jax  # noqa: E402
import numpy as np  # noqa: E402

import trainer  # noqa: E402
from trainer._lanes import LaneEngine, LaneShape, epoch_order  # noqa: E402
from trainer._models import Knobs, build_search_model  # noqa: E402
from trainer._pipeline import augment_seed, make_dataset  # noqa: E402

DATA_DIR = sys.argv[1]
data = trainer.load_cifar10(DATA_DIR, train_size=240, val_fraction=0.25, seed=0, include_test=False)
settings = trainer.TrainSettings(model="baseline", width=0.25, epochs=2, batch_size=32, precise_bn_images=64,
                                 gap_sample_images=64, seed=3)
config = trainer.RegularizationConfig(weight_decay=1e-3, l1_ratio=0.3, dropout_conv=0.4, dropout_dense=0.45)
others = [
    (trainer.RegularizationConfig(), settings.model_copy(update={"seed": 9})),
    (trainer.RegularizationConfig(dropout_conv=0.35, weight_decay=1e-5), settings.model_copy(update={"seed": 5, "epochs": 3})),
]
shape = LaneShape.of(settings, data)
report: dict = {}


def history(result) -> list[dict]:
    keys = ("loss", "accuracy", "val_loss", "val_accuracy", "train_accuracy", "weight_l1", "weight_l2", "sparsity")
    return [{key: epoch[key] for key in keys}
            for epoch in result.history]


# -- 1. One step of a lane equals one step of Keras' own model.fit on the same model, state and batch --------
three = LaneEngine(shape, 3)
lane = three._initial_lane(config, settings.learning_rate, settings.seed)
other = three._initial_lane(others[0][0], 1e-3, 9)
state = three._put(three._put(three._state, 0, other), 1, lane)
order = epoch_order(settings.seed, 0, len(data.y_train), settings.batch_size)[: settings.batch_size]
images = np.stack([data.x_train[order[::-1]], data.x_train[order], data.x_train[order[::-1]]])
labels = np.stack([data.y_train[order[::-1]], data.y_train[order], data.y_train[order[::-1]]]).astype(np.int32)
stepped = three._take(three._step(state, images, labels), 1)

import keras  # noqa: E402

knobs = Knobs(config)
alone = build_search_model(knobs, "baseline", width=settings.width)
alone.compile(optimizer=keras.optimizers.Adam(settings.learning_rate), loss="sparse_categorical_crossentropy")
for variable, value in zip(alone.trainable_variables, lane["trainable"]):
    variable.assign(value)
for variable, value in zip(alone.non_trainable_variables, lane["non_trainable"]):
    variable.assign(value)
fit = alone.fit(data.x_train[order].astype("float32"), data.y_train[order], batch_size=settings.batch_size, epochs=1,
                shuffle=False, verbose=0)
report["step_vs_fit"] = {
    "loss": [float(stepped["loss_sum"]), float(fit.history["loss"][0])],
    "max_weight_diff": max(float(np.abs(np.asarray(v) - np.asarray(w)).max())
                           for v, w in zip(alone.trainable_variables, stepped["trainable"])),
    "max_stat_diff": max(float(np.abs(np.asarray(v) - np.asarray(w)).max())
                         for v, w in zip(alone.non_trainable_variables, stepped["non_trainable"])),
}

# -- 1b. An augmenting step augments each augmented lane's batch exactly as the single-trial pipeline does ------
pipeline = make_dataset(data.x_train, data.y_train, settings.batch_size, shuffle=True, augment=True, seed=settings.seed,
                        drop_remainder=True)
batches = [(0, 1), None, (1, 2)]  # (epoch, index) of lanes 0 and 2; lane 1 trains on a plain batch beside them
plain = epoch_order(settings.seed, 0, len(data.y_train), settings.batch_size)[: settings.batch_size]
chosen = [pipeline.indices(*batch) if batch else plain for batch in batches]
labels = np.stack([data.y_train[c] for c in chosen]).astype(np.int32)
seeds = np.array([augment_seed(settings.seed, *batch) if batch else 0 for batch in batches], np.uint32)
inside = three._step(state, np.stack([data.x_train[c] for c in chosen]), labels, seeds,
                     np.array([batch is not None for batch in batches]))
augmented_batches = np.stack([np.asarray(pipeline.batch(*batch)[0]) if batch else data.x_train[plain].astype(np.float32)
                              for batch in batches])
outside = three._step(state, augmented_batches, labels)
report["augmented_step_diff"] = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                                    for a, b in zip(jax.tree.leaves(inside), jax.tree.leaves(outside)))

# -- 2. A trial in a lane, started while other lanes are mid-epoch, equals the same trial alone -----------
one = LaneEngine(shape, 1)
report["alone"] = history(one.train(config, data, settings))
report["train"] = history(trainer.train(config, data, settings))  # the single-trial trainer, same seed
results: dict = {}


def run(name, *args, **kwargs):
    results[name] = three.train(*args, **kwargs)


threads = [threading.Thread(target=run, args=("a", others[0][0], data, others[0][1]))]
threads[0].start()
time.sleep(0.5)  # a few steps into lane 0's first epoch
threads.append(threading.Thread(target=run, args=("b", others[1][0], data, others[1][1])))
threads[1].start()
time.sleep(0.5)
threads.append(threading.Thread(target=run, args=("t", config, data, settings)))
threads[2].start()
for thread in threads:
    thread.join()
report["in_lane"] = history(results["t"])
report["lane_steps"] = [three.steps_run, three.lane_steps]

# -- 3. Augmentation: a lane flips and shifts its batches as trainer.train does, beside a lane that does not ----
# Without L1: its gradient jumps where a weight crosses zero, which turns the float noise between two compiled
# graphs (1e-6 in a step) into 1e-3 of the loss within ten augmented steps; without it they stay at float noise.
smooth = dataclasses.replace(config, l1_ratio=0.0)
augmented = settings.model_copy(update={"data": settings.data.model_copy(update={"augment": True})})
report["augmented_alone"] = history(one.train(smooth, data, augmented))
report["augmented_train"] = history(trainer.train(smooth, data, augmented))
report["smooth_alone"] = history(one.train(smooth, data, settings))
before = [three.steps_run, three.lane_steps]
mixed = [threading.Thread(target=run, args=("augmented", smooth, data, augmented)),
         threading.Thread(target=run, args=("plain", smooth, data, settings))]
for thread in mixed:
    thread.start()
for thread in mixed:
    thread.join()
report["mixed"] = {"augmented": history(results["augmented"]), "plain": history(results["plain"]),
                   "steps_run": three.steps_run - before[0], "lane_steps": three.lane_steps - before[1]}

# -- 4. Continuous: a pruned trial's lane takes the next trial while the other lanes go on ----------------
events: list[str] = []
lock = threading.Lock()
before, submitted = three.steps_run, three.submitted


class Pruned(Exception):
    pass


def prune_at_first_epoch(epoch, metrics):
    raise Pruned(f"epoch {epoch}")


def job(name, config, settings, on_epoch_end=None):
    try:
        three.train(config, data, settings, on_epoch_end=on_epoch_end)
        outcome = "done"
    except Pruned:
        outcome = "pruned"
    with lock:
        events.append(f"{name}:{outcome}")


long = settings.model_copy(update={"epochs": 6, "seed": 11})
jobs = [threading.Thread(target=job, args=("long", trainer.RegularizationConfig(), long)),
        threading.Thread(target=job, args=("middle", config, settings.model_copy(update={"epochs": 3, "seed": 13}))),
        threading.Thread(target=job, args=("pruned", config, settings, prune_at_first_epoch)),
        threading.Thread(target=job, args=("next", config, settings.model_copy(update={"epochs": 1, "seed": 12})))]
for count, thread in enumerate(jobs, start=1):
    thread.start()  # in this order: long, middle and pruned take the three lanes, next waits
    while three.submitted - submitted < count:
        time.sleep(0.001)
for thread in jobs:
    thread.join()
report["refill"] = {"events": events, "steps_run": three.steps_run - before,
                    "steps_per_epoch": len(data.y_train) // settings.batch_size}
for engine in (one, three):
    engine.close()
print(json.dumps(report))
