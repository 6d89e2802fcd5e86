"""Study features built on Optuna's own machinery (issue 11), each a small private module.

* the reference config and the best's margin over it (:mod:`._reference`);
* ``enqueue`` and ``warm_start_from`` (:mod:`._warmstart`);
* parameter importance, cached per trial count (:mod:`._importance`);
* trials as CSV / a streamed JSON array (:mod:`._export`);
* the top configs' models as Optuna artifacts, the best config's served (:mod:`._artifacts`);
* the ``max_gap`` constraint (:mod:`._constraints`);
* the spec fields (:class:`StudyFeatures`, a mixin for ``StudySpec``) and the result types (:mod:`._schemas`: one
  pydantic model each, returned by the feature and answered by the API).

Keras-free at import (the artifact module imports the trainer's Keras code only when saving).
"""

from service.features._schemas import ModelInfoOut  # noqa: I001 - the result types first
from service.features._artifacts import (
    MODEL_ATTR,
    MODEL_FILENAME,
    NoBestModel,
    disk_usage,
    download_model,
    make_artifact_store,
    model_of,
    remove_study_artifacts,
    store_model,
)
from service.features._bounds import search_bounds
from service.features._constraints import (
    CONSTRAINT_ATTR,
    GAP_CONSTRAINT,
    best_feasible,
    constraints_func,
    gap_constraint,
    is_feasible,
    record_gap_constraint,
)
from service.features._export import COLUMNS, PARAM_COLUMNS, csv_lines, json_chunks, trial_params, trial_row, trial_rows
from service.features._importance import EVALUATORS, MIN_TRIALS, ImportanceCache, TooFewTrials, importance
from service.features._reference import (
    enqueue_reference,
    is_reference,
    margin,
    margin_from_trials,
    reference_config,
)
from service.features._schemas import EXPORT_COLUMNS_TEXT, ImportanceOut, MarginOut, ReferenceOut, TrialRow, WarmStartOut
from service.features._spec import StudyFeatures
from service.features._warmstart import (
    RECIPE_FIELDS,
    WARM_START_ATTR,
    IncompatibleStudy,
    WarmStart,
    check_compatible,
    enqueue_configs,
    fill_config,
    warm_start_trials,
)

__all__ = [
    "COLUMNS",
    "CONSTRAINT_ATTR",
    "EXPORT_COLUMNS_TEXT",
    "EVALUATORS",
    "GAP_CONSTRAINT",
    "MIN_TRIALS",
    "MODEL_ATTR",
    "MODEL_FILENAME",
    "RECIPE_FIELDS",
    "PARAM_COLUMNS",
    "ModelInfoOut",
    "ImportanceOut",
    "ImportanceCache",
    "IncompatibleStudy",
    "MarginOut",
    "NoBestModel",
    "ReferenceOut",
    "TooFewTrials",
    "WarmStart",
    "WarmStartOut",
    "WARM_START_ATTR",
    "best_feasible",
    "check_compatible",
    "constraints_func",
    "csv_lines",
    "disk_usage",
    "download_model",
    "model_of",
    "enqueue_configs",
    "enqueue_reference",
    "fill_config",
    "gap_constraint",
    "importance",
    "is_feasible",
    "is_reference",
    "json_chunks",
    "make_artifact_store",
    "margin",
    "margin_from_trials",
    "StudyFeatures",
    "TrialRow",
    "record_gap_constraint",
    "remove_study_artifacts",
    "reference_config",
    "search_bounds",
    "store_model",
    "trial_params",
    "trial_row",
    "trial_rows",
    "warm_start_trials",
]
