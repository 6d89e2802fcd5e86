"""The input pipeline on any Keras backend: uint8 images held once on the device, batches gathered there.

The CIFAR subsets a study trains on fit in memory (50,000 images are 150 MB as uint8), so there is no
reading or decoding to overlap with training, and no ``tf.data``: :func:`on_device` converts a uint8
image array to a backend tensor once (on a GPU it then lives in GPU memory), and each batch is a
``keras.ops.take`` of its indices there, cast to float32 (the networks rescale raw pixels
themselves) and, for training with augmentation, flipped and shifted by Keras' own preprocessing
layers. Nothing but the batch's indices crosses from the host per step.

:class:`Batches` is a ``keras.utils.PyDataset``, so ``model.fit``/``evaluate``/``predict`` take it
on every backend. Its batches are a pure function of ``(seed, epoch, index)``: epoch ``e``'s order
is a permutation drawn from ``numpy.random.default_rng([seed, e])``, so two trials with the same
seed see the same order on any backend, and an engine that drives its own step (one lane per
trial) can call :meth:`Batches.batch` directly.
"""

from __future__ import annotations

import collections
import threading
from typing import Any

import keras
import numpy as np

from trainer import _backend

__all__ = ["Batches", "augment", "augment_seed", "make_dataset", "on_device", "take"]

_RESIDENT: collections.OrderedDict[int, tuple[np.ndarray, Any]] = collections.OrderedDict()
_RESIDENT_SIZE = 6  # arrays kept on the device: train and val images and labels of a couple of data sets
_LOCK = threading.Lock()


def on_device(array: np.ndarray) -> Any:
    """``array`` as a backend tensor on the default GPU, converted once per array object (cached); on a
    machine without one the host is the device, and the numpy array itself is returned (a numpy gather
    is the cheapest there)."""
    if not _backend.has_gpu():
        return array
    key = id(array)
    with _LOCK:
        hit = _RESIDENT.get(key)
        if hit is not None and hit[0] is array:
            _RESIDENT.move_to_end(key)
            return hit[1]
    tensor = keras.ops.convert_to_tensor(np.ascontiguousarray(array))
    with _LOCK:
        _RESIDENT[key] = (array, tensor)  # keeping the array alive keeps its id unique
        while len(_RESIDENT) > _RESIDENT_SIZE:
            _RESIDENT.popitem(last=False)
    return tensor


def take(images: Any, indices: np.ndarray) -> Any:
    """float32 images ``images[indices]``, gathered where ``images`` (from :func:`on_device`) is held."""
    if isinstance(images, np.ndarray):
        return images[indices].astype(np.float32)
    return keras.ops.cast(keras.ops.take(images, keras.ops.convert_to_tensor(np.asarray(indices, dtype=np.int32)), axis=0), "float32")


def _augmenter() -> list[keras.layers.Layer]:
    """The book's augmentation, reduced to what the issue asks: horizontal flip and shifts of up to 10%."""
    return [keras.layers.RandomFlip("horizontal"), keras.layers.RandomTranslation(0.1, 0.1, fill_mode="nearest")]


def augment_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of batch ``index`` of ``epoch`` of a trial seeded ``seed`` (the lanes draw the same)."""
    return int(np.random.default_rng([seed, epoch, index, 1]).integers(2**30))


def augment(images: Any, layers: list[keras.layers.Layer], seed: Any) -> Any:
    """``images`` through the augmentation ``layers``, each drawing its transformation from ``seed`` alone
    (stateless: the same seed gives the same flips and shifts, whichever thread asks and in what order).

    ``seed`` is an int, or on JAX a uint32 scalar, traced inside a jitted step (the lanes engine,
    :mod:`trainer._lanes`, one seed per lane): Keras draws from an int seed ``s`` with the key
    ``[s, 0]`` and takes a JAX array as the key itself, so the scalar becomes that same key, and
    both give the same flips and shifts.

    Given one key, Keras' ``RandomTranslation`` draws the height and the width shift alike (every shift
    would be diagonal): the height's comes from a key of its own, ``seed + len(layers) + offset``."""

    def key(offset: int) -> Any:
        return seed + offset if isinstance(seed, int) else keras.ops.stack([seed + offset, keras.ops.zeros_like(seed)])

    for offset, layer in enumerate(layers):
        transformation = layer.get_random_transformation(images, training=True, seed=key(offset))
        if isinstance(layer, keras.layers.RandomTranslation):  # translations: [width, height] per image
            heights = layer.get_random_transformation(images, training=True, seed=key(len(layers) + offset))["translations"]
            transformation["translations"] = keras.ops.concatenate([transformation["translations"][:, :1], heights[:, 1:]], axis=1)
        images = layer.transform_images(images, transformation, training=True)
    return keras.ops.clip(images, 0.0, 255.0)  # interpolation may overshoot the pixel range by a rounding error


class Batches(keras.utils.PyDataset):
    """Batches ``(float32 images [B, H, W, C], int32 labels [B])`` of uint8 images held on the device.

    ``shuffle``: each epoch in its own seeded order (else the given order). ``drop_remainder``: only
    whole batches (one static shape, one trace). ``augment``: random flips and shifts (seeded).
    ``len()`` is the number of batches per epoch. ``fit`` reads epoch ``e`` in ``order(e)`` when given
    :meth:`follower` among its callbacks (it sets :attr:`epoch` as each epoch begins, before the epoch's
    first batch is read); :meth:`batch` takes the epoch as its argument. Not counted from the data
    set's own epoch hooks: Keras' ``fit`` also begins and ends an epoch to peek at the data or reset its
    iterator, a different number of times on each backend.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        *,
        shuffle: bool = False,
        augment: bool = False,
        seed: int = 0,
        drop_remainder: bool = False,
    ) -> None:
        super().__init__(**_backend.pipeline_options())
        if len(images) != len(labels):
            raise ValueError(f"images ({len(images)}) and labels ({len(labels)}) differ in length")
        if len(images) == 0:
            raise ValueError("no images to batch")
        self.size, self.batch_size, self.seed = len(labels), int(batch_size), int(seed)
        self.shuffle, self.drop_remainder = shuffle, drop_remainder and len(labels) >= batch_size
        self.images = on_device(images)
        self.labels = on_device(np.asarray(labels, dtype=np.int32))
        self.augmenter = _augmenter() if augment else None
        self.epoch = 0
        self._order: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.size // self.batch_size if self.drop_remainder else -(-self.size // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """The image order of ``epoch``."""
        if not self.shuffle:
            return np.arange(self.size)
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.size))
        return self._order[1]

    def indices(self, epoch: int, index: int) -> np.ndarray:
        return self.order(epoch)[index * self.batch_size : (index + 1) * self.batch_size]

    def batch(self, epoch: int, index: int) -> tuple[Any, Any]:
        """Batch ``index`` of ``epoch`` on the device."""
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        indices = self.indices(epoch, index)
        images = take(self.images, indices)
        if self.augmenter is not None:
            images = augment(images, self.augmenter, augment_seed(self.seed, epoch, index))
        if isinstance(self.labels, np.ndarray):
            return images, self.labels[indices]
        labels = keras.ops.take(self.labels, keras.ops.convert_to_tensor(indices.astype(np.int32)), axis=0)
        return images, labels

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        return self.batch(self.epoch, index)

    def follower(self) -> keras.callbacks.Callback:
        """A callback for ``fit`` that points :attr:`epoch` at the epoch that begins."""
        batches = self

        class FollowEpochs(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
                batches.epoch = epoch

        return FollowEpochs()


def make_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    *,
    shuffle: bool = False,
    augment: bool = False,
    seed: int = 0,
    drop_remainder: bool = False,
) -> Batches:
    """The batches ``model.fit``/``evaluate`` take, on any backend (see :class:`Batches`)."""
    return Batches(images, labels, batch_size, shuffle=shuffle, augment=augment, seed=seed, drop_remainder=drop_remainder)
