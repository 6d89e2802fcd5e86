"""A lanes worker: K trials trained at once in one compiled step (``regsearch worker --lanes K``, JAX).

The lanes worker is K ordinary :class:`~service.worker.Worker` loops in K threads of one process,
sharing one shutdown event and one :class:`LaneTraining`. Each loop keeps the whole worker protocol
unchanged (slot claim, ``study.optimize(n_trials=1)`` with Optuna's heartbeat thread, every epoch
reported, pruning, confirmation repeats, settle, retries, sweeps); only its train function differs:
instead of :func:`trainer.train` it hands the trial to a :class:`trainer._lanes.LaneEngine`, whose one
driver thread advances every lane's trial with one vmapped step and hands each its epochs' metrics.

So lanes are continuous by construction: when a trial completes or is pruned (or its study stops),
its loop settles it and claims the next trial (of the same study, or of another runnable study);
a trial of the same shape joins the engine's free lane while the other lanes go on. A trial of
another shape gets an engine of its own (at most :data:`ENGINES` are kept), and a trial lanes cannot
train (``mixed_float16``, fewer images than a batch) trains alone with
:func:`trainer.train`. A killed process stops all K heartbeats, so other workers fail and re-queue
all K trials; a graceful stop makes every lane hand its trial back at its next epoch end.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import threading
from typing import Any

from service.config import Settings
from service.db import migrate
from service.schemas import StudySpec
from service.objective import Trained
from service.worker import KerasTraining, TrainFunction, Worker
from trainer import RegularizationConfig

__all__ = ["ENGINES", "LaneTraining", "LanesWorker"]

log = logging.getLogger(__name__)

#: Lane engines (one per network shape) a worker keeps; an idle one is dropped for a new shape.
ENGINES = 2


class LaneTraining(KerasTraining):
    """Trains each trial in a lane of the :class:`~trainer._lanes.LaneEngine` of its shape (thread-safe)."""

    def __init__(self, data_dir: str | None, lanes: int) -> None:
        super().__init__(data_dir, cache_size=lanes + 1)  # a confirmation repeat per lane has its own split
        self.lanes = lanes
        self._lock = threading.Lock()
        self._engines: collections.OrderedDict[Any, Any] = collections.OrderedDict()
        self.alone = 0  # trials lanes could not train (trained alone)

    def data(self, spec: StudySpec, split_seed: int | None = None) -> Any:
        with self._lock:
            return super().data(spec, split_seed)

    def engine(self, shape: Any) -> Any:
        """The engine for ``shape``, built on first use (an idle engine of another shape makes room)."""
        from trainer._lanes import LaneEngine

        with self._lock:
            engine = self._engines.get(shape)
            if engine is not None:
                self._engines.move_to_end(shape)
                return engine
            for old_shape, old in list(self._engines.items()):
                if len(self._engines) < ENGINES:
                    break
                if old.busy_lanes == 0:
                    old.close()
                    del self._engines[old_shape]
            log.info("lanes: compiling %d lane(s) for %s", self.lanes, shape)
            engine = self._engines[shape] = LaneEngine(shape, self.lanes)
            return engine

    def __call__(self, spec: StudySpec, config: RegularizationConfig, on_epoch_end, seed: int | None = None) -> Trained:
        import trainer
        from trainer._lanes import LaneShape, lanes_unsupported

        data = self.data(spec, split_seed=seed)
        settings = trainer.TrainSettings.from_recipe(spec)
        if seed is not None:
            settings = settings.model_copy(update={"seed": seed})
        reason = lanes_unsupported(settings, data)
        if reason:
            log.info("lanes: trained alone (%s)", reason)
            self.alone += 1
            result = trainer.train(config, data, settings, on_epoch_end=on_epoch_end)
        else:
            result = self.engine(LaneShape.of(settings, data)).train(config, data, settings, on_epoch_end=on_epoch_end)
        return Trained(metrics=result.metrics(), model=result)  # the TrainResult is the model, stored if it ranks

    def close(self) -> None:
        with self._lock:
            engines, self._engines = list(self._engines.values()), collections.OrderedDict()
        for engine in engines:
            engine.close()


class LanesWorker:
    """K :class:`~service.worker.Worker` loops in threads of this process, their trials trained in lanes."""

    def __init__(
        self,
        settings: Settings,
        lanes: int,
        *,
        train: TrainFunction | None = None,
        poll_interval: float | None = None,
        exit_when_idle: bool = False,
        name: str | None = None,
    ) -> None:
        if lanes < 1:
            raise ValueError(f"lanes must be >= 1, got {lanes}")
        self.settings = settings
        self.lanes = lanes
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.train = train if train is not None else LaneTraining(settings.data_dir, lanes)
        self._shutdown = threading.Event()
        lane_settings = settings.model_copy(update={"migrate_on_start": False})  # migrated once, in run()
        # Each lane is a Worker: a queued trial (retry, enqueued config, confirmation repeat) goes to exactly one
        # lane, as to one worker process, by the storage's conditional WAITING -> RUNNING (service._rdb.take_waiting).
        self.workers = [
            Worker(lane_settings, train=self.train, poll_interval=poll_interval, exit_when_idle=exit_when_idle,
                   name=f"{self.name}/lane{index}")
            for index in range(lanes)
        ]
        for worker in self.workers:
            worker._shutdown = self._shutdown  # one stop for every lane

    @property
    def shutdown_requested(self) -> bool:
        return self._shutdown.is_set()

    @property
    def trials_run(self) -> int:
        return sum(worker.trials_run for worker in self.workers)

    def request_shutdown(self) -> None:
        """Every lane hands its trial back at its next epoch end (re-queued), then the worker exits."""
        self._shutdown.set()

    def run(self) -> int:
        """Run the K loops until shut down (or idle, with ``exit_when_idle``); returns the exit code."""
        log.info("worker %s started with %d lanes", self.name, self.lanes)
        if self.settings.migrate_on_start:
            migrate(self.settings)
        threads = [threading.Thread(target=worker.run, name=f"lane{index}") for index, worker in enumerate(self.workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if isinstance(self.train, LaneTraining):
            self.train.close()
        log.info("worker %s stopped after %d trial(s) in %d lanes", self.name, self.trials_run, self.lanes)
        return 0
