"""The best trial's trained model, kept as an Optuna artifact (one per study: the current best's).

The store is Optuna's own: ``optuna.artifacts.FileSystemArtifactStore`` under a directory by
default, ``optuna.artifacts.Boto3ArtifactStore`` for an ``s3://bucket/prefix`` URL (any
S3-compatible service: boto3 reads ``AWS_ENDPOINT_URL`` and the usual credentials; install
``regsearch[s3]``). Uploads go through ``optuna.artifacts.upload_artifact``, so the dashboard lists
the file under its trial, and downloads through ``optuna.artifacts.download_artifact``.

Which artifact is the study's model is recorded once, in the study's system attribute
:data:`BEST_MODEL_ATTR` (``{"artifact_id", "trial_number", "value", "size_bytes", "filename"}``).
A worker calls :func:`store_best_model` in the objective once the trial's value is known (Optuna
attaches artifacts to running trials only); it uploads only when the value beats the stored
model's, points the attribute at the new file (unless a better trial got there first, in which case
the upload is removed again), then removes every other model file of the study, so old bests never
pile up. (Their metadata stays in the old trials' system attributes, which Optuna cannot delete;
the files are gone.) :func:`disk_usage` says what the study's artifacts take.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import optuna
from optuna.artifacts import Boto3ArtifactStore, FileSystemArtifactStore, download_artifact, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound

__all__ = [
    "BEST_MODEL_ATTR",
    "MODEL_FILENAME",
    "BestModel",
    "NoBestModel",
    "PrefixedArtifactStore",
    "best_model",
    "disk_usage",
    "download_best_model",
    "make_artifact_store",
    "remove_study_artifacts",
    "store_best_model",
]

#: The study system attribute naming the current best model's artifact.
BEST_MODEL_ATTR = "regsearch:best_model"
#: The uploaded file's name (what the dashboard shows and ``Content-Disposition`` suggests).
MODEL_FILENAME = "model.keras"
_ARTIFACT_PREFIX = "artifacts:"  # optuna.artifacts._upload.ARTIFACTS_ATTR_PREFIX


class NoBestModel(LookupError):
    """The study has no stored model (no complete trial yet, or it was never uploaded): a 404."""


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


@dataclasses.dataclass(frozen=True)
class BestModel:
    artifact_id: str
    trial_number: int
    value: float
    size_bytes: int
    filename: str = MODEL_FILENAME

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def best_model(study: optuna.Study) -> BestModel | None:
    """The study's current best-model record, or None."""
    record = study._storage.get_study_system_attrs(study._study_id).get(BEST_MODEL_ATTR)
    return BestModel(**record) if record else None


def _model_artifacts(study: optuna.Study) -> dict[str, tuple[int, dict[str, Any]]]:
    """``{artifact_id: (trial_number, meta)}`` for every model file uploaded to the study's trials."""
    found = {}
    for trial in study.get_trials(deepcopy=False):
        for key, value in trial.system_attrs.items():
            if key.startswith(_ARTIFACT_PREFIX):
                meta = json.loads(value)
                if meta.get("filename") == MODEL_FILENAME:
                    found[meta["artifact_id"]] = (trial.number, meta)
    return found


def _remove(store: Any, artifact_id: str) -> None:
    try:
        store.remove(artifact_id)
    except ArtifactNotFound:
        pass


def store_best_model(study: optuna.Study, trial: Any, value: float, model_or_result: Any, store: Any) -> BestModel | None:
    """If ``value`` beats the stored best model's, upload the trial's model and remove the study's other ones.

    Call from the objective, once the trial's final value is known and it is feasible, *before*
    returning it: ``upload_artifact`` attaches the file to the trial (listed under it in the
    dashboard), which Optuna allows only while the trial runs. ``trial``: the running
    ``optuna.Trial``. Returns the new record, or None when the study already holds a model at
    least as good (nothing uploaded), or when a better one was stored meanwhile by another worker
    (the upload is removed again). ``model_or_result``: a Keras model or a
    :class:`trainer.TrainResult`.
    """
    from trainer._keras_file import save_keras_model

    if not _beats(study, float(value), best_model(study)):
        return None
    storage = study._storage
    with tempfile.TemporaryDirectory(prefix="regsearch-model-") as directory:
        path = save_keras_model(model_or_result, Path(directory) / MODEL_FILENAME)
        size = path.stat().st_size
        artifact_id = upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial, storage=storage)
    record = BestModel(artifact_id=artifact_id, trial_number=trial.number, value=float(value), size_bytes=size)
    if not _beats(study, record.value, best_model(study)):  # another worker stored a better one meanwhile
        _remove(store, artifact_id)
        return None
    storage.set_study_system_attr(study._study_id, BEST_MODEL_ATTR, record.to_dict())
    for other in _model_artifacts(study):
        if other != artifact_id:
            _remove(store, other)
    return record


def _beats(study: optuna.Study, value: float, current: BestModel | None) -> bool:
    if current is None:
        return True
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return value > current.value if maximize else value < current.value


def download_best_model(study: optuna.Study, store: Any, file_path: str | os.PathLike) -> BestModel:
    """Write the study's best model to ``file_path`` (which must not exist); ``NoBestModel`` if none."""
    record = best_model(study)
    if record is None:
        raise NoBestModel(f"study {study.study_name!r} has no stored model yet")
    try:
        download_artifact(artifact_store=store, file_path=str(file_path), artifact_id=record.artifact_id)
    except ArtifactNotFound as error:
        raise NoBestModel(f"study {study.study_name!r}: the best model's file is missing from the artifact store") from error
    return record


def disk_usage(study: optuna.Study, store: Any) -> dict[str, int]:
    """``{"artifacts": n, "bytes": total}`` of the study's model files still in the store.

    Sizes are read from the filesystem when the store is one; otherwise the recorded size of the
    current best (the only file kept) is reported.
    """
    artifacts = _model_artifacts(study)
    if isinstance(store, FileSystemArtifactStore):
        sizes = []
        for artifact_id in artifacts:
            path = store._get_filepath(artifact_id)
            if path.exists():
                sizes.append(path.stat().st_size)
        return {"artifacts": len(sizes), "bytes": int(sum(sizes))}
    record = best_model(study)
    return {"artifacts": int(record is not None), "bytes": record.size_bytes if record else 0}


def remove_study_artifacts(study: optuna.Study, store: Any) -> int:
    """Remove every artifact file uploaded to the study or its trials (before deleting the study); return how many."""
    ids = set()
    attrs = [study._storage.get_study_system_attrs(study._study_id)]
    attrs += [trial.system_attrs for trial in study.get_trials(deepcopy=False)]
    for system_attrs in attrs:
        for key, value in system_attrs.items():
            if key.startswith(_ARTIFACT_PREFIX):
                ids.add(json.loads(value)["artifact_id"])
    for artifact_id in ids:
        _remove(store, artifact_id)
    return len(ids)
