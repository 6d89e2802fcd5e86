"""The ``regsearch`` command: every subcommand of regsearch lives in this package.

Each module (``client``, ``server``, ``train``, ``retrain``, ``tokens``, ``webhooks``) has a ``register(subparsers)`` function
that adds its parsers and sets ``func`` (called with the parsed arguments; its return value is the
exit code). Modules are imported only for the subcommand being run, so ``regsearch best`` never pays
for importing TensorFlow. The training recipe's flags are generated from :class:`trainer.Recipe`
(:mod:`service.cli.options`), so their defaults and bounds are the recipe's.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

__all__ = ["COMMANDS", "CommandError", "build_parser", "main"]

# subcommand -> module that registers it
COMMANDS: dict[str, str] = {
    "train": "service.cli.train",
    "retrain": "service.cli.retrain",
    "serve": "service.cli.server",
    "worker": "service.cli.server",
    "dashboard": "service.cli.server",
    "migrate": "service.cli.server",
    "submit": "service.cli.client",
    "trials": "service.cli.client",
    "importance": "service.cli.client",
    "watch": "service.cli.client",
    "best": "service.cli.client",
    "studies": "service.cli.client",
    "token": "service.cli.tokens",
    "webhooks": "service.cli.webhooks",
}


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit code 1 (or ``code``)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="regsearch", description="Search the regularization of Keras CIFAR-10 convnets.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    modules = [COMMANDS[only]] if only in COMMANDS else list(dict.fromkeys(COMMANDS.values()))
    for module_name in modules:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    from pydantic import ValidationError

    from service.client import ClientError

    try:
        return int(args.func(args) or 0)
    except (CommandError, ClientError) as error:
        print(f"regsearch {args.command}: {error}", file=sys.stderr)
        return getattr(error, "code", 1)
    except ValidationError as error:  # a value a model refused (a flag, a file): the first reason, on one line
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or error.title
        print(f"regsearch {args.command}: invalid {where}: {first['msg']}".splitlines()[0], file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`regsearch studies --json | head -1`): stop quietly, as Python's docs advise
        # (point stdout at devnull so the interpreter's final flush cannot raise again).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
