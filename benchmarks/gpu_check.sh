#!/usr/bin/env bash
# Issue 16's GPU check, one command on a machine with Python 3.12 and JAX with CUDA but no package index and no
# ../shared (the device machine). Prepare its two inputs here, in .whl/ (git-ignored), then run it there:
#
#   ../shared/tools/wheelhouse.sh .whl $(bash benchmarks/gpu_check.sh --pins)       # the worker's imports, ~12 MB
#   .venv/bin/python ../shared/datasets/cifar10/make_cifar10.py .whl/cifar10 --train 10000 --test 10   # ~31 MB
#   device: run  command "bash benchmarks/gpu_check.sh --wheels --skip-study"  carry [".whl"]   then, if time
#           is left, "bash benchmarks/gpu_check.sh --wheels" (adds the 32-trial study on .whl/cifar10)
#
# --wheels installs .whl/*.whl (Python 3.12 wheels) into a fresh directory on PYTHONPATH; then it runs
# benchmarks/gpu_throughput.py on KERAS_BACKEND=jax (further arguments pass through), writing
# gpu_throughput.json into $OUT (the device's folder that comes back) or else into benchmarks/results/.
# --pins prints the wheelhouse's packages at the versions of this checkout's .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(keras namex optree pydantic pydantic-core pydantic-settings python-dotenv annotated-types typing-inspection
          optuna sqlalchemy greenlet alembic mako colorlog tenacity)
if [[ "${1:-}" == "--pins" ]]; then
  .venv/bin/python - "${packages[@]}" <<'PY'
import importlib.metadata, sys

def pinned(name):
    try:
        return f"{name}=={importlib.metadata.version(name)}"
    except importlib.metadata.PackageNotFoundError:  # not needed here (e.g. greenlet on this CPU): the newest
        return name

print(" ".join(pinned(name) for name in sys.argv[1:]))
PY
  exit 0
fi
if [[ "${1:-}" == "--wheels" ]]; then
  shift
  site=$(mktemp -d)
  python3 -m pip install -q --no-index --no-deps --target "$site" .whl/*.whl
  export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false
out="${OUT:-benchmarks/results}/gpu_throughput.json"
study=()
[[ -n "${site:-}" && -d .whl/cifar10 ]] && study=(--study-data .whl/cifar10)
nvidia-smi --query-gpu=name,memory.total,utilization.gpu --format=csv 2>/dev/null || true
exec python3 benchmarks/gpu_throughput.py --out "$out" "${study[@]}" "$@"
