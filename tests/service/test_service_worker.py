"""The worker's bookkeeping on real SQLite and PostgreSQL: slot claims, retries, dead workers, best history.

These run the real Worker against the real database with a stand-in for Keras training (a few
arithmetic "epochs"), so the coordination is tested in milliseconds; end-to-end training runs in
``test_service_e2e.py``.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import warnings

import optuna
import pytest
import sqlalchemy as sa

from service import coordination, studies, views
from service._optuna import distributions
from service.config import Settings
from service.db import create_engine, head_revision, migrate, optuna_storage, session_factory
from service.models import BestConfigRecord, SearchStudy, utc_now
from service.retries import SETTLED, RetryFailedTrial, retry_unsettled_failures
from service.schemas import StudySpec
from service.objective import Trained
from service.worker import Worker
from trainer import TrialMetrics
from tests.support import run_workers

optuna.logging.set_verbosity(optuna.logging.WARNING)

NO_CONFIRM = {"top_k": 0}  # these tests are about the search stage; tests/service/test_service_confirmation.py has the rest


def quick_training(fail_on_calls=()):
    """A stand-in for trainer.train: 3 "epochs" whose accuracy depends on the params."""
    calls = {"count": 0}
    lock = threading.Lock()

    def train(spec, config, on_epoch_end):
        with lock:
            calls["count"] += 1
            call = calls["count"]
        if call in fail_on_calls:
            raise RuntimeError(f"training blew up on call {call}")
        accuracy = 0.5 + 0.4 * config.dropout_conv - 10 * config.weight_decay
        for epoch in range(spec.epochs):
            on_epoch_end(epoch, {"loss": 1.0, "accuracy": accuracy + 0.05, "val_loss": 1.1, "val_accuracy": accuracy, "gap": 0.05})
        return Trained(TrialMetrics(**{"val_accuracy": accuracy, "train_accuracy": accuracy + 0.05, "gap": 0.05, "train_size": 270}))

    return train


def test_migrations_are_idempotent_and_keep_optuna_tables_apart(database):
    settings, factory, _storage = database
    assert migrate(settings) == migrate(settings) == head_revision()
    tables = set(sa.inspect(create_engine(settings)).get_table_names())
    assert {"regsearch_studies", "regsearch_best_configs", "regsearch_alembic_version"} <= tables
    assert {"studies", "trials", "alembic_version"} <= tables  # Optuna's own, untouched


def test_claims_never_exceed_n_trials_under_contention(database):
    _settings, factory, storage = database
    row, _ = studies.submit_study(factory, storage, StudySpec(confirm=NO_CONFIRM, name="claims", n_trials=5))
    claimed: list[int] = []
    barrier = threading.Barrier(8)

    def claimer():
        barrier.wait()
        for _ in range(4):
            serial = coordination.claim_slot(factory, row.id)
            if serial is not None:
                claimed.append(serial)

    threads = [threading.Thread(target=claimer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == [1, 2, 3, 4, 5]  # five slots, each serial handed out once
    coordination.release_slot(factory, row.id)
    assert coordination.claim_slot(factory, row.id) == 6
    assert coordination.claim_slot(factory, row.id) is None


# Several heartbeats (the fixture's 1 s is one): under load a live trial must not be failed as lost, which
# would add a retry and a failed trial to the counts below. Nothing here waits for the grace period.
@pytest.mark.parametrize("grace_period", [4])
def test_failed_trial_is_retried_with_its_params_and_study_ends_at_n_trials(database):
    settings, factory, storage = database
    studies.submit_study(factory, storage, StudySpec(confirm=NO_CONFIRM, name="retry", n_trials=6, epochs=3, pruner="none"))
    run_workers(settings, quick_training(fail_on_calls={2}), count=3)

    trials = optuna.load_study(study_name="retry", storage=storage).trials
    failed = [trial for trial in trials if trial.state == optuna.trial.TrialState.FAIL]
    finished = [trial for trial in trials if trial.state == optuna.trial.TrialState.COMPLETE]
    assert len(failed) == 1 and len(finished) == 6 and len(trials) == 7
    assert failed[0].user_attrs["fail_reason"] == "error"
    assert "training blew up" in failed[0].user_attrs["error"]
    retry = next(trial for trial in trials if trial.system_attrs.get("retry_history") == [failed[0].number])
    assert retry.params == failed[0].params and retry.state == optuna.trial.TrialState.COMPLETE
    assert retry.system_attrs["failed_trial"] == failed[0].number  # Optuna's retry callback's record
    assert "fail_reason" not in retry.user_attrs and "error" not in retry.user_attrs  # a clean record
    assert retry.user_attrs["train_size"] == 270 and retry.user_attrs["val_accuracy"] == retry.value  # TrialMetrics
    with factory() as session:
        row = studies.get_study(session, "retry")
        assert (row.status, row.claimed, row.failed_trials) == ("completed", 6, 1)
        history = list(session.scalars(sa.select(BestConfigRecord).where(BestConfigRecord.study_id == row.id).order_by(BestConfigRecord.id)))
    values = [record.value for record in history]
    assert values == sorted(values) and len(set(values)) == len(values)  # a row only when the best improves
    assert values[-1] == max(trial.value for trial in finished)
    assert history[-1].train_size == 270


def _commits_cut_after_landing(engine, cuts, statement_start):
    """Make the next ``cuts`` commits on ``engine`` of transactions that ran a statement starting ``statement_start``
    land, then raise as a dropped connection does (the client never hears that the server committed); returns the
    cuts made."""
    made = []

    def before_cursor_execute(conn, _cursor, statement, *_args):
        if statement.lstrip().upper().startswith(statement_start.upper()):
            conn.info[statement_start] = True

    def commit(conn):
        if conn.info.pop(statement_start, False) and len(made) < cuts:
            made.append(statement_start)
            conn.connection.dbapi_connection.commit()  # the server commits...
            raise sa.exc.OperationalError("COMMIT", {}, RuntimeError("server closed the connection unexpectedly"))

    sa.event.listen(engine, "before_cursor_execute", before_cursor_execute)
    sa.event.listen(engine, "commit", commit)
    return made


def test_a_trial_creation_whose_commit_landed_but_raised_creates_one_trial(database):
    """Optuna retries a creation whose commit raised; when that commit had landed, the retry must find its trial,
    not leave it RUNNING with no worker (an orphan beside the slot's trial: one trial more than n_trials)."""
    settings, _factory, _storage = database
    storage = optuna_storage(settings, heartbeat=True)  # the workers' storage
    study = optuna.create_study(storage=storage, study_name="cut-commit", direction="maximize")
    cut = _commits_cut_after_landing(storage.engine, 1, "INSERT INTO trials ")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeats outside optimize
        trial = study.ask()
        assert cut == ["INSERT INTO trials "]  # the first attempt's commit landed, then raised
        assert [(t.number, t.state.name) for t in study.get_trials()] == [(0, "RUNNING")] and trial.number == 0
        study.tell(trial, 0.5)
        assert study.ask().number == 1  # the next creation is a trial of its own
        # Taking a queued trial: the conditional UPDATE's commit landed, then raised; the trial is this caller's.
        study.enqueue_trial({"dropout_conv": 0.4})
        cut = _commits_cut_after_landing(storage.engine, 1, "UPDATE trials SET state")
        queued = study.ask()
    assert cut == ["UPDATE trials SET state"] and queued.number == 2
    assert queued.suggest_float("dropout_conv", 0.3, 0.5) == 0.4
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE", "RUNNING", "RUNNING"]
    storage.engine.dispose()


def test_a_trial_whose_ask_raised_after_creating_it_is_failed_before_its_slot_is_given_back(database):
    """The read right after a trial's creation is cut (a dropped connection): ``ask`` raises, the objective never runs.
    The worker fails that trial before giving its slot back, so it never runs beside the slot's next trial."""
    settings, factory, storage = database
    studies.submit_study(factory, storage, StudySpec(confirm=NO_CONFIRM, name="unrun", n_trials=2, epochs=1, pruner="none",
                                                     reference=False))
    worker = Worker(settings, train=quick_training(), exit_when_idle=True, name="test-cut")
    worker._connect()
    steps = []  # "insert", then "commit" of the first trial's creation, then "cut" of the next read

    def before_cursor_execute(conn, _cursor, statement, *_args):
        if not steps and statement.lstrip().upper().startswith("INSERT INTO TRIALS "):
            steps.append("insert")
        elif steps == ["insert", "commit"] and statement.lstrip().upper().startswith("SELECT"):
            steps.append("cut")
            raise sa.exc.OperationalError(statement, {}, RuntimeError("server closed the connection unexpectedly"))

    def commit(conn):
        if steps == ["insert"]:
            steps.append("commit")

    sa.event.listen(worker._storage.engine, "before_cursor_execute", before_cursor_execute)
    sa.event.listen(worker._storage.engine, "commit", commit)
    worker.run()

    assert steps == ["insert", "commit", "cut"]
    trials = optuna.load_study(study_name="unrun", storage=storage).trials
    assert [(t.state.name, t.user_attrs.get("fail_reason"), bool(t.params)) for t in trials] == [
        ("FAIL", "orphaned", False), ("COMPLETE", None, True), ("COMPLETE", None, True)]
    assert trials[0].datetime_complete <= trials[1].datetime_start  # failed before the next trial was created
    with factory() as session:
        assert (studies.get_study(session, "unrun").status, studies.get_study(session, "unrun").claimed) == ("completed", 2)


def test_trial_of_a_dead_worker_is_failed_and_rerun_with_same_params(database):
    """A worker that vanished mid-trial (no more heartbeats): its trial is failed and re-run, its slot reused."""
    settings, factory, storage = database
    row, _ = studies.submit_study(factory, storage, StudySpec(confirm=NO_CONFIRM, name="orphan", n_trials=2, epochs=2, pruner="none"))
    # The "dead worker": claims a slot, asks for a trial, beats once, then disappears.
    assert coordination.claim_slot(factory, row.id) == 1
    orphan = _dead_worker_trial(settings, "orphan")
    time.sleep(settings.grace_period + 1.0)

    run_workers(settings, quick_training(), count=2)

    trials = optuna.load_study(study_name="orphan", storage=storage).trials
    states = sorted(trial.state.name for trial in trials)
    assert states == ["COMPLETE", "COMPLETE", "FAIL"]
    rerun = next(trial for trial in trials if trial.system_attrs.get("retry_history") == [orphan.number])
    assert rerun.params == orphan.params and rerun.state == optuna.trial.TrialState.COMPLETE
    lost = next(trial for trial in trials if trial.number == orphan.number)
    assert lost.user_attrs["fail_reason"] == "worker lost" and "fail_reason" not in rerun.user_attrs
    with factory() as session:
        assert session.scalar(sa.select(SearchStudy.status).where(SearchStudy.id == row.id)) == "completed"


def _dead_worker_trial(settings, name):
    """A worker that asked for a trial of ``name``, drew its params, beat once and was killed."""
    heartbeat_storage = optuna_storage(settings, heartbeat=True)
    study = optuna.load_study(study_name=name, storage=heartbeat_storage)
    with warnings.catch_warnings():  # Optuna warns that heartbeats are meant for optimize(): this is the crash
        warnings.simplefilter("ignore", UserWarning)
        orphan = study.ask(distributions(StudySpec(name=name)))  # the default search space
    heartbeat_storage.record_heartbeat(orphan._trial_id)
    heartbeat_storage.engine.dispose()
    return orphan


def _failed_without_callback(settings, name):
    """A dead worker's trial that a heartbeat check failed, whose retry callback never ran (the checking
    worker's connection dropped in between, as Optuna fails every stale trial before calling back)."""
    trial = _dead_worker_trial(settings, name)
    storage = optuna_storage(settings)
    assert storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
    storage.engine.dispose()
    return trial


def test_a_failure_is_settled_once_whoever_reports_it(database):
    """A trial failed by another worker's heartbeat check while its own worker still ran it: both settle
    it, and only the first one re-queues it and gives its slot back."""
    settings, factory, storage = database
    row, _ = studies.submit_study(factory, storage, StudySpec(confirm=NO_CONFIRM, name="twice", n_trials=2, epochs=2, pruner="none"))
    assert coordination.claim_slot(factory, row.id) == 1
    failed = _failed_without_callback(settings, "twice")
    study = optuna.load_study(study_name="twice", storage=storage)
    retry = RetryFailedTrial(factory, max_retries=2)
    for _ in range(2):  # the heartbeat check's callback, then the trial's own worker
        retry.retry(study, storage.get_trial(failed._trial_id), row.id)

    trials = study.get_trials()
    waiting = [trial for trial in trials if trial.state == optuna.trial.TrialState.WAITING]
    assert len(waiting) == 1 and waiting[0].params == failed.params
    assert SETTLED not in waiting[0].system_attrs  # the retry starts unsettled: its own failure is settled again
    with factory() as session:
        assert session.get(SearchStudy, row.id).claimed == 0  # given back once, not twice


def test_an_enqueued_trial_that_failed_before_drawing_its_params_is_retried_with_them(database):
    """The reference (or an enqueued config) whose worker died right after ``ask``: no params drawn yet,
    but the ones it was enqueued with are known, so its retry runs them."""
    settings, factory, storage = database
    row, _ = studies.submit_study(factory, storage, StudySpec(confirm=NO_CONFIRM, name="early", n_trials=2, epochs=2, pruner="none"))
    study = optuna.load_study(study_name="early", storage=storage)
    reference = study.get_trials()[0]  # the queued reference (submit_study enqueues it first)
    assert reference.state == optuna.trial.TrialState.WAITING and not reference.params
    assert coordination.claim_slot(factory, row.id) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        asked = optuna.load_study(study_name="early", storage=storage).ask()  # takes the reference, draws nothing
    assert asked.number == reference.number
    assert storage.set_trial_state_values(asked._trial_id, optuna.trial.TrialState.FAIL)
    RetryFailedTrial(factory, max_retries=2).retry(study, storage.get_trial(asked._trial_id), row.id)

    (retry,) = [trial for trial in study.get_trials() if trial.state == optuna.trial.TrialState.WAITING]
    assert retry.system_attrs["fixed_params"] == reference.system_attrs["fixed_params"]
    assert retry.user_attrs["stage"] == "reference"


def test_a_failure_nobody_settled_is_retried_by_the_sweep(database):
    """The sweep finds a failed trial without a retry once the grace period is over, re-queues it with the
    same params, and the study still ends at n_trials with the slot counted once."""
    settings, factory, storage = database
    row, _ = studies.submit_study(factory, storage, StudySpec(confirm=NO_CONFIRM, name="unsettled", n_trials=2, epochs=2, pruner="none"))
    assert coordination.claim_slot(factory, row.id) == 1  # the dead worker's slot, never given back
    lost = _failed_without_callback(settings, "unsettled")

    run_workers(settings, quick_training(), count=2)

    trials = optuna.load_study(study_name="unsettled", storage=storage).trials
    assert sorted(trial.state.name for trial in trials) == ["COMPLETE", "COMPLETE", "FAIL"]
    rerun = next(trial for trial in trials if trial.system_attrs.get("retry_history") == [lost.number])
    assert rerun.params == lost.params and rerun.state == optuna.trial.TrialState.COMPLETE
    assert storage.get_trial(lost._trial_id).system_attrs[SETTLED] == "worker lost"
    with factory() as session:
        done = session.get(SearchStudy, row.id)
        assert (done.status, done.claimed) == ("completed", 2)
    # Settled now: a later sweep leaves it alone.
    assert retry_unsettled_failures(factory, optuna.load_study(study_name="unsettled", storage=storage), row.id, 0) == 0


def test_slot_leaked_by_a_worker_killed_before_its_trial_existed_is_reclaimed(database):
    """A worker killed between claiming a slot and creating its trial leaves ``claimed`` one too high:
    the idle workers' sweep gives the slot back after the grace period and the study completes."""
    settings, factory, storage = database
    row, _ = studies.submit_study(factory, storage, StudySpec(confirm=NO_CONFIRM, name="leak", n_trials=3, epochs=2, pruner="none"))
    assert coordination.claim_slot(factory, row.id) == 1  # the dead worker's claim, in SQL; no trial follows
    # Right after the claim the slot may still be on its way to a trial: it is not taken back yet.
    assert not coordination.reclaim_leaked_slots(factory, row.id, "leak", grace_period_s=30)

    run_workers(settings, quick_training(), count=2)

    with factory() as session:
        counts = views.trial_counts(session, "leak")
    assert (counts.complete, counts.pruned, counts.running, counts.failed) == (3, 0, 0, 0)
    with factory() as session:
        done = session.get(SearchStudy, row.id)
        assert (done.status, done.claimed) == ("completed", 3)
        assert done.claims_total == 4  # the leaked claim plus the three trials that ran


def test_trial_of_a_dead_worker_in_a_stopped_study_does_not_stay_running(database):
    settings, factory, storage = database
    row, _ = studies.submit_study(factory, storage, StudySpec(confirm=NO_CONFIRM, name="stopdead", n_trials=3, epochs=2, pruner="none"))
    assert coordination.claim_slot(factory, row.id) == 1
    orphan = _dead_worker_trial(settings, "stopdead")
    studies.stop_study(factory, "stopdead")
    time.sleep(settings.grace_period + 1.0)

    run_workers(settings, quick_training(), count=1)

    trials = optuna.load_study(study_name="stopdead", storage=storage).trials
    assert [(trial.number, trial.state.name) for trial in trials] == [(orphan.number, "FAIL")]  # failed, not retried
    with factory() as session:
        stopped = session.get(SearchStudy, row.id)
        assert (stopped.status, stopped.claimed) == ("stopped", 0)


def test_an_idle_worker_purges_the_trash_past_its_retention(database):
    """Nobody calls the API: the workers' idle sweep still forgets the studies deleted more than trash_days ago."""
    settings, factory, storage = database
    for name in ("binned-long-ago", "binned-just-now"):
        studies.submit_study(factory, storage, StudySpec(confirm=NO_CONFIRM, name=name, n_trials=1))
        studies.delete_study(factory, name)
    with factory.begin() as session:
        session.execute(sa.update(SearchStudy).where(SearchStudy.name == "binned-long-ago")
                        .values(deleted_at=utc_now() - dt.timedelta(days=2)))

    run_workers(settings.model_copy(update={"trash_days": 1}), quick_training(), count=1)

    assert studies.trashed_names(factory) == {"binned-just-now"}
    assert {study.study_name for study in storage.get_all_studies()} == {"binned-just-now"}


def test_exit_when_idle_waits_for_other_workers_trials_that_may_need_a_retry(database):
    """Every slot is held by a live-looking trial of another worker when this worker starts: it must
    not exit, because that trial's worker is dead and the trial needs a retry once it goes stale."""
    settings, factory, storage = database
    row, _ = studies.submit_study(factory, storage, StudySpec(confirm=NO_CONFIRM, name="wait", n_trials=1, epochs=2, pruner="none"))
    assert coordination.claim_slot(factory, row.id) == 1
    orphan = _dead_worker_trial(settings, "wait")  # heart-beating just now: not stale for a grace period

    (worker,) = run_workers(settings, quick_training(), count=1)

    assert worker.trials_run == 1
    trials = optuna.load_study(study_name="wait", storage=storage).trials
    assert sorted(trial.state.name for trial in trials) == ["COMPLETE", "FAIL"]
    assert trials[-1].params == orphan.params and trials[-1].state == optuna.trial.TrialState.COMPLETE
    with factory() as session:
        assert session.get(SearchStudy, row.id).status == "completed"


def test_stopped_study_stops_its_running_trial_within_an_epoch(database):
    settings, factory, storage = database
    row, _ = studies.submit_study(factory, storage, StudySpec(confirm=NO_CONFIRM, name="halt", n_trials=5, epochs=50, pruner="none"))
    epochs_seen: list[int] = []

    def slow_training(spec, config, on_epoch_end):
        for epoch in range(spec.epochs):
            epochs_seen.append(epoch)
            if epoch == 2:
                studies.stop_study(factory, "halt")  # the user stops the study during epoch 3
            on_epoch_end(epoch, {"val_accuracy": 0.5, "accuracy": 0.6, "loss": 1.0, "val_loss": 1.0, "gap": 0.1})
        return Trained(TrialMetrics(**{"val_accuracy": 0.5}))

    run_workers(settings, slow_training, count=1)
    assert epochs_seen == [0, 1, 2]
    trials = optuna.load_study(study_name="halt", storage=storage).trials
    assert [(trial.state.name, trial.user_attrs.get("fail_reason")) for trial in trials] == [("FAIL", "stopped")]
    with factory() as session:
        stopped = session.get(SearchStudy, row.id)
        assert (stopped.status, stopped.claimed) == ("stopped", 0)


def test_repeated_training_errors_mark_the_study_failed(database):
    settings, factory, storage = database
    settings = settings.model_copy(update={"max_failed_trials": 3, "max_retries": 1})
    studies.submit_study(factory, storage, StudySpec(confirm=NO_CONFIRM, name="broken", n_trials=4, epochs=1))

    def broken(spec, config, on_epoch_end):
        raise FileNotFoundError("no CIFAR-10 files in /nowhere")

    run_workers(settings, broken, count=1)
    with factory() as session:
        row = studies.get_study(session, "broken")
        assert row.status == "failed" and row.failed_trials == 3
        assert "no CIFAR-10 files" in row.error


def test_worker_loads_each_data_set_once(cifar_dir):
    """Trials of studies on the same data share one decoded copy; other data params get their own."""
    from service.worker import KerasTraining

    training = KerasTraining(cifar_dir)
    spec = StudySpec(confirm=NO_CONFIRM, name="cache", data={"train_size": 200})
    first = training.data(spec)
    assert training.data(spec.model_copy(update={"name": "other-study", "n_trials": 7})) is first
    assert training.loads == 1
    assert len(first.x_train) == 180 and len(first.x_val) == 20  # 200 drawn, 10% held out
    resized = training.data(StudySpec(confirm=NO_CONFIRM, name="cache", data={"train_size": 300}))
    assert resized is not first and len(resized.x_train) == 270 and training.loads == 2


@pytest.mark.postgres
def test_worker_survives_its_database_connections_being_dropped(postgres_url):
    """PostgreSQL terminates every connection of the worker mid-trial: the worker carries on, nothing is lost."""
    settings = Settings(database_url=postgres_url, heartbeat_interval=1, grace_period=2, poll_interval=0.05)
    migrate(settings)
    engine = create_engine(settings)
    factory, storage = session_factory(engine), optuna_storage(settings)
    studies.submit_study(factory, storage, StudySpec(confirm=NO_CONFIRM, name="drop", n_trials=4, epochs=3, pruner="none"))
    database = postgres_url.rsplit("/", 1)[1]
    calls = {"count": 0}
    drops: list[int] = []
    admin = sa.create_engine(postgres_url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")

    def train(spec, config, on_epoch_end):
        calls["count"] += 1
        for epoch in range(spec.epochs):
            if calls["count"] == 2 and epoch == 1:
                with admin.connect() as connection:
                    dropped = connection.execute(
                        sa.text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                "WHERE datname = :db AND pid <> pg_backend_pid()"), {"db": database}).scalar()
                drops.append(dropped)
            on_epoch_end(epoch, {"val_accuracy": 0.4 + config.dropout_conv / 10, "accuracy": 0.5, "loss": 1.0, "val_loss": 1.0, "gap": 0.1})
        return Trained(TrialMetrics(**{"val_accuracy": 0.4 + config.dropout_conv / 10}))

    worker = Worker(settings, train=train, exit_when_idle=True)
    thread = threading.Thread(target=worker.run)
    thread.start()
    thread.join(120)
    assert not thread.is_alive()
    engine.dispose()
    storage.engine.dispose()
    admin.dispose()
    engine = create_engine(settings)
    with session_factory(engine)() as session:
        row = studies.get_study(session, "drop")
        counts = views.trial_counts(session, "drop")
    assert drops and drops[0] > 0, "no connection of the worker was terminated"
    assert row.status == "completed" and counts.complete == 4 and counts.running == 0
    engine.dispose()


def test_trials_route_names_the_trial_each_retry_re_runs(database):
    """``retry_of`` comes from Optuna's retry history: the failed trial the retry re-runs, with its metrics."""
    from fastapi.testclient import TestClient

    from service.api.main import create_app

    settings, factory, storage = database
    studies.submit_study(factory, storage, StudySpec(confirm=NO_CONFIRM, name="chain", n_trials=2, epochs=1, pruner="none"))
    run_workers(settings, quick_training(fail_on_calls={1, 2}), count=1)  # the first trial fails, so does its retry

    app = create_app(settings, dashboard=False)
    with TestClient(app) as client:
        trials = client.get("/v1/studies/chain/trials").json()["trials"]
    app.state.engine.dispose()
    app.state.optuna_storage.engine.dispose()
    first, retry, second_retry = trials[0], trials[1], trials[2]
    assert [trial["state"] for trial in trials[:3]] == ["failed", "failed", "complete"]
    assert (first["retry_of"], retry["retry_of"], second_retry["retry_of"]) == (None, first["number"], retry["number"])
    assert first["params"] == retry["params"] == second_retry["params"]
    assert retry["fail_reason"] == "error" and second_retry["fail_reason"] is None
    assert second_retry["train_size"] == 270 and second_retry["val_accuracy"] == second_retry["value"]


def test_the_reference_is_never_pruned(database):
    """The same weak config is pruned as an enqueued trial and runs to the end as the reference (issue 11)."""
    settings, factory, storage = database
    studies.submit_study(factory, storage, StudySpec(name="unpruned", n_trials=5, epochs=3, pruner="median", reference=False, confirm={"top_k": 0}))
    study = optuna.load_study(study_name="unpruned", storage=storage)
    good = {"weight_decay": 1e-5, "l1_ratio": 0.0, "dropout_conv": 0.5, "dropout_dense": 0.5}
    weak = {**good, "weight_decay": 1e-2, "dropout_conv": 0.3}  # quick_training: 0.52 against 0.70
    for params, stage in [(good, "enqueued"), (good, "enqueued"), (good, "enqueued"), (weak, "enqueued"), (weak, "reference")]:
        study.enqueue_trial(params, user_attrs={"stage": stage})
    run_workers(settings, quick_training(), count=1)

    trials = optuna.load_study(study_name="unpruned", storage=storage).trials
    assert [(trial.user_attrs["stage"], trial.state.name) for trial in trials] == [
        ("enqueued", "COMPLETE"), ("enqueued", "COMPLETE"), ("enqueued", "COMPLETE"), ("enqueued", "PRUNED"), ("reference", "COMPLETE")
    ]
    assert len(trials[4].intermediate_values) == 3 and len(trials[3].intermediate_values) < 3
    with factory() as session:
        assert studies.get_study(session, "unpruned").status == "completed"


@pytest.mark.parametrize(("max_gap", "has_best"), [(0.01, False), (0.1, True)])
def test_trials_above_max_gap_are_infeasible_and_never_the_best(database, max_gap, has_best):
    """quick_training reports a gap of 0.05: above max_gap 0.01 every trial is infeasible, below 0.1 none is."""
    settings, factory, storage = database
    studies.submit_study(factory, storage, StudySpec(name="gap", n_trials=2, epochs=1, pruner="none", max_gap=max_gap, confirm={"top_k": 0}))
    run_workers(settings, quick_training(), count=1)

    trials = optuna.load_study(study_name="gap", storage=storage).trials
    assert [trial.constraints for trial in trials] == [{"gap": pytest.approx(0.05 - max_gap)}] * 2  # Optuna's constraint
    with factory() as session:
        row = studies.get_study(session, "gap")
        assert row.status == "completed"
        assert (coordination.best_record(session, row.id) is not None) == has_best
