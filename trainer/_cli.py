"""``regsearch train``: train one regularization config and print (or write) its metrics.

The regularization flags (``--weight-decay``, ``--l1-ratio``, ``--dropout-conv``, ``--dropout-dense``)
are generated from :data:`trainer.SEARCH_SPACE`, the training flags' defaults from
:class:`trainer.TrainSettings`; TensorFlow is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from trainer._settings import PRECISIONS, TrainSettings
from trainer._space import MODELS, SEARCH_SPACE, RegularizationConfig

_DEFAULTS = {field.name: field.default for field in dataclasses.fields(TrainSettings)}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train one CIFAR-10 convnet under a regularization config",
        description="Train one CIFAR-10 convnet under a regularization config; report per-epoch metrics.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", choices=MODELS, default=_DEFAULTS["model"], help="network to train")
    parser.add_argument("--width", type=float, default=_DEFAULTS["width"], help="width multiplier for filters/units")
    regularization = parser.add_argument_group("regularization (the search space)")
    for spec in SEARCH_SPACE:
        regularization.add_argument(
            f"--{spec.name.replace('_', '-')}",
            dest=spec.name,
            type=float,
            default=spec.default,
            metavar=spec.name.upper(),
            help=f"{spec.description} Allowed {spec.range_text()}; searched in [{spec.low:g}, {spec.high:g}]"
            + (" on a log scale" if spec.log else ""),
        )
    parser.add_argument("--epochs", type=int, default=_DEFAULTS["epochs"])
    parser.add_argument("--batch-size", type=int, default=_DEFAULTS["batch_size"])
    parser.add_argument("--learning-rate", type=float, default=_DEFAULTS["learning_rate"], help="Adam learning rate")
    parser.add_argument("--train-size", type=int, default=None, help="training images drawn (class-balanced) before the validation split; default: all")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="share of the drawn images held out for validation")
    parser.add_argument("--augment", action="store_true", help="random horizontal flips and shifts of up to 10%%")
    parser.add_argument("--seed", type=int, default=_DEFAULTS["seed"])
    parser.add_argument("--precision", choices=PRECISIONS, default=_DEFAULTS["precision"])
    parser.add_argument(
        "--precise-bn-images",
        type=int,
        default=_DEFAULTS["precise_bn_images"],
        help="training images used to recompute BatchNorm statistics before each validation (0: off)",
    )
    parser.add_argument("--data-dir", default=None, help="CIFAR-10 in the official layout (default: $REGSEARCH_DATA_DIR, else download)")
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
        f"dropout_conv={config.dropout_conv:g} dropout_dense={config.dropout_dense:g}",
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
    from service.cli import CommandError

    try:
        config = RegularizationConfig(**{spec.name: getattr(args, spec.name) for spec in SEARCH_SPACE})
        settings = TrainSettings(
            model=args.model,
            width=args.width,
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            augment=args.augment,
            seed=args.seed,
            precision=args.precision,
            precise_bn_images=args.precise_bn_images,
        )
    except ValueError as error:
        raise CommandError(str(error)) from None

    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from trainer._data import load_cifar10  # numpy only: data errors are reported before TensorFlow loads

    if not 0 < args.val_fraction < 1:
        raise CommandError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    try:
        data = load_cifar10(args.data_dir, train_size=args.train_size, val_fraction=args.val_fraction, seed=args.seed)
    except ValueError as error:  # DataError included
        raise CommandError(str(error)) from None
    from trainer._train import train
    callbacks = [] if args.no_progress else [_progress_bar(settings.epochs, max(1, len(data.y_train) // settings.batch_size))]
    result = train(config, data, settings, callbacks=callbacks)
    print(_summary(result))
    if args.json_path:
        path = Path(args.json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {**result.to_dict(), "data": {"source": data.source, "train_size_drawn": args.train_size, "val_fraction": args.val_fraction}}
        path.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"metrics written to {path}")
    return 0
