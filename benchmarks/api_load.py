"""Read load on the API: what production training jobs polling ``GET best`` cost the service.

50 concurrent clients for 20 s (``wrk -t2 -c50 -d20s``; a C load generator leaves the server more of
this 2-core machine than a Python one would) on ``GET /v1/studies/NAME/best`` and
``GET /v1/studies/NAME``, against a real ``regsearch serve`` (one uvicorn process, auth on, the
request carrying a read token) on SQLite and on PostgreSQL, side by side with a trivial FastAPI
endpoint (a sync ``def`` returning a constant, served by the same uvicorn the same way) measured
in the same run just before each database's pair. The study holds 60 finished trials and a best
config, so the reads do their real queries.

Goal (issue 9): each read reaches at least 50% of the trivial endpoint's requests per second, with
a p99 at most twice the trivial endpoint's p99, and no error.

    python benchmarks/api_load.py                      # writes benchmarks/results/api_load.json
    python benchmarks/api_load.py --duration 5 --backends sqlite
    REGSEARCH_BENCH_POSTGRES=postgresql+psycopg://postgres@127.0.0.1:5432/postgres python benchmarks/api_load.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import REGSEARCH, base_env, free_port, kill_group, spawn, wait_healthy  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "api_load.json"
POSTGRES_ADMIN_URL = os.environ.get("REGSEARCH_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
STUDY = "load-demo"
TRIVIAL_APP = """
import sys, uvicorn
from fastapi import FastAPI
app = FastAPI()
@app.get("/trivial")
def trivial() -> dict:
    return {"status": "ok"}
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def run_wrk(url: str, duration: int, connections: int, token: str | None) -> dict[str, Any]:
    args = ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "10s"]
    if token:
        args += ["-H", f"Authorization: Bearer {token}"]
    output = subprocess.run([*args, url], capture_output=True, text=True, timeout=duration + 60).stdout
    requests = int(re.search(r"(\d+) requests in", output).group(1))
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {
        "url": url,
        "requests": requests,
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
        "p50_ms": _ms(re.search(r"\s50%\s+([\d.]+\w+)", output).group(1)),
        "p99_ms": _ms(re.search(r"\s99%\s+([\d.]+\w+)", output).group(1)),
        "errors": errors + (int(non_2xx.group(1)) if non_2xx else 0),
    }


def populate(database_url: str, token_file: Path, trials: int = 60) -> str:
    """A study with ``trials`` finished trials and a best config; return a read token."""
    import optuna

    from service import coordination, studies
    from service.config import Settings
    from service.db import create_engine, optuna_storage, session_factory
    from service.schemas import StudySpec
    from service.tokens import create_token

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings = Settings(database_url=database_url, token_file=str(token_file))
    factory = session_factory(create_engine(settings))
    storage = optuna_storage(settings)
    spec = StudySpec(name=STUDY, n_trials=trials, epochs=3)
    row, _ = studies.submit_study(factory, storage, spec)
    study = optuna.load_study(study_name=STUDY, storage=storage)
    for number in range(trials):
        trial = study.ask()
        params = {"weight_decay": 1e-4, "l1_ratio": 0.5, "dropout_conv": 0.4, "dropout_dense": 0.4}
        for name, value in params.items():
            trial.suggest_float(name, value, value)
        for epoch in range(3):
            trial.report(0.3 + 0.001 * number + 0.01 * epoch, epoch)
        value = 0.32 + 0.001 * number
        trial.set_user_attr("train_size", 2000)
        study.tell(trial, value)
        coordination.record_leader(factory, row.id, lambda: study.get_trials(deepcopy=False), spec.confirm)  # as settle does
    _row, token = create_token(factory, "read", "load-test")
    storage.engine.dispose()
    return token


def bench_backend(backend: str, database_url: str, duration: int, connections: int, root: Path) -> list[dict[str, Any]]:
    token_file = root / f"{backend}-token"
    env = base_env(REGSEARCH_DATABASE_URL=database_url, REGSEARCH_AUTH="true", REGSEARCH_TOKEN_FILE=str(token_file))
    out = []
    trivial_port = free_port()
    trivial = spawn([sys.executable, "-c", TRIVIAL_APP, str(trivial_port)], env, root / f"{backend}-trivial.log")
    port = free_port()
    server = spawn([REGSEARCH, "serve", "--port", str(port), "--workers", "0", "--no-dashboard"], env, root / f"{backend}-server.log")
    try:
        wait_healthy(f"http://127.0.0.1:{port}", timeout=120)
        token = populate(database_url, token_file)
        deadline = time.monotonic() + 60
        while True:  # the trivial server is up once it answers
            try:
                if subprocess.run(["curl", "-sf", f"http://127.0.0.1:{trivial_port}/trivial"], capture_output=True).returncode == 0:
                    break
            except FileNotFoundError:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("trivial server did not start")
            time.sleep(0.2)
        for name, url, bearer in [
            ("trivial", f"http://127.0.0.1:{trivial_port}/trivial", None),
            ("best", f"http://127.0.0.1:{port}/v1/studies/{STUDY}/best", token),
            ("study", f"http://127.0.0.1:{port}/v1/studies/{STUDY}", token),
        ]:
            run_wrk(url, 2, 10, bearer)  # warm-up: connections, caches, the pool
            load = [round(x, 2) for x in os.getloadavg()]
            result = {"backend": backend, "endpoint": name, "load_average_before": load, **run_wrk(url, duration, connections, bearer)}
            print(f"{backend:>10} {name:>8}: {result['requests_per_s']:8.1f} req/s  p50 {result['p50_ms']:7.2f} ms  "
                  f"p99 {result['p99_ms']:7.2f} ms  errors {result['errors']}  (load {load[0]})", flush=True)
            out.append(result)
    finally:
        kill_group(server)
        kill_group(trivial)
    return out


def postgres_database() -> tuple[str, Any]:
    import sqlalchemy as sa

    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"regsearch_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}", drop


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=20, help="seconds per measurement (default 20)")
    parser.add_argument("--connections", type=int, default=50, help="concurrent clients (default 50)")
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"])
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("api_load: needs wrk (Debian: apt-get install wrk)", file=sys.stderr)
        return 1
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="api-load-") as directory:
        root = Path(directory)
        for backend in args.backends:
            if backend == "sqlite":
                results += bench_backend(backend, f"sqlite:///{root / 'load.db'}", args.duration, args.connections, root)
            else:
                url, drop = postgres_database()
                try:
                    results += bench_backend(backend, url, args.duration, args.connections, root)
                finally:
                    drop()
    ratios = []
    for backend in args.backends:
        trivial = next(r for r in results if r["backend"] == backend and r["endpoint"] == "trivial")
        for result in (r for r in results if r["backend"] == backend and r["endpoint"] != "trivial"):
            ratio = {
                "backend": backend,
                "endpoint": result["endpoint"],
                "throughput_vs_trivial": round(result["requests_per_s"] / trivial["requests_per_s"], 3),
                "p99_vs_trivial": round(result["p99_ms"] / trivial["p99_ms"], 3),
                "errors": result["errors"],
            }
            ratio["goal_met"] = ratio["throughput_vs_trivial"] >= 0.5 and ratio["p99_vs_trivial"] <= 2.0 and not result["errors"]
            ratios.append(ratio)
            print(f"{backend:>10} {result['endpoint']:>8}: {ratio['throughput_vs_trivial']:.0%} of the trivial endpoint's "
                  f"throughput, p99 {ratio['p99_vs_trivial']:.2f}x, errors {result['errors']} "
                  f"-> goal {'met' if ratio['goal_met'] else 'NOT met'}")
    report = {
        "benchmark": "api_load",
        "tool": f"wrk -t2 -c{args.connections} -d{args.duration}s --latency (C load generator on the same machine)",
        "server": "regsearch serve --workers 0 --no-dashboard (one uvicorn process), auth on, read token sent",
        "trivial": "FastAPI sync endpoint returning a constant, one uvicorn process",
        "machine": machine(),
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "results": results,
        "ratios": ratios,
        "goal": "throughput >= 50% of trivial, p99 <= 2x trivial, zero errors",
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
