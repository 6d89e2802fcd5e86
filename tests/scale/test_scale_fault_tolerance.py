"""Crash safety of the compose topology on PostgreSQL, with the compose file's own processes.

Four workers share one study. Mid-study, one worker's whole process group is killed with SIGKILL
in the middle of a trial, and every database connection of the study's database is terminated
(twice) while the other workers train. Short heartbeats come through the compose file's own
variables (``REGSEARCH_HEARTBEAT_INTERVAL``, ``REGSEARCH_GRACE_PERIOD``), as an operator would set them.
"""

from __future__ import annotations

import signal
import threading

import httpx
import pytest
import sqlalchemy as sa

from tests.scale.compose_stack import ComposeStack, wait_for_status
from tests.scale.test_scale_compose_e2e import tiny_study
from tests.support import CIFAR_DIR, wait_until
from trainer import SEARCH_SPACE_BY_NAME

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

N_TRIALS = 6
MAX_RETRIES = 2
COUNTED = ("RUNNING", "COMPLETE", "PRUNED")  # trials holding or having used one of the n_trials slots
MONITOR_NAME = "regsearch-test-monitor"


class SlotMonitor(threading.Thread):
    """Polls the database: the most trials ever running-or-finished at once, and the slot counter."""

    def __init__(self, url: str, study: str) -> None:
        super().__init__(daemon=True)
        # Named, so that terminate_connections counts only the service's connections, not the monitor's.
        self.engine = sa.create_engine(url, pool_pre_ping=True, connect_args={"application_name": MONITOR_NAME})
        self.study = study
        self.max_counted = 0
        self.max_claimed = 0
        self.at_max: list = []  # the study's trials when the most were counted, for a failure message
        self.samples = 0
        self.stop = threading.Event()

    def run(self) -> None:
        query = sa.text(
            "SELECT COUNT(*) FROM trials JOIN studies USING (study_id) "
            "WHERE study_name = :name AND CAST(state AS VARCHAR) IN :states"
        ).bindparams(sa.bindparam("states", expanding=True))
        while not self.stop.wait(0.2):
            try:
                with self.engine.connect() as conn:
                    counted = conn.execute(query, {"name": self.study, "states": list(COUNTED)}).scalar_one()
                    claimed = conn.execute(sa.text("SELECT claimed FROM regsearch_studies WHERE name = :name"), {"name": self.study}).scalar()
                    if counted > self.max_counted:
                        self.at_max = conn.execute(sa.text(
                            "SELECT number, CAST(state AS VARCHAR), "
                            "(SELECT COUNT(*) FROM trial_params p WHERE p.trial_id = t.trial_id), "
                            "(SELECT COUNT(*) FROM trial_heartbeats h WHERE h.trial_id = t.trial_id) "
                            "FROM trials t JOIN studies USING (study_id) WHERE study_name = :name ORDER BY number"),
                            {"name": self.study}).all()
            except sa.exc.OperationalError:
                continue  # our own connection was terminated too
            self.max_counted = max(self.max_counted, counted)
            self.max_claimed = max(self.max_claimed, claimed or 0)
            self.samples += 1


def terminate_connections(url: str) -> int:
    """``pg_terminate_backend`` on the service's connections to the test database; how many there were."""
    database = url.rsplit("/", 1)[1]
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            return len(
                conn.execute(
                    sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :db AND pid <> pg_backend_pid() "
                            "AND application_name <> :monitor"),
                    {"db": database, "monitor": MONITOR_NAME},
                ).all()
            )
    finally:
        engine.dispose()


def _summary(trials: dict) -> str:
    """One line per trial, for a failure message."""
    return "\n".join(f"{n}: {t['state']} retry_of={t['retry_of']} worker={t['worker']} fail_reason={t.get('fail_reason')}"
                     for n, t in sorted(trials.items()))


def _retries_before(trials: dict, trial: dict) -> int:
    """How many retries of the same config came before ``trial`` (its place in its retry chain)."""
    count = 0
    while trial["retry_of"] is not None:
        trial, count = trials[trial["retry_of"]], count + 1
    return count


def test_killed_worker_and_dropped_connections_lose_nothing(postgres_url, tmp_path):
    stack = ComposeStack(
        postgres_url,
        tmp_path / "stack",
        variables={"REGSEARCH_HEARTBEAT_INTERVAL": "1", "REGSEARCH_GRACE_PERIOD": "4", "REGSEARCH_MAX_RETRIES": str(MAX_RETRIES)},
        extra_env={"REGSEARCH_DATA_DIR": str(CIFAR_DIR), "REGSEARCH_AUTH": "false"},
    )
    monitor = SlotMonitor(postgres_url, "crash")
    try:
        stack.up("api")
        stack.wait_healthy("api")
        workers = stack.up("worker", scale=4)
        client = httpx.Client(base_url=stack.url("api", 8000), timeout=30)
        monitor.start()
        spec = {**tiny_study("crash", n_trials=N_TRIALS, seed=3), "epochs": 2}
        assert client.post("/v1/studies", json=spec).status_code == 201

        # SIGKILL a worker's process group while its trial runs (before the trial's first epoch ends).
        def running_trial():
            trials = client.get("/v1/studies/crash/trials").json()["trials"]
            # Params complete (all suggested), so the retry's params can be compared with the killed trial's; and
            # not itself a retry: on a loaded machine a live trial can miss this test's 4 s grace period, and a
            # chain of such retries may have used up REGSEARCH_MAX_RETRIES, when no retry is due (by design).
            # A sampled trial (not the queued reference), whose params shown are the ones it drew.
            return next((t for t in trials if t["state"] == "running" and t["worker"] and not t["intermediate_values"]
                         and t["retry_of"] is None and t["stage"] == "search" and set(t["params"]) == set(SEARCH_SPACE_BY_NAME)),
                        None)

        victim_trial = wait_until(running_trial, timeout=120, interval=0.2, what="a running trial")
        victim_pid = int(victim_trial["worker"].rsplit(":", 1)[1])
        victim = next(process for process in workers if process.pid == victim_pid)
        stack.kill(victim, signal.SIGKILL)

        # Drop every database connection, twice, while the other workers train.
        dropped = [terminate_connections(postgres_url)]
        # The second drop waits until the workers and the API have reconnected (so it can fail only if they did not).
        dropped.append(wait_until(lambda: terminate_connections(postgres_url), timeout=60, what="the service to reconnect"))
        assert min(dropped) > 0, "the workers and the API held connections to drop"

        study = wait_for_status(client, "crash", ("completed", "failed", "stopped"), 300, stack)
        monitor.stop.set()
        monitor.join(timeout=10)
        trials = {trial["number"]: trial for trial in client.get("/v1/studies/crash/trials").json()["trials"]}

        # The study ends with exactly n_trials finished, nothing left running or queued.
        assert study["status"] == "completed", f"{study}\n{stack.logs()}"
        assert study["trials_finished"] == N_TRIALS, f"{study}\n{_summary(trials)}\n{stack.logs('worker')}"
        assert study["counts"]["running"] == 0 and study["counts"]["waiting"] == 0
        finished = [trial for trial in trials.values() if trial["state"] in ("complete", "pruned")]
        assert len(finished) == N_TRIALS

        # The killed trial failed and was re-run, with the same params, by another worker.
        killed = trials[victim_trial["number"]]
        assert killed["state"] == "failed" and killed["params"] == victim_trial["params"]
        assert killed["fail_reason"] == "worker lost"  # recorded by the worker role, which may not DELETE
        retries = [trial for trial in trials.values() if trial["retry_of"] == killed["number"]]
        assert len(retries) == 1, f"{_summary(trials)}\n{stack.logs('worker')}"
        assert retries[0]["params"] == killed["params"] and retries[0]["worker"] != killed["worker"]
        final = retries[0]  # (a retry that itself failed would be retried in turn: follow the chain)
        while final["state"] == "failed":
            final = next(trial for trial in trials.values() if trial["retry_of"] == final["number"])
            assert final["params"] == killed["params"]
        assert final["state"] == "complete"
        # Any other failure (a trial whose connection was dropped under it) was retried the same way,
        # unless it was the last of a chain that used up its retries; one that failed before drawing
        # params (e.g. orphaned, see the next test) has nothing to retry: its slot went to a fresh
        # trial, which the n_trials count above already checks.
        for trial in trials.values():
            if trial["state"] == "failed" and trial["params"] and _retries_before(trials, trial) < MAX_RETRIES:
                # (A trial whose connection dropped while its params were drawn has only some: its retry
                # keeps those and draws the rest.)
                assert any(other["retry_of"] == trial["number"] and trial["params"].items() <= other["params"].items()
                           for other in trials.values()), (
                    f"trial {trial['number']} failed without a retry\n{_summary(trials)}\n{stack.logs('worker')}")

        # Every completed trial is intact: its value, both epochs and the metrics the worker recorded.
        for trial in finished:
            assert trial["state"] == "complete" and 0.0 <= trial["value"] <= 1.0
            assert set(trial["intermediate_values"]) == {"0", "1"}  # JSON object keys: epochs 0 and 1
            assert len(trial["history"]) == 2 and trial["train_accuracy"] is not None
            assert trial["value"] == pytest.approx(trial["history"][-1]["val_accuracy"])

        # Four workers never held more than n_trials trials, at any moment observed.
        assert monitor.samples > 10
        assert monitor.max_counted <= N_TRIALS and monitor.max_claimed <= N_TRIALS, (
            f"(number, state, params, heartbeats) at the most counted: {monitor.at_max}\n{_summary(trials)}\n{stack.logs('worker')}")
        # The surviving workers outlived the dropped connections, and so did the API.
        survivors = [process for process in workers if process is not victim]
        assert all(process.poll() is None for process in survivors), stack.logs("worker")
        assert client.get("/healthz").status_code == 200
        client.close()
    finally:
        monitor.stop.set()
        stack.down()
        monitor.engine.dispose()


def test_trial_orphaned_by_a_dropped_connection_does_not_block_its_study(postgres_url, tmp_path):
    """A trial created just as the connection dropped: RUNNING, no heartbeat, no params, slot given back.

    Optuna's heartbeat check never sees it (it has no heartbeat); a worker must still fail it, or
    the study waits for it forever. Set up directly in the database, then served by the compose
    file's worker (which never needs TensorFlow here: no trial is left to train).
    """
    import optuna

    from service.config import Settings
    from service.db import create_engine, optuna_storage, session_factory
    from service.schemas import StudySpec
    from service.coordination import claim_slot
    from service.studies import submit_study

    stack = ComposeStack(postgres_url, tmp_path / "stack", variables={"REGSEARCH_HEARTBEAT_INTERVAL": "1", "REGSEARCH_GRACE_PERIOD": "1"})
    stack.run("migrate")
    settings = Settings(database_url=postgres_url)
    engine = create_engine(settings)
    storage = optuna_storage(settings)
    spec = StudySpec.model_validate({**tiny_study("orphan", n_trials=1), "reference": False})  # no queued reference trial
    submit_study(session_factory(engine), storage, spec)
    study = optuna.load_study(study_name="orphan", storage=storage)
    assert claim_slot(session_factory(engine), 1) == 1  # the one slot, used by a finished trial
    study.add_trial(optuna.trial.create_trial(params={"dropout_conv": 0.4}, distributions={
        "dropout_conv": optuna.distributions.FloatDistribution(0.3, 0.5)}, value=0.5))
    orphan = storage.create_new_trial(study._study_id)  # RUNNING, never heart-beat, no params
    try:
        stack.up("worker")

        def status() -> str:
            with engine.connect() as conn:
                return conn.execute(sa.text("SELECT status FROM regsearch_studies WHERE name = 'orphan'")).scalar_one()

        wait_until(lambda: status() == "completed", timeout=60, interval=0.5, what=f"the study to complete\n{stack.logs()}")
        trial = storage.get_trial(orphan)
        assert trial.state == optuna.trial.TrialState.FAIL and trial.user_attrs["fail_reason"] == "orphaned"
        assert [t.state.name for t in storage.get_all_trials(study._study_id)] == ["COMPLETE", "FAIL"]
    finally:
        stack.down()
        storage.engine.dispose()
        engine.dispose()
