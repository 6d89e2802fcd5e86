"""The trained models of the top configs, kept as Optuna artifacts; the study's best config's is served.

The store is Optuna's own: ``optuna.artifacts.FileSystemArtifactStore`` under a directory by
default, ``optuna.artifacts.Boto3ArtifactStore`` for an ``s3://bucket/prefix`` URL (any
S3-compatible service: boto3 reads ``AWS_ENDPOINT_URL`` and the usual credentials; install
``regsearch[s3]``). Uploads go through ``optuna.artifacts.upload_artifact``, so the dashboard lists
the file under its trial, and downloads through ``optuna.artifacts.download_artifact``.

Which models are kept (:func:`kept_models`, from the study's ``confirm`` spec): those of the ``top_k``
best distinct configs by value (1 without confirmation), and the reference's when confirmation is on
(the reference is confirmed too).
These are exactly the configs the best can be once the confirmation stage has ranked them by their
mean, so ``GET .../best/model`` always serves a model trained with the config ``GET .../best``
names (:func:`model_of` its trial). A worker calls :func:`store_model` in the objective once the
trial's value is known (Optuna attaches artifacts to running trials only): it uploads only when the
trial ranks among the kept configs, records the file in the trial's system attribute
:data:`MODEL_ATTR`, then removes the files of finished trials that no longer rank, so old models
never pile up. (Their metadata stays in the old trials' system attributes, which Optuna cannot
delete; the files are gone.) :func:`disk_usage` says what the study's model files take.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import optuna
from optuna.artifacts import Boto3ArtifactStore, FileSystemArtifactStore, download_artifact, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial, TrialState

from service._rdb import ARTIFACTS_ATTR_PREFIX, artifact_path, storage_of, study_id, trial_id
from service.confirmation import ConfirmSpec, top_configs
from service.features._reference import is_reference
from service.features._schemas import ModelInfoOut

__all__ = [
    "MODEL_ATTR",
    "MODEL_FILENAME",
    "ModelInfoOut",
    "NoBestModel",
    "PrefixedArtifactStore",
    "disk_usage",
    "download_model",
    "kept_models",
    "make_artifact_store",
    "model_of",
    "remove_study_artifacts",
    "store_model",
]

#: The trial system attribute naming the trial's stored model (a :class:`ModelInfoOut` as a dict).
MODEL_ATTR = "regsearch:model"
#: The uploaded file's name (what the dashboard shows and ``Content-Disposition`` suggests).
MODEL_FILENAME = "model.keras"


class NoBestModel(LookupError):
    """The best config has no stored model (no complete trial yet, or it was never uploaded): a 404."""


class PrefixedArtifactStore:
    """An artifact store whose ids live under ``prefix/`` of another store (an S3 key prefix)."""

    def __init__(self, store: Any, prefix: str) -> None:
        self.store, self.prefix = store, prefix.strip("/")

    def _key(self, artifact_id: str) -> str:
        return f"{self.prefix}/{artifact_id}" if self.prefix else artifact_id

    def open_reader(self, artifact_id: str):
        return self.store.open_reader(self._key(artifact_id))

    def write(self, artifact_id: str, content_body) -> None:
        self.store.write(self._key(artifact_id), content_body)

    def remove(self, artifact_id: str) -> None:
        self.store.remove(self._key(artifact_id))


def make_artifact_store(url: str | os.PathLike | None, *, default_dir: str | os.PathLike = "regsearch-artifacts") -> Any:
    """The artifact store a setting names: ``s3://bucket[/prefix]``, ``file:///dir``, a directory path, or None (``default_dir``).

    A directory is created if missing. ``ValueError`` for another URL scheme or an S3 URL without a bucket.
    """
    text = str(url) if url is not None else ""
    parsed = urlparse(text)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"artifact URL {text!r} names no bucket (expected s3://bucket/prefix)")
        store = Boto3ArtifactStore(parsed.netloc)  # ImportError names boto3 when it is missing
        return PrefixedArtifactStore(store, parsed.path) if parsed.path.strip("/") else store
    if parsed.scheme in ("", "file"):
        directory = Path(parsed.path if parsed.scheme == "file" else (text or default_dir))
        directory.mkdir(parents=True, exist_ok=True)
        return FileSystemArtifactStore(directory)
    raise ValueError(f"artifact URL {text!r}: expected s3://bucket/prefix, file:///path or a directory")


def model_of(study: optuna.Study, trial_number: int) -> ModelInfoOut | None:
    """The model stored for the study's trial ``trial_number``, or None."""
    storage = storage_of(study)
    try:
        key = storage.get_trial_id_from_study_id_trial_number(study_id(study), trial_number)
    except KeyError:
        return None
    record = storage.get_trial_system_attrs(key).get(MODEL_ATTR)
    return ModelInfoOut.model_validate(record) if record else None


def _model_artifacts(study: optuna.Study) -> dict[str, tuple[int, dict[str, Any]]]:
    """``{artifact_id: (trial_number, meta)}`` for every model file uploaded to the study's trials."""
    found = {}
    for trial in study.get_trials(deepcopy=False):
        for key, value in trial.system_attrs.items():
            if key.startswith(ARTIFACTS_ATTR_PREFIX):
                meta = json.loads(value)
                if meta.get("filename") == MODEL_FILENAME:
                    found[meta["artifact_id"]] = (trial.number, meta)
    return found


def _remove(store: Any, artifact_id: str) -> None:
    try:
        store.remove(artifact_id)
    except ArtifactNotFound:
        pass


def _keep(confirm: ConfirmSpec | None) -> tuple[int, bool]:
    """How many of the best distinct configs keep their model, and whether the reference does."""
    return (max(1, confirm.top_k), confirm.enabled) if confirm is not None else (1, False)


def kept_models(trials: list[FrozenTrial], confirm: ConfirmSpec | None = None) -> set[int]:
    """Numbers of the finished trials whose models are kept: the configs the best can become once the
    confirmation stage (``confirm``, None: none) has ranked them, i.e. the ``top_k`` best distinct configs
    (1 without confirmation) and the reference, which is confirmed too."""
    keep, keep_reference = _keep(confirm)
    kept = {trial.number for trial in top_configs(trials, keep)}
    if keep_reference:
        kept |= {trial.number for trial in trials if is_reference(trial)}
    return kept


def _ranked_view(study: optuna.Study, number: int | None = None, value: float | None = None) -> list[FrozenTrial]:
    """The study's trials as :func:`kept_models` ranks them while trials still run: a running trial that stored
    a model (and trial ``number``, about to store one with ``value``) counts as complete with its value.

    One ranking for the running and the finished, and :func:`top_configs`'s rule for ties (the lower trial
    number first), the rule that names the best: of two tied trials finishing concurrently, in any order,
    the lower-numbered keeps its model and the other's goes (or is never uploaded).
    """
    view = []
    for other in study.get_trials(deepcopy=False):
        record = other.system_attrs.get(MODEL_ATTR)
        if not other.state.is_finished() and (other.number == number or record):
            other = copy.deepcopy(other)
            other.state = TrialState.COMPLETE
            other.value = value if other.number == number else float(record["value"])
        view.append(other)
    return view


def store_model(
    study: optuna.Study, trial: Any, value: float, model_or_result: Any, store: Any, confirm: ConfirmSpec | None = None
) -> ModelInfoOut | None:
    """If the trial ranks among the configs whose models are kept, upload its model; then remove the files
    of finished trials that no longer rank.

    Call from the objective, once the trial's final value is known and it is feasible, *before*
    returning it: ``upload_artifact`` attaches the file to the trial (listed under it in the
    dashboard), which Optuna allows only while the trial runs. ``trial``: the running
    ``optuna.Trial``; ``confirm``: the study's confirmation spec (:func:`kept_models`).
    Returns the new record, or None when the trial does not rank (nothing uploaded, or its upload removed
    again because better ones were stored meanwhile).
    ``model_or_result``: a Keras model or a :class:`trainer.TrainResult`.
    """
    from trainer._keras_file import save_keras_model

    if trial.number not in kept_models(_ranked_view(study, trial.number, float(value)), confirm):
        return None
    storage = storage_of(study)
    with tempfile.TemporaryDirectory(prefix="regsearch-model-") as directory:
        path = save_keras_model(model_or_result, Path(directory) / MODEL_FILENAME)
        size = path.stat().st_size
        artifact_id = upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial, storage=storage)
    record = ModelInfoOut(artifact_id=artifact_id, trial_number=trial.number, value=float(value), size_bytes=size,
                          filename=MODEL_FILENAME)
    storage.set_trial_system_attr(trial_id(trial), MODEL_ATTR, record.model_dump())
    # Ranked again now that this record is visible to the others: a displaced config loses its file, and this
    # trial's own upload goes again if a better one was stored meanwhile by another worker.
    ranked_trials = _ranked_view(study)
    kept = kept_models(ranked_trials, confirm)
    for other in ranked_trials:
        other_record = other.system_attrs.get(MODEL_ATTR)
        if other_record and other.number not in kept:
            _remove(store, other_record["artifact_id"])
    return record if trial.number in kept else None


def download_model(study: optuna.Study, store: Any, trial_number: int, file_path: str | os.PathLike) -> ModelInfoOut:
    """Write the model of trial ``trial_number`` (the best config's) to ``file_path`` (which must not exist);
    ``NoBestModel`` if none is stored."""
    record = model_of(study, trial_number)
    if record is None:
        raise NoBestModel(f"study {study.study_name!r}: no model is stored for the best config (trial {trial_number})")
    try:
        download_artifact(artifact_store=store, file_path=str(file_path), artifact_id=record.artifact_id)
    except ArtifactNotFound as error:
        raise NoBestModel(f"study {study.study_name!r}: the best model's file is missing from the artifact store") from error
    return record


def disk_usage(study: optuna.Study, store: Any, confirm: ConfirmSpec | None = None) -> dict[str, int]:
    """``{"artifacts": n, "bytes": total}`` of the study's model files still in the store.

    Sizes are read from the filesystem when the store is one; otherwise the recorded sizes of the
    models that :func:`store_model` keeps for the same ``confirm`` are added up.
    """
    if isinstance(store, FileSystemArtifactStore):
        sizes = []
        for artifact_id in _model_artifacts(study):
            path = artifact_path(store, artifact_id)
            if path.exists():
                sizes.append(path.stat().st_size)
        return {"artifacts": len(sizes), "bytes": int(sum(sizes))}
    trials = study.get_trials(deepcopy=False)
    kept = kept_models(trials, confirm)
    records = [trial.system_attrs[MODEL_ATTR] for trial in trials
               if MODEL_ATTR in trial.system_attrs and (trial.number in kept or not trial.state.is_finished())]
    return {"artifacts": len(records), "bytes": int(sum(record["size_bytes"] for record in records))}


def remove_study_artifacts(study: optuna.Study, store: Any) -> int:
    """Remove every artifact file uploaded to the study or its trials (before deleting the study); return how many."""
    ids = set()
    attrs = [storage_of(study).get_study_system_attrs(study_id(study))]
    attrs += [trial.system_attrs for trial in study.get_trials(deepcopy=False)]
    for system_attrs in attrs:
        for key, value in system_attrs.items():
            if key.startswith(ARTIFACTS_ATTR_PREFIX):
                ids.add(json.loads(value)["artifact_id"])
    for artifact_id in ids:
        _remove(store, artifact_id)
    return len(ids)
