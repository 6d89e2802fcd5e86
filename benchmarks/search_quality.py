"""Search quality: does the study's answer beat the defaults, what do confirmation and pruning cost or lose,
and which carry-over rule should ``retrain`` follow?

Everything trains through the product's own code: studies run in :class:`service.worker.Worker` (in
this process, ``exit_when_idle``) on a SQLite database, and final models through :func:`trainer.retrain`,
which evaluates on the test set once. Nothing is selected on the test set: the study selects on
validation splits drawn from its training subset; the test set only scores the configs chosen.

Data: class-balanced subsets of CIFAR-10 written in the official layout into a temporary directory by
``../shared/datasets/cifar10/make_cifar10.py`` (its subsets are nested: the N-image subset is inside the
2N one, and every subset gets the same test images). The study's subset holds exactly ``--train-size``
images and the spec's ``train_size`` is null, so a study's ``seed`` changes its validation split,
data order and initialisation but never its pool.

Parts (``--parts``, default all):

(a) **best vs defaults vs none.** A study (``--trials`` trials, ``--epochs`` epochs, median pruner,
    confirmation), then three configs each retrained on the whole subset with ``--seeds`` seeds and
    tested once: the confirmed best, the seed text's defaults (L2 1e-4, dropout 0.3/0.5) and no
    regularization (dropout 0 and weight decay 1e-12: the config type requires weight_decay > 0).
    Means with 95% Student-t intervals, and the margins as paired (same seed) differences with theirs.
    ``retrain`` runs with ``rescale=False`` here (the study trained on 90% of the same subset; the
    carry-over rule is part (d)'s question).
(b) **does confirmation earn its cost?** The unconfirmed pick (the single best search trial) against the
    confirmed best on the test set (same seeds), and the extra epochs confirmation took.
(c) **the pruner's regret.** Every pruned trial re-run to the full budget with the search's seed (so on
    the search's own split), through the worker with pruning off; how many would have beaten the
    confirmed best (its value on that split, and its mean), and where they sit in the search space.
    ``--pruners median fair`` repeats the search with :func:`service.pruning.make_fair_pruner` and
    reports its regret side by side.
(d) **carry-over.** The best of the study on N = ``--train-size`` images retrained on 2N and 4N images
    with and without the n_study/n_full rescale of the weight decay, ``--seeds`` seeds each, same epochs.

Confirmation: the study runs its own confirmation stage (``confirm: {top_k, repeats}`` in the spec) and
:func:`service.confirmation.summarize` reads the study's trials (``"confirmation": "service"`` in the
results). (On a build without the stage the script runs the same paired repeats itself, ``"benchmark"``.)
``--pruners median fair`` runs the second search with the spec's ``pruner: "fair"``.

    python benchmarks/search_quality.py                       # full run (about 45 min here), writes results/search_quality.json
    python benchmarks/search_quality.py --smoke               # tiny sizes, minutes: proves the script runs
    python benchmarks/search_quality.py --parts d --output benchmarks/results/search_quality_carryover.json

The recorded full run (``benchmarks/results/search_quality.json``, docs/benchmarks.md) used ``--train-size
2000 --test-size 2000 --width 0.5 --trials 16 --epochs 10 --pruners median fair``: about 60 minutes here.

Scaled down from the issue's sizes (5,000 images, width 0.5, 20 trials, 15 epochs; a study on 2,500
retrained on 5,000 and 10,000 for (d)) to fit this shared 2-core machine in about 45 minutes: 2,500
images (2,000 train + 500 validation, the issue's validation size), width 0.5, 16 trials, 10 epochs,
2,000 test images, and (d) reuses the main study (N = 2,500, retrained on 5,000 and 10,000). Measured
here before choosing (load ~6): one epoch on 2,000 images takes ~3 s at width 0.5 (~1.5 s at 0.25).
``--pruners median fair`` adds a second search and its regret (about 15 minutes more).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "search_quality.json"
CIFAR = (ROOT / ".." / "shared" / "datasets" / "cifar10").resolve()
MAKE_CIFAR = CIFAR / "make_cifar10.py"

#: The seed text's defaults and "no regularization" (the config type needs weight_decay > 0).
DEFAULTS = {"weight_decay": 1e-4, "l1_ratio": 0.0, "dropout_conv": 0.3, "dropout_dense": 0.5}
NONE = {"weight_decay": 1e-12, "l1_ratio": 0.0, "dropout_conv": 0.0, "dropout_dense": 0.0}

log = logging.getLogger("search_quality")


# --------------------------------------------------------------------------------------------------
# Machine and data
# --------------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
        platform.processor(),
    )
    return {"cpu": model, "cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


def make_subset(directory: Path, train: int, test: int) -> Path:
    """A class-balanced CIFAR-10 subset in the official layout (``make_cifar10.py``); returns ``directory``."""
    if not (directory / "cifar-10-batches-py" / "test_batch").is_file():
        subprocess.run(
            [sys.executable, str(MAKE_CIFAR), str(directory), "--train", str(train), "--test", str(test)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return directory


# --------------------------------------------------------------------------------------------------
# Studies through the worker
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def pruner_variant(name: str):
    """``median``: the service's pruner as shipped; ``fair``: :func:`service.pruning.make_fair_pruner`
    in its place (the worker builds its pruner through ``service._optuna.make_pruner``)."""
    import service._optuna

    if name == "median":
        yield
        return
    from service.pruning import make_fair_pruner

    shipped = service._optuna.make_pruner

    def fair(spec):
        return make_fair_pruner(spec.n_trials, spec.epochs) if spec.pruner == "median" else shipped(spec)

    service._optuna.make_pruner = fair
    try:
        yield
    finally:
        service._optuna.make_pruner = shipped


class Lab:
    """One SQLite database and the worker runs on it; every study here goes through ``Worker.run``."""

    def __init__(self, workdir: Path) -> None:
        from service.config import Settings
        from service.db import create_engine, migrate, optuna_storage, session_factory

        self.url = f"sqlite:///{workdir}/search_quality.db"
        settings = Settings(database_url=self.url)
        migrate(settings)
        self.engine = create_engine(settings)
        self.factory = session_factory(self.engine)
        self.storage = optuna_storage(settings)

    def spec(self, **fields: Any):
        from service.schemas import StudySpec

        return StudySpec.model_validate(fields)

    def submit(self, spec, enqueue: list[tuple[dict[str, float], dict[str, Any]]] = ()) -> None:
        import optuna

        from service.studies import submit_study

        submit_study(self.factory, self.storage, spec)
        study = optuna.load_study(study_name=spec.name, storage=self.storage)
        for params, user_attrs in enqueue:
            study.enqueue_trial(params, user_attrs=user_attrs)

    def work(self, data_dir: Path, pruner: str = "median") -> float:
        """Run one in-process worker until no study is left; returns its wall time."""
        from service.config import Settings
        from service.worker import Worker

        started = time.perf_counter()
        with pruner_variant(pruner):
            Worker(Settings(database_url=self.url, data_dir=str(data_dir), poll_interval=0.2), exit_when_idle=True).run()
        return time.perf_counter() - started

    def trials(self, name: str):
        import optuna

        return optuna.load_study(study_name=name, storage=self.storage).get_trials(deepcopy=False)


def epochs_run(trials) -> int:
    return sum(len(trial.intermediate_values) for trial in trials)


def service_confirms() -> bool:
    """Whether the worker runs the confirmation stage itself (the spec has a ``confirm`` block)."""
    from service.schemas import StudySpec

    return "confirm" in StudySpec.model_fields


def _no_confirm() -> dict[str, Any]:
    return {"confirm": {"top_k": 0}} if service_confirms() else {}


def run_search(lab: Lab, args: argparse.Namespace, data_dir: Path, pruner: str) -> dict[str, Any]:
    """The study: search, then confirmation (the service's, or this script's paired repeats). Returns the
    search and confirmation trials, the :class:`~service.confirmation.Confirmation` and the compute."""
    from service.confirmation import ConfirmSpec, confirmation_plan, repeat_seed, summarize

    confirm = ConfirmSpec(top_k=args.top_k, repeats=args.repeats)
    name = f"quality-{pruner}"
    recipe = {
        "model": "baseline",
        "width": args.width,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "data": {"train_size": None, "val_fraction": args.val_fraction},
        "seed": args.seed,
    }
    with_service = service_confirms()
    search_spec = lab.spec(
        name=name,
        n_trials=args.trials,
        pruner=pruner if with_service else "median",
        sampler="tpe",
        **recipe,
        **({"confirm": confirm.model_dump()} if with_service else {}),
    )
    lab.submit(search_spec)
    search_wall = lab.work(data_dir, "median" if with_service else pruner)  # the spec names the pruner
    trials = lab.trials(name)
    confirm_wall = 0.0
    if with_service:
        from service.confirmation import is_confirmation

        confirmation_trials = [trial for trial in trials if is_confirmation(trial)]
        search_trials = [trial for trial in trials if not is_confirmation(trial)]
        source = "service"
        if confirmation_trials:  # the stage starts when the search's last trial ends
            stage_start = max(trial.datetime_complete for trial in search_trials if trial.datetime_complete)
            stage_end = max(trial.datetime_complete for trial in confirmation_trials if trial.datetime_complete)
            confirm_wall = max(0.0, (stage_end - stage_start).total_seconds())
            search_wall -= confirm_wall
    else:
        search_trials = trials
        plan = confirmation_plan(search_trials, confirm, args.seed)
        confirmation_trials = []
        for repeat in range(1, confirm.repeats + 1):
            items = [item for item in plan if item.repeat == repeat]
            if not items:
                continue
            repeat_name = f"{name}-confirm-{repeat}"
            lab.submit(
                lab.spec(name=repeat_name, n_trials=len(items), pruner="none", sampler="random", **_no_confirm(),
                         **{**recipe, "seed": repeat_seed(args.seed, repeat)}),
                [(item.params, item.user_attrs) for item in items],
            )
            confirm_wall += lab.work(data_dir, pruner)
            confirmation_trials += lab.trials(repeat_name)
        source = "benchmark"
    summary = summarize([*search_trials, *confirmation_trials], confirm)
    states: dict[str, int] = {}
    for trial in search_trials:
        states[trial.state.name.lower()] = states.get(trial.state.name.lower(), 0) + 1
    return {
        "name": name,
        "pruner": pruner,
        "search_trials": search_trials,
        "confirmation_trials": confirmation_trials,
        "summary": summary,
        "report": {
            "confirmation": source,
            "search": {
                "trials": states,
                "epochs_run": epochs_run(search_trials),
                "wall_s": round(search_wall, 1),
            },
            "confirmation_runs": {
                "trials": len(confirmation_trials),
                "epochs_run": epochs_run(confirmation_trials),
                "wall_s": round(confirm_wall, 1),
            },
            "best": summary.model_dump(mode="json") if summary is not None else None,
        },
    }


# --------------------------------------------------------------------------------------------------
# Final models, tested once
# --------------------------------------------------------------------------------------------------


def best_json(params: dict[str, float], args: argparse.Namespace, train_size: int | None) -> dict[str, Any]:
    """The best-config JSON form (what ``regsearch best -o`` writes), for ``trainer.retrain``."""
    return {
        "model": "baseline",
        "width": args.width,
        "params": dict(params),
        "train_size": train_size,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "seed": args.seed,
    }


def test_runs(config: dict[str, Any], data_dir: Path, seeds: list[int], rescale: bool) -> list[dict[str, Any]]:
    import trainer

    runs = []
    for seed in seeds:
        result = trainer.retrain(config, data_dir=str(data_dir), seed=seed, rescale=rescale)
        runs.append(
            {
                "seed": seed,
                "test_accuracy": result.test_accuracy,
                "weight_decay_trained": result.provenance["config"]["trained"]["params"]["weight_decay"],
                "train_images": result.provenance["training"]["images"],
                "wall_s": round(result.training.wall_time_s, 1),
            }
        )
        log.info("  seed %d: test accuracy %.4f", seed, result.test_accuracy)
    return runs


def interval(values: list[float]) -> dict[str, Any]:
    from service.confirmation import mean_interval

    return mean_interval(values).model_dump()


def margin(first: list[dict[str, Any]], second: list[dict[str, Any]]) -> dict[str, Any]:
    """Paired (same seed) difference of test accuracy, first minus second, with its 95% interval."""
    other = {run["seed"]: run["test_accuracy"] for run in second}
    return interval([run["test_accuracy"] - other[run["seed"]] for run in first if run["seed"] in other])


def fmt(stats: dict[str, Any]) -> str:
    if stats["ci_low"] is None:
        return f"{100 * stats['mean']:.1f}% (n=1)"
    return f"{100 * stats['mean']:.1f}% [{100 * stats['ci_low']:.1f}, {100 * stats['ci_high']:.1f}] (n={stats['n']})"


# --------------------------------------------------------------------------------------------------
# Parts
# --------------------------------------------------------------------------------------------------


def part_a(search: dict[str, Any], args: argparse.Namespace, data_dir: Path, cache: dict) -> dict[str, Any]:
    best = search["summary"].best
    configs = {"best": best.params, "defaults": DEFAULTS, "none": NONE}
    out: dict[str, Any] = {"confirmed_best_trial": best.trial_number, "configs": {}}
    for label, params in configs.items():
        log.info("(a) retrain %s %s", label, params)
        runs = cache.setdefault(("a", label), test_runs(best_json(params, args, None), data_dir, args.seeds, rescale=False))
        out["configs"][label] = {"params": params, "runs": runs, "test_accuracy": interval([run["test_accuracy"] for run in runs])}
        print(f"(a) {label:<9} test accuracy {fmt(out['configs'][label]['test_accuracy'])}", flush=True)
    best_runs = out["configs"]["best"]["runs"]
    out["margins"] = {
        "best_minus_defaults": margin(best_runs, out["configs"]["defaults"]["runs"]),
        "best_minus_none": margin(best_runs, out["configs"]["none"]["runs"]),
    }
    for label, stats in out["margins"].items():
        print(f"(a) {label:<20} {fmt(stats)} (paired by seed)", flush=True)
    return out


def part_b(search: dict[str, Any], args: argparse.Namespace, data_dir: Path, cache: dict) -> dict[str, Any]:
    from service.confirmation import top_configs

    summary = search["summary"]
    pick = top_configs(search["search_trials"], 1)[0]
    report = search["report"]
    extra = report["confirmation_runs"]["epochs_run"] / max(1, report["search"]["epochs_run"])
    out: dict[str, Any] = {
        "unconfirmed_pick": {"trial_number": pick.number, "value": pick.value, "params": dict(pick.params)},
        "confirmed_best": {"trial_number": summary.best.trial_number, "mean": summary.best.mean, "params": summary.best.params},
        "same_config": pick.number == summary.best.trial_number,
        "extra_epochs_ratio": round(extra, 3),
    }
    confirmed_runs = cache.get(("a", "best"))
    if confirmed_runs is None:
        confirmed_runs = cache[("a", "best")] = test_runs(best_json(summary.best.params, args, None), data_dir, args.seeds, rescale=False)
    if out["same_config"]:
        pick_runs = confirmed_runs
    else:
        log.info("(b) retrain the unconfirmed pick %s", dict(pick.params))
        pick_runs = test_runs(best_json(dict(pick.params), args, None), data_dir, args.seeds, rescale=False)
    out["test_accuracy"] = {
        "confirmed": interval([run["test_accuracy"] for run in confirmed_runs]),
        "unconfirmed": interval([run["test_accuracy"] for run in pick_runs]),
    }
    out["confirmed_minus_unconfirmed"] = margin(confirmed_runs, pick_runs) if not out["same_config"] else None
    print(
        f"(b) unconfirmed pick = trial {pick.number}, confirmed best = trial {summary.best.trial_number}"
        f"{' (same config)' if out['same_config'] else ''}; confirmation cost {100 * extra:.0f}% more epochs; "
        f"test {fmt(out['test_accuracy']['unconfirmed'])} -> {fmt(out['test_accuracy']['confirmed'])}",
        flush=True,
    )
    return out


def part_c(lab: Lab, search: dict[str, Any], args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    """Re-run every pruned trial to the full budget (same seed, hence the search's split), pruning off."""
    import optuna

    pruned = [trial for trial in search["search_trials"] if trial.state == optuna.trial.TrialState.PRUNED]
    summary = search["summary"]
    out: dict[str, Any] = {"pruner": search["pruner"], "pruned": len(pruned), "search": search["report"]["search"]}
    if not pruned:
        print(f"(c) {search['pruner']}: no trial was pruned", flush=True)
        return {**out, "rerun": [], "beat_best_first_value": 0, "beat_best_mean": 0}
    name = f"{search['name']}-regret"
    lab.submit(
        lab.spec(name=name, n_trials=len(pruned), pruner="none", sampler="random", confirm={"top_k": 0}, model="baseline", width=args.width,
                 epochs=args.epochs, batch_size=args.batch_size,
                 data={"train_size": None, "val_fraction": args.val_fraction}, seed=args.seed),
        [(dict(trial.params), {"stage": "enqueued", "reruns": trial.number}) for trial in pruned],
    )
    wall = lab.work(data_dir)
    reruns = []
    for trial in lab.trials(name):
        if trial.value is None:
            continue
        original = next(t for t in pruned if t.number == trial.user_attrs["reruns"])
        reruns.append(
            {
                "trial_number": original.number,
                "params": dict(trial.params),
                "pruned_at_epoch": max(original.intermediate_values) + 1,
                "value_when_pruned": original.intermediate_values[max(original.intermediate_values)],
                "full_budget_value": trial.value,
                "beats_best_first_value": trial.value > summary.best.first_value,
                "beats_best_mean": trial.value > summary.best.mean,
            }
        )
    completed = [trial for trial in search["search_trials"] if trial.state == optuna.trial.TrialState.COMPLETE]

    def medians(params_list):
        import statistics

        return {key: statistics.median(p[key] for p in params_list) for key in params_list[0]} if params_list else None

    out.update(
        {
            "rerun": reruns,
            "rerun_wall_s": round(wall, 1),
            "best_first_value": summary.best.first_value,
            "best_mean": summary.best.mean,
            "beat_best_first_value": sum(run["beats_best_first_value"] for run in reruns),
            "beat_best_mean": sum(run["beats_best_mean"] for run in reruns),
            "median_params": {
                "pruned": medians([run["params"] for run in reruns]),
                "pruned_that_beat_best": medians([run["params"] for run in reruns if run["beats_best_first_value"]]),
                "completed": medians([dict(trial.params) for trial in completed]),
            },
        }
    )
    print(
        f"(c) {search['pruner']}: {len(pruned)} pruned; at the full budget {out['beat_best_first_value']} beat the best's "
        f"value on the same split ({summary.best.first_value:.4f}), {out['beat_best_mean']} its mean ({summary.best.mean:.4f})",
        flush=True,
    )
    return out


def part_d(search: dict[str, Any], args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """The study's best (found on N images) retrained on 2N and 4N, with and without the n_study/n_full rescale.

    ``--carry-configs best defaults`` also carries the seed text's defaults (L2 1e-4) as if a study on N
    had found them: a best whose weight decay is tiny tests nothing, the rescale being immaterial.
    """
    best = search["summary"].best
    train_size = next(
        trial.user_attrs.get("train_size") for trial in search["search_trials"] if trial.number == best.trial_number
    )
    out: dict[str, Any] = {"study_images": args.train_size, "n_study": train_size}
    for label in args.carry_configs:
        params = best.params if label == "best" else DEFAULTS
        entry: dict[str, Any] = {"params": params, "sizes": {}}
        for factor in (2, 4):
            size = args.train_size * factor
            data_dir = make_subset(workdir / f"cifar-{size}", size, args.test_size)
            row = {}
            for rescale in (True, False):
                log.info("(d) %s on %d images, rescale=%s", label, size, rescale)
                runs = test_runs(best_json(params, args, train_size), data_dir, args.seeds, rescale=rescale)
                row["rescaled" if rescale else "kept"] = {"runs": runs, "test_accuracy": interval([run["test_accuracy"] for run in runs])}
            row["rescaled_minus_kept"] = margin(row["rescaled"]["runs"], row["kept"]["runs"])
            entry["sizes"][str(size)] = row
            print(
                f"(d) {label} on {size} images: rescaled {fmt(row['rescaled']['test_accuracy'])}, "
                f"kept {fmt(row['kept']['test_accuracy'])}, rescaled - kept {fmt(row['rescaled_minus_kept'])}",
                flush=True,
            )
        if label == "best":
            out.update(entry)
        else:
            out.setdefault("also", {})[label] = entry
    return out


# --------------------------------------------------------------------------------------------------


SMOKE = {"train_size": 200, "test_size": 100, "width": 0.25, "trials": 4, "epochs": 2, "top_k": 2, "repeats": 1, "seeds": [0, 1]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", default=["a", "b", "c", "d"], choices=["a", "b", "c", "d"])
    parser.add_argument("--train-size", type=int, default=2500, help="images of the study's subset, a multiple of 10 (issue: 5000)")
    parser.add_argument("--test-size", type=int, default=2000, help="test images, a multiple of 10 (all: 8000)")
    parser.add_argument("--width", type=float, default=0.5, help="baseline width (as the issue)")
    parser.add_argument("--trials", type=int, default=16, help="search trials (issue: 20)")
    parser.add_argument("--epochs", type=int, default=10, help="epoch budget (issue: 15)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--val-fraction", type=float, default=0.2, help="validation share of the study's subset")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="retrain seeds for (a), (b), (d)")
    parser.add_argument("--seed", type=int, default=0, help="the study's seed")
    parser.add_argument("--pruners", nargs="+", default=["median"], choices=["median", "fair"],
                        help="(c) for each: 'fair' runs a second search with service.pruning.make_fair_pruner")
    parser.add_argument("--carry-configs", nargs="+", default=["best"], choices=["best", "defaults"],
                        help="(d): the configs carried over (defaults: the seed text's L2 1e-4, as if found on N)")
    parser.add_argument("--smoke", action="store_true", help=f"tiny sizes to prove the script runs (explicit options win): {SMOKE}")
    parser.add_argument("--output", type=Path, default=None, help=f"default {RESULTS.relative_to(ROOT)} (smoke: a temp file)")
    if parser.parse_known_args(argv)[0].smoke:
        parser.set_defaults(**SMOKE)  # the smoke sizes, unless an option is given explicitly
    args = parser.parse_args(argv)
    output = args.output or (Path(tempfile.gettempdir()) / "search_quality_smoke.json" if args.smoke else RESULTS)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("service", "optuna", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    warnings.simplefilter("ignore")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    started = time.perf_counter()
    results: dict[str, Any] = {
        "benchmark": "search_quality",
        "command": "python benchmarks/search_quality.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {**machine(), "load_average_start": [round(x, 2) for x in os.getloadavg()]},
        "parameters": {key: value for key, value in vars(args).items() if key != "output"},
        "never_selected_on_test": "studies select on validation splits of the training subset; the test set only scores the chosen configs",
    }

    def save() -> None:
        results["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
        results["wall_s"] = round(time.perf_counter() - started, 1)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=2, default=str) + "\n")

    with tempfile.TemporaryDirectory(prefix="regsearch-quality-") as tmp:
        workdir = Path(tmp)
        data_dir = make_subset(workdir / f"cifar-{args.train_size}", args.train_size, args.test_size)
        lab = Lab(workdir)
        cache: dict = {}
        searches = {}
        for pruner in args.pruners if "c" in args.parts else ["median"]:
            searches[pruner] = run_search(lab, args, data_dir, pruner)
            results.setdefault("studies", {})[pruner] = searches[pruner]["report"]
            best = searches[pruner]["summary"].best
            print(
                f"study ({pruner} pruner, confirmation by {searches[pruner]['report']['confirmation']}): best trial "
                f"{best.trial_number} mean {fmt(best.model_dump())}, first value {best.first_value:.4f}, "
                f"ties {[tie.trial_number for tie in searches[pruner]['summary'].ties]}",
                flush=True,
            )
            save()
        main_search = searches.get("median") or next(iter(searches.values()))
        if "a" in args.parts:
            results["a_best_vs_defaults_vs_none"] = part_a(main_search, args, data_dir, cache)
            save()
        if "b" in args.parts:
            results["b_confirmation_value"] = part_b(main_search, args, data_dir, cache)
            save()
        if "c" in args.parts:
            results["c_pruner_regret"] = {pruner: part_c(lab, search, args, data_dir) for pruner, search in searches.items()}
            save()
        if "d" in args.parts:
            results["d_carry_over"] = part_d(main_search, args, workdir)
            save()
        lab.engine.dispose()
    save()
    print(f"wrote {output} in {results['wall_s']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
