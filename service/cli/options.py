"""Command-line flags generated from a pydantic model's fields (the training recipe's, the study spec's).

:func:`add_model_options` adds one ``--field-name`` per field (nested models such as ``data`` are
flattened: ``--train-size``, ``--val-fraction``, ``--augment``), its type, choices, default and help
taken from the model; :func:`values_from_args` gathers them back into the model's nested shape. So a
command's defaults and bounds are the model's by construction.
"""

from __future__ import annotations

import argparse
import math
import types
import typing
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

__all__ = ["add_model_options", "values_from_args"]


def _leaf_fields(model: type[BaseModel], only: Iterable[str] | None, exclude: Iterable[str]) -> list[tuple[tuple[str, ...], Any]]:
    """``(path, FieldInfo)`` of every scalar field, nested models flattened (``("data", "augment")``)."""
    only = None if only is None else set(only)
    found: list[tuple[tuple[str, ...], Any]] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if name in set(exclude):
            continue
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found += [((name, *path), info) for path, info in _leaf_fields(annotation, only, exclude)]
        elif only is None or name in only:
            found.append(((name,), field))
    return found


def _scalar_type(annotation: Any) -> tuple[Any, tuple[str, ...] | None]:
    """``(argparse type, choices)`` for ``int``, ``float``, ``str``, ``bool``, a ``Literal`` or an optional of one."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    if typing.get_origin(annotation) is Literal:
        return str, tuple(typing.get_args(annotation))
    return annotation, None


def add_model_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    model: type[BaseModel],
    *,
    only: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    defaults: bool = True,
    default_text: str | None = None,
) -> None:
    """One option per (flattened) field of ``model``; ``dest`` is the field name.

    ``defaults=False`` leaves every option at ``None`` (unset) so the caller can tell what was given
    (flags that override a spec file, or a best config's values); ``default_text`` then says in the help
    where the value comes from instead.
    """
    for path, field in _leaf_fields(model, only, exclude):
        name = path[-1]
        value_type, choices = _scalar_type(field.annotation)
        default = field.get_default(call_default_factory=True) if field.default is not PydanticUndefined or field.default_factory else None
        help_text = (field.description or "").rstrip(".")
        if defaults:
            help_text += f" (default: {default})"
        elif default_text:
            help_text += f" (default: {default_text})"
        # argparse expands %-formats in help texts: a literal % (e.g. "10%") must be doubled.
        kwargs: dict[str, Any] = {"dest": name, "default": default if defaults else None, "help": help_text.replace("%", "%%")}
        if value_type is bool:
            parser.add_argument(f"--{name.replace('_', '-')}", action=argparse.BooleanOptionalAction, **kwargs)
        else:
            parser.add_argument(f"--{name.replace('_', '-')}", type=value_type, choices=choices, **kwargs)


def values_from_args(args: argparse.Namespace, model: type[BaseModel], **kwargs: Any) -> dict[str, Any]:
    """The options :func:`add_model_options` added, in ``model``'s nested shape; unset (``None``) ones left out."""
    values: dict[str, Any] = {}
    for path, _field in _leaf_fields(model, kwargs.get("only"), kwargs.get("exclude", ())):
        value = getattr(args, path[-1], None)
        if value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            from service.cli import CommandError

            raise CommandError(f"--{path[-1].replace('_', '-')} must be a finite number, got {value}")
        target = values
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = value
    return values
