"""A study's stages: the search, then (``confirm.top_k > 0``) the confirmation stage, then completed.

The search ends when its ``n_trials`` have finished, or earlier (:func:`check_search`, one decision for
every worker): a budget ran out (``max_runtime_s``: wall-clock from the first trial's start;
``max_trial_hours``: the summed durations of its search trials), or a ``stop_when`` rule held (``target``
reached by a search trial, ``no_improvement_trials`` finished in a row without a better best). Workers
check the budgets before each claim and after each epoch, and the rules after each finished trial;
:func:`service.coordination.end_search` records the first reason, no search trial starts after it, and
the trials that run end at their current epoch (pruned, their epochs kept). The confirmation stage's own
cost is bounded by ``confirm.max_hours`` (:func:`check_confirmation`).

:func:`advance` is called after every finished trial and by every sweep; whichever worker gets
there first moves the study on (each move is one conditional UPDATE, so only one worker makes it):

1. **running -> confirming** once the search's ``n_trials`` search trials have finished and none
   runs (:func:`service.coordination.begin_confirmation`). The winner enqueues the plan of
   :func:`service.confirmation.confirmation_plan` (``study.enqueue_trial`` with the user attributes
   ``stage="confirm"``, ``confirms``, ``repeat`` and ``seed``), then opens its slots
   (:func:`service.coordination.open_confirmation`: ``confirm_trials = len(plan)``). Until then no
   worker can claim a slot, so nobody asks Optuna for a trial while the plan is half enqueued. A
   winner that dies half-way leaves ``confirm_trials`` at 0; once the study has been quiet for the
   grace period one sweeper takes over (:func:`service.coordination.resume_confirmation`) and enqueues
   only what is missing (:func:`service.confirmation.missing_items`).
2. **confirming -> completed** once no trial runs or waits (every repeat finished, or failed out of
   its retries): :func:`service.coordination.complete_if_done`.

With confirmation off, the search ends the study as before.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import optuna
from sqlalchemy.orm import Session, sessionmaker

from service import _rdb, coordination
from service.confirmation import confirmation_plan, is_confirmation, missing_items
from service.models import SearchEnd, SearchStudy, StudyStatus, TrialStage, as_utc, utc_now
from service.schemas import StopWhen, StudySpec, Usage
from service.trials import is_feasible, is_search_trial

__all__ = ["advance", "budget_spent", "check_confirmation", "check_search", "stop_rule", "usage"]

#: Why a confirmation repeat was dropped unrun (its stage's ``confirm.max_hours`` was spent).
CONFIRM_BUDGET = "confirm-budget"

log = logging.getLogger(__name__)


def advance(
    factory: sessionmaker[Session], study: optuna.Study, row: SearchStudy, spec: StudySpec, grace_period_s: float,
    *, check_budget: bool = True,
) -> bool:
    """Move the study to its next stage if it is due; return True once it has completed (by this call).
    ``check_budget``: check the confirmation's budget first (False where the caller just did)."""
    if check_budget:
        check_confirmation(factory, _rdb.storage_of(study), row, spec)
    if coordination.complete_if_done(factory, row.id, row.name, row.n_trials, confirm=spec.confirm.enabled):
        return True
    if not spec.confirm.enabled:
        return False
    # ``row`` may be a little stale: it only saves the UPDATEs that cannot apply; each still decides.
    if row.status != StudyStatus.CONFIRMING and coordination.begin_confirmation(factory, row.id, row.name):
        log.info("study %s: search done; confirming the top %d configs", row.name, spec.confirm.top_k)
    elif not (row.status == StudyStatus.CONFIRMING and not row.confirm_trials
              and coordination.resume_confirmation(factory, row.id, grace_period_s)):
        return False
    planned = enqueue_plan(study, spec)
    coordination.open_confirmation(factory, row.id, row.name, planned)
    if not planned:
        log.info("study %s: nothing (more) to confirm", row.name)
    return not planned


def enqueue_plan(study: optuna.Study, spec: StudySpec) -> int:
    """Enqueue the items of the confirmation plan not yet in the study; return the repeats now waiting to run
    (the plan's size, but for the repeats an earlier plan ran already when a resumed search confirms again)."""
    trials = study.get_trials(deepcopy=False)
    search = [trial for trial in trials if is_search_trial(trial)]
    plan = confirmation_plan(search, spec.confirm, spec.seed)
    for item in missing_items(plan, trials):
        study.enqueue_trial(item.params, user_attrs=item.user_attrs)
    waiting = optuna.trial.TrialState.WAITING
    return sum(1 for trial in study.get_trials(deepcopy=False, states=(waiting,)) if is_confirmation(trial))


# -- budgets and stopping rules ---------------------------------------------------------------------


def usage(session: Session, row: SearchStudy, seconds: Mapping[tuple[str, str], float] | None = None) -> Usage:
    """What the study has spent: runtime from its first trial's start, trial-hours of the search and of the confirmation.
    ``seconds``: :func:`service._rdb.trial_seconds` of several studies, read at once by a caller that lists them
    (read here, for this study alone, otherwise)."""
    seconds = seconds if seconds is not None else _rdb.trial_seconds(session, [row.name])
    started = as_utc(row.started_at)
    runtime = None if started is None else max(0.0, ((as_utc(row.finished_at) or utc_now()) - started).total_seconds())
    return Usage(runtime_s=runtime, trial_hours=seconds.get((row.name, "search"), 0.0) / 3600,
                 confirm_trial_hours=seconds.get((row.name, "confirm"), 0.0) / 3600)


def budget_spent(started_at: Any, max_runtime_s: float | None, max_trial_hours: float | None,
                 search_trial_hours: float) -> SearchEnd | None:
    """The search budget that has run out, or None (no query: the caller read the search's trial-hours, with the
    budgets in :func:`service.coordination.lifecycle`, or from :func:`usage`)."""
    started = as_utc(started_at)
    if started is None:
        return None
    if max_runtime_s is not None and (utc_now() - started).total_seconds() >= max_runtime_s:
        return SearchEnd.MAX_RUNTIME_S
    if max_trial_hours is not None and search_trial_hours >= max_trial_hours:
        return SearchEnd.MAX_TRIAL_HOURS
    return None


def stop_rule(read_trials: Callable[[], Iterable[optuna.trial.FrozenTrial]], rules: StopWhen) -> SearchEnd | None:
    """The ``stop_when`` rule the finished search trials meet, or None. ``read_trials`` is called only when
    ``rules`` has a rule (most studies have none: no read of the study's trials after each of them).

    ``target``: a complete, feasible search trial reached it. ``no_improvement_trials``: that many search trials
    finished (complete or pruned, in the order they finished) since the best value last improved (or since the
    start, with no best yet).
    """
    if rules.target is None and rules.no_improvement_trials is None:
        return None
    finished = sorted(
        (trial for trial in read_trials() if is_search_trial(trial) and trial.state in _FINISHED and trial.datetime_complete),
        key=lambda trial: (trial.datetime_complete, trial.number),
    )
    best, since = -math.inf, 0
    for trial in finished:
        if _counts(trial) and trial.value > best:
            best, since = trial.value, 0
        else:
            since += 1
    if rules.target is not None and best >= rules.target:
        return SearchEnd.TARGET
    if rules.no_improvement_trials is not None and since >= rules.no_improvement_trials:
        return SearchEnd.NO_IMPROVEMENT_TRIALS
    return None


_FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def _counts(trial: optuna.trial.FrozenTrial) -> bool:
    return (trial.state == optuna.trial.TrialState.COMPLETE and trial.value is not None and math.isfinite(trial.value)
            and is_feasible(trial))


def check_search(factory: sessionmaker[Session], row: SearchStudy, state: coordination.Lifecycle | None = None, *,
                 spec: StudySpec | None = None, study: optuna.Study | None = None) -> SearchEnd | None:
    """End the study's search if a budget ran out (``state``: the study's :class:`~service.coordination.Lifecycle`,
    read now unless given) or, with ``spec`` and ``study``, a stopping rule holds; return the reason that ends
    it (None: it goes on, or was no longer searching)."""
    state = state if state is not None else coordination.lifecycle(factory, row.id)
    if state is None or state.search_ended_by is not None or state.status not in (StudyStatus.QUEUED, StudyStatus.RUNNING):
        return None
    reason = budget_spent(state.started_at, state.max_runtime_s, state.max_trial_hours, state.search_trial_hours)
    if reason is None and spec is not None and study is not None:
        reason = stop_rule(lambda: study.get_trials(deepcopy=False), spec.stop_when)
    if reason is not None and coordination.end_search(factory, row.id, reason):
        log.info("study %s: search ended by %s", row.name, reason)
        return reason
    return None


def check_confirmation(factory: sessionmaker[Session], storage: Any, row: SearchStudy, spec: StudySpec) -> bool:
    """Once the confirmation stage has spent ``confirm.max_hours``: drop the repeats not started (failed with
    ``fail_reason`` confirm-budget, never retried) so the study completes when the running ones end. True if spent."""
    if spec.confirm.max_hours is None or row.status != StudyStatus.CONFIRMING or not row.confirm_open:
        return False
    with factory() as session:
        spent = usage(session, row).confirm_trial_hours
        if spent < spec.confirm.max_hours:
            return False
        waiting = _rdb.waiting_trials(session, row.name, where=_rdb.has_stage(TrialStage.CONFIRM))
    engine = factory.kw["bind"]
    for trial_id in waiting:
        if _rdb.take_waiting(engine, trial_id) and _rdb.claim_settlement(factory, trial_id, CONFIRM_BUDGET):
            storage.set_trial_user_attr(trial_id, "fail_reason", CONFIRM_BUDGET)
            storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
    if waiting:
        log.info("study %s: confirmation budget spent (%.3f h); %d repeat(s) dropped", row.name, spent, len(waiting))
    return True
