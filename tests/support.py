"""Helpers shared by the tests: ports, real subprocesses in their own process groups, waiting, a local service, a
webhook receiver."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TypeVar

import httpx

ROOT = Path(__file__).resolve().parent.parent
CIFAR_DIR = Path(__file__).resolve().parent / "data"  # holds cifar-10-batches-py/ (600 train, 200 test)
REGSEARCH = str(Path(sys.executable).with_name("regsearch"))

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], T], timeout: float = 60.0, interval: float = 0.25, what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; return it, or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as error:  # noqa: BLE001 - keep polling, report the last error on timeout
            last_error = error
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}" + (f" (last error: {last_error!r})" if last_error else ""))


def base_env(**overrides: str) -> dict[str, str]:
    """The environment for a child process: quiet TensorFlow, the tests' CIFAR-10 subset, no GPU.

    Auth is off (tests that are not about auth talk to the API without tokens); the tests of auth
    turn it on with ``REGSEARCH_AUTH="true"`` and their own ``REGSEARCH_TOKEN_FILE``.
    """
    env = dict(os.environ)
    env.pop("REGSEARCH_TOKEN", None)
    env.update(
        {
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "PYTHONUNBUFFERED": "1",
            "REGSEARCH_DATA_DIR": str(CIFAR_DIR),
            "REGSEARCH_AUTH": "false",
        }
    )
    env.update(overrides)
    return env


def spawn(args: Sequence[str], env: Mapping[str, str], log_path: Path | None = None, cwd: Path | None = None) -> subprocess.Popen:
    """Start a command in its own process group (so the whole group can be killed), logging to a file."""
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - owned by the Popen
    return subprocess.Popen(
        list(args), env=dict(env), stdout=log, stderr=subprocess.STDOUT, cwd=cwd or ROOT, start_new_session=True
    )


def kill_group(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
    """Send ``sig`` to the process group; escalate to SIGKILL if it has not exited after ``timeout`` s."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, sig)
        process.wait(timeout=timeout)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def wait_healthy(url: str, timeout: float = 60.0) -> None:
    wait_until(lambda: httpx.get(f"{url}/healthz", timeout=2).status_code == 200, timeout, what=f"{url}/healthz")


@dataclasses.dataclass
class LocalService:
    """A real ``regsearch serve`` and real ``regsearch worker`` processes on one SQLite file under ``root``,
    driven over HTTP and through the real CLI (one per test module: see tests/service/test_service_e2e.py)."""

    root: Path
    env: dict[str, str]
    port: int = dataclasses.field(default_factory=free_port)
    server: subprocess.Popen | None = None
    workers: list[subprocess.Popen] = dataclasses.field(default_factory=list)

    @classmethod
    def at(cls, root: Path, **env: str) -> LocalService:
        return cls(root, base_env(REGSEARCH_DATABASE_URL=f"sqlite:///{root / 'regsearch.db'}", **env))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_server(self, *args: str) -> None:
        self.server = spawn([REGSEARCH, "serve", "--port", str(self.port), "--workers", "0", *args], self.env, self.root / "server.log")
        wait_healthy(self.url, timeout=90)

    def start_workers(self, count: int = 2) -> None:
        self.workers += [spawn([REGSEARCH, "worker", "--poll-interval", "0.5"], self.env, self.root / f"worker{index}.log")
                         for index in range(len(self.workers), len(self.workers) + count)]

    def stop(self) -> None:
        processes = [process for process in (self.server, *self.workers) if process is not None]
        for process in processes:  # all at once: each exits in its own time
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            kill_group(process, signal.SIGTERM, timeout=20)

    def get(self, path: str, **kwargs) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=60, **kwargs)

    def post(self, path: str, **kwargs) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", timeout=60, **kwargs)

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in sorted(self.root.glob("*.log")))

    def wait_status(self, name: str, statuses: tuple[str, ...] = ("completed",), timeout: float = 400) -> dict:
        try:
            return wait_until(
                lambda: (study := self.get(f"/v1/studies/{name}").json())["status"] in statuses and study,
                timeout=timeout, interval=0.5, what=f"study {name} to reach {statuses}",
            )
        except AssertionError as error:
            raise AssertionError(f"{error}\n{self.logs()}") from None

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([REGSEARCH, *args], env={**self.env, "REGSEARCH_URL": self.url}, capture_output=True,
                              text=True, timeout=300, cwd=self.root)


def run_workers(settings, train, count: int = 2) -> list:
    """``count`` in-process workers with a stand-in ``train``, each in a thread, run until no study needs them."""
    import threading

    from service.worker import Worker

    workers = [Worker(settings, train=train, exit_when_idle=True, name=f"test-{index}") for index in range(count)]
    threads = [threading.Thread(target=worker.run) for worker in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads), "a worker did not finish within 120 s"
    return workers


@dataclasses.dataclass
class LocalStack:
    """What the local stand-ins for compose and Kubernetes share: their containers as processes, each with
    a log under ``workdir``, and a free local port for each published (container, port). A subclass
    provides ``workdir`` and, per container ``name``, its ``argv(name)`` and ``environment(name)``."""

    ports: dict[tuple[str, int], int] = dataclasses.field(default_factory=dict, kw_only=True)
    processes: dict[str, list[subprocess.Popen]] = dataclasses.field(default_factory=dict, kw_only=True)

    def port(self, name: str, container_port: int) -> int:
        """The free local port standing in for ``container_port`` of ``name``."""
        key = (name, container_port)
        if key not in self.ports:
            self.ports[key] = free_port()
        return self.ports[key]

    def url(self, name: str, container_port: int) -> str:
        return f"http://127.0.0.1:{self.port(name, container_port)}"

    def log_path(self, name: str, index: int) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        return self.workdir / f"{name}-{index}.log"

    def logs(self, name: str | None = None, tail: int = 4000) -> str:
        return "\n".join(f"--- {path.name} ---\n{path.read_text(errors='replace')[-tail:]}"
                         for path in sorted(self.workdir.glob(f"{name or '*'}-*.log")))

    def start(self, name: str) -> subprocess.Popen:
        """One more container (replica) of ``name``."""
        index = len(self.processes.get(name, []))
        process = spawn(self.argv(name), self.environment(name), log_path=self.log_path(name, index))
        self.processes.setdefault(name, []).append(process)
        return process

    def run_to_completion(self, name: str, log_index: int, timeout: float) -> subprocess.CompletedProcess:
        """A one-shot container of ``name`` (a compose one-shot service, a Job's pod), which must exit 0."""
        result = subprocess.run(self.argv(name), env=self.environment(name), cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        self.log_path(name, log_index).write_text(result.stdout + result.stderr)
        assert result.returncode == 0, f"{name!r} exited with {result.returncode}:\n{result.stdout}{result.stderr}"
        return result

    def down(self) -> None:
        for processes in self.processes.values():
            for process in processes:
                kill_group(process, signal.SIGTERM, timeout=20)
        self.processes.clear()


def seed_leader(factory, storage, name: str, value: float, params: Mapping[str, float], train_size: int | None = None) -> bool:
    """A complete trial of study ``name`` and its best-config row, written as a worker writes them: the trial
    through Optuna's storage, the leader by :func:`service.coordination.record_leader` (what ``settle`` calls)."""
    import optuna

    from service import coordination, studies
    from service._optuna import distributions
    from service.schemas import StudySpec

    with factory() as session:
        row = studies.get_study(session, name)
    spec = StudySpec.model_validate(row.spec)
    study = optuna.load_study(study_name=name, storage=storage)
    study.add_trial(optuna.trial.create_trial(params=dict(params), distributions=distributions(spec), value=value,
                                              user_attrs={"train_size": train_size}))
    return coordination.record_leader(factory, row.id, lambda: study.get_trials(deepcopy=False), spec.confirm)


def seed_trials(database_url: str, name: str, values: Sequence[float]) -> None:
    """Complete trials of the existing study ``name`` with these values (params drawn by its sampler, the
    queued reference first) and its best-config row, written as workers write them (Optuna's storage, then
    :func:`service.coordination.record_leader`)."""
    import optuna

    from service import coordination, studies
    from service._optuna import distributions
    from service.config import Settings
    from service.db import create_engine, session_factory
    from service.schemas import StudySpec

    factory = session_factory(create_engine(Settings(database_url=database_url)))
    with factory() as session:
        row = studies.get_study(session, name)
    spec = StudySpec.model_validate(row.spec)
    study = optuna.load_study(study_name=name, storage=optuna.storages.RDBStorage(database_url))
    for value in values:
        study.tell(study.ask(distributions(spec)), value)
    coordination.record_leader(factory, row.id, lambda: study.get_trials(deepcopy=False), spec.confirm)


class WebhookReceiver:
    """A webhook receiver on 127.0.0.1: records every request; by default 500 to the first attempt of each new_best
    delivery, 200 otherwise (``answer(payload, first)`` chooses the status)."""

    def __init__(self, answer=lambda payload, first: 500 if first and payload["event"] == "new_best" else 200) -> None:
        self.requests: list[dict] = []
        self.secrets: dict[int, str] = {}  # hook id -> its secret, as registration returned it
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                payload = json.loads(body)
                with receiver.lock:
                    secret = receiver.secrets.get(payload["hook"], "")
                    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
                    first = not any(request["id"] == payload["id"] for request in receiver.requests)
                    code = answer(payload, first)
                    receiver.requests.append({
                        "id": payload["id"], "body": body, "payload": payload, "code": code,
                        "signed": hmac.compare_digest(expected, self.headers.get("X-Regsearch-Signature", "")),
                        "delivery_header": self.headers.get("X-Regsearch-Delivery"), "event_header": self.headers.get("X-Regsearch-Event"),
                    })
                self.send_response(code)
                self.end_headers()

            def log_message(self, *_args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def delivered(self) -> list[dict]:
        with self.lock:
            return [request for request in self.requests if request["code"] == 200]

    def start(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
