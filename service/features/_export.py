"""Trials as rows: one generator, two encodings (CSV and a streamed JSON array), one column list.

:data:`COLUMNS` is declared here once, derived from the search space (one column per parameter) and
from :class:`trainer._recipe.TrialMetrics` (one column per recorded metric), so a parameter or a
metric added there appears in the export, the route and ``regsearch trials --csv`` alike.

JSON is a JSON array of row objects (``application/json``), streamed one row at a time: any JSON
parser reads it whole, and a large study never sits in memory as one document. Rows have the same
keys, in the same order, as the CSV header; missing values are ``null`` in JSON and empty in CSV;
non-finite floats become missing (JSON has no NaN). ``value`` is the trial's value as Optuna keeps
it: the final validation accuracy, or for a pruned trial the last one it reported.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
from collections.abc import Iterable, Iterator
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from service.features._constraints import is_feasible
from service.models import STAGE_ATTR, TrialStage, iso_utc
from trainer import SEARCH_SPACE
from trainer._recipe import TrialMetrics

__all__ = ["COLUMNS", "METRIC_COLUMNS", "PARAM_COLUMNS", "STATE_NAMES", "csv_lines", "json_chunks", "trial_params", "trial_row", "trial_rows"]

STATE_NAMES: dict[TrialState, str] = {
    TrialState.COMPLETE: "complete",
    TrialState.PRUNED: "pruned",
    TrialState.FAIL: "failed",
    TrialState.RUNNING: "running",
    TrialState.WAITING: "waiting",
}

PARAM_COLUMNS: tuple[str, ...] = tuple(spec.name for spec in SEARCH_SPACE)
#: The trial's metrics; ``val_accuracy`` is the trial's ``value`` column.
METRIC_COLUMNS: tuple[str, ...] = tuple(name for name in TrialMetrics.model_fields if name != "val_accuracy")

COLUMNS: tuple[str, ...] = (
    "number",
    "state",
    "stage",
    *PARAM_COLUMNS,
    "value",
    *METRIC_COLUMNS,
    "feasible",
    "duration_s",
    "datetime_start",
    "datetime_complete",
    "retry_of",
    "fail_reason",
    "worker",
)


def _number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _time(value: dt.datetime | None) -> str | None:
    """Optuna stores naive local times; every export, like every answer, is in UTC with a ``Z``."""
    return iso_utc(value.astimezone(dt.timezone.utc)) if value is not None else None


def trial_params(trial: FrozenTrial) -> dict[str, float]:
    """The params a trial runs: those drawn so far, over the ones it was enqueued with (a queued reference,
    an enqueued config or a retry knows them all before it starts)."""
    return {**trial.system_attrs.get("fixed_params", {}), **trial.params}


def trial_row(trial: FrozenTrial) -> dict[str, Any]:
    """One trial as ``{column: value}`` in :data:`COLUMNS` order (JSON-ready: str, int, float, bool or None)."""
    attrs = trial.user_attrs
    params = trial_params(trial)
    metrics = TrialMetrics.model_validate(attrs).model_dump()
    if metrics.get("epochs_run") is None and trial.intermediate_values:
        metrics["epochs_run"] = len(trial.intermediate_values)  # a pruned trial: the epochs it reported
    duration = trial.duration.total_seconds() if trial.duration is not None else None
    row: dict[str, Any] = {
        "number": trial.number,
        "state": STATE_NAMES.get(trial.state, trial.state.name.lower()),
        "stage": attrs.get(STAGE_ATTR) or TrialStage.SEARCH,
        **{name: _number(params.get(name)) for name in PARAM_COLUMNS},
        "value": _number(trial.value),
        **{name: _number(metrics.get(name)) for name in METRIC_COLUMNS},
        "feasible": is_feasible(trial) if trial.state == TrialState.COMPLETE else None,
        "duration_s": _number(duration),
        "datetime_start": _time(trial.datetime_start),
        "datetime_complete": _time(trial.datetime_complete),
        "retry_of": trial.system_attrs.get("failed_trial"),
        "fail_reason": attrs.get("fail_reason"),
        "worker": attrs.get("worker"),
    }
    return {name: row[name] for name in COLUMNS}


def trial_rows(trials: Iterable[FrozenTrial]) -> Iterator[dict[str, Any]]:
    """One row per trial, in trial-number order of the input."""
    for trial in trials:
        yield trial_row(trial)


def csv_lines(rows: Iterable[dict[str, Any]]) -> Iterator[str]:
    """The header, then one CSV line per row (``csv`` module quoting; None is empty)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")

    def flush() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    writer.writeheader()
    yield flush()
    for row in rows:
        writer.writerow(row)
        yield flush()


def json_chunks(rows: Iterable[dict[str, Any]]) -> Iterator[str]:
    """A JSON array of the rows, one row per chunk (``[``, rows separated by ``,``, ``]``)."""
    yield "["
    first = True
    for row in rows:
        yield ("" if first else ",") + "\n" + json.dumps(row, allow_nan=False)
        first = False
    yield "\n]\n"
