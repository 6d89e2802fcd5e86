"""Trials as CSV and as a streamed JSON array, one column list."""

from __future__ import annotations

import csv
import io
import json

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from service.features import COLUMNS, csv_lines, enqueue_reference, json_chunks, record_gap_constraint, trial_rows
from trainer import SEARCH_SPACE

optuna.logging.set_verbosity(optuna.logging.WARNING)

DISTRIBUTIONS = {spec.name: FloatDistribution(spec.low, spec.high, log=spec.log) for spec in SEARCH_SPACE}


def study_with_every_state() -> optuna.Study:
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    enqueue_reference(study)
    reference = study.ask(DISTRIBUTIONS)
    for key, value in {"train_accuracy": 0.5, "gap": 0.08, "epochs_run": 2, "wall_time_s": 3.5, "train_size": 180, "worker": "w1"}.items():
        reference.set_user_attr(key, value)
    record_gap_constraint(reference, 0.08, max_gap=0.05)
    study.tell(reference, 0.42)
    pruned = study.ask(DISTRIBUTIONS)
    pruned.report(0.2, 0)
    study.tell(pruned, state=TrialState.PRUNED)
    failed = study.ask(DISTRIBUTIONS)
    failed.set_user_attr("fail_reason", "error")
    study.tell(failed, state=TrialState.FAIL)
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING, params=failed.params, distributions=failed.distributions, system_attrs={"failed_trial": 2}
        )
    )
    return study


def test_csv_parses_with_the_declared_columns():
    study = study_with_every_state()
    text = "".join(csv_lines(trial_rows(study.trials)))
    reader = csv.DictReader(io.StringIO(text))
    assert tuple(reader.fieldnames) == COLUMNS
    rows = list(reader)
    assert [row["state"] for row in rows] == ["complete", "pruned", "failed", "waiting"]
    reference, pruned, failed, waiting = rows
    assert reference["stage"] == "reference" and pruned["stage"] == "search"
    assert float(reference["weight_decay"]) == 1e-4 and float(reference["dropout_dense"]) == 0.5
    assert float(reference["value"]) == 0.42 and float(reference["gap"]) == 0.08 and int(reference["epochs_run"]) == 2
    assert reference["feasible"] == "False" and reference["worker"] == "w1"
    assert float(reference["duration_s"]) >= 0 and reference["datetime_start"]
    # A pruned trial: Optuna records its last reported value; the epochs it ran before the pruner stopped it.
    assert pruned["value"] == "0.2" and pruned["epochs_run"] == "1" and pruned["feasible"] == ""
    assert failed["fail_reason"] == "error" and waiting["retry_of"] == "2"


def test_json_is_one_array_with_the_same_columns_streamed_row_by_row():
    study = study_with_every_state()
    chunks = list(json_chunks(trial_rows(study.trials)))
    assert len(chunks) == 2 + len(study.trials)  # "[", one per row, "]"
    rows = json.loads("".join(chunks))
    assert [tuple(row) for row in rows] == [COLUMNS] * 4
    assert rows[0]["value"] == 0.42 and rows[0]["feasible"] is False and rows[2]["value"] is None
    assert json.loads("".join(json_chunks([]))) == []


def test_columns_derive_from_the_search_space_and_the_trial_metrics():
    from trainer._recipe import TrialMetrics

    assert {spec.name for spec in SEARCH_SPACE} <= set(COLUMNS)
    assert set(TrialMetrics.model_fields) - {"val_accuracy"} <= set(COLUMNS)
    assert len(set(COLUMNS)) == len(COLUMNS)
