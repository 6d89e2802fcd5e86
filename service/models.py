"""The service's own tables (SQLAlchemy 2 ORM), next to Optuna's in the same database.

Optuna's RDBStorage owns ``studies``, ``trials`` and friends; ours are prefixed ``regsearch_`` so
the two never collide, and our Alembic history uses its own version table.
"""

from __future__ import annotations


import datetime as dt
import enum
import re
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = [
    "ACTIVE_STATUSES", "ADMIN_OWNER", "SEARCH_STAGES", "SLUG_PATTERN", "STAGE_ATTR", "Base", "BestConfigRecord", "DeliveryStatus",
    "SearchEnd", "SearchStudy", "StudyStatus", "TrialStage", "Webhook", "WebhookDelivery", "WebhookEvent", "utc_now", "as_utc",
]

#: A study name: 1-64 lowercase letters, digits, '-' or '_', starting and ending with a letter or digit.
SLUG_PATTERN = re.compile(r"^[a-z0-9](?:[a-z0-9_-]{0,62}[a-z0-9])?$")
#: The owner of the first (bootstrap) admin token, of every token and study that existed before owners
#: (migration 0007), and of whatever is submitted with auth off. An owner is a user name (a slug, as a study name).
ADMIN_OWNER = "admin"


class StudyStatus(enum.StrEnum):
    """A study's status: queued (no trial started yet), running (search trials claimed), confirming (the
    search's ``n_trials`` finished; the top configs run again, see :mod:`service.confirmation`), or one of
    the final three."""

    QUEUED = "queued"
    RUNNING = "running"
    CONFIRMING = "confirming"
    COMPLETED = "completed"
    STOPPED = "stopped"
    FAILED = "failed"


#: The statuses in which workers claim trials; the others are final.
ACTIVE_STATUSES = (StudyStatus.QUEUED, StudyStatus.RUNNING, StudyStatus.CONFIRMING)

#: The trial user attribute that says why a trial ran (:class:`TrialStage`); the dashboard shows it.
STAGE_ATTR = "stage"


class TrialStage(enum.StrEnum):
    """Why a trial ran. A trial without a ``stage`` attribute is a SEARCH trial; a retry keeps its original's."""

    SEARCH = "search"  # proposed by the sampler
    REFERENCE = "reference"  # the textbook defaults, the yardstick the best is measured against
    ENQUEUED = "enqueued"  # a config the study's spec asked to run
    WARM_START = "warm_start"  # a finished trial copied from another study
    CONFIRM = "confirm"  # a repeat of a top config, with another seed (the confirmation stage)


class SearchEnd(enum.StrEnum):
    """Why a study's search ended (``search_ended_by``)."""

    N_TRIALS = "n_trials"  # its n_trials finished (or PATCH lowered n_trials below the trials started)
    MAX_RUNTIME_S = "max_runtime_s"  # the wall-clock budget from the first trial ran out
    MAX_TRIAL_HOURS = "max_trial_hours"  # the sum of its search trials' durations ran out
    TARGET = "target"  # a search trial reached stop_when.target
    NO_IMPROVEMENT_TRIALS = "no_improvement_trials"  # stop_when.no_improvement_trials finished without a better best


#: The stages whose trials count towards ``n_trials``.
SEARCH_STAGES = (TrialStage.SEARCH, TrialStage.REFERENCE, TrialStage.ENQUEUED)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def as_utc(value: dt.datetime | None) -> dt.datetime | None:
    """In UTC: naive datetimes (SQLite hands them back) are UTC, as everything the service writes;
    aware ones (PostgreSQL's, in the session's time zone) are converted."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc)


def iso_utc(value: dt.datetime) -> str:
    """The one format of every timestamp regsearch shows: ISO 8601 in UTC, microseconds, ``Z``
    (``2026-11-25T21:58:30.123456Z``)."""
    return as_utc(value).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # type: ignore[union-attr]


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: sa.JSON, dt.datetime: sa.DateTime(timezone=True)}


class SearchStudy(Base):
    """A submitted study: its spec, its status and the trial-slot counter that caps ``n_trials``.

    ``claimed`` counts the trial slots taken by workers (finished, running or about to run); a
    worker takes one with a conditional ``UPDATE ... WHERE claimed < n_trials`` and gives it back
    when its trial fails, so no number of workers can run more than ``n_trials`` trials. A slot
    whose worker died before its trial existed (or before giving a failed trial's slot back) is
    reclaimed by any idle worker's sweep once the study has been quiet for the grace period.
    ``claims_total`` only grows: it seeds each trial's sampler so that parallel workers draw
    different points yet a study stays reproducible.
    """

    __tablename__ = "regsearch_studies"
    __table_args__ = (
        sa.CheckConstraint("claimed >= 0 AND claimed <= n_trials + confirm_trials", name="ck_regsearch_studies_claimed"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(64), unique=True)
    spec: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(sa.String(16), default=StudyStatus.QUEUED, index=True)
    n_trials: Mapped[int]
    claimed: Mapped[int] = mapped_column(default=0)
    #: confirmation trials planned when the search ended (their slots come on top of ``n_trials``);
    #: 0 during the search, with confirmation off, and while the plan is being enqueued.
    confirm_trials: Mapped[int] = mapped_column(default=0, server_default="0")
    claims_total: Mapped[int] = mapped_column(default=0)
    failed_trials: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utc_now)
    started_at: Mapped[dt.datetime | None]
    #: when the last slot was claimed: a leaked slot is only reclaimed once claims have been quiet
    #: for the grace period (see :func:`service.coordination.reclaim_leaked_slots`).
    last_claim_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    #: when the study was deleted: it is in the trash (hidden, restorable) until purged.
    deleted_at: Mapped[dt.datetime | None]
    #: the owner of the token that created it (:mod:`service.owners`): only they or an admin may change it.
    owner: Mapped[str] = mapped_column(sa.String(64), default=ADMIN_OWNER, server_default=ADMIN_OWNER, index=True)
    #: the spec's budgets, here so that workers read them fresh (PATCH changes them): see :mod:`service.stages`.
    max_runtime_s: Mapped[float | None]
    max_trial_hours: Mapped[float | None]
    #: which rule ended the search (:class:`SearchEnd`); null while it runs. Ending it early caps ``n_trials``
    #: at the search slots already taken (:func:`service.coordination.end_search`).
    search_ended_by: Mapped[str | None] = mapped_column(sa.String(32))
    #: false while a confirmation plan is being enqueued: no slot can be claimed until it is opened.
    confirm_open: Mapped[bool] = mapped_column(default=True, server_default=sa.true())

    best_history: Mapped[list["BestConfigRecord"]] = relationship(
        back_populates="study", cascade="all, delete-orphan", passive_deletes=True, order_by="BestConfigRecord.id"
    )


class BestConfigRecord(Base):
    """One row each time a study's leader changes; the last row is the current best.

    The leader is the best of :func:`service.confirmation.summarize`: during the search the trial of
    the highest value (a row when the best value strictly improves, as before confirmation existed),
    during confirmation the config of the highest mean over its runs. ``value`` is the leader's mean
    (its single value while it has one run) and ``summary`` its statistics (mean, interval, ties,
    robust ranges, ``confirmed``); the last row's are kept current as runs finish.
    """

    __tablename__ = "regsearch_best_configs"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(sa.ForeignKey("regsearch_studies.id", ondelete="CASCADE"), index=True)
    trial_number: Mapped[int]
    value: Mapped[float]
    params: Mapped[dict[str, Any]]
    train_size: Mapped[int | None]
    summary: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    created_at: Mapped[dt.datetime] = mapped_column(default=utc_now)

    study: Mapped[SearchStudy] = relationship(back_populates="best_history")


class WebhookEvent(enum.StrEnum):
    """What a webhook is told about: a study's final statuses, and each new leader of its best-config history."""

    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"
    NEW_BEST = "new_best"


class DeliveryStatus(enum.StrEnum):
    """A delivery is pending (due at ``next_attempt_at``) until a 2xx answer (delivered) or its last attempt (failed)."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class Webhook(Base):
    """A URL an owner registered: for one study (``study_id``) or, without one, for every study of its ``owner``.

    ``secret`` signs each delivery's body (HMAC-SHA256); it is shown once, when the hook is created. It is
    stored as is (a signature needs it), so whoever reads this table can sign as regsearch.
    """

    __tablename__ = "regsearch_webhooks"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner: Mapped[str] = mapped_column(sa.String(64), index=True)
    url: Mapped[str] = mapped_column(sa.String(2000))
    events: Mapped[list[str]] = mapped_column(sa.JSON)
    study_id: Mapped[int | None] = mapped_column(sa.ForeignKey("regsearch_studies.id", ondelete="CASCADE"), index=True)
    secret: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utc_now)


class WebhookDelivery(Base):
    """One event for one hook (the outbox): written in the transaction of the change it reports, sent by a worker's
    dispatcher (:mod:`service.webhooks`) until an answer is 2xx or its attempts run out. ``id`` is also sent as the
    ``X-Regsearch-Delivery`` header and in the body, which is stored once, so every attempt sends the same bytes."""

    __tablename__ = "regsearch_webhook_deliveries"
    __table_args__ = (sa.Index("ix_regsearch_webhook_deliveries_due", "status", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    hook_id: Mapped[int] = mapped_column(sa.ForeignKey("regsearch_webhooks.id", ondelete="CASCADE"), index=True)
    study_id: Mapped[int] = mapped_column(sa.ForeignKey("regsearch_studies.id", ondelete="CASCADE"), index=True)
    event: Mapped[str] = mapped_column(sa.String(16))
    body: Mapped[str] = mapped_column(sa.Text)
    status: Mapped[str] = mapped_column(sa.String(16), default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(default=utc_now)
    last_status_code: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utc_now)
    delivered_at: Mapped[dt.datetime | None]
