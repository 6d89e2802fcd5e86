"""The dashboard's view of the storage: the search as the service counts it, and the service's answer as the note.

optuna-dashboard reads everything through the Optuna storage it is given (checked in its source, 0.21:
``_storage.get_trials`` -> ``storage.get_all_trials``, the "Best Trial" card -> ``storage.get_best_trial``,
the study page and its note -> ``storage.get_all_studies()[...].system_attrs``, importance -> PED-ANOVA over
the same ``get_all_trials`` list, plots -> ``optuna.load_study(storage=...)``). :class:`ServiceView` wraps
the service's storage for the dashboard alone (the API and the workers use the storage itself):

* **Confirmation repeats are left out.** They re-train the top configs with other seeds; shown as ordinary
  trials they would crowd the history, weigh the best region several times in the importance and put a
  lucky single run in the "Best Trial" card. The dashboard's importance thus rests on the trials the API's
  ``/importance`` uses (every complete trial but the repeats, :mod:`service.features._importance`) with
  the same evaluator (PED-ANOVA).
* **Studies in the trash are not listed** (nor shown: the dashboard finds a study's page through the list).
* **Each study shows its owner**, as the API's study list does: the dashboard's study list shows a study's
  id, name and direction alone, so the owner goes into the name it shows (:func:`listed_name`, e.g.
  ``my-study (owner: alice)``; its "Search study" box then finds an owner's studies), and into the
  study's user attributes (``owner``, on the study's page). Only what the dashboard shows changes: it
  finds studies by id, and its plots and downloads by the name Optuna keeps.
* **"Best Trial" is the service's best**: the trial of ``GET /v1/studies/NAME/best``, its value the mean
  over its runs (the API's ``value``), not the highest single run.
* **The study's note is the service's answer**, derived when the page is read (optuna-dashboard renders
  the note, kept in the study's system attrs ``dashboard:note_ver`` / ``dashboard:note_str:N``, as
  Markdown): the best with its interval, ties, robust ranges and margin over the defaults, and a link to
  the study's report. Derived, not stored, so it can never lag behind the answer and nothing is written
  to Optuna's tables on the service's behalf. Each study's note is computed at most once per
  :data:`NOTE_TTL_S` seconds.

The dashboard is read-only (:mod:`service.api.dashboard`), so every write method simply delegates.
"""

from __future__ import annotations

import copy
import threading
import time
from typing import Any

import sqlalchemy as sa
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from service import _rdb
from service.confirmation import is_confirmation
from service.studies import study_owners, trashed_names

__all__ = ["NOTE_TTL_S", "ServiceView", "listed_name", "note_markdown"]

NOTE_TTL_S = 2.0  # optuna-dashboard itself re-reads a study's trials every 2 s
_NOTE_VER = "dashboard:note_ver"
_NOTE_STR = "dashboard:note_str:"
_NOTE_CHUNK = 2045  # optuna_dashboard._note.SYSTEM_ATTR_MAX_LENGTH


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def listed_name(name: str, owner: str) -> str:
    """A service study's name as the dashboard shows it: with its owner."""
    return f"{name} (owner: {owner})"


def note_markdown(name: str, best: Any, *, status: str, counts: Any, repeats: int) -> str:
    """The study's note: the service's answer (``best``: the API's :class:`BestConfigOut`, or None yet)."""
    lines = ["## regsearch: the service's answer", ""]
    if best is None:
        lines += ["No trial has completed yet: the best config appears here when the first one does.", ""]
    else:
        lines += [f"**Best config: trial {best.trial_number}**, {best.metric} **{best.value:.4f}**"
                  + (f" (the mean of its {best.n} runs)" if best.n and best.n > 1 else " (one run)")
                  + f", best since {best.best_since:%Y-%m-%d %H:%M:%S} UTC.", ""]
        lines += ["| parameter | best | robust range (as good, within noise) |", "|---|---|---|"]
        for parameter, value in best.regularization.to_dict().items():
            span = best.robust_ranges.get(parameter)
            robust = f"{_fmt(span.low)} to {_fmt(span.high)}" if span is not None and span.low != span.high else "-"
            lines.append(f"| {parameter} | {_fmt(value)} | {robust} |")
        lines.append("")
        lines += [f"- {line}" for line in best.uncertainty_lines() if not line.startswith("robust range")]  # in the table
        lines.append(f"- {margin_line(best)}")
    lines.append(f"- Status **{status}**: {counts.complete} complete, {counts.pruned} pruned, {counts.running} running, "
                 f"{counts.failed} failed search trials" + (f"; {repeats} confirmation repeats, kept out of this "
                 "dashboard's history, importance and Best Trial (their runs are in the means above)" if repeats else "") + ".")
    lines += ["", f"[The study's report](/v1/studies/{name}/report) · [best config (JSON)](/v1/studies/{name}/best) · "
              f"[all trials with the repeats](/v1/studies/{name}/trials?format=csv)"]
    return "\n".join(lines) + "\n"


def margin_line(best: Any) -> str:
    """The best against the defaults (the study's reference config), in words that are true."""
    if best.is_reference:
        return "Margin over the defaults: none, the best *is* the defaults (the reference config)."
    margin = best.margin
    if margin is None:
        return "Margin over the defaults: not known (no reference run has completed, or the study has none)."
    text = f"Margin over the defaults: {margin.value:+.4f}"
    if margin.low is not None and margin.high is not None:
        text += f", 95% CI [{margin.low:+.4f}, {margin.high:+.4f}]"
        if margin.low <= 0 <= margin.high:
            text += ": the defaults are as good, within noise"
        elif margin.low > 0:
            text += ": better than the defaults"
    else:
        text += " (single runs: no interval)"
    return text + "."


class ServiceView(BaseStorage):
    """``storage`` as the dashboard should see it (see the module's docstring); ``session_factory`` reads the
    service's tables."""

    def __init__(self, storage: BaseStorage, session_factory: Any) -> None:
        self._storage = storage
        self._factory = session_factory
        self._notes: dict[int, tuple[float, dict[str, Any], tuple[int, float] | None]] = {}
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:  # everything not overridden below: the storage's own
        return getattr(self._storage, name)

    # -- what the dashboard reads ---------------------------------------------------------------------
    def get_all_trials(self, study_id: int, deepcopy: bool = True, states: Any = None) -> list[FrozenTrial]:
        trials = self._storage.get_all_trials(study_id, deepcopy=deepcopy, states=states)
        return [trial for trial in trials if not is_confirmation(trial)]

    def get_n_trials(self, study_id: int, state: Any = None) -> int:
        states = None if state is None else ((state,) if isinstance(state, TrialState) else tuple(state))
        return len(self.get_all_trials(study_id, deepcopy=False, states=states))

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        complete = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.COMPLETE,))
        answer = self._answer(study_id)[1]
        if answer is not None:
            number, value = answer
            for trial in complete:
                if trial.number == number:
                    best = copy.deepcopy(trial)
                    best.value = value  # the mean over its runs, as the API answers
                    return best
        if not complete:
            raise ValueError("no trial is completed yet")
        maximize = self._storage.get_study_directions(study_id)[0].name == "MAXIMIZE"
        return (max if maximize else min)(complete, key=lambda trial: trial.value)

    def get_all_studies(self) -> list[Any]:
        hidden = trashed_names(self._factory)  # the trash is neither listed nor shown, as in the API
        owners = study_owners(self._factory)
        studies = []
        for study in self._storage.get_all_studies():
            if study.study_name in hidden:
                continue
            note = self._answer(_rdb.study_id(study), study.study_name)[0]  # a FrozenStudy keeps it private too
            if note:
                study = copy.copy(study)
                study.system_attrs = {**study.system_attrs, **note}
            owner = owners.get(study.study_name)
            if owner is not None:  # a service study: shown with its owner
                study = copy.copy(study)
                study.user_attrs = {**study.user_attrs, "owner": owner}
                study.study_name = listed_name(study.study_name, owner)
            studies.append(study)
        return studies

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return {**self._storage.get_study_system_attrs(study_id), **self._answer(study_id)[0]}

    # -- the service's answer, per study ----------------------------------------------------------------
    def _answer(self, study_id: int, name: str | None = None) -> tuple[dict[str, Any], tuple[int, float] | None]:
        """``(note system attrs, (best trial number, best value))`` of a service study; ``({}, None)`` otherwise."""
        now = time.monotonic()
        with self._lock:
            cached = self._notes.get(study_id)
        if cached is not None and now - cached[0] < NOTE_TTL_S:
            return cached[1], cached[2]
        note, best = self._compute(study_id, name or self._storage.get_study_name_from_id(study_id))
        with self._lock:
            self._notes[study_id] = (now, note, best)
        return note, best

    def _compute(self, study_id: int, name: str) -> tuple[dict[str, Any], tuple[int, float] | None]:
        from service import views
        from service.models import SearchStudy

        with self._factory() as session:
            row = session.scalar(sa.select(SearchStudy).where(SearchStudy.name == name))
            if row is None:  # not a study of the service: left as Optuna has it
                return {}, None
            best = views.best_config(session, row)
            counts = views.trial_counts(session, name)
            status = row.status
        repeats = sum(is_confirmation(trial) for trial in self._storage.get_all_trials(study_id, deepcopy=False))
        body = note_markdown(name, best, status=status, counts=counts, repeats=repeats)
        previous = self._storage.get_study_system_attrs(study_id).get(_NOTE_VER, 0)
        attrs: dict[str, Any] = {_NOTE_VER: int(previous) + 1}
        for index in range(0, len(body), _NOTE_CHUNK):
            attrs[f"{_NOTE_STR}{index // _NOTE_CHUNK}"] = body[index:index + _NOTE_CHUNK]
        return attrs, None if best is None else (best.trial_number, float(best.value))


def _forward(name: str):
    def method(self: ServiceView, *args: Any, **kwargs: Any) -> Any:
        return getattr(self._storage, name)(*args, **kwargs)

    method.__name__ = name
    return method


# The rest of the storage interface is the storage's own: its abstract methods and also the ones BaseStorage
# derives from get_all_trials (get_trial_id_from_study_id_trial_number indexes that list by number).
for _name in [name for name, value in vars(BaseStorage).items() if callable(value) and not name.startswith("_")]:
    if _name not in ServiceView.__dict__:
        setattr(ServiceView, _name, _forward(_name))
ServiceView.__abstractmethods__ = frozenset()
