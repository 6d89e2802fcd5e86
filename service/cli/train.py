"""``regsearch train``: train one regularization config and print (or write) its metrics.

The regularization flags (``--weight-decay``, ``--l1-ratio``, ``--dropout-conv``, ``--dropout-dense``)
are generated from :data:`trainer.SEARCH_SPACE`, the training flags from :class:`trainer.TrainSettings`
(the recipe and the trainer's knobs); TensorFlow is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from service.cli import CommandError
from service.cli.options import add_model_options, values_from_args
from trainer import SEARCH_SPACE, RegularizationConfig, TrainSettings
from trainer._space import RATE_KNOBS
from trainer._best import describe

_NOT_FLAGS = ("reuse_compiled",)  # TrainSettings fields a command-line run has no use for


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train one CIFAR-10 convnet under a regularization config",
        description="Train one CIFAR-10 convnet under a regularization config; report per-epoch metrics.",
    )
    add_model_options(parser.add_argument_group("training (the recipe)"), TrainSettings, exclude=_NOT_FLAGS)
    regularization = parser.add_argument_group("regularization (the search space)")
    for spec in SEARCH_SPACE:
        regularization.add_argument(
            f"--{spec.name.replace('_', '-')}",
            dest=spec.name,
            type=float,
            default=spec.default,
            metavar=spec.name.upper(),
            help=f"{spec.description} Allowed {spec.range_text()}; searched in [{spec.low:g}, {spec.high:g}]"
            + (" on a log scale" if spec.log else "")
            + f" (default: {spec.default:g})",
        )
    parser.add_argument("--data-dir", default=None, help="CIFAR-10 in the official layout (default: REGSEARCH_DATA_DIR, else download)")
    parser.add_argument("--json", dest="json_path", default=None, metavar="PATH", help="write the metrics as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _progress_bar(epochs: int, steps: int) -> Any:
    """A tqdm bar per epoch (stderr) that ends with the epoch's validation metrics."""
    import keras
    from tqdm.auto import tqdm

    class ProgressBar(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", file=sys.stderr, leave=True)

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            self.bar.update(1)
            if logs:
                self.bar.set_postfix(loss=f"{float(logs['loss']):.3f}", acc=f"{float(logs['accuracy']):.3f}", refresh=False)

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            logs = logs or {}
            self.bar.set_postfix(
                loss=f"{logs.get('loss', float('nan')):.3f}",
                acc=f"{logs.get('accuracy', float('nan')):.3f}",
                val_acc=f"{logs.get('val_accuracy', float('nan')):.3f}",
            )
            self.bar.close()

    return ProgressBar()


def _summary(result: Any) -> str:
    config = result.config
    lines = [
        f"{result.settings.model} (width {result.settings.width:g}, {result.precision}) on {result.train_size} images, "
        f"validated on {result.val_size}",
        f"  weight_decay={config.weight_decay:g} l1_ratio={config.l1_ratio:g} -> L1L2(l1={config.l1:.3g}, l2={config.l2:.3g}); "
        + " ".join(f"{name}={getattr(config, name):g}" for name in RATE_KNOBS),
        "  epoch   loss  accuracy  val_loss  val_accuracy    gap  sparsity   img/s",
    ]
    for epoch in result.history:
        lines.append(
            f"  {epoch['epoch']:>5} {epoch['loss']:6.3f} {epoch['accuracy']:9.3f} {epoch['val_loss']:9.3f} "
            f"{epoch['val_accuracy']:13.3f} {epoch['gap']:6.3f} {epoch['sparsity']:9.4f} {epoch['images_per_second']:7.0f}"
        )
    lines.append(
        f"  final val_accuracy {result.val_accuracy:.4f}, gap {result.gap:+.4f}, weight L2 norm {result.weight_norms['l2']:.2f}, "
        f"sparsity {result.sparsity:.4f}, {result.wall_time_s:.1f} s, {result.images_per_second:.0f} img/s"
    )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from service.config import get_settings

    try:
        config = RegularizationConfig(**{spec.name: getattr(args, spec.name) for spec in SEARCH_SPACE})
        settings = TrainSettings(**values_from_args(args, TrainSettings, exclude=_NOT_FLAGS))
    except ValidationError as error:
        raise CommandError(describe(error)) from None
    except ValueError as error:
        raise CommandError(str(error)) from None

    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from trainer._data import load_cifar10  # numpy only: data errors are reported before TensorFlow loads

    data_dir = args.data_dir or get_settings().data_dir
    try:
        data = load_cifar10(
            data_dir, train_size=settings.data.train_size, val_fraction=settings.data.val_fraction, seed=settings.seed
        )
    except ValueError as error:  # DataError included
        raise CommandError(str(error)) from None
    from trainer._train import train

    callbacks = [] if args.no_progress else [_progress_bar(settings.epochs, max(1, len(data.y_train) // settings.batch_size))]
    result = train(config, data, settings, callbacks=callbacks)
    print(_summary(result))
    if args.json_path:
        path = Path(args.json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        drawn = {"source": data.source, "train_size_drawn": settings.data.train_size, "val_fraction": settings.data.val_fraction}
        payload = {**result.to_dict(), "data": drawn}
        path.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"metrics written to {path}")
    return 0
