"""``regsearch serve | worker | dashboard | migrate``: the processes of the service."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

from service.cli import CommandError

log = logging.getLogger("regsearch")


def register(subparsers) -> None:
    serve = subparsers.add_parser(
        "serve", help="run the API, the dashboard (at /dashboard) and local workers",
        description="Apply migrations, then serve the API and the Optuna dashboard (at /dashboard) on one port, "
        "with N local worker processes.",
    )
    serve.add_argument("--host", default=None, help="address to bind (default REGSEARCH_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default REGSEARCH_PORT or 8000)")
    serve.add_argument("--workers", type=int, default=1, help="local worker processes to start (0: API only; default 1)")
    serve.add_argument("--no-dashboard", action="store_true", help="do not mount the Optuna dashboard")
    serve.add_argument("--no-auth", action="store_true", help="no tokens needed (trusted loopback only; same as REGSEARCH_AUTH=false)")
    serve.set_defaults(func=_serve)

    worker = subparsers.add_parser(
        "worker", help="run trials of the studies in the database",
        description="Pull runnable studies from the database and train their trials, one at a time, until stopped.",
    )
    worker.add_argument("--poll-interval", type=float, default=None, help="seconds between looks for work when idle")
    worker.add_argument("--exit-when-idle", action="store_true", help="exit once no study has a trial left to run")
    worker.add_argument("--lanes", type=int, default=None,
                        help="trials trained at once in one compiled step (JAX; default REGSEARCH_LANES or 1)")
    worker.set_defaults(func=_worker)

    dashboard = subparsers.add_parser("dashboard", help="run the Optuna dashboard alone on the service's database")
    dashboard.add_argument("--host", default=None, help="address to bind (default REGSEARCH_HOST or 127.0.0.1)")
    dashboard.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    dashboard.set_defaults(func=_dashboard)

    migrate = subparsers.add_parser("migrate", help="apply the database migrations and exit")
    migrate.set_defaults(func=_migrate)


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _settings():
    from pydantic import ValidationError

    from service.config import get_settings

    try:
        return get_settings()
    except ValidationError as error:
        raise CommandError(f"invalid settings: {error.errors()[0]['loc'][0]}: {error.errors()[0]['msg']}") from None


def _database_error(error: Exception) -> CommandError:
    detail = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
    return CommandError(f"database unavailable: {detail}")


class WorkerPool:
    """N ``regsearch worker`` subprocesses, restarted if one dies, stopped with the server."""

    def __init__(self, count: int, memory_fraction: float | None = None) -> None:
        self.count = count
        self.memory_fraction = memory_fraction
        self.processes: list[subprocess.Popen] = []
        self._stopping = threading.Event()
        self._monitor = threading.Thread(target=self._watch, name="worker-pool", daemon=True)

    def _spawn(self) -> subprocess.Popen:
        env = {"TF_CPP_MIN_LOG_LEVEL": "2", **os.environ}
        if self.memory_fraction is not None:
            env["REGSEARCH_GPU_MEMORY_FRACTION"] = f"{self.memory_fraction:.3f}"  # N workers share one card
        return subprocess.Popen([sys.executable, "-c", "import sys; from service.cli import main; sys.exit(main())", "worker"], env=env)

    def start(self) -> None:
        self.processes = [self._spawn() for _ in range(self.count)]
        if self.count:
            log.info("started %d worker(s): pid %s", self.count, ", ".join(str(p.pid) for p in self.processes))
            self._monitor.start()

    def _watch(self) -> None:
        while not self._stopping.wait(2.0):
            for index, process in enumerate(self.processes):
                if process.poll() is not None and not self._stopping.is_set():
                    log.warning("worker pid %d exited with %s; starting another", process.pid, process.returncode)
                    self.processes[index] = self._spawn()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (each worker re-queues its trial at the next epoch), then SIGKILL after ``timeout``."""
        self._stopping.set()
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in self.processes:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _exit_on_sigterm(_signum, _frame) -> None:
    raise SystemExit(0)


def _serve(args) -> int:
    import sqlalchemy as sa
    import uvicorn

    from service.api.hardening import http_protocol
    from service.api.main import create_app

    # uvicorn re-raises the signal that stopped it once it has shut down; turn SIGTERM into an
    # exception so that the workers are stopped in the `finally` below instead of being orphaned.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    _logging()
    settings = _settings().model_copy(update={"auth": False}) if args.no_auth else _settings()
    host = args.host or settings.host
    port = args.port or settings.port
    settings = settings.model_copy(update={"host": host, "port": port})  # the first start's hint names them
    if args.workers < 0:
        raise CommandError("--workers must be >= 0")
    try:
        app = create_app(settings, dashboard=not args.no_dashboard)
    except sa.exc.OperationalError as error:
        raise _database_error(error) from None
    # Several local workers share the GPU: each gets an equal part of its memory unless the setting says otherwise.
    fraction = settings.gpu_memory_fraction or (0.9 / args.workers if args.workers > 1 else None)
    pool = WorkerPool(args.workers, fraction)
    pool.start()
    log.info("regsearch API on http://%s:%d (docs /docs%s)", host, port, "" if args.no_dashboard else ", dashboard /dashboard")
    try:
        uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info",
                                      http=http_protocol(settings.header_timeout_s))).run()
    finally:
        pool.stop()
    return 0


def _worker(args) -> int:
    from service.worker import Worker
    from service.worker_logs import install_quiet_graceful_stops, start_backend

    _logging()
    settings = _settings()
    lanes = settings.lanes if args.lanes is None else args.lanes
    if lanes < 1:
        raise CommandError("--lanes must be >= 1")
    if lanes > 1 and os.environ.get("KERAS_BACKEND", "tensorflow") != "jax":
        raise CommandError("--lanes above 1 needs KERAS_BACKEND=jax")
    # One line naming the backend, its devices and the worker's lanes instead of the backends' CUDA noise;
    # the GPU memory cap is applied first.
    start_backend(settings.gpu_memory_fraction, lanes=lanes)
    install_quiet_graceful_stops()  # a trial re-queued on SIGTERM: one line, no traceback
    if lanes > 1:
        from service.lanes import LanesWorker

        worker = LanesWorker(settings, lanes, poll_interval=args.poll_interval, exit_when_idle=args.exit_when_idle)
    else:
        worker = Worker(settings, poll_interval=args.poll_interval, exit_when_idle=args.exit_when_idle)

    def _on_signal(signum, _frame) -> None:
        if worker.shutdown_requested:  # second signal: stop now
            raise KeyboardInterrupt
        log.info("worker %s: %s received, finishing the current epoch", worker.name, signal.Signals(signum).name)
        worker.request_shutdown()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    code = worker.run()
    # Everything is saved and disposed of by now; skip TensorFlow's slow interpreter teardown.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _dashboard(args) -> int:
    import sqlalchemy as sa
    import uvicorn

    from service.db import migrate, optuna_storage

    _logging()
    settings = _settings()
    try:
        if settings.migrate_on_start:
            migrate(settings)
        storage = optuna_storage(settings)
    except sa.exc.OperationalError as error:
        raise _database_error(error) from None
    from service.api.dashboard import standalone_dashboard  # read-only, behind a read token
    from service.api.hardening import http_protocol

    uvicorn.run(standalone_dashboard(settings, storage), host=args.host or settings.host, port=args.port, log_level="info",
                http=http_protocol(settings.header_timeout_s))
    return 0


def _migrate(_args) -> int:
    import sqlalchemy as sa

    from service.db import migrate

    settings = _settings()
    try:
        revision = migrate(settings)
    except sa.exc.OperationalError as error:
        raise _database_error(error) from None
    print(f"database at revision {revision}")
    if settings.admin_token is not None:  # an operator's first token (a Kubernetes Secret): its hash only
        from service.db import create_engine, session_factory
        from service.tokens import install_admin_token

        engine = create_engine(settings)
        try:
            if install_admin_token(session_factory(engine), settings.admin_token.get_secret_value()):
                print("installed the admin token of REGSEARCH_ADMIN_TOKEN (only its hash is stored)")
        finally:
            engine.dispose()
    return 0
