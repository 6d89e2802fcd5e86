"""``/v1/studies``: submit, list, inspect, stop and delete studies; read trials and the best config."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy.orm import Session

from service import studies
from service.confirmation import best_fields
from service.api.deps import SessionDep, SessionFactoryDep, SettingsDep, StorageDep
from service.models import SearchStudy, as_utc
from service.schemas import BestConfigOut, StudyList, StudyOut, StudySpec, TrialList

router = APIRouter(prefix="/v1/studies", tags=["studies"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=StudyOut,
    summary="Submit a study",
    responses={
        200: {"description": "An identical study with this name already exists: it is returned unchanged.", "model": StudyOut},
        409: {"description": "A study with this name exists with a different spec."},
        422: {"description": "Invalid spec: the error names the field and the reason."},
    },
)
def submit_study(
    spec: StudySpec, response: Response, settings: SettingsDep, factory: SessionFactoryDep, storage: StorageDep
) -> StudyOut:
    """Create a study; workers pick it up. Re-POSTing the same spec is safe (200 with the existing study)."""
    if spec.n_trials > settings.max_trials:
        raise RequestValidationError(
            [
                {
                    "type": "less_than_equal",
                    "loc": ("body", "n_trials"),
                    "msg": f"n_trials must be at most {settings.max_trials} (the server's REGSEARCH_MAX_TRIALS)",
                    "input": spec.n_trials,
                }
            ]
        )
    try:
        row, created = studies.submit_study(factory, storage, spec)
    except studies.StudyConflict as error:
        raise HTTPException(status.HTTP_409_CONFLICT, str(error)) from None
    if not created:
        response.status_code = status.HTTP_200_OK
    with factory() as session:
        return studies.study_out(session, row)


@router.get("", response_model=StudyList, summary="List studies")
def list_studies(session: SessionDep) -> StudyList:
    return StudyList(studies=[studies.study_out(session, row) for row in studies.list_studies(session)])


@router.get("/{name}", response_model=StudyOut, summary="A study's status, trial counts and best so far")
def get_study(name: str, session: SessionDep) -> StudyOut:
    return studies.study_out(session, studies.get_study(session, name))


@router.get("/{name}/trials", response_model=TrialList, summary="Every trial: params, per-epoch values, state, gap, durations")
def list_trials(name: str, session: SessionDep, storage: StorageDep) -> TrialList:
    return studies.trials_out(session, storage, name)


def best_config(row: SearchStudy, session: Session) -> BestConfigOut | None:
    """The study's recipe and its best regularization so far (with its mean, interval, ties and robust
    ranges; ``confirmed`` false while confirmation runs), or None before any trial completes."""
    record = studies.best_record(session, row.id)
    if record is None:
        return None
    spec = StudySpec.model_validate(row.spec)
    return BestConfigOut(
        **spec.recipe().model_dump(),
        **best_fields(record.summary),
        params=record.params,
        study=row.name,
        trial_number=record.trial_number,
        value=record.value,
        metric="val_accuracy",
        train_size=record.train_size,
        best_since=as_utc(record.created_at),
    )


@router.get(
    "/{name}/best",
    response_model=BestConfigOut,
    summary="The best config so far",
    responses={
        404: {"description": "Unknown study, or no trial has completed yet."},
        200: {"content": {"text/x-python": {}}, "description": "format=python returns a Python snippet."},
    },
)
def get_best(
    name: str,
    session: SessionDep,
    output_format: Annotated[
        Literal["json", "keras", "python"],
        Query(alias="format", description="json: the best-config JSON; keras: Keras layer arguments; python: a snippet"),
    ] = "json",
) -> Any:
    row = studies.get_study(session, name)
    best = best_config(row, session)
    if best is None:
        counts = studies.trial_counts(session, name)
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"study {name!r} has no completed trial yet (status {row.status}, "
            f"{counts.complete + counts.pruned} of {row.n_trials} trials finished, {counts.running} running); "
            "the best config appears when the first trial completes",
        )
    if output_format == "json":
        return best
    try:
        from trainer._export import keras_settings, python_snippet
    except ImportError:
        raise HTTPException(status.HTTP_501_NOT_IMPLEMENTED, f"format={output_format} is not available in this build") from None
    if output_format == "keras":
        return JSONResponse(keras_settings(best))
    return PlainTextResponse(python_snippet(best), media_type="text/x-python")


@router.post(
    "/{name}/stop",
    response_model=StudyOut,
    summary="Stop a study: no new trials; running ones stop within one epoch",
    responses={409: {"description": "The study already completed or failed."}},
)
def stop_study(name: str, factory: SessionFactoryDep) -> StudyOut:
    try:
        row = studies.stop_study(factory, name)
    except studies.StudyAlreadyEnded as error:
        raise HTTPException(status.HTTP_409_CONFLICT, str(error)) from None
    with factory() as session:
        return studies.study_out(session, row)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete a study, its trials and its Optuna study")
def delete_study(name: str, factory: SessionFactoryDep, storage: StorageDep) -> Response:
    studies.delete_study(factory, storage, name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
