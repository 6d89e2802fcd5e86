"""The confirmation stage on the real worker and the real database, with a stand-in training whose scores
are known: which configs are repeated, with which seeds and splits, what the best then says (mean,
interval, ties, robust ranges, in every form), and that a killed worker or a stop during the stage
loses nothing. The real-network end-to-end run over HTTP is in ``test_service_e2e.py``.
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import optuna
import pytest
from scipy import stats

from service import coordination, studies, views
from service.confirmation import repeat_seed
from service.models import SearchEnd, SearchStudy
from service.schemas import StudySpec
from service.trials import is_search_trial
from service.objective import Trained
from service.worker import Worker
from trainer import TrialMetrics
from tests.support import run_workers

optuna.logging.set_verbosity(optuna.logging.WARNING)

#: The per-repeat shift every config shares (repeat r's validation split is easier or harder for all).
SPLIT_SHIFT = {0: 0.0, 1: 0.03, 2: -0.02}


@pytest.fixture
def grace_period() -> int:
    # A grace period of several heartbeats: a loaded machine must not make a live trial look dead (the
    # killed-worker test waits it out). The ``database`` fixture (tests/service/conftest.py) uses it.
    return 4


class KnownScores:
    """A stand-in for the worker's training: the score of (config, repeat) is known.

    quality(config) = 0.5 + 0.4 * dropout_conv; a search trial (no seed) scores its quality; repeat r
    (seed repeat_seed(study seed, r)) scores quality + SPLIT_SHIFT[r], except the search's single best
    pick, which was lucky: its repeats score 0.2 lower (more than the whole quality range). Every call is recorded (config, seed).
    """

    def __init__(self, base_seed: int) -> None:
        self.repeat_of = {repeat_seed(base_seed, repeat): repeat for repeat in (1, 2)}
        self.calls: list[tuple[dict[str, float], int | None]] = []
        self.lucky: float | None = None
        self.lock = threading.Lock()

    def score(self, params: dict[str, float], seed: int | None) -> float:
        quality = 0.5 + 0.4 * params["dropout_conv"]
        if seed is None:
            return quality
        repeat = self.repeat_of[seed]
        return quality + SPLIT_SHIFT[repeat] - (0.2 if params["dropout_conv"] == self.lucky else 0.0)

    def __call__(self, spec, config, on_epoch_end, seed=None):
        params = {"dropout_conv": config.dropout_conv, "weight_decay": config.weight_decay}
        with self.lock:
            if seed is not None and self.lucky is None:
                self.lucky = max(p["dropout_conv"] for p, s in self.calls if s is None)
            self.calls.append((params, seed))
        value = self.score(params, seed)
        for epoch in range(spec.epochs):
            on_epoch_end(epoch, {"val_accuracy": value, "accuracy": value + 0.05, "loss": 1.0, "val_loss": 1.1, "gap": 0.05})
        return Trained(TrialMetrics(**{"val_accuracy": value, "train_accuracy": value + 0.05, "gap": 0.05, "train_size": 270}))


def trials_of(storage, name):
    return optuna.load_study(study_name=name, storage=storage).trials


def best_json(settings, name, output_format="json"):
    from fastapi.testclient import TestClient

    from service.api.main import create_app

    app = create_app(settings, dashboard=False)
    with TestClient(app) as client:
        response = client.get(f"/v1/studies/{name}/best", params={"format": output_format})
        study = client.get(f"/v1/studies/{name}").json()
    app.state.engine.dispose()
    app.state.optuna_storage.engine.dispose()
    assert response.status_code == 200, response.text
    return (response.json() if output_format != "python" else response.text), study


def test_top_configs_are_repeated_with_paired_seeds_and_the_best_is_the_highest_mean(database):
    settings, factory, storage = database
    spec = StudySpec(name="confirm", n_trials=6, epochs=2, pruner="none", seed=7, confirm={"top_k": 3, "repeats": 2}, reference=False)
    studies.submit_study(factory, storage, spec)
    training = KnownScores(spec.seed)
    run_workers(settings, training)

    trials = [trial for trial in trials_of(storage, "confirm") if trial.state.name == "COMPLETE"]
    search = [trial for trial in trials if "stage" not in trial.user_attrs]
    repeats = [trial for trial in trials if trial.user_attrs.get("stage") == "confirm"]
    assert len(search) == 6 and len(repeats) == 6
    top3 = sorted(search, key=lambda trial: -trial.value)[:3]
    # The right configs: the three best search trials, each repeated twice with the params of its trial.
    assert sorted((t.user_attrs["confirms"], t.user_attrs["repeat"]) for t in repeats) == sorted(
        (t.number, r) for t in top3 for r in (1, 2)
    )
    by_number = {trial.number: trial for trial in search}
    for trial in repeats:
        assert trial.params == by_number[trial.user_attrs["confirms"]].params
        # Paired: repeat r of every config has the seed of repeat r (its split, data order and init).
        assert trial.user_attrs["seed"] == repeat_seed(spec.seed, trial.user_attrs["repeat"])
        assert len(trial.intermediate_values) == spec.epochs  # full budget
    seeds_used = sorted({seed for _, seed in training.calls if seed is not None})
    assert seeds_used == [repeat_seed(7, 1), repeat_seed(7, 2)]
    assert all(seed in seeds_used for _, seed in training.calls if seed is not None)  # search trials: the study's own seed

    # The numbers: per config, values over repeats 0..2; the lucky first pick falls behind.
    values = {t.number: [t.value] + [next(r.value for r in repeats if r.user_attrs["confirms"] == t.number
                                          and r.user_attrs["repeat"] == k) for k in (1, 2)] for t in top3}
    means = {number: float(np.mean(v)) for number, v in values.items()}
    winner = max(means, key=means.get)
    assert winner != top3[0].number  # the single best pick was luck; the mean says so
    best, study = best_json(settings, "confirm")
    assert study["status"] == "completed" and study["trials_finished"] == 6 and study["confirm_finished"] == 6
    assert study["confirm_trials"] == 6 and study["best"]["confirmed"] is True and study["best"]["n"] == 3
    assert best["trial_number"] == winner and best["confirmed"] is True and best["n"] == 3
    assert best["mean"] == pytest.approx(means[winner]) and best["value"] == pytest.approx(means[winner])
    assert best["first_value"] == pytest.approx(by_number[winner].value)
    std = float(np.std(values[winner], ddof=1))
    half = stats.t.ppf(0.975, 2) * std / math.sqrt(3)
    assert best["std"] == pytest.approx(std) and best["ci_low"] == pytest.approx(means[winner] - half)
    assert best["ci_high"] == pytest.approx(means[winner] + half) and best["confidence"] == 0.95
    # Ties: the paired differences best - other are constant here (shared split shifts cancel), so a config
    # is tied exactly when it is not worse: none, except when the shifts leave an exact zero difference.
    expected_ties = []
    for number, other in values.items():
        if number == winner:
            continue
        differences = np.subtract(values[winner], other)
        if np.ptp(differences) < 1e-9:
            significant = differences.mean() > 1e-9
        else:
            significant = stats.ttest_rel(values[winner], other, alternative="greater").pvalue < 0.05
        if not significant:
            expected_ties.append(number)
    assert sorted(tie["trial_number"] for tie in best["ties"]) == sorted(expected_ties)
    span = [by_number[number].params["dropout_conv"] for number in (winner, *expected_ties)]
    assert best["robust_ranges"]["dropout_conv"] == {"low": pytest.approx(min(span)), "high": pytest.approx(max(span))}
    assert "paired t-test" in best["test"] and "Wilcoxon" in best["test"]

    # Every form carries it.
    keras_form, _ = best_json(settings, "confirm", "keras")
    assert keras_form["uncertainty"]["mean"] == pytest.approx(best["mean"]) and keras_form["uncertainty"]["confirmed"] is True
    snippet, _ = best_json(settings, "confirm", "python")
    assert f"mean {best['mean']:.4f} over 3 run(s)" in snippet and "confirmed" in snippet
    from trainer import load_best

    loaded = load_best(best)
    assert loaded.n == 3 and loaded.ci_low == pytest.approx(best["ci_low"]) and loaded.confirmed is True


def test_leader_is_marked_unconfirmed_until_the_stage_ends_and_history_follows_it(database):
    settings, factory, storage = database
    spec = StudySpec(name="leader", n_trials=4, epochs=1, pruner="none", confirm={"top_k": 2, "repeats": 1}, reference=False)
    studies.submit_study(factory, storage, spec)
    seen: list[tuple[str, bool | None, int | None]] = []
    training = KnownScores(spec.seed)

    def observing(spec_, config, on_epoch_end, seed=None):
        if seed is not None:
            with factory() as session:
                row = studies.get_study(session, "leader")
                summary = views.study_out(session, row)
            seen.append((summary.status, summary.best.confirmed, summary.best.n))
        return training(spec_, config, on_epoch_end, seed=seed)

    run_workers(settings, observing, count=1)
    assert seen and all(status == "confirming" and confirmed is False for status, confirmed, _ in seen)
    _, study = best_json(settings, "leader")
    assert study["status"] == "completed" and study["best"]["confirmed"] is True
    with factory() as session:
        row = studies.get_study(session, "leader")
        history = [(record.trial_number, record.value, (record.summary or {}).get("confirmed")) for record in row.best_history]
    # Search rows only when the best value improved; the last row is the confirmed leader at its mean.
    assert history[-1][2] is True and history[-1][1] == pytest.approx(study["best"]["value"])
    assert all(confirmed is False for _, _, confirmed in history[:-1])


def test_the_reference_is_confirmed_like_a_top_config_so_the_margin_has_an_interval(database):
    """Issue 11 with issue 10: the reference config (queued first, a search trial) is repeated with the top
    configs, and the best's margin over it compares the best's runs with the reference's runs."""
    settings, factory, storage = database
    spec = StudySpec(name="yardstick", n_trials=4, epochs=1, pruner="none", seed=7, confirm={"top_k": 1, "repeats": 2})
    studies.submit_study(factory, storage, spec)
    honest = KnownScores(spec.seed)
    honest.lucky = -1.0  # no config's repeats fall behind: the top config stays ahead of the reference
    run_workers(settings, honest, count=1)

    trials = [trial for trial in trials_of(storage, "yardstick") if trial.state.name == "COMPLETE"]
    search = [trial for trial in trials if is_search_trial(trial)]
    (reference,) = [trial for trial in search if trial.user_attrs.get("stage") == "reference"]
    top = max(search, key=lambda trial: (trial.value, -trial.number))
    repeats = [trial for trial in trials if trial.user_attrs.get("stage") == "confirm"]
    assert len(search) == 4 and reference.number == 0  # the reference counts towards n_trials and runs first
    assert sorted((t.user_attrs["confirms"], t.user_attrs["repeat"]) for t in repeats) == sorted(
        (number, repeat) for number in {top.number, reference.number} for repeat in (1, 2))
    runs = {number: [t.value for t in trials if t.number == number or t.user_attrs.get("confirms") == number]
            for number in (top.number, reference.number)}
    best, study = best_json(settings, "yardstick")
    assert study["status"] == "completed" and best["confirmed"] is True and best["n"] == 3
    margin = best["margin"]
    assert margin == study["margin"] and (margin["n_best"], margin["n_reference"]) == (3, 3)
    assert margin["value"] == pytest.approx(np.mean(runs[best["trial_number"]]) - np.mean(runs[reference.number]))
    assert margin["low"] is not None and margin["low"] <= margin["value"] <= margin["high"]
    assert best["is_reference"] is False and best["candidates"] == 2

    # When the reference itself is the best (the lucky top config's repeats fall behind), there is no margin of
    # a config over itself: the answer says the best is the defaults.
    studies.submit_study(factory, storage, spec.model_copy(update={"name": "yardstick-defaults"}))
    run_workers(settings, KnownScores(spec.seed), count=1)
    best, study = best_json(settings, "yardstick-defaults")
    assert best["trial_number"] == 0 and best["is_reference"] is True
    assert best["margin"] is None and study["margin"] is None


def test_top_k_zero_skips_confirmation(database):
    settings, factory, storage = database
    studies.submit_study(factory, storage, StudySpec(name="plain", n_trials=3, epochs=1, pruner="none", confirm={"top_k": 0}, reference=False))
    training = KnownScores(0)
    run_workers(settings, training, count=1)
    trials = [trial for trial in trials_of(storage, "plain") if trial.state.name == "COMPLETE"]
    assert len(trials) == 3 and not any("stage" in trial.user_attrs for trial in trials_of(storage, "plain"))
    assert all(seed is None for _, seed in training.calls)
    best, study = best_json(settings, "plain")
    assert study["status"] == "completed" and study["confirm_trials"] == 0
    assert best["n"] == 1 and best["confirmed"] is False and best["value"] == pytest.approx(max(t.value for t in trials))


class Killed(BaseException):
    """The worker process dies mid-epoch (not an Exception: nothing in the worker catches it)."""


def test_a_worker_killed_during_confirmation_loses_nothing(database):
    settings, factory, storage = database
    spec = StudySpec(name="killed", n_trials=4, epochs=2, pruner="none", confirm={"top_k": 2, "repeats": 1}, reference=False)
    row, _ = studies.submit_study(factory, storage, spec)
    training = KnownScores(spec.seed)
    died = threading.Event()

    def dies_in_its_first_repeat(spec_, config, on_epoch_end, seed=None):
        if seed is not None and not died.is_set():
            training(spec_.model_copy(update={"epochs": 1}), config, on_epoch_end, seed=seed)  # one epoch reported
            died.set()
            raise Killed()
        return training(spec_, config, on_epoch_end, seed=seed)

    def doomed():
        try:
            Worker(settings, train=dies_in_its_first_repeat, name="doomed").run()
        except Killed:
            pass

    thread = threading.Thread(target=doomed)
    thread.start()
    thread.join(120)
    assert died.is_set() and not thread.is_alive()
    with factory() as session:
        assert studies.get_study(session, "killed").status == "confirming"
    time.sleep(settings.grace_period + 1.0)  # its heartbeat goes stale

    run_workers(settings, training, count=2)

    trials = trials_of(storage, "killed")
    repeats = [trial for trial in trials if trial.user_attrs.get("stage") == "confirm"]
    complete = [trial for trial in repeats if trial.state.name == "COMPLETE"]
    killed = next(trial for trial in repeats if trial.user_attrs.get("worker") == "doomed")
    assert killed.state.name == "FAIL" and len(complete) == 2  # every planned repeat finished once: nothing lost, nothing twice
    retry = next(trial for trial in complete if trial.system_attrs.get("retry_history", [None])[0] == killed.number)
    for key in ("confirms", "repeat", "seed"):
        assert retry.user_attrs[key] == killed.user_attrs[key]
    assert "fail_reason" not in retry.user_attrs and len(retry.user_attrs["history"]) == spec.epochs  # a clean re-run
    search = [t for t in trials if "stage" not in t.user_attrs and t.state.name == "COMPLETE"]
    assert sorted((t.user_attrs["confirms"], t.user_attrs["repeat"]) for t in complete) == sorted(
        (t.number, 1) for t in sorted(search, key=lambda t: -t.value)[:2]
    )
    with factory() as session:
        done = session.get(SearchStudy, row.id)
        assert (done.status, done.claimed, done.confirm_trials) == ("completed", 6, 2)  # 4 search + 2 repeats hold slots
    best, _ = best_json(settings, "killed")
    assert best["confirmed"] is True and best["n"] == 2


def test_a_stop_during_confirmation_stops_it(database):
    settings, factory, storage = database
    spec = StudySpec(name="halted", n_trials=3, epochs=5, pruner="none", confirm={"top_k": 2, "repeats": 2}, reference=False)
    studies.submit_study(factory, storage, spec)
    training = KnownScores(spec.seed)
    epochs: list[int] = []

    def stops_in_the_first_repeat(spec_, config, on_epoch_end, seed=None):
        if seed is None:
            return training(spec_, config, on_epoch_end)

        def reporting(epoch, metrics):
            epochs.append(epoch)
            if epoch == 1:
                studies.stop_study(factory, "halted")  # the user stops the study during the stage
            on_epoch_end(epoch, metrics)

        return training(spec_, config, reporting, seed=seed)

    run_workers(settings, stops_in_the_first_repeat, count=1)
    assert epochs == [0, 1]  # stopped within the epoch; no other repeat started
    repeats = [trial for trial in trials_of(storage, "halted") if trial.user_attrs.get("stage") == "confirm"]
    assert [(t.state.name, t.user_attrs.get("fail_reason")) for t in repeats if t.state.name != "WAITING"] == [("FAIL", "stopped")]
    best, study = best_json(settings, "halted")
    assert study["status"] == "stopped" and best["confirmed"] is False and best["n"] == 1


def test_a_repeat_loads_another_split_of_the_same_pool(cifar_dir):
    from service.worker import KerasTraining

    training = KerasTraining(cifar_dir)
    spec = StudySpec(name="split", data={"train_size": 200})
    search, repeat = training.data(spec), training.data(spec, split_seed=repeat_seed(spec.seed, 1))
    assert training.data(spec, split_seed=repeat_seed(spec.seed, 1)) is repeat and training.loads == 2

    def rows(x):
        return {image.tobytes() for image in x}

    assert rows(search.x_train) | rows(search.x_val) == rows(repeat.x_train) | rows(repeat.x_val)  # the same pool
    assert rows(search.x_val) != rows(repeat.x_val) and len(repeat.x_val) == len(search.x_val) == 20
    assert np.array_equal(np.bincount(repeat.y_val.ravel(), minlength=10), np.bincount(search.y_val.ravel(), minlength=10))


class EditsWhileTraining(KnownScores):
    """KnownScores, each epoch a little slow; the first epoch of the second trial started runs ``edit`` (made while
    trials run, as a PATCH would; two trials started, so an n_trials of 1 is below them)."""

    def __init__(self, base_seed: int, edit) -> None:
        super().__init__(base_seed)
        self.edit, self.started = edit, {}

    def __call__(self, spec, config, on_epoch_end, seed=None):
        with self.lock:
            index = self.started.get(spec.name, 0)
            self.started[spec.name] = index + 1

        def slow(epoch, metrics):
            time.sleep(0.05)
            if spec.name == "edit-lower" and index == 1 and epoch == 0:
                self.edit()
            on_epoch_end(epoch, metrics)

        return super().__call__(spec, config, slow, seed)


def test_lowering_n_trials_ends_the_search_then_raising_it_resumes_and_a_spent_confirmation_budget_drops_repeats(database):
    """Issue 20 with real workers on stand-in training: an edit below the trials started ends the search (the running
    trials end at their epoch, pruned, their epochs kept); an edit that would resume a search whose budget is spent is
    refused naming it; raising n_trials resumes a completed search; confirm.max_hours bounds the confirmation."""
    settings, factory, storage = database
    lower = StudySpec(name="edit-lower", n_trials=8, epochs=3, pruner="none", seed=3, reference=False, confirm={"top_k": 0})
    bounded = StudySpec(name="edit-confirm", n_trials=3, epochs=1, pruner="none", seed=3, reference=False,
                        confirm={"top_k": 2, "repeats": 2, "max_hours": 1e-7})
    for spec in (lower, bounded):
        studies.submit_study(factory, storage, spec)
    run_workers(settings, EditsWhileTraining(3, lambda: studies.edit_study(factory, "edit-lower", {"n_trials": 1})))

    with factory() as session:
        row = studies.get_study(session, "edit-lower")
        out = views.study_out(session, row)
    assert (out.status, out.search_ended_by, out.spec.n_trials) == ("completed", "n_trials", 1)
    trials = trials_of(storage, "edit-lower")
    assert len(trials) == out.n_trials == out.trials_finished < 8
    assert all(trial.state.name in ("COMPLETE", "PRUNED") for trial in trials)
    assert any(trial.state.name == "PRUNED" and 1 <= len(trial.intermediate_values) < 3 for trial in trials), [
        (trial.number, trial.state.name, len(trial.intermediate_values)) for trial in trials]

    with pytest.raises(studies.BudgetSpent, match="max_runtime_s 0.001 is spent"):
        studies.edit_study(factory, "edit-lower", {"n_trials": out.n_trials + 1, "max_runtime_s": 0.001})
    resumed = studies.edit_study(factory, "edit-lower", {"n_trials": out.n_trials + 1, "max_runtime_s": None})
    assert (resumed.status, resumed.search_ended_by, resumed.n_trials) == ("running", None, out.n_trials + 1)
    run_workers(settings, KnownScores(3))
    with factory() as session:
        again = views.study_out(session, studies.get_study(session, "edit-lower"))
    assert (again.status, again.search_ended_by, again.trials_finished) == ("completed", "n_trials", out.n_trials + 1)

    with factory() as session:
        confirm = views.study_out(session, studies.get_study(session, "edit-confirm"))
    repeats = [trial for trial in trials_of(storage, "edit-confirm") if trial.user_attrs.get("stage") == "confirm"]
    dropped = [trial for trial in repeats if trial.user_attrs.get("fail_reason") == "confirm-budget"]
    assert confirm.status == "completed" and confirm.usage.confirm_trial_hours > 1e-7
    assert len(repeats) == 4 and 1 <= len(dropped) <= 3 and confirm.confirm_finished == 4 - len(dropped)
    assert all(trial.state.name == "FAIL" for trial in dropped)


def test_an_ended_search_waits_for_a_slot_claimed_just_before_the_end(database):
    """A worker that claimed a search slot just before a budget ended the search has no trial yet: the confirmation
    waits for it (its trial, pruned untrained, is one of the n_trials end_search kept), and moves on once the slot is
    given back. It began at once before, and that worker's trial then failed as nothing-to-confirm, leaving the
    completed study one trial short of its n_trials (seen under load in test_service_e2e's budgets test)."""
    settings, factory, storage = database
    studies.submit_study(factory, storage, StudySpec(name="late-claim", n_trials=5, epochs=1, pruner="none", reference=False,
                                                     confirm={"top_k": 1, "repeats": 1}))
    with factory() as session:
        row = studies.get_study(session, "late-claim")
    assert coordination.claim_slot(factory, row.id) is not None  # its worker has not asked for a trial yet
    assert coordination.end_search(factory, row.id, SearchEnd.MAX_TRIAL_HOURS)
    with factory() as session:
        assert studies.get_study(session, "late-claim").n_trials == 1  # the slot taken counts
    assert not coordination.begin_confirmation(factory, row.id, row.name)
    coordination.release_slot(factory, row.id)  # e.g. its worker failed the trial, or died and the slot was reclaimed
    assert coordination.begin_confirmation(factory, row.id, row.name)

