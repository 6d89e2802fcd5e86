"""The one back-off policy for waiting out database hiccups, built on :mod:`tenacity`.

The worker's loop, the heartbeat writes and the migrations all retry the same way: exponential
waits from ``first`` seconds, doubling up to ``cap``, for ``attempts`` tries (or until ``stop`` is
set); the last error is re-raised when they run out.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import tenacity

__all__ = ["backoff"]


def backoff(
    *,
    first: float,
    cap: float,
    attempts: int | None = None,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
    stop: threading.Event | None = None,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
) -> tenacity.Retrying:
    """A :class:`tenacity.Retrying` (call it with the function and its arguments).

    ``stop``: an event that ends the retries (and interrupts the wait) once set, e.g. a worker's
    shutdown. ``on_retry(attempt, error, wait_s)`` is called before each wait, to log it.
    """
    stop_rule: tenacity.stop.stop_base = tenacity.stop_never
    if attempts is not None:
        stop_rule = tenacity.stop_after_attempt(attempts)
    if stop is not None:
        stop_rule = stop_rule | tenacity.stop_when_event_set(stop)

    def before_sleep(state: tenacity.RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None and state.next_action is not None:
            on_retry(state.attempt_number, state.outcome.exception(), state.next_action.sleep)

    return tenacity.Retrying(
        stop=stop_rule,
        wait=tenacity.wait_exponential(multiplier=first, max=cap),
        retry=tenacity.retry_if_exception_type(retry_on),
        sleep=stop.wait if stop is not None else time.sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
