"""Helpers shared by the tests: ports, real subprocesses in their own process groups, waiting."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
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
