"""Trainer throughput, side by side: our compiled-once search loop against the plain Optuna + Keras pattern.

One invocation measures, on real CIFAR-10 images written by ``../shared/datasets/cifar10/make_cifar10.py``
(relative to the repository root) into a temporary directory:

(a) search throughput: the same Optuna trials (1 epoch on ``--images`` images each, random sampler,
    same seed) run back to back in one worker process, ours (``trainer.train``, compiled model reused)
    against the pattern of Optuna's Keras example (clear_session, build, compile, fit per trial).
    Each side runs in its own process; the two alternate (``--rounds`` times, order flipped each round).
(b) images/s of our training step against a plain ``model.fit`` of the same network at the same
    batch size (steady epochs, both sides traced first, alternating ``--step-repeats`` times), and the
    share of the float32 conv peak of the machine it runs on, measured in the same run (``part_peak``:
    the best of timed 3x3 Conv2D calls in TensorFlow; ``--peak-gflops`` overrides it).
(c) the fixed cost of a new trial (fresh build, trace, first step) against the steady step time.
(d) precision parity: float32 against mixed_bfloat16, mean validation accuracy over 3 seeds.

Prints lines with ``ratio`` and writes ``benchmarks/results/trainer_throughput.json``, with the CPU
model and the load average before and after every part.
Usage: ``.venv/bin/python benchmarks/trainer_throughput.py [--images 2000] [--trials 8]``; a smoke run
(about 1.5 minutes on 2 cores, too short for ratios):
``--trials 2 --images 1000 --step-repeats 1 --parity-images 400 --parity-epochs 1``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAKE_CIFAR = ROOT.parent / "shared" / "datasets" / "cifar10" / "make_cifar10.py"
RESULTS = ROOT / "benchmarks" / "results" / "trainer_throughput.json"


# ----------------------------------------------------------------------------------------------
# Parts that run in a child process (each prints one JSON line)
# ----------------------------------------------------------------------------------------------


def _load(args):
    from trainer import load_cifar10

    # train_size images before the split such that exactly args.images remain for training
    return load_cifar10(args.data_dir, train_size=args.images * 11 // 10, val_fraction=1 / 11, seed=0, include_test=False)


def _study_configs(trial, space):
    from trainer import RegularizationConfig

    values = {
        spec.name: trial.suggest_float(spec.name, spec.low, spec.high, log=spec.log)
        for spec in space
    }
    return RegularizationConfig(**values)


def part_search(args) -> dict:
    """(a) one worker process running ``args.trials`` Optuna trials back to back."""
    import keras
    import numpy as np
    import optuna

    from trainer import SEARCH_SPACE, TrainSettings, build_model, train

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data = _load(args)
    x_train, x_val = data.x_train.astype("float32"), data.x_val.astype("float32")
    train_accuracies, val_accuracies, durations = [], [], []

    def ours(trial):
        config = _study_configs(trial, SEARCH_SPACE)
        started = time.perf_counter()
        result = train(config, data, TrainSettings(model=args.model, epochs=1, batch_size=args.batch_size, seed=trial.number, precision="float32"))
        durations.append(time.perf_counter() - started)
        train_accuracies.append(result.train_accuracy)
        val_accuracies.append(result.val_accuracy)
        return result.val_accuracy

    def plain(trial):  # Optuna's Keras example: a fresh model per trial
        keras.backend.clear_session()
        config = _study_configs(trial, SEARCH_SPACE)
        started = time.perf_counter()
        model = build_model(config, args.model)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        history = model.fit(x_train, data.y_train, batch_size=args.batch_size, epochs=1, validation_data=(x_val, data.y_val), verbose=0)
        durations.append(time.perf_counter() - started)
        train_accuracies.append(history.history["accuracy"][-1])
        val_accuracies.append(history.history["val_accuracy"][-1])
        return history.history["val_accuracy"][-1]

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=42))
    started = time.perf_counter()
    study.optimize(ours if args.side == "ours" else plain, n_trials=args.trials)
    elapsed = time.perf_counter() - started
    return {
        "side": args.side,
        "trials": args.trials,
        "elapsed_s": elapsed,
        "trials_per_hour": args.trials / elapsed * 3600,
        "trial_seconds": durations,
        "mean_train_accuracy": float(np.mean(train_accuracies)),
        "mean_val_accuracy": float(np.mean(val_accuracies)),
        "val_accuracies": val_accuracies,
    }


def _training_flops_per_image(model) -> float:
    """3x the forward multiply-adds x 2 (conv and dense layers), the usual training-cost estimate."""
    import keras

    macs = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, height, width, channels = layer.output.shape
            macs += height * width * channels * layer.kernel.shape[0] * layer.kernel.shape[1] * layer.kernel.shape[2]
        elif isinstance(layer, keras.layers.Dense):
            macs += layer.kernel.shape[0] * layer.kernel.shape[1]
    return 3 * 2 * macs


def part_peak(args) -> dict:
    """The float32 conv peak of this machine: the best GFLOP/s of timed 3x3 Conv2D calls (same padding),
    best of ``args.peak_repeats`` per shape, over the baseline network's three block shapes (32x32x32,
    16x16x64, 8x8x128 at batch 256) and one large layer (16x16x256 at batch 128), in TensorFlow with its
    default threading, as training uses; inputs and filters are variables, as in a Keras layer. The shapes
    are timed in rounds, so a burst of load from other processes spoils one sample of each shape rather
    than one shape. A 2048^3 matmul is timed alongside, for reference."""
    import tensorflow as tf

    def timed(function) -> float:
        started = time.perf_counter()
        function().numpy()
        return time.perf_counter() - started

    shapes = ((256, 32, 32), (256, 16, 64), (256, 8, 128), (128, 16, 256))  # (batch, height and width, channels)
    functions = []
    for batch, size, channels in shapes:
        images = tf.Variable(tf.random.stateless_normal((batch, size, size, channels), seed=(0, 1)))
        filters = tf.Variable(tf.random.stateless_normal((3, 3, channels, channels), seed=(0, 2)))
        conv = lambda images=images, filters=filters: tf.reduce_sum(tf.nn.conv2d(images, filters, strides=1, padding="SAME"))  # noqa: E731
        functions.append(tf.function(conv))
    n = 2048
    left = tf.Variable(tf.random.stateless_normal((n, n), seed=(0, 3)))
    right = tf.Variable(tf.random.stateless_normal((n, n), seed=(0, 4)))
    functions.append(tf.function(lambda: tf.reduce_sum(tf.linalg.matmul(left, right))))
    for function in functions:
        timed(function)  # trace and warm up
    seconds = [[timed(function) for function in functions] for _ in range(args.peak_repeats)]
    seconds = [list(samples) for samples in zip(*seconds)]
    convs = [
        {"batch": batch, "height_width": size, "channels_in_out": channels,
         "gflops": 2.0 * batch * size * size * channels * channels * 9 / min(samples) / 1e9, "seconds": samples}
        for (batch, size, channels), samples in zip(shapes, seconds)
    ]
    matmul_seconds = seconds[-1]
    return {
        "conv_gflops": max(conv["gflops"] for conv in convs),
        "convs": convs,
        "matmul_gflops": 2.0 * n**3 / min(matmul_seconds) / 1e9,
        "matmul_n": n,
        "matmul_seconds": matmul_seconds,
        "dtype": "float32",
        "repeats": args.peak_repeats,
    }


def part_step(args) -> dict:
    """(b) steady img/s, ours against plain model.fit, and (c) the fixed cost of a new trial."""
    import keras

    from trainer import RegularizationConfig, TrainSettings, build_model, train

    data = _load(args)
    config = RegularizationConfig()
    x_train, x_val = data.x_train.astype("float32"), data.x_val.astype("float32")
    out: dict = {}

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.last = time.perf_counter() - self.start

    # (c) the same trial on the cached model and on a freshly built one (after a warm-up trial that
    # pays the process's one-time costs, so they are not counted as the cost of a new trial)
    settings = TrainSettings(model=args.model, epochs=1, batch_size=args.batch_size, seed=0, precision="float32")
    train(config, data, settings)  # warm-up: builds, compiles and traces the cached model
    cached_runs = []
    for _ in range(2):  # the quicker of two, against sporadic stalls from the other processes here
        started = time.perf_counter()
        result = train(config, data, settings)
        cached_runs.append((time.perf_counter() - started, result))
    cached_trial, cached = min(cached_runs, key=lambda run: run[0])
    started = time.perf_counter()
    train(config, data, settings.model_copy(update={"reuse_compiled": False}))  # clear_session, build, compile, trace
    fresh_trial = time.perf_counter() - started
    steps = len(data.y_train) // args.batch_size
    step_time = cached.history[0]["train_time_s"] / steps
    out["fixed_cost"] = {
        "fresh_trial_s": fresh_trial,
        "cached_trial_s": cached_trial,
        "cached_trial_samples_s": [run[0] for run in cached_runs],
        "new_trial_fixed_cost_s": fresh_trial - cached_trial,
        "cached_trial_training_s": cached.history[0]["train_time_s"],
        "cached_trial_overhead_s": cached_trial - cached.history[0]["train_time_s"],
        "steady_step_ms": step_time * 1000,
        "fixed_cost_in_steps": (fresh_trial - cached_trial) / step_time,
    }

    # (b) steady epoch throughput, alternating: ours, plain, ours, plain
    plain_model = build_model(config, args.model)
    plain_model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    flops = _training_flops_per_image(plain_model)
    timer = EpochTimer()
    plain_model.fit(x_train, data.y_train, batch_size=args.batch_size, epochs=1, verbose=0)  # trace (same batch size as ours)
    # the fresh trial above cleared the compiled cache: rebuild and trace ours too, so both sides are steady
    train(config, data, TrainSettings(model=args.model, epochs=1, batch_size=args.batch_size, seed=1, precision="float32"))
    ours_rates, plain_rates = [], []
    for _ in range(args.step_repeats):
        result = train(config, data, TrainSettings(model=args.model, epochs=1, batch_size=args.batch_size, seed=1, precision="float32"))
        ours_rates.append(result.history[0]["images_per_second"])
        plain_model.fit(x_train, data.y_train, batch_size=args.batch_size, epochs=1, verbose=0, callbacks=[timer])
        plain_rates.append(len(x_train) / timer.last)
    ours_rate, plain_rate = statistics.mean(ours_rates), statistics.mean(plain_rates)
    out["step"] = {
        "ours_images_per_second": ours_rate,
        "plain_fit_images_per_second": plain_rate,
        "ours_batch_size": args.batch_size,
        "plain_fit_batch_size": args.batch_size,
        "ratio": ours_rate / plain_rate,
        "training_gflop_per_image": flops / 1e9,
        "ours_gflops": ours_rate * flops / 1e9,
        "plain_gflops": plain_rate * flops / 1e9,
        "samples": {"ours": ours_rates, "plain": plain_rates},
    }
    del x_val
    return out


def part_precision(args) -> dict:
    """(d) float32 against mixed_bfloat16, alternating, 3 seeds."""
    from trainer import RegularizationConfig, TrainSettings, load_cifar10, train

    data = load_cifar10(args.data_dir, train_size=args.parity_images, val_fraction=0.2, seed=0, include_test=False)
    runs: dict[str, list] = {"float32": [], "mixed_bfloat16": []}
    for seed in range(3):
        for precision in runs:
            settings = TrainSettings(
                model=args.model, width=args.parity_width, epochs=args.parity_epochs, batch_size=args.batch_size, seed=seed, precision=precision
            )
            result = train(RegularizationConfig(), data, settings)
            runs[precision].append({"val_accuracy": result.val_accuracy, "images_per_second": result.images_per_second})
    summary = {
        precision: {
            "mean_val_accuracy": statistics.mean(run["val_accuracy"] for run in values),
            "mean_images_per_second": statistics.mean(run["images_per_second"] for run in values),
            "runs": values,
        }
        for precision, values in runs.items()
    }
    difference = summary["mixed_bfloat16"]["mean_val_accuracy"] - summary["float32"]["mean_val_accuracy"]
    cpu_flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    return {
        **summary,
        "val_accuracy_difference_points": difference * 100,
        "within_1_point": abs(difference) * 100 <= 1.0,
        "speed_ratio_bf16_over_fp32": summary["mixed_bfloat16"]["mean_images_per_second"] / summary["float32"]["mean_images_per_second"],
        "cpu_has_avx512_bf16_or_amx": "avx512_bf16" in cpu_flags or "amx_bf16" in cpu_flags,
        "train_images": len(data.y_train),
        "val_images": len(data.y_val),
        "width": args.parity_width,
        "epochs": args.parity_epochs,
    }


PARTS = {"search": part_search, "peak": part_peak, "step": part_step, "precision": part_precision}


# ----------------------------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------------------------


def _child(args, part: str, **extra) -> dict:
    command = [sys.executable, __file__, "--part", part, "--data-dir", args.data_dir]
    for name in ("images", "trials", "step_repeats", "batch_size", "model", "peak_repeats", "parity_images", "parity_width", "parity_epochs"):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    for name, value in extra.items():
        command += [f"--{name}", str(value)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    load_before = _load_average()
    completed = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    if completed.returncode != 0:
        raise SystemExit(f"part {part} failed:\n{completed.stderr[-4000:]}")
    return {**json.loads(completed.stdout.strip().splitlines()[-1]), "load_average": {"start": load_before, "end": _load_average()}}


def _load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def _cpu() -> dict:
    """The CPU model and the vector/matrix extensions that decide float32 and bfloat16 speed."""
    model, flags = platform.processor() or platform.machine(), set()
    if os.path.exists("/proc/cpuinfo"):
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")
    return {"cpu_model": model, "cpu_flags": [flag for flag in wanted if flag in flags]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=sorted(PARTS))
    parser.add_argument("--side", choices=["ours", "plain"], default="ours")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--images", type=int, default=2000, help="training images per trial")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds of (a)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--step-repeats", type=int, default=2, help="alternating (ours, plain) epochs in (b)")
    parser.add_argument("--model", default="baseline")
    parser.add_argument("--peak-gflops", type=float, default=None, help="float32 conv peak to divide by (default: measured here)")
    parser.add_argument("--peak-repeats", type=int, default=10, help="timed calls per conv shape for the peak (the best counts)")
    parser.add_argument("--parity-images", type=int, default=1000)
    parser.add_argument("--parity-width", type=float, default=0.5)
    parser.add_argument("--parity-epochs", type=int, default=2)
    parser.add_argument("--skip", default="", help="comma-separated parts to skip (search,step,precision)")
    args = parser.parse_args()

    if args.part:
        print(json.dumps(PARTS[args.part](args)))
        return

    skip = {name for name in args.skip.split(",") if name}
    started = time.perf_counter()
    results: dict = {
        "machine": {**_cpu(), "cpu_count": os.cpu_count(), "platform": platform.platform(), "load_average_start": _load_average()},
        "settings": {
            "model": args.model,
            "images_per_trial": args.images,
            "trials": args.trials,
            "batch_size": args.batch_size,
            "rounds": args.rounds,
            "step_repeats": args.step_repeats,
            "peak_repeats": args.peak_repeats,
            "parity_images": args.parity_images,
            "parity_width": args.parity_width,
            "parity_epochs": args.parity_epochs,
            "skipped": sorted(skip),
        },
    }
    with tempfile.TemporaryDirectory(prefix="regsearch-bench-") as temporary:
        if args.data_dir is None:
            needed = max(args.images * 11 // 10, args.parity_images)
            needed = -(-needed // 10) * 10
            subprocess.run([sys.executable, str(MAKE_CIFAR), temporary, "--train", str(needed), "--test", "10"], check=True)
            args.data_dir = temporary

        if "search" not in skip:
            sides: dict[str, list] = {"ours": [], "plain": []}
            for round_index in range(args.rounds):
                order = ["ours", "plain"] if round_index % 2 == 0 else ["plain", "ours"]
                for side in order:
                    sides[side].append(_child(args, "search", side=side))
                    print(f"(a) {side}: {sides[side][-1]['trials_per_hour']:.0f} trials/hour", flush=True)
            ours = statistics.mean(run["trials_per_hour"] for run in sides["ours"])
            plain = statistics.mean(run["trials_per_hour"] for run in sides["plain"])
            results["search"] = {
                "ours_trials_per_hour": ours,
                "plain_trials_per_hour": plain,
                "ratio": ours / plain,
                "ours_mean_train_accuracy": statistics.mean(run["mean_train_accuracy"] for run in sides["ours"]),
                "plain_mean_train_accuracy": statistics.mean(run["mean_train_accuracy"] for run in sides["plain"]),
                "ours_mean_val_accuracy": statistics.mean(run["mean_val_accuracy"] for run in sides["ours"]),
                "plain_mean_val_accuracy": statistics.mean(run["mean_val_accuracy"] for run in sides["plain"]),
                "runs": sides,
            }
            s = results["search"]
            print(
                f"(a) search throughput ratio {s['ratio']:.2f} (ours {ours:.0f} vs plain {plain:.0f} trials/hour); "
                f"mean train accuracy ours {s['ours_mean_train_accuracy']:.3f} vs plain {s['plain_mean_train_accuracy']:.3f}; "
                f"mean val accuracy ours {s['ours_mean_val_accuracy']:.3f} vs plain {s['plain_mean_val_accuracy']:.3f}",
                flush=True,
            )

        if "step" not in skip:
            if args.peak_gflops is None:
                peak = _child(args, "peak")
                peak_gflops, peak_source = peak["conv_gflops"], "measured"
                print(
                    f"peak: float32 3x3 conv {peak['conv_gflops']:.0f} GFLOP/s, matmul {peak['matmul_gflops']:.0f} GFLOP/s "
                    f"(best of {args.peak_repeats}) on {results['machine']['cpu_model']}",
                    flush=True,
                )
            else:
                peak, peak_gflops, peak_source = None, args.peak_gflops, "--peak-gflops"
            results["peak"] = peak
            step = _child(args, "step")
            step["step"]["load_average"] = step.pop("load_average")
            b = step["step"]
            b.update(
                peak_gflops=peak_gflops,
                peak_source=peak_source,
                ours_share_of_peak=b["ours_gflops"] / peak_gflops,
                plain_share_of_peak=b["plain_gflops"] / peak_gflops,
            )
            results.update(step)
            c = step["fixed_cost"]
            print(
                f"(b) step ratio {b['ratio']:.2f} (ours {b['ours_images_per_second']:.0f} img/s, batch {args.batch_size}; "
                f"plain fit {b['plain_fit_images_per_second']:.0f} img/s, batch {args.batch_size}); "
                f"{b['training_gflop_per_image']:.3f} GFLOP/image -> {b['ours_gflops']:.1f} GFLOP/s = "
                f"{100 * b['ours_share_of_peak']:.0f}% of the {peak_gflops:.0f} GFLOP/s conv peak ({peak_source})",
                flush=True,
            )
            print(
                f"(c) new-trial fixed cost {c['new_trial_fixed_cost_s']:.2f} s (fresh trial {c['fresh_trial_s']:.2f} s, "
                f"cached {c['cached_trial_s']:.2f} s, of which {c['cached_trial_overhead_s']:.2f} s outside training steps: "
                f"precise BN, validation, reset) vs steady step {c['steady_step_ms']:.0f} ms: ratio {c['fixed_cost_in_steps']:.0f} steps",
                flush=True,
            )

        if "precision" not in skip:
            parity = _child(args, "precision")
            results["precision"] = parity
            print(
                f"(d) precision: val accuracy float32 {parity['float32']['mean_val_accuracy']:.3f} vs mixed_bfloat16 "
                f"{parity['mixed_bfloat16']['mean_val_accuracy']:.3f} ({parity['val_accuracy_difference_points']:+.1f} points, "
                f"within 1 point: {parity['within_1_point']}); speed ratio bf16/fp32 {parity['speed_ratio_bf16_over_fp32']:.2f}; "
                f"CPU has AVX512_BF16/AMX: {parity['cpu_has_avx512_bf16_or_amx']}",
                flush=True,
            )

    if skip and RESULTS.exists():  # keep the skipped parts' latest results, marked as such
        previous = json.loads(RESULTS.read_text())
        for part, keys in {"search": ["search"], "step": ["peak", "step", "fixed_cost"], "precision": ["precision"]}.items():
            if part in skip:
                for key in keys:
                    if key in previous:
                        results[key] = {**previous[key], "from_earlier_run": previous.get("machine", {})}
    results["machine"]["load_average_end"] = _load_average()
    results["elapsed_s"] = time.perf_counter() - started
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)} in {results['elapsed_s']:.0f} s (load average {results['machine']['load_average_start']} -> {results['machine']['load_average_end']})")


if __name__ == "__main__":
    main()
