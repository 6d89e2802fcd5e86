"""Lanes (trainer/_lanes.py) on JAX's CPU backend, in a subprocess (this process's Keras may run TensorFlow).

tests/trainer/lanes_check.py trains the real search network (width 0.25) on real CIFAR-10 images and
reports; here we assert: one vmapped step of a lane equals one step of Keras' own ``model.fit`` from
the same state on the same batch; a trial started in a lane while the other lanes are mid-epoch gives
the same metrics as the same trial trained alone (K=1), with augmentation too (a lane augmenting beside one
that does not); a pruned trial's lane takes the next waiting trial while the other lanes go on.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support import CIFAR_DIR, ROOT, base_env

pytest.importorskip("jax")


@pytest.fixture(scope="module")
def report() -> dict:
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "trainer" / "lanes_check.py"), str(CIFAR_DIR)],
                            env=base_env(KERAS_BACKEND="jax"), capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.one_backend  # a JAX subprocess either way: once is enough
def test_a_lane_step_equals_keras_fit_step(report):
    step = report["step_vs_fit"]
    assert step["loss"][0] == pytest.approx(step["loss"][1], rel=1e-5)  # the loss includes the tunable penalty
    assert step["max_weight_diff"] < 1e-4  # Adam moved every weight as fit did (it moves them by ~1e-3)
    assert step["max_stat_diff"] < 1e-4  # BatchNorm statistics and dropout seed states advanced alike


def _assert_same_metrics(history, expected, *, rel: float, accuracy_abs: float) -> None:
    """Two runs' per-epoch metrics agree: losses and weight norms within ``rel``, accuracies within ``accuracy_abs``,
    sparsity (a share of ~300,000 weights, some of which float noise moves across the 1e-3 threshold) within
    ``accuracy_abs`` or 1e-4, whichever is larger."""
    assert len(history) == len(expected) == 2
    for epoch, epoch_expected in zip(history, expected):
        for key in ("loss", "val_loss", "weight_l1", "weight_l2"):
            assert epoch[key] == pytest.approx(epoch_expected[key], rel=rel), key
        for key in ("accuracy", "val_accuracy", "train_accuracy"):
            assert epoch[key] == pytest.approx(epoch_expected[key], abs=accuracy_abs), key
        assert epoch["sparsity"] == pytest.approx(epoch_expected["sparsity"], abs=max(accuracy_abs, 1e-4)), "sparsity"


@pytest.mark.one_backend  # a JAX subprocess either way: once is enough
def test_a_lane_trains_a_trial_as_trainer_train_does(report):
    """One lane (K=1) against trainer.train, the same config and seed: the same data order, initial weights,
    dropout draws and epoch-end measurements, so the same metrics within float tolerance."""
    _assert_same_metrics(report["alone"], report["train"], rel=1e-4, accuracy_abs=1e-6)


@pytest.mark.one_backend  # a JAX subprocess either way: once is enough
def test_a_trial_in_a_lane_equals_the_trial_alone(report):
    _assert_same_metrics(report["in_lane"], report["alone"], rel=1e-3, accuracy_abs=0.02)
    steps_run, lane_steps = report["lane_steps"]
    assert lane_steps > steps_run  # the lanes did share steps


@pytest.mark.one_backend  # a JAX subprocess either way: once is enough
def test_an_augmenting_step_augments_each_lane_as_the_pipeline_does(report):
    """Two augmented lanes (other epochs and batches) beside a plain one: the step that flips and shifts them on
    the device ends where the plain step ends on trainer._pipeline's augmented batches. Bit for bit here; a
    single different flip or shift would move weights by Adam's first step (~1e-3)."""
    assert report["augmented_step_diff"] < 1e-6


@pytest.mark.one_backend  # a JAX subprocess either way: once is enough
def test_an_augmented_trial_in_a_lane_equals_the_trial_alone(report):
    """Augmented trials (without L1: see lanes_check.py) over whole epochs: one lane (K=1) matches
    trainer.train, and in a three-lane engine an augmented trial and a plain one side by side each match
    their trial alone."""
    _assert_same_metrics(report["augmented_alone"], report["augmented_train"], rel=1e-4, accuracy_abs=1e-6)
    mixed = report["mixed"]
    # Three lanes vmapped against one: other XLA reductions, whose float noise the shifts' interpolation and the
    # max-pools grow over two epochs (1.2e-3 of the loss seen here, and CPUs differ; the augmenting step itself is
    # bit-exact, above, and a trial without augmentation ends 4% away, below).
    _assert_same_metrics(mixed["augmented"], report["augmented_alone"], rel=1e-2, accuracy_abs=0.02)
    _assert_same_metrics(mixed["plain"], report["smooth_alone"], rel=1e-2, accuracy_abs=0.02)
    assert mixed["lane_steps"] > mixed["steps_run"]  # the two trials did share steps
    # The augmentation changed the training far beyond those tolerances: the same trial without it ends elsewhere.
    assert report["augmented_alone"][0]["loss"] != pytest.approx(report["smooth_alone"][0]["loss"], rel=1e-2)


@pytest.mark.one_backend  # a JAX subprocess either way: once is enough
def test_a_pruned_trials_lane_takes_the_next_trial_while_the_others_go_on(report):
    refill = report["refill"]
    events = refill["events"]
    assert events[0] == "pruned:pruned"
    assert events.index("next:done") < events.index("long:done")  # "next" waited for a free lane, yet ended first
    assert sorted(events) == ["long:done", "middle:done", "next:done", "pruned:pruned"]
    # Every other trial ran inside the 6-epoch trial's steps: no step was spent on a lane alone.
    assert refill["steps_run"] == 6 * refill["steps_per_epoch"]
