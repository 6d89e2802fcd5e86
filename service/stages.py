"""A study's stages: the search, then (``confirm.top_k > 0``) the confirmation stage, then completed.

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
import optuna
from sqlalchemy.orm import Session, sessionmaker

from service import coordination
from service.confirmation import confirmation_plan, missing_items
from service.models import SearchStudy, StudyStatus
from service.schemas import StudySpec
from service.trials import is_search_trial

__all__ = ["advance"]

log = logging.getLogger(__name__)


def advance(
    factory: sessionmaker[Session], study: optuna.Study, row: SearchStudy, spec: StudySpec, grace_period_s: float
) -> bool:
    """Move the study to its next stage if it is due; return True once it has completed (by this call)."""
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
    coordination.open_confirmation(factory, row.id, planned)
    if not planned:
        log.warning("study %s: no search trial completed; nothing to confirm", row.name)
    return not planned


def enqueue_plan(study: optuna.Study, spec: StudySpec) -> int:
    """Enqueue the items of the confirmation plan not yet in the study; return the plan's size."""
    trials = study.get_trials(deepcopy=False)
    search = [trial for trial in trials if is_search_trial(trial)]
    plan = confirmation_plan(search, spec.confirm, spec.seed)
    for item in missing_items(plan, trials):
        study.enqueue_trial(item.params, user_attrs=item.user_attrs)
    return len(plan)
