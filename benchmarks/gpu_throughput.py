"""GPU throughput, side by side in one run on the machine it runs on (KERAS_BACKEND=jax; no TensorFlow needed).

One invocation measures, each as a steady rate after compilation, in trial-images/s (images of any trial
trained per second, summed over the trials trained at once) and TFLOP/s against the device's bf16
matrix-multiply peak measured in the same run:

(a) ``peak``: the best of timed bf16 ``jnp.dot`` calls (8192^2 on an accelerator, 1024^2 in small mode).
(b) ``fit``: plain ``model.fit`` of one trial (``trainer.build_model``, in-memory CIFAR-shaped uint8
    images, the precision the lanes use: ``mixed_bfloat16`` on an accelerator).
(c) ``worker_step``: the worker's own single-trial training (``trainer.train``: its per-epoch
    ``images_per_second``, validation excluded), or the error it raised on this backend.
(d) ``processes``: 1, 4 and 8 processes on the device, each running (b), started together (compiled
    first, then measured over the same window); their rates summed.
(e) ``lanes``: the lane engine (``trainer._lanes.LaneEngine.train`` from K threads) at K = 1, 8 and 32,
    each lane its own trial (seed, data order, dropout) on one resident training set, as a study's trials.
(f) ``study``: one study end to end, 32 trials x 10 epochs of the baseline at width 1 on 10,000 real
    CIFAR-10 images (``../shared/datasets/cifar10/make_cifar10.py``; 10% held out), median pruner, the
    default confirmation, run by one lanes worker with K=1 and then K=8 (``regsearch worker --lanes K
    --exit-when-idle`` on SQLite): wall-clock and the confirmed best of each.

FLOPs per trained image come from XLA's cost analysis of the one-lane step (forward, backward and
Adam), so TFLOP/s = trial-images/s x that / 1e12.

``--small`` (the default where JAX has no accelerator) runs everything tiny (width 0.25, a few steps,
an 8-trial study of 2 epochs at K=1 against K=4) and the JSON says plainly that its figures are not
GPU figures. Results: ``benchmarks/results/gpu_throughput.json`` with the device's name.
Usage: ``KERAS_BACKEND=jax .venv/bin/python benchmarks/gpu_throughput.py [--small] [--skip-study]``; on the GPU
machine without a package index, through ``benchmarks/gpu_check.sh``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")

ROOT = Path(__file__).resolve().parent.parent
MAKE_CIFAR = ROOT.parent / "shared" / "datasets" / "cifar10" / "make_cifar10.py"
RESULTS = ROOT / "benchmarks" / "results" / "gpu_throughput.json"
TEST_DATA = ROOT / "tests" / "data"


def _log(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def _settings(args, **overrides):
    import trainer

    values = {"model": "baseline", "width": args.width, "batch_size": args.batch_size, "epochs": 1,
              "precision": args.precision, "precise_bn_images": 0, "gap_sample_images": 1}
    values.update(overrides)
    return trainer.TrainSettings(**values)


def _images(count: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, size=count).astype(np.int64)


# ----------------------------------------------------------------------------------------------
# (a) the device's bf16 matmul peak
# ----------------------------------------------------------------------------------------------


def peak_tflops(args) -> dict:
    import jax
    import jax.numpy as jnp

    n = args.peak_n
    a = jnp.ones((n, n), jnp.bfloat16)
    b = jnp.ones((n, n), jnp.bfloat16)
    dot = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    dot(a, b).block_until_ready()
    best = float("inf")
    for _ in range(args.peak_repeats):
        start = time.perf_counter()
        for _ in range(10):
            out = dot(a, b)
        out.block_until_ready()
        best = min(best, (time.perf_counter() - start) / 10)
    return {"n": n, "seconds": best, "tflops": 2 * n**3 / best / 1e12}


# ----------------------------------------------------------------------------------------------
# (b) plain model.fit, (d) its processes
# ----------------------------------------------------------------------------------------------


def fit_rate(args, go_file: str | None = None) -> dict:
    """Steady images/s of plain model.fit of one trial; with ``go_file``, compile, say ready, wait for it."""
    import keras

    import trainer

    precision = _precision(args)
    keras.mixed_precision.set_dtype_policy("float32" if precision == "float32" else precision)
    model = trainer.build_model(trainer.RegularizationConfig(), "baseline", width=args.width)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y = _images(args.batch_size * args.steps)
    model.fit(x, y, batch_size=args.batch_size, epochs=1, verbose=0)  # compile
    if go_file:
        print(json.dumps({"ready": True}), flush=True)
        while not os.path.exists(go_file):
            time.sleep(0.01)
    start = time.perf_counter()
    model.fit(x, y, batch_size=args.batch_size, epochs=args.fit_epochs, verbose=0)
    seconds = time.perf_counter() - start
    return {"images_per_s": args.batch_size * args.steps * args.fit_epochs / seconds, "seconds": seconds, "precision": precision}


def processes_rate(args, count: int) -> dict:
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false", "KERAS_BACKEND": "jax"}
    go_file = tempfile.mktemp(prefix="gpu_throughput_go_")
    command = [sys.executable, __file__, "--child", "fit", "--go-file", go_file, *args.passthrough]
    children = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
                for _ in range(count)]
    try:
        for child in children:
            line = child.stdout.readline()
            if not line:
                raise RuntimeError("a child process died while compiling")
        Path(go_file).touch()
        results = [json.loads(child.stdout.read().strip().splitlines()[-1]) for child in children]
        for child in children:
            child.wait(timeout=600)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
        Path(go_file).unlink(missing_ok=True)
    return {"processes": count, "images_per_s": sum(r["images_per_s"] for r in results),
            "each": [r["images_per_s"] for r in results]}


# ----------------------------------------------------------------------------------------------
# (c) the worker's own step, (e) lanes
# ----------------------------------------------------------------------------------------------


def worker_step_rate(args) -> dict:
    import trainer
    from trainer._data import CifarData

    x, y = _images(args.batch_size * args.steps + args.batch_size)
    data = CifarData(x_train=x[: -args.batch_size], y_train=y[: -args.batch_size], x_val=x[-args.batch_size:],
                     y_val=y[-args.batch_size:], x_test=x[:0], y_test=y[:0], source="synthetic")
    try:
        result = trainer.train(trainer.RegularizationConfig(), data, _settings(args, epochs=1 + args.fit_epochs,
                                                                                precision=_precision(args)))
    except Exception as error:  # noqa: BLE001 - recorded: the figure is missing on this backend
        return {"error": f"{error.__class__.__name__}: {error}"[:500]}
    steady = result.history[1:]
    images = sum(epoch["images_per_second"] * epoch["train_time_s"] for epoch in steady)
    return {"images_per_s": images / sum(epoch["train_time_s"] for epoch in steady), "precision": result.precision}


def lanes_rate(args, lanes: int) -> dict:
    """K trials trained at once by the lane engine (its real path: ``LaneEngine.train`` from K threads, images
    resident on the device): the lane-steps run between the moment every lane has passed its first epoch
    (everything compiled) and the first lane's end, x batch size / that window."""
    import threading

    import jax

    import trainer
    from trainer._data import CifarData
    from trainer._lanes import LaneEngine, LaneShape

    x, y = _images(args.batch_size * args.steps + args.batch_size)
    data = CifarData(x_train=x[: -args.batch_size], y_train=y[: -args.batch_size], x_val=x[-args.batch_size:],
                     y_val=y[-args.batch_size:], x_test=x[:0], y_test=y[:0], source="synthetic")
    settings = _settings(args, epochs=1 + args.fit_epochs, precision=_precision(args))
    engine = LaneEngine(LaneShape.of(settings, data), lanes)
    lock, warm, marks = threading.Lock(), [0], {}

    def on_epoch_end(epoch, _metrics) -> None:
        with lock:  # every lane past its first epoch: every function compiled, all K lanes busy from here
            warm[0] += epoch == 0
            if warm[0] == lanes and "start" not in marks:
                marks["start"] = (time.perf_counter(), engine.lane_steps)

    def run(index: int) -> None:
        engine.train(trainer.RegularizationConfig(), data, settings.model_copy(update={"seed": index}), on_epoch_end=on_epoch_end)
        with lock:  # the first lane to finish ends the window in which all K were busy
            marks.setdefault("end", (time.perf_counter(), engine.lane_steps))

    threads = [threading.Thread(target=run, args=(index,)) for index in range(lanes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    (start, steps_start), (end, steps_end) = marks["start"], marks["end"]
    rate = (steps_end - steps_start) * args.batch_size / (end - start)
    flops = None
    try:
        images = x[: lanes * args.batch_size].reshape((lanes, args.batch_size, *x.shape[1:]))
        labels = y[: lanes * args.batch_size].reshape((lanes, args.batch_size)).astype("int32")
        cost = engine._step.lower(engine._state, images, labels).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops = float(cost["flops"]) / (lanes * args.batch_size)
    except Exception as error:  # noqa: BLE001 - cost analysis is optional
        _log(f"no cost analysis: {error}")
    engine.close()
    jax.clear_caches()
    return {"lanes": lanes, "images_per_s": rate, "flops_per_image": flops, "precision": engine.shape.precision}


# ----------------------------------------------------------------------------------------------
# (f) one study end to end
# ----------------------------------------------------------------------------------------------


def _study_data(args, workdir: Path) -> str:
    if args.study_data:
        return args.study_data
    if args.small:
        return str(TEST_DATA)
    target = workdir / "cifar10"
    subprocess.run([sys.executable, str(MAKE_CIFAR), str(target), "--train", str(args.study_images), "--test", "10"],
                   check=True, capture_output=True)
    return str(target)


def study_run(args, lanes: int, data_dir: str, workdir: Path) -> dict:
    from service import studies
    from service.config import Settings
    from service.db import create_engine, migrate, optuna_storage, session_factory
    from service.models import BestConfigRecord, SearchStudy
    from service.schemas import StudySpec

    import sqlalchemy as sa

    url = f"sqlite:///{workdir / f'lanes{lanes}.db'}"
    settings = Settings(database_url=url)
    migrate(settings)
    factory = session_factory(create_engine(settings))
    spec = StudySpec(name="throughput", model="baseline", width=args.study_width, n_trials=args.study_trials,
                     epochs=args.study_epochs, batch_size=args.batch_size,
                     data={"train_size": args.study_images, "val_fraction": 0.1}, pruner="median")
    studies.submit_study(factory, optuna_storage(settings), spec)
    env = {**os.environ, "KERAS_BACKEND": "jax", "REGSEARCH_DATABASE_URL": url, "REGSEARCH_DATA_DIR": data_dir,
           "REGSEARCH_AUTH": "false", "REGSEARCH_ARTIFACT_URL": str(workdir / f"artifacts{lanes}")}
    code = ("import sys, logging; logging.basicConfig(level=logging.INFO); from service.config import get_settings; "
            "from service.lanes import LanesWorker; "
            f"sys.exit(LanesWorker(get_settings(), {lanes}, poll_interval=0.5, exit_when_idle=True).run())")
    start = time.perf_counter()
    with open(workdir / f"worker{lanes}.log", "w") as log:
        result = subprocess.run([sys.executable, "-c", code], env=env, stdout=log, stderr=subprocess.STDOUT, timeout=args.study_timeout)
    wall = time.perf_counter() - start
    with factory() as session:
        row = session.scalar(sa.select(SearchStudy).where(SearchStudy.name == "throughput"))
        best = session.scalars(sa.select(BestConfigRecord).where(BestConfigRecord.study_id == row.id)
                               .order_by(BestConfigRecord.id.desc())).first()
        status = row.status
    return {"lanes": lanes, "wall_s": wall, "exit_code": result.returncode, "status": str(status),
            "best": None if best is None else {"trial": best.trial_number, "value": best.value, "params": best.params,
                                               "summary": best.summary}}


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------


def _precision(args) -> str:
    from trainer._lanes import resolve_lane_precision

    return resolve_lane_precision(args.precision)


def _device() -> dict:
    import jax

    device = jax.devices()[0]
    return {"platform": device.platform, "name": getattr(device, "device_kind", str(device)), "count": jax.device_count(),
            "jax": jax.__version__, "keras": __import__("keras").__version__, "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", default=None, help="tiny run (default where JAX has no accelerator)")
    parser.add_argument("--full", dest="small", action="store_false", help="full run even on a CPU")
    parser.add_argument("--skip-study", action="store_true", help="skip the end-to-end study (f)")
    parser.add_argument("--study-data", help="a CIFAR-10 directory for the study (f), e.g. carried to a machine without ../shared "
                        "(default: made from ../shared/datasets/cifar10, or the tests' subset in small mode)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", choices=["fit"], help=argparse.SUPPRESS)
    parser.add_argument("--go-file", help=argparse.SUPPRESS)
    parser.add_argument("--width", type=float)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, help="steps per measured epoch")
    parser.add_argument("--fit-epochs", type=int, help="measured epochs")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--processes", type=int, nargs="+", help="process counts (default 1 4 8; small: 1 2)")
    parser.add_argument("--lanes", type=int, nargs="+", help="lane counts (default 1 8 32; small: 1 4)")
    args = parser.parse_args(argv)

    import jax

    accelerator = jax.default_backend() != "cpu"
    if args.small is None:
        args.small = not accelerator
    small = args.small
    args.width = args.width or (0.25 if small else 1.0)
    args.steps = args.steps or (4 if small else 100)
    args.fit_epochs = args.fit_epochs or (1 if small else 3)
    args.peak_n, args.peak_repeats = (1024, 2) if small else (8192, 5)
    args.study_trials, args.study_epochs = (8, 2) if small else (32, 10)
    args.study_width = 0.25 if small else 1.0
    args.study_images = 400 if small else 10_000
    args.study_timeout = 1800 if small else 7200
    args.passthrough = ["--width", str(args.width), "--batch-size", str(args.batch_size), "--steps", str(args.steps),
                        "--fit-epochs", str(args.fit_epochs), "--precision", args.precision, "--small" if small else "--full"]
    if args.child == "fit":
        print(json.dumps(fit_rate(args, args.go_file)), flush=True)
        return 0

    lane_counts = tuple(args.lanes or ((1, 4) if small else (1, 8, 32)))
    process_counts = tuple(args.processes or ((1, 2) if small else (1, 4, 8)))
    study_lanes = (1, 4) if small else (1, 8)
    report: dict = {
        "note": ("SMALL RUN ON A CPU: these are NOT GPU figures (tiny widths and step counts; no GPU was available). "
                 if small and not accelerator else "") + "Steady rates after compilation; trial-images/s summed over the trials trained at once.",
        "small": small, "device": _device(), "settings": {k: v for k, v in vars(args).items() if k not in ("passthrough", "child", "go_file", "out")},
    }
    started = time.perf_counter()
    report["peak"] = peak_tflops(args)
    _log("peak", report["peak"])
    report["fit"] = fit_rate(args)
    _log("fit", report["fit"])
    report["worker_step"] = worker_step_rate(args)
    _log("worker_step", report["worker_step"])
    report["processes"] = [processes_rate(args, count) for count in process_counts]
    _log("processes", report["processes"])
    report["lanes"] = [lanes_rate(args, count) for count in lane_counts]
    _log("lanes", report["lanes"])

    flops = next((entry["flops_per_image"] for entry in report["lanes"] if entry.get("flops_per_image")), None)
    report["flops_per_image"] = flops
    base = report["fit"]["images_per_s"]
    rows = [("fit", base)]
    if "images_per_s" in report["worker_step"]:
        rows.append(("worker_step", report["worker_step"]["images_per_s"]))
    rows += [(f"processes_{entry['processes']}", entry["images_per_s"]) for entry in report["processes"]]
    rows += [(f"lanes_{entry['lanes']}", entry["images_per_s"]) for entry in report["lanes"]]
    best_packing = max(entry["images_per_s"] for entry in report["processes"])
    report["table"] = [
        {"setting": name, "images_per_s": rate, "vs_one_trial": rate / base,
         "tflops": None if flops is None else rate * flops / 1e12,
         "share_of_peak": None if flops is None else rate * flops / 1e12 / report["peak"]["tflops"]}
        for name, rate in rows
    ]
    report["ratios"] = {"worker_step_vs_fit": report["worker_step"].get("images_per_s", float("nan")) / base}
    for entry in report["lanes"]:
        report["ratios"][f"lanes_{entry['lanes']}_vs_one_trial"] = entry["images_per_s"] / base
        report["ratios"][f"lanes_{entry['lanes']}_vs_best_packing"] = entry["images_per_s"] / best_packing
    if not args.skip_study:
        with tempfile.TemporaryDirectory(prefix="gpu_throughput_") as tmp:
            workdir = Path(tmp)
            data_dir = _study_data(args, workdir)
            report["study"] = {"trials": args.study_trials, "epochs": args.study_epochs, "width": args.study_width,
                               "images": args.study_images, "runs": [study_run(args, k, data_dir, workdir) for k in study_lanes]}
            one, many = report["study"]["runs"]
            report["ratios"][f"study_lanes_{study_lanes[1]}_speedup"] = one["wall_s"] / many["wall_s"]
            _log("study", report["study"])
    report["wall_s"] = time.perf_counter() - started
    report["tensorflow_imported"] = "tensorflow" in sys.modules  # the JAX path needs none (the GPU machine has none)
    for row in report["table"]:
        print(f"{row['setting']:>14}: {row['images_per_s']:>10.0f} trial-images/s  {row['vs_one_trial']:5.2f}x"
              + ("" if row["tflops"] is None else f"  {row['tflops']:.2f} TFLOP/s ({100 * row['share_of_peak']:.1f}% of peak)"))
    for name, value in report["ratios"].items():
        print(f"ratio {name}: {value:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
