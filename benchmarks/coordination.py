"""Coordination overhead: what one trial costs the storage, without any training.

Runs the service's own ``Worker.run_once`` (the atomic slot claim, the Optuna study on the
heartbeat-enabled RDBStorage, ask/report/tell through ``study.optimize`` with the stop check each
epoch, the best-config row, the completion check) with a trivial training function in place of
Keras, on SQLite and on PostgreSQL, with 1, 2 and 4 worker processes sharing one study. It reports
milliseconds per trial and whether that cost grows with the number of trials already in the study
(the median of the first third of trials against the last third).

Each run gets a fresh database (a temporary SQLite file; on PostgreSQL a database created and
dropped by this script) migrated with the service's own ``migrate``.

    python benchmarks/coordination.py                   # 300 trials per run, writes results/coordination.json
    python benchmarks/coordination.py --trials 100 --workers 1 2
    python benchmarks/coordination.py --variants product   # without the fresh-study-per-trial baseline
    REGSEARCH_BENCH_POSTGRES=postgresql+psycopg://postgres@127.0.0.1:5432/postgres python benchmarks/coordination.py

Published figures for Optuna's SQL storages are 23-127 ms per trial.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "coordination.json"
POSTGRES_ADMIN_URL = os.environ.get("REGSEARCH_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
EPOCHS = 3  # intermediate values reported per trial, like a short real trial


def _settings(database_url: str):
    from service.config import Settings

    # Heartbeats on, as in every worker; the defaults' interval and grace period.
    return Settings(database_url=database_url)


def _spec(name: str, n_trials: int, sampler: str):
    from service.schemas import StudySpec

    return StudySpec(name=name, n_trials=n_trials, epochs=EPOCHS, sampler=sampler, pruner="median")


def trivial_training(spec, config, on_epoch_end) -> dict[str, float]:
    """Stands in for Keras: reports ``spec.epochs`` made-up epochs through the worker's callback."""
    val_accuracy = 0.0
    for epoch in range(spec.epochs):
        val_accuracy = 0.1 + 0.8 * config.dropout_conv * (epoch + 1) / spec.epochs
        on_epoch_end(epoch, {"loss": 1.0, "accuracy": val_accuracy + 0.05, "val_loss": 1.1,
                             "val_accuracy": val_accuracy, "gap": 0.05})
    from service.objective import Trained
    from trainer import TrialMetrics

    return Trained(TrialMetrics(val_accuracy=val_accuracy, train_accuracy=val_accuracy + 0.05, gap=0.05,
                                images_per_second=1.0, wall_time_s=0.0, epochs_run=spec.epochs))


def _fresh_study_per_trial() -> None:
    """Baseline variant: a fresh Optuna study object for every trial (how the worker first shipped),
    so Optuna's trial cache starts empty each time and every ask, prune check and tell re-reads the
    study's trials: the cost grows with the number of trials."""
    import service.worker

    def fresh_study(self, row, spec, serial=None):
        return service.worker.open_study(self._storage, spec, claim_serial=serial or 0)

    service.worker.Worker._study = fresh_study


def _worker(database_url: str, variant: str, ready, go, results) -> None:
    """One benchmark worker process: the service's Worker with a trivial training function."""
    import warnings

    import optuna

    from service.worker import Worker

    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    logging.disable(logging.INFO)  # the worker logs every new best: not what is measured
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if variant == "fresh-study":
        _fresh_study_per_trial()
    worker = Worker(_settings(database_url), train=trivial_training, exit_when_idle=True)
    worker._connect()  # migrations check, engines, storage: start-up, not per-trial cost
    ready.wait()
    go.wait()
    timings: list[tuple[float, float]] = []
    while True:
        start = time.perf_counter()
        if not worker.run_once():
            break
        timings.append((start, time.perf_counter() - start))
    worker._engine.dispose()
    results.put(timings)


def _run(backend: str, workers: int, n_trials: int, sampler: str, variant: str) -> dict[str, Any]:
    import sqlalchemy as sa

    from service.db import create_engine, migrate, optuna_storage, session_factory
    from service.studies import submit_study

    admin = None
    tmp = None
    if backend == "sqlite":
        tmp = tempfile.TemporaryDirectory(prefix="regsearch-bench-")
        url = f"sqlite:///{tmp.name}/bench.db"
    else:
        admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
        db_name = f"regsearch_bench_{uuid.uuid4().hex[:10]}"
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{db_name}"'))
        url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{db_name}"
    try:
        settings = _settings(url)
        migrate(settings)
        engine = create_engine(settings)
        storage = optuna_storage(settings)
        study_name = f"bench-{backend}-{workers}"
        submit_study(session_factory(engine), storage, _spec(study_name, n_trials, sampler))
        storage.engine.dispose()

        ctx = mp.get_context("spawn")
        ready = ctx.Barrier(workers + 1)
        go = ctx.Barrier(workers + 1)
        results = ctx.Queue()
        procs = [ctx.Process(target=_worker, args=(url, variant, ready, go, results)) for _ in range(workers)]
        for proc in procs:
            proc.start()
        ready.wait(timeout=120)  # every worker imported and connected: time only the trials
        start = time.perf_counter()
        go.wait(timeout=30)
        timings: list[tuple[float, float]] = []
        for _ in procs:
            timings.extend(results.get(timeout=600))
        wall = time.perf_counter() - start
        for proc in procs:
            proc.join(timeout=30)
            if proc.exitcode != 0:
                raise RuntimeError(f"a benchmark worker exited with {proc.exitcode}")

        with engine.connect() as conn:
            states = dict(conn.execute(sa.text("SELECT CAST(state AS VARCHAR), COUNT(*) FROM trials GROUP BY state")).all())
            status = conn.execute(sa.text("SELECT status FROM regsearch_studies")).scalar_one()
        engine.dispose()
    finally:
        if admin is not None:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
            admin.dispose()
        if tmp is not None:
            tmp.cleanup()

    timings.sort()  # by start time (CLOCK_MONOTONIC is shared by all processes): the order trials ran
    per_trial_ms = [seconds * 1000 for _, seconds in timings]
    third = max(1, len(per_trial_ms) // 3)
    first, last = statistics.median(per_trial_ms[:third]), statistics.median(per_trial_ms[-third:])
    return {
        "backend": backend,
        "workers": workers,
        "trials": len(timings),
        "sampler": sampler,
        "variant": variant,
        "trial_states": {str(k).rsplit(".", 1)[-1]: int(v) for k, v in states.items()},
        "study_status": status,
        "wall_s": round(wall, 3),
        "throughput_trials_per_s": round(len(timings) / wall, 1),
        "ms_per_trial_wall": round(wall * 1000 / len(timings), 2),
        "ms_per_trial_latency_median": round(statistics.median(per_trial_ms), 2),
        "ms_per_trial_latency_p95": round(sorted(per_trial_ms)[int(0.95 * (len(per_trial_ms) - 1))], 2),
        "ms_first_third_median": round(first, 2),
        "ms_last_third_median": round(last, 2),
        "growth_last_vs_first": round(last / first, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=300, help="trials per run (default 300)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"])
    parser.add_argument("--sampler", default="random", choices=["random", "tpe"],
                        help="random (default) isolates the storage's cost; tpe adds the sampler's own work")
    parser.add_argument("--variants", nargs="+", default=["product", "fresh-study"], choices=["product", "fresh-study"],
                        help="product: the worker as shipped (one Optuna study object per worker and study); "
                             "fresh-study: the baseline, a new study object per trial")
    parser.add_argument("--baseline-workers", type=int, nargs="+", default=[1],
                        help="worker counts for variants other than product (default 1)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    rows = []
    header = (f"{'backend':<11}{'variant':<13}{'workers':>7}{'trials':>7}{'wall s':>8}{'trials/s':>9}{'ms/trial':>9}"
              f"{'latency':>9}{'p95':>8}   first 1/3 -> last 1/3 (ms)")
    print(header)
    print("-" * len(header))
    for backend in args.backends:
        for variant in args.variants:
            for workers in (args.workers if variant == "product" else args.baseline_workers):
                row = _run(backend, workers, args.trials, args.sampler, variant)
                rows.append(row)
                print(
                    f"{backend:<11}{variant:<13}{workers:>7}{row['trials']:>7}{row['wall_s']:>8.1f}"
                    f"{row['throughput_trials_per_s']:>9.1f}{row['ms_per_trial_wall']:>9.1f}"
                    f"{row['ms_per_trial_latency_median']:>9.1f}{row['ms_per_trial_latency_p95']:>8.1f}"
                    f"   {row['ms_first_third_median']:.1f} -> {row['ms_last_third_median']:.1f} (x{row['growth_last_vs_first']:.2f})",
                    flush=True,
                )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "benchmark": "coordination",
                "what": "per-trial bookkeeping of service.worker.Worker.run_once (claim, heartbeat storage, optimize, stop check per epoch, best row, completion check) with a trivial training function",
                "epochs_reported_per_trial": EPOCHS,
                "sampler": args.sampler,
                "command": "python benchmarks/coordination.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
                "published_optuna_sql_ms_per_trial": [23, 127],
                "columns": {
                    "ms_per_trial_wall": "wall time / trials: the coordination cost the study pays per trial",
                    "ms_per_trial_latency_median": "one worker's time from claim to completion check, median",
                    "growth_last_vs_first": "median latency of the last third of trials / the first third",
                },
                "runs": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwrote {args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
