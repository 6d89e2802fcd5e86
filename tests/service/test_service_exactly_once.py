"""Each queued trial is trained exactly once, on SQLite and PostgreSQL (issue 17).

Every way a trial is queued (the reference, an enqueued config, a retry, a confirmation repeat) ends
in Optuna's pop of a WAITING trial, which :func:`service._rdb.take_waiting` makes one conditional
UPDATE. The first test races bare ``ask`` calls on one queue (without the fix, SQLite hands most
queued trials out twice); the second starts real workers (in threads, each with its own engines, and a
stand-in for Keras training) at the same instant on tiny studies, repeatedly.
"""

from __future__ import annotations

import collections
import threading

import optuna
import pytest

from service import studies
from service.db import optuna_storage
from service.objective import Trained
from service.schemas import StudySpec
from service.worker import Worker
from trainer import TrialMetrics

QUEUED = 24
ASKERS = 4


def test_a_queued_trial_is_taken_by_one_asker(database):
    settings, _factory, storage = database
    study = optuna.create_study(study_name="queue", storage=storage)
    for value in range(QUEUED):
        study.enqueue_trial({"x": float(value)})
    taken: collections.Counter[int] = collections.Counter()
    barrier = threading.Barrier(ASKERS)

    def asker() -> None:
        own = optuna_storage(settings)  # each asker its own engine, as each worker process has
        mine = optuna.load_study(study_name="queue", storage=own)
        barrier.wait()
        while (number := mine.ask().number) < QUEUED:  # a fresh trial once the queue is empty
            taken[number] += 1
        own.engine.dispose()

    threads = [threading.Thread(target=asker) for _ in range(ASKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert taken == {number: 1 for number in range(QUEUED)}


def _training(fail_once: set[str]):
    """A stand-in for trainer.train (one "epoch"); the first call for each config in ``fail_once`` raises, so its trial is retried."""
    lock = threading.Lock()

    def train(spec, config, on_epoch_end, seed=None):
        key = f"{spec.name}:{config.dropout_conv:.2f}"
        with lock:
            fail = key in fail_once
            fail_once.discard(key)
        if fail:
            raise RuntimeError("training blew up once")
        accuracy = 0.5 + 0.4 * config.dropout_conv + (seed or 0) * 1e-4
        on_epoch_end(0, {"loss": 1.0, "accuracy": accuracy, "val_loss": 1.0, "val_accuracy": accuracy})
        return Trained(TrialMetrics(val_accuracy=accuracy, train_accuracy=accuracy, gap=0.0))

    return train


@pytest.mark.parametrize("grace_period", [20])  # a trial trained twice would hold its slot this long: seen as a hang
def test_workers_started_together_train_each_queued_trial_once(database, caplog, grace_period):
    settings, factory, storage = database
    settings = settings.model_copy(update={"poll_interval": 0.02, "max_failed_trials": 10})
    caplog.set_level("WARNING")
    for round_ in range(2):
        names = [f"r{round_}-s{index}" for index in range(3)]
        for name in names:  # the reference and three enqueued configs fill n_trials; the best is confirmed twice
            studies.submit_study(factory, storage, StudySpec(
                name=name, n_trials=4, epochs=1, pruner="none", reference=True, confirm={"top_k": 1, "repeats": 2},
                enqueue=[{"dropout_conv": 0.3 + 0.05 * index} for index in range(1, 4)],
            ))
        train = _training({f"{names[0]}:0.35"})  # one enqueued config fails once: its retry is queued too
        workers = [Worker(settings, train=train, exit_when_idle=True, name=f"w{round_}-{index}") for index in range(3)]
        barrier = threading.Barrier(len(workers))
        threads = [threading.Thread(target=lambda worker=worker: (barrier.wait(), worker.run())) for worker in workers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not any(thread.is_alive() for thread in threads)

        trained: collections.Counter[str] = collections.Counter()
        total = 0
        for name in names:
            with factory() as session:
                assert studies.get_study(session, name).status == "completed"
            trials = optuna.load_study(study_name=name, storage=storage).trials
            assert all(trial.state.is_finished() for trial in trials)
            assert len([trial for trial in trials if trial.user_attrs.get("stage") == "confirm"]) >= 2  # repeats ran
            trained.update(trial.user_attrs["worker"] for trial in trials)  # who trained it (every trial started training)
            total += len(trials)
        failed = [trial for trial in optuna.load_study(study_name=names[0], storage=storage).trials
                  if trial.user_attrs.get("fail_reason") == "error"]
        assert len(failed) == 1  # and its retry ran once, as a queued trial
        assert {worker.name: worker.trials_run for worker in workers} == {worker.name: trained[worker.name] for worker in workers}
        assert sum(worker.trials_run for worker in workers) == total  # no trial trained twice
    assert "Cannot tell" not in caplog.text
