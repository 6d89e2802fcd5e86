"""``regsearch worker --lanes 3`` on KERAS_BACKEND=jax: real processes, real SQLite, the real network on real images.

One study lives through three lanes workers: the first is stopped gracefully while its three lanes
train (all three trials are handed back and re-queued), the second is killed mid-step (all three trials
stop heart-beating), the third fails the lost trials, retries them and runs the study to its end,
confirmation included. The study then holds what a one-lane worker leaves: exactly ``n_trials``
finished search trials, every epoch of each reported, the weak ones pruned, every failed trial
retried with its params, none left running or waiting. An augmented study then trains in two lanes.
"""

from __future__ import annotations

import signal
import subprocess

import optuna
import pytest

from service import studies, trials as trial_rules
from service._optuna import retry_of
from service.config import Settings
from service.db import create_engine, migrate, optuna_storage, session_factory
from service.models import STAGE_ATTR, StudyStatus, TrialStage
from service.retries import WORKER_LOST
from service.schemas import StudySpec
from tests.support import REGSEARCH, base_env, kill_group, spawn, wait_until

pytest.importorskip("jax")

State = optuna.trial.TrialState
N_TRIALS, EPOCHS = 6, 3  # the three lanes handed back (then lost) and three fresh trials: two rounds of three lanes


def test_a_lanes_worker_keeps_the_worker_protocol(tmp_path):
    url = f"sqlite:///{tmp_path / 'regsearch.db'}"
    settings = Settings(database_url=url)
    migrate(settings)
    factory, storage = session_factory(create_engine(settings)), optuna_storage(settings)
    spec = StudySpec(name="lanes", model="baseline", width=0.25, n_trials=N_TRIALS, epochs=EPOCHS, batch_size=32,
                     data={"train_size": 400, "val_fraction": 0.2}, confirm={"top_k": 1, "repeats": 1}, pruner="median")
    studies.submit_study(factory, storage, spec)
    # The run's JAX compilation cache (tests/conftest.py) comes with the environment: the workers compile once.
    env = base_env(KERAS_BACKEND="jax", REGSEARCH_DATABASE_URL=url, REGSEARCH_HEARTBEAT_INTERVAL="1",
                   REGSEARCH_GRACE_PERIOD="3")
    study = optuna.load_study(study_name="lanes", storage=storage)

    def trials(*states):
        return [trial for trial in study.get_trials(deepcopy=False) if trial.state in states]

    def three_lanes_training():
        running = trials(State.RUNNING)
        return len(running) == 3 and any(trial.user_attrs.get("history") for trial in running)

    def worker(log: str, *args: str) -> subprocess.Popen:
        return spawn([REGSEARCH, "worker", "--lanes", "3", "--poll-interval", "0.5", *args], env, tmp_path / log)

    def log_of(name: str) -> str:
        return (tmp_path / name).read_text()[-4000:]

    # 1. A graceful stop hands all three lanes' trials back.
    first = worker("first.log")
    wait_until(three_lanes_training, timeout=300, what="three lanes training")
    kill_group(first, signal.SIGTERM, timeout=120)
    assert first.returncode == 0, log_of("first.log")
    stopped = trials(State.FAIL)
    assert len(stopped) == 3 and {trial.user_attrs["fail_reason"] for trial in stopped} == {"worker-shutdown"}
    assert len(trials(State.WAITING)) == 3 and not trials(State.RUNNING)  # re-queued, none left running

    # 2. A lanes worker killed mid-step: its three trials stop heart-beating.
    second = worker("second.log")
    wait_until(three_lanes_training, timeout=300, what="three lanes training again")
    killed = {trial.number for trial in trials(State.RUNNING)}
    kill_group(second, signal.SIGKILL)

    # 3. The next worker fails them, retries them and finishes the study.
    third = worker("third.log", "--exit-when-idle")
    assert third.wait(timeout=600) == 0, log_of("third.log")
    with factory() as session:
        assert studies.get_study(session, "lanes").status == StudyStatus.COMPLETED
    everything = study.get_trials(deepcopy=False)
    assert not [trial for trial in everything if trial.state in (State.RUNNING, State.WAITING)]
    lost = [trial for trial in everything if trial.number in killed]
    assert all(trial.state == State.FAIL and trial.user_attrs["fail_reason"] == WORKER_LOST for trial in lost)
    failed = [trial for trial in everything if trial.state == State.FAIL]
    retried = {retry_of(trial) for trial in everything}
    assert len(failed) == 6 and all(trial.number in retried for trial in failed)  # every failure re-run
    by_number = {trial.number: trial for trial in everything}
    for trial in everything:
        if retry_of(trial) is not None:
            assert trial.params == by_number[retry_of(trial)].params  # with the same params
    search = [trial for trial in everything if trial_rules.is_search_trial(trial) and trial.state in (State.COMPLETE, State.PRUNED)]
    assert len(search) == N_TRIALS
    for trial in search:  # every epoch reported
        epochs = len(trial.user_attrs["history"])
        assert epochs == EPOCHS if trial.state == State.COMPLETE else 1 <= epochs <= EPOCHS  # pruned at any epoch
        assert sorted(trial.intermediate_values) == list(range(epochs))
    confirmed = [trial for trial in everything if trial.user_attrs.get(STAGE_ATTR) == TrialStage.CONFIRM]
    assert confirmed and all(trial.state == State.COMPLETE for trial in confirmed)
    assert "in 3 lanes" in log_of("third.log")  # its last line


def test_a_lanes_worker_trains_an_augmented_study_in_its_lanes(tmp_path):
    """``data.augment`` trials train in the lanes, none alone, the confirmation repeats (each
    with its own split, so its batches gathered on the host) too; every trial completes with every epoch reported."""
    url = f"sqlite:///{tmp_path / 'regsearch.db'}"
    settings = Settings(database_url=url)
    migrate(settings)
    factory, storage = session_factory(create_engine(settings)), optuna_storage(settings)
    spec = StudySpec(name="augmented", model="baseline", width=0.25, n_trials=4, epochs=2, batch_size=32, pruner="none",
                     data={"train_size": 200, "val_fraction": 0.2, "augment": True}, confirm={"top_k": 2, "repeats": 1})
    studies.submit_study(factory, storage, spec)
    env = base_env(KERAS_BACKEND="jax", REGSEARCH_DATABASE_URL=url)
    worker = spawn([REGSEARCH, "worker", "--lanes", "2", "--poll-interval", "0.5", "--exit-when-idle"], env,
                   tmp_path / "worker.log")
    assert worker.wait(timeout=600) == 0, (tmp_path / "worker.log").read_text()[-4000:]
    log = (tmp_path / "worker.log").read_text()
    with factory() as session:
        assert studies.get_study(session, "augmented").status == StudyStatus.COMPLETED
    everything = optuna.load_study(study_name="augmented", storage=storage).get_trials(deepcopy=False)
    assert all(trial.state == State.COMPLETE for trial in everything)
    search = [trial for trial in everything if trial_rules.is_search_trial(trial)]
    confirmed = [trial for trial in everything if trial.user_attrs.get(STAGE_ATTR) == TrialStage.CONFIRM]
    assert len(search) == 4 and len(confirmed) >= 2
    for trial in everything:  # every epoch reported
        assert len(trial.user_attrs["history"]) == 2 and sorted(trial.intermediate_values) == [0, 1]
    assert "lanes: compiling 2 lane(s)" in log and "trained alone" not in log, log[-4000:]
