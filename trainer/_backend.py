"""The one place that knows which Keras backend runs: devices, GPU memory caps, the start-up line, what ``fit`` reads.

Everything else in the trainer is written against ``keras`` and ``keras.ops`` and runs unchanged on
``KERAS_BACKEND=tensorflow`` (the default) and ``jax`` (``torch`` needs nothing more than its wheel).
Keras reads ``KERAS_BACKEND`` when it is first imported, so the backend is chosen per process, by the
environment; so are the memory caps, which the backends read when they first touch a GPU:

* JAX preallocates 75% of each GPU at its first array. :func:`configure_memory` with a fraction sets
  ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` and ``XLA_PYTHON_CLIENT_MEM_FRACTION`` (an upper bound per
  process), so N workers share a card when each gets about 1/N.
* TensorFlow maps nearly all GPU memory at start; with a fraction it grows on demand instead
  (``TF_FORCE_GPU_ALLOW_GROWTH=true``): TensorFlow 2 has no per-process fraction.
* torch allocates on demand; the fraction becomes ``torch.cuda.set_per_process_memory_fraction``.

A variable the operator set explicitly is never overridden.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import os
from typing import Any

__all__ = ["BACKENDS", "Device", "backend_name", "configure_memory", "describe", "devices", "feed", "has_gpu", "pipeline_options"]

#: The backends the trainer is tested on (``make test`` runs the trainer tests on both).
BACKENDS = ("tensorflow", "jax")


@dataclasses.dataclass(frozen=True)
class Device:
    kind: str  # "GPU" or "CPU"
    name: str  # e.g. "NVIDIA H200" or "cpu:0"


def backend_name() -> str:
    """The Keras backend this process runs (``KERAS_BACKEND``, read by Keras at import; default tensorflow)."""
    import keras

    return keras.backend.backend()


def configure_memory(fraction: float | None, backend: str | None = None) -> dict[str, str]:
    """Cap this process's share of each GPU (before the backend touches one). Returns the variables set.

    ``fraction`` in (0, 1]; None leaves the backend's default. Call it before the first Keras import
    for JAX and TensorFlow (they read the variables when they initialise their GPUs).
    """
    if fraction is None:
        return {}
    if not 0 < fraction <= 1:
        raise ValueError(f"GPU memory fraction must be in (0, 1], got {fraction!r}")
    backend = backend or os.environ.get("KERAS_BACKEND", "tensorflow")
    wanted = {
        "jax": {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", "XLA_PYTHON_CLIENT_MEM_FRACTION": f"{fraction:.3f}"},
        "tensorflow": {"TF_FORCE_GPU_ALLOW_GROWTH": "true"},
    }.get(backend, {})
    applied = {}
    for name, value in wanted.items():
        if name not in os.environ:
            os.environ[name] = applied[name] = value
    if backend == "torch":
        import torch

        for index in range(torch.cuda.device_count()):
            torch.cuda.set_per_process_memory_fraction(fraction, index)
        applied["torch.cuda.set_per_process_memory_fraction"] = f"{fraction:.3f}"
    return applied


@functools.lru_cache(maxsize=1)
def devices() -> tuple[Device, ...]:
    """The accelerators (GPUs) the backend trains on, else its CPU."""
    backend = backend_name()
    found: list[Device] = []
    if backend == "tensorflow":
        import tensorflow as tf

        for device in tf.config.list_physical_devices("GPU"):
            details = tf.config.experimental.get_device_details(device)
            found.append(Device("GPU", details.get("device_name") or device.name.split(":", 1)[-1]))
    elif backend == "jax":
        import jax

        found = [Device("GPU", getattr(device, "device_kind", str(device))) for device in jax.devices() if device.platform == "gpu"]
    elif backend == "torch":
        import torch

        found = [Device("GPU", torch.cuda.get_device_name(index)) for index in range(torch.cuda.device_count())]
    return tuple(found) or (Device("CPU", f"{os.cpu_count()} cores"),)


def pipeline_options() -> dict[str, Any]:
    """``keras.utils.PyDataset`` options for :class:`trainer._pipeline.Batches` on this backend.

    On TensorFlow, Keras wraps a PyDataset in ``tf.data.Dataset.from_generator(...).prefetch(AUTOTUNE)``,
    and destroying that iterator at the end of ``fit`` waits for tf.data's autotuning thread to wake
    (0.3 to 0.4 s per trial measured here, up to seconds on a busy machine). With two threads feeding
    a queue (Keras' ``OrderedEnqueuer``) Keras turns autotuning off, and the batches are prepared while
    the step runs. The other backends iterate the PyDataset directly, with nothing to wait for.
    """
    if backend_name() == "tensorflow":
        return {"workers": 2, "use_multiprocessing": False, "max_queue_size": 4}
    return {}


def feed(batches: Any, epochs: int) -> tuple[Any, list[Any], int | None]:
    """What ``model.fit`` reads to train ``epochs`` epochs of :class:`trainer._pipeline.Batches`:
    ``(input, callbacks, steps_per_epoch)``.

    The batches themselves on JAX and torch. On TensorFlow, whole batches of host images without
    augmentation go in as the same batches gathered inside the graph: a ``tf.data`` pipeline over every epoch's
    :meth:`~trainer._pipeline.Batches.order` (computed here, so the batches stay those of the other
    backends), with no prefetch thread and no autotuning. Keras reads a PyDataset through
    ``Dataset.from_generator``, a Python call per step that cost 4% of the step on 2 cores
    (benchmarks/trainer_throughput.py's step ratio); a prefetch thread cost more than it hid there.
    """
    import numpy as np

    host = isinstance(batches.images, np.ndarray)  # measured on CPUs only; a GPU's resident images stay in the PyDataset
    if backend_name() != "tensorflow" or not host or batches.augmenter is not None or not batches.drop_remainder:
        return batches, [batches.follower()], None
    import tensorflow as tf

    steps, size = len(batches), batches.batch_size
    orders = np.stack([batches.order(epoch)[: steps * size] for epoch in range(epochs)]).reshape(-1, size).astype(np.int32)
    images, labels = tf.convert_to_tensor(batches.images), tf.convert_to_tensor(batches.labels)
    dataset = tf.data.Dataset.from_tensor_slices(orders).map(lambda indices: (tf.cast(tf.gather(images, indices), tf.float32), tf.gather(labels, indices)))
    options = tf.data.Options()
    options.autotune.enabled = False  # no autotuning thread for the iterator's destruction to wait on
    return dataset.with_options(options), [], steps


def has_gpu() -> bool:
    return any(device.kind == "GPU" for device in devices())


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def describe(**extra: Any) -> str:
    """One line: Keras and backend versions and the devices, e.g.
    ``Keras 3.15.1 on jax 0.10.2: 1 GPU (NVIDIA H200); lanes 8`` (``extra`` appended as ``name value``)."""
    import keras

    backend = backend_name()
    package = {"jax": "jax", "tensorflow": "tensorflow", "torch": "torch"}.get(backend, backend)
    found = devices()
    gpus = [device.name for device in found if device.kind == "GPU"]
    where = f"{len(gpus)} GPU(s) ({', '.join(gpus)})" if gpus else f"CPU only ({found[0].name}; no GPU found)"
    line = f"Keras {keras.__version__} on {backend} {_version(package)}: {where}"
    for name, value in extra.items():
        if value is not None:
            line += f"; {name.replace('_', ' ')} {value}"
    return line
