"""Worker logs a person can read: the backend's start-up noise becomes one line saying what the worker
trains on, and a trial handed back on a graceful stop gets no traceback.

:func:`start_backend` is called once at the worker's start. It caps the process's GPU memory first
(``REGSEARCH_GPU_MEMORY_FRACTION``, :func:`trainer._backend.configure_memory`), then imports Keras and
queries the devices. TensorFlow prints its start-up lines (``Could not find cuda drivers``, ``failed
call to cuInit``, oneDNN and CPU-feature notes) to file descriptor 2 before Python's logging exists,
some of them before ``TF_CPP_MIN_LOG_LEVEL`` is read (JAX's "no GPU/TPU found" note alike); so the
import and the device query run with fd 2 pointed at a temporary file, the known noise is dropped,
anything else is passed on unchanged, and one line names the Keras backend, its devices and the
worker's settings that shape training on them (lanes, memory fraction).

:class:`QuietGracefulStops` is a filter on Optuna's optimize logger: ``study.optimize(catch=...)``
logs each caught exception with its traceback, which for :class:`~service.objective.WorkerShutdown`
and :class:`~service.objective.StudyStopped` is no error at all (the trial is re-queued or the study
ends, and the worker logs that in one line). Their record loses its traceback and drops to INFO, and
Optuna's follow-up "failed with value None" line is dropped.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile

__all__ = ["QuietGracefulStops", "install_quiet_graceful_stops", "start_backend"]

log = logging.getLogger("regsearch.worker")

#: The backends' start-up lines that say nothing on a CPU-only machine.
_NOISE = re.compile(
    r"All log messages before absl::InitializeLog|cudart_stub\.cc|cuInit|cuda_driver|cuda_platform|"
    r"oneDNN custom operations|cpu_feature_guard|To enable the following instructions|TF-TRT Warning|"
    r"Unable to register cu(DNN|FFT|BLAS) factory|computation placer already registered|"
    r"An NVIDIA GPU may be present on this machine|No GPU/TPU found, falling back to CPU"
)


def start_backend(memory_fraction: float | None = None, **settings: object) -> str:
    """Cap GPU memory, import the Keras backend quietly, log one line naming it, its devices and ``settings``
    (e.g. ``lanes=8``), and return that line."""
    from trainer import _backend

    applied = _backend.configure_memory(memory_fraction)  # before the backend touches a GPU
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's own INFO and WARNING lines
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            line = _backend.describe(**settings, gpu_memory_fraction=memory_fraction if applied else None)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        kept = [line for line in captured.read().decode(errors="replace").splitlines() if line.strip() and not _NOISE.search(line)]
    for kept_line in kept:
        print(kept_line, file=sys.stderr)
    log.info("trains with %s", line)
    return line


class QuietGracefulStops(logging.Filter):
    """On Optuna's optimize logger: no traceback for a trial handed back on a graceful stop."""

    def __init__(self) -> None:
        super().__init__()
        self._quieted: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        from service.objective import StudyStopped, WorkerShutdown

        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, (StudyStopped, WorkerShutdown)):
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
            match = re.match(r"Trial (\d+) ", record.getMessage())
            if match:
                self._quieted.add(match.group(1))
            return True
        match = re.match(r"Trial (\d+) failed with value None\.", record.getMessage())
        if match and match.group(1) in self._quieted:
            self._quieted.discard(match.group(1))
            return False
        return True


def install_quiet_graceful_stops() -> None:
    """Attach :class:`QuietGracefulStops` to Optuna's optimize logger (once)."""
    logger = logging.getLogger("optuna.study._optimize")  # where study.optimize's catch logs
    if not any(isinstance(existing, QuietGracefulStops) for existing in logger.filters):
        logger.addFilter(QuietGracefulStops())
