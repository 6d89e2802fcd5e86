"""``/v1/studies``: submit, list, inspect, stop and delete studies; read trials and the best config."""

from __future__ import annotations

import shutil
import tempfile
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, PlainTextResponse, StreamingResponse
from fastapi.routing import APIRoute
from starlette.background import BackgroundTask

from service import features, owners, studies, views
from service.api.limits import check_server_limits
from service.api.deps import (
    ArtifactStoreDep,
    ImportanceCacheDep,
    MethodAccess,
    SessionDep,
    SessionFactoryDep,
    SettingsDep,
    StorageDep,
    require_admin,
)
from service.features import EXPORT_COLUMNS_TEXT, ImportanceOut, TrialRow
from service.api.hardening import ErrorOut, owner_only
from service.schemas import SLUG_PATTERN, BestConfigOut, KerasSettingsOut, StudyList, StudyOut, StudyPatch, StudySpec, TrialList

router = APIRouter(prefix="/v1/studies", tags=["studies"])

#: ``?owner=``: the listings of one owner's studies (``regsearch studies --mine`` sends its token's owner).
OwnerFilter = Annotated[str | None, Query(description="Only this owner's studies.", pattern=SLUG_PATTERN.pattern,
                                          max_length=64)]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=StudyOut,
    summary="Submit a study",
    responses={
        200: {"description": "An identical study with this name already exists: it is returned unchanged.", "model": StudyOut},
        409: {"description": "A study with this name exists with a different spec, or is in the trash (see ?replace)."},
        422: {"description": "Invalid spec: the error names the field and the reason."},
        **owner_only("replace"),
    },
)
def submit_study(
    spec: StudySpec, response: Response, settings: SettingsDep, factory: SessionFactoryDep, storage: StorageDep,
    store: ArtifactStoreDep, cache: ImportanceCacheDep, token: MethodAccess,
    replace: Annotated[bool, Query(description="Delete for good a study of this name (live with another spec, or in "
                                               "the trash) and create this one in its place; only its owner or an "
                                               "admin may.")] = False,
) -> StudyOut:
    """Create a study, owned by the owner of the caller's token; workers pick it up. Re-POSTing the same spec is
    safe (200 with the existing study)."""
    check_server_limits(spec, settings)  # n_trials and train_size within this server's limits (422)
    studies.purge_expired(factory, storage, store, settings.trash_days)  # frees the names of expired studies
    if replace:
        owners.require_owner(factory, token, spec.name, "replace")
    try:
        row, created = studies.submit_study(factory, storage, spec, replace=replace, artifact_store=store,
                                            owner=owners.caller_owner(token))
    except studies.StudyConflict as error:
        raise HTTPException(status.HTTP_409_CONFLICT, str(error)) from None
    except features.IncompatibleStudy as error:
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("body", "warm_start_from"), "msg": str(error).removeprefix("warm_start_from: "),
              "input": spec.warm_start_from}]
        ) from None
    if created:  # the name starts afresh (the old study replaced, or purged from the trash by anyone, workers included)
        cache.forget(spec.name)
    else:
        response.status_code = status.HTTP_200_OK
    with factory() as session:
        return views.study_out(session, row, spec)


@router.get("", response_model=StudyList, summary="List studies (every owner's, or one owner's)")
def list_studies(session: SessionDep, owner: OwnerFilter = None) -> StudyList:
    return StudyList(studies=views.studies_out(session, studies.list_studies(session, owner)))


@router.get("/{name}", response_model=StudyOut, summary="A study's status, trial counts and best so far")
def get_study(name: str, session: SessionDep) -> StudyOut:
    return views.study_out(session, studies.get_study(session, name))


@router.get(
    "/{name}/trials",
    response_model=TrialList | list[TrialRow],
    summary="Every trial: params, per-epoch values, state, gap, durations",
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}},
                     "description": "Without format: the TrialList. With format=csv|json: one flat row per trial, streamed."}},
)
def list_trials(
    name: str,
    session: SessionDep,
    storage: StorageDep,
    output_format: Annotated[
        Literal["csv", "json"] | None,
        Query(alias="format", description=f"Flat rows, streamed, with the columns {EXPORT_COLUMNS_TEXT}: csv, or "
              "json (an array of row objects). Without it: the nested TrialList."),
    ] = None,
) -> Any:
    if output_format is None:
        return views.trials_out(session, storage, name)
    chunks = views.export_lines(session, storage, name, output_format)
    if output_format == "csv":
        return StreamingResponse(chunks, media_type="text/csv",
                                 headers={"Content-Disposition": f'attachment; filename="{name}-trials.csv"'})
    return StreamingResponse(chunks, media_type="application/json")


# -- issue 11: importance and the best trial's model --
@router.get(
    "/{name}/importance",
    response_model=ImportanceOut,
    summary="Each parameter's importance (PED-ANOVA, or fANOVA), cached per trial count",
    responses={409: {"description": f"Fewer than {features.MIN_TRIALS} complete trials to rest on."}},
)
async def get_importance(
    name: str,
    factory: SessionFactoryDep,
    storage: StorageDep,
    cache: ImportanceCacheDep,
    evaluator: Annotated[
        Literal[features.EVALUATORS],  # type: ignore[valid-type]
        Query(description="ped-anova (Optuna's default evaluator) or fanova."),
    ] = "ped-anova",
) -> ImportanceOut:
    try:
        return await run_in_threadpool(views.importance_out, factory, storage, cache, name, evaluator)
    except features.TooFewTrials as error:
        raise HTTPException(status.HTTP_409_CONFLICT, str(error)) from None


@router.get(
    "/{name}/best/model",
    response_class=FileResponse,
    summary="The best config's trained model as a loadable .keras file",
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "The .keras file; X-Regsearch-Disk-Bytes: the study's artifacts."},
        404: {"description": "Unknown study, or no model stored yet."},
    },
)
def get_best_model(name: str, session: SessionDep, storage: StorageDep, store: ArtifactStoreDep) -> FileResponse:
    directory = tempfile.mkdtemp(prefix="regsearch-download-")
    try:
        path, record, usage = views.best_model_file(session, storage, store, name, directory)
    except features.NoBestModel as error:
        shutil.rmtree(directory, ignore_errors=True)
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{error}; a model is stored when a feasible trial becomes the best") from None
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=f"{name}-trial{record.trial_number}.keras",
        headers={"X-Regsearch-Trial": str(record.trial_number), "X-Regsearch-Disk-Bytes": str(usage["bytes"])},
        background=BackgroundTask(shutil.rmtree, directory, ignore_errors=True),
    )


@router.get(
    "/{name}/best",
    response_model=BestConfigOut | KerasSettingsOut,
    summary="The best config so far",
    responses={
        404: {"description": "Unknown study, or no trial has completed yet."},
        200: {"content": {"text/x-python": {"schema": {"type": "string"}}},
              "description": "format=json: BestConfigOut; format=keras: KerasSettingsOut; format=python: a Python snippet."},
        501: {"model": ErrorOut, "description": "This build of the server cannot render format=keras or python."},
    },
)
def get_best(
    name: str,
    session: SessionDep,
    settings: SettingsDep,
    output_format: Annotated[
        Literal["json", "keras", "python"],
        Query(alias="format", description="json: the best-config JSON; keras: Keras layer arguments; python: a snippet"),
    ] = "json",
) -> Any:
    row = studies.get_study(session, name)
    best = views.best_config(session, row, data_dir=settings.data_dir)  # this server's workers' data: retrain finds it
    if best is None:
        counts = views.trial_counts(session, name)
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
        return KerasSettingsOut.model_validate(keras_settings(best))
    return PlainTextResponse(python_snippet(best), media_type="text/x-python")


@router.post(
    "/{name}/stop",
    response_model=StudyOut,
    summary="Stop a study: no new trials; running ones stop within one epoch",
    responses={409: {"description": "The study already completed or failed."}, **owner_only("stop")},
)
def stop_study(name: str, factory: SessionFactoryDep, token: MethodAccess) -> StudyOut:
    owners.require_owner(factory, token, name, "stop")
    try:
        row = studies.stop_study(factory, name)
    except studies.StudyAlreadyEnded as error:
        raise HTTPException(status.HTTP_409_CONFLICT, str(error)) from None
    with factory() as session:
        return views.study_out(session, row)


@router.patch(
    "/{name}",
    response_model=StudyOut,
    summary="Change a study's n_trials and budgets; a completed study resumes its search, then confirms again",
    responses={
        **owner_only("change"),
        409: {"description": "The study was stopped or failed, or the edit would resume a search whose budget is spent."},
        422: {"description": "A field that cannot change (every one but n_trials, max_runtime_s, max_trial_hours), or a bad value."},
    },
)
def edit_study(name: str, patch: StudyPatch, settings: SettingsDep, factory: SessionFactoryDep, token: MethodAccess) -> StudyOut:
    """Raise or lower ``n_trials``, ``max_runtime_s`` and ``max_trial_hours`` of a queued, running, confirming or
    completed study (null removes a budget); the rules are :func:`service.studies.edit_study`'s."""
    check_server_limits(patch, settings)
    owners.require_owner(factory, token, name, "change")
    try:
        row = studies.edit_study(factory, name, patch.model_dump(include=patch.model_fields_set))
    except (studies.StudyNotEditable, studies.BudgetSpent) as error:
        raise HTTPException(status.HTTP_409_CONFLICT, str(error)) from None
    with factory() as session:
        return views.study_out(session, row)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, responses=owner_only("delete"),
               summary="Move a study to the trash: hidden, stopped if active, restorable until purged")
def delete_study(name: str, settings: SettingsDep, factory: SessionFactoryDep, storage: StorageDep, store: ArtifactStoreDep,
                 token: MethodAccess) -> Response:
    owners.require_owner(factory, token, name, "delete")
    studies.delete_study(factory, name)
    studies.purge_expired(factory, storage, store, settings.trash_days)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


trash = APIRouter(prefix="/v1/trash", tags=["trash"])


@trash.get("", response_model=StudyList, summary="The deleted studies still in the trash, most recently deleted first")
def list_trash(settings: SettingsDep, factory: SessionFactoryDep, storage: StorageDep, store: ArtifactStoreDep,
               owner: OwnerFilter = None) -> StudyList:
    studies.purge_expired(factory, storage, store, settings.trash_days)
    with factory() as session:
        return StudyList(studies=views.studies_out(session, studies.list_trash(session, owner)))


@trash.post("/{name}/restore", response_model=StudyOut, responses=owner_only("restore"),
            summary="Bring a study back from the trash, whole")
def restore_study(name: str, factory: SessionFactoryDep, token: MethodAccess) -> StudyOut:
    owners.require_owner(factory, token, name, "restore")
    row = studies.restore_study(factory, name)
    with factory() as session:
        return views.study_out(session, row)


@trash.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, dependencies=[Depends(require_admin)],
              summary="Purge a study from the trash for good (admin): trials, best-config history, models")
def purge_study(name: str, factory: SessionFactoryDep, storage: StorageDep, store: ArtifactStoreDep,
                cache: ImportanceCacheDep) -> Response:
    studies.purge_study(factory, storage, name, store)
    cache.forget(name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


#: The operations that answer as soon as a POST created the study (best and best/model answer 404 until a
#: trial completes, by design), published as OpenAPI links of the POST's 200 and 201 answers.
LINKED_FROM_SUBMIT = (get_study, list_trials, get_importance, edit_study, stop_study, delete_study)


def publish_links(app: FastAPI) -> None:
    """Add :data:`LINKED_FROM_SUBMIT` to the OpenAPI schema as links of ``POST /v1/studies`` (what the
    stateful schema test follows)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        ids = {route.endpoint: schema["paths"][route.path][method.lower()]["operationId"]
               for route in router.routes if isinstance(route, APIRoute) for method in route.methods}
        links = {endpoint.__name__: {"operationId": ids[endpoint], "parameters": {"name": "$response.body#/name"}}
                 for endpoint in LINKED_FROM_SUBMIT}
        for code in ("200", "201"):
            schema["paths"]["/v1/studies"]["post"]["responses"][code]["links"] = links
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
