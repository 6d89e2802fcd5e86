"""benchmarks/gpu_throughput.py in its small CPU mode, tiny, through benchmarks/gpu_check.sh (the device machine's
one command): every part runs on JAX's CPU backend, the JSON lands in $OUT and says plainly that its figures are
not GPU figures (the end-to-end study is tested as tests/service/test_service_lanes.py's worker runs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support import ROOT, base_env

pytest.importorskip("jax")


@pytest.mark.one_backend  # a JAX subprocess either way: once is enough
def test_the_gpu_check_runs_small_on_a_cpu_and_says_so(tmp_path):
    out = tmp_path / "gpu_throughput.json"
    path = f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"  # its python3: this environment's
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--small", "--skip-study", "--steps", "2", "--processes", "1",
         "--lanes", "3", "--batch-size", "32"],
        env=base_env(JAX_PLATFORMS="cpu", OUT=str(tmp_path), PATH=path), capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["small"] and "NOT GPU figures" in report["note"]
    assert report["device"]["platform"] == "cpu" and report["device"]["name"]
    assert report["peak"]["tflops"] > 0
    settings = [row["setting"] for row in report["table"]]
    assert settings[0] == "fit" and {"processes_1", "lanes_3"} <= set(settings)
    assert all(row["images_per_s"] > 0 for row in report["table"])
    assert report["flops_per_image"] > 0 and all(row["tflops"] > 0 for row in report["table"])
    assert "lanes_3_vs_one_trial" in report["ratios"] and "lanes_3_vs_best_packing" in report["ratios"]
    assert "tensorflow" not in json.dumps(report["device"]).lower()
