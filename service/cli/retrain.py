"""``regsearch retrain NAME``: the final training of a study's best config (see :mod:`trainer._retrain`).

The recipe flags (--epochs, --batch-size, --learning-rate, --seed) are generated from
:class:`trainer.Recipe` and default to the study's (its best config carries the recipe).

The best config is read first (pure Python, no TensorFlow), so a wrong study name or an
unreachable server fails in a fraction of a second with one line.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from service.cli import CommandError
from service.cli.options import add_model_options
from trainer import Recipe

_OVERRIDES = ("epochs", "batch_size", "learning_rate", "seed")  # recipe fields a retrain may change

DESCRIPTION = """\
Train the study's best regularization on all training images (training + validation split), evaluate
it once on the test set, and save DIR/model.keras and DIR/provenance.json (study, trial, both configs,
data fingerprint, seed, epochs, package versions, test accuracy).

The best config comes from the service (--url, or REGSEARCH_URL) or from a file written by
`regsearch best NAME -o best.json` (--config).

It trains with the study's recipe (model, width, epochs, batch size, learning rate, augmentation,
seed); the flags below override parts of it. The strength is carried over by the lambda/(2n) rule:
the study trained on n_study images, this run on n_full, so weight_decay (hence l1 and l2) is
multiplied by n_study/n_full; l1_ratio and the dropout rates are unchanged (the rule is explained in
trainer/_space.py). --no-rescale keeps the study's coefficients. provenance.json records both configs.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "retrain",
        help="final training of a study's best config on train+val, tested once",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", metavar="NAME", help="the study whose best config to train")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--url", help="service URL (default: REGSEARCH_URL, else http://127.0.0.1:8000)")
    source.add_argument("--config", metavar="BEST_JSON", help="a file written by `regsearch best NAME -o BEST_JSON`")
    parser.add_argument("--output", metavar="DIR", help="where model.keras and provenance.json go (default: retrain-NAME)")
    parser.add_argument("--data-dir", help="CIFAR-10 directory in the official layout (default: REGSEARCH_DATA_DIR, else the "
                        "study's own data directory when it is on this machine, else download)")
    add_model_options(parser, Recipe, only=_OVERRIDES, defaults=False, default_text="the study's")
    parser.add_argument(
        "--no-rescale",
        dest="rescale",
        action="store_false",
        help="keep the study's l1/l2 instead of scaling them by n_study/n_full (the lambda/(2n) rule)",
    )
    parser.set_defaults(func=run)


def _load(args: argparse.Namespace):
    from service.config import get_settings
    from trainer._export import BestConfigUnavailable, load_best

    try:
        if args.config:
            return load_best(args.config, study=args.name)
        return load_best(args.url or get_settings().url, study=args.name)
    except (BestConfigUnavailable, ValueError, OSError) as error:
        raise CommandError(str(error)) from None


def _data_dir(args: argparse.Namespace, best) -> str | None:
    """--data-dir, else REGSEARCH_DATA_DIR, else the directory the study's server read (its best config says
    which) when it exists here (the quick start: `make run` gave its server the shipped subset), else None
    (the keras.datasets download)."""
    from service.config import get_settings

    chosen = args.data_dir or get_settings().data_dir
    if chosen:
        return chosen
    if best.data_dir and Path(best.data_dir).expanduser().is_dir():
        return best.data_dir
    return None


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from trainer import TrainSettings
    from trainer._best import describe

    best = _load(args)
    overrides = {name: getattr(args, name) for name in _OVERRIDES}
    try:
        settings = TrainSettings.from_recipe(best, **overrides)  # checks the overrides before TensorFlow loads
    except ValidationError as error:
        raise CommandError(describe(error)) from None
    output = Path(args.output or f"retrain-{args.name}")
    epochs = settings.epochs

    found = f"trial {best.trial_number}" if best.trial_number is not None else "best config"
    if best.value is not None:
        found += f" ({best.metric} {best.value:.4f})"
    print(
        f"study {best.study or args.name}: {found}, model {best.model} width {best.width:g}, {epochs} epoch(s), "
        f"learning rate {settings.learning_rate:g}",
        flush=True,
    )
    started = time.perf_counter()

    def report(epoch: int, metrics: dict) -> None:
        print(
            f"epoch {epoch + 1}/{epochs}: loss {metrics['loss']:.4f}, accuracy {metrics['accuracy']:.4f}, "
            f"monitor accuracy {metrics['val_accuracy']:.4f} ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )

    data_dir = _data_dir(args, best)
    print(f"data: {data_dir or 'keras.datasets CIFAR-10 (download, cached under ~/.keras/datasets)'}", flush=True)
    from trainer._retrain import retrain  # imports TensorFlow

    try:
        result = retrain(
            best,
            output=output,
            data_dir=data_dir,
            rescale=args.rescale,
            on_epoch_end=report,
            **overrides,
        )
    except (ValueError, OSError) as error:  # DataError is a ValueError: bad --data-dir, bad arguments
        raise CommandError(str(error)) from None
    carry = result.provenance["train_size_rescale"]
    found = result.provenance["config"]["found"]["params"]["weight_decay"]
    trained = result.provenance["config"]["trained"]["params"]["weight_decay"]
    if carry["applied"]:
        print(
            f"weight_decay {found:.4g} found on {carry['n_study']} images -> {trained:.4g} on {carry['n_full']} "
            f"(x{carry['factor']:.4g}, lambda/(2n) rule)"
        )
    else:
        print(f"weight_decay {trained:.4g} kept as found ({carry['reason']})")
    print(f"test accuracy {result.test_accuracy:.4f} on {result.provenance['test']['images']} images")
    print(f"wrote {result.model_path} and {result.provenance_path}")
    sys.stdout.flush()
    return 0
