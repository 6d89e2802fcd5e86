"""The worker's start on either Keras backend: the memory cap applied first, one line naming what it trains with."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support import base_env

SCRIPT = """
import json, os, sys
from service.config import get_settings
from service.worker_logs import start_backend
import service.worker, service.objective  # the worker's whole path
settings = get_settings()
line = start_backend(settings.gpu_memory_fraction, lanes=getattr(settings, "lanes", None))
from trainer._backend import has_gpu
print(json.dumps({"line": line, "tensorflow": "tensorflow" in sys.modules, "gpu": has_gpu(),
                  "env": {key: os.environ.get(key) for key in ("XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION", "TF_FORCE_GPU_ALLOW_GROWTH")}}))
"""


@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
def test_worker_start_caps_gpu_memory_and_names_backend_and_devices(backend):
    env = base_env(KERAS_BACKEND=backend, REGSEARCH_GPU_MEMORY_FRACTION="0.25")
    for name in ("XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION", "TF_FORCE_GPU_ALLOW_GROWTH"):
        env.pop(name, None)
    completed = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    started = json.loads(completed.stdout.strip().splitlines()[-1])
    assert started["line"].startswith("Keras ") and f" on {backend} " in started["line"], started["line"]
    assert ("GPU(s)" if started["gpu"] else "CPU only") in started["line"] and "gpu memory fraction 0.25" in started["line"]
    if not started["gpu"]:  # a machine without a GPU: no CUDA noise on the worker's start
        assert "cuInit" not in completed.stderr and "Could not find cuda drivers" not in completed.stderr
    if backend == "jax":
        assert started["env"]["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false" and started["env"]["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.250"
        assert started["tensorflow"] is False, "the worker's path on JAX needs no TensorFlow"
    else:
        assert started["env"]["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
