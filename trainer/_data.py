"""CIFAR-10: loading the official layout, class-balanced subsets, the validation split (numpy only).

The batches a model trains on come from :mod:`trainer._pipeline`.

Where the images come from: the ``data_dir`` argument, else (None) ``keras.datasets.cifar10``
(download, cached under ``~/.keras/datasets``); the caller decides the directory (``regsearch``
passes its ``REGSEARCH_DATA_DIR`` setting). A directory may hold
``cifar-10-batches-py/`` (the extracted archive), ``cifar-10-python.tar.gz`` (read in place), or be
the ``cifar-10-batches-py`` directory itself.

The validation split is always drawn from the training set (stratified, seeded); the test set is
never used for model selection.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import tarfile
import threading
from pathlib import Path
import numpy as np

__all__ = ["CifarData", "DataError", "count_training_images", "load_cifar10"]

BATCH_DIR = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
TRAIN_FILES = tuple(f"data_batch_{index}" for index in range(1, 6))
TEST_FILE = "test_batch"
NUM_CLASSES = 10
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_EXPECTED = f"{BATCH_DIR}/{{{','.join(TRAIN_FILES)},{TEST_FILE}}} or {ARCHIVE}"


class DataError(ValueError):
    """CIFAR-10 could not be read: names the directory and the files it expected."""


@dataclasses.dataclass(frozen=True, repr=False)
class CifarData:
    """Images as uint8 ``[N, 32, 32, 3]`` (raw pixels), labels as int64 ``[N]`` in 0..9."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str = ""
    class_names: tuple[str, ...] = CLASS_NAMES

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.x_train.shape[1:])  # type: ignore[return-value]

    def __repr__(self) -> str:
        return (
            f"CifarData(train={len(self.y_train)}, val={len(self.y_val)}, test={len(self.y_test)}, "
            f"source={self.source!r})"
        )


# --------------------------------------------------------------------------------------------------
# Reading the official layout
# --------------------------------------------------------------------------------------------------


def _decode_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = pickle.loads(raw, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise DataError(f"{where}: not a CIFAR-10 batch ({type(error).__name__}: {error})") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataError(f"{where}: expected data uint8[N, 3072] with N labels, got data {data.shape}, {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(f"{where}: labels must be in 0..{NUM_CLASSES - 1}")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # R, G, B planes -> HWC
    return np.ascontiguousarray(images), labels


def _read_files(directory: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    """Raw bytes of the batch files, from the extracted directory or the archive."""
    batch_dir = directory if (directory / TRAIN_FILES[0]).exists() or directory.name == BATCH_DIR else directory / BATCH_DIR
    if batch_dir.is_dir():
        missing = [name for name in names if not (batch_dir / name).is_file()]
        if missing:
            raise DataError(f"CIFAR-10 directory {batch_dir} lacks {', '.join(missing)} (expected {_EXPECTED})")
        return {name: (batch_dir / name).read_bytes() for name in names}
    archive = directory / ARCHIVE
    if archive.is_file():
        try:
            with tarfile.open(archive, "r:gz") as tar:
                members = {Path(member.name).name: member for member in tar.getmembers() if member.isfile()}
                missing = [name for name in names if name not in members]
                if missing:
                    raise DataError(f"CIFAR-10 archive {archive} lacks {', '.join(missing)} (expected {_EXPECTED})")
                return {name: tar.extractfile(members[name]).read() for name in names}  # type: ignore[union-attr]
        except (tarfile.TarError, OSError, EOFError) as error:
            raise DataError(f"CIFAR-10 archive {archive} is unreadable ({error}); expected {_EXPECTED}") from None
    raise DataError(f"no CIFAR-10 data in {directory}: expected {_EXPECTED}")


_CACHE: dict[tuple, tuple[np.ndarray, ...]] = {}
_CACHE_LOCK = threading.Lock()


def _read_directory(directory: Path, include_test: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Full training and test arrays of a directory, cached per process (workers load once per trial)."""
    if not directory.is_dir():
        raise DataError(f"CIFAR-10 directory {directory} does not exist (expected {_EXPECTED} inside it)")
    names = TRAIN_FILES + ((TEST_FILE,) if include_test else ())
    candidates = [directory / ARCHIVE, *(directory / name for name in names), *(directory / BATCH_DIR / name for name in names)]
    stamp = tuple((str(path), path.stat().st_mtime_ns, path.stat().st_size) for path in candidates if path.is_file())
    key = (str(directory.resolve()), include_test, stamp)
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]  # type: ignore[return-value]
    raw = _read_files(directory, names)
    parts = [_decode_batch(raw[name], str(directory / name)) for name in TRAIN_FILES]
    x_train = np.concatenate([images for images, _ in parts])
    y_train = np.concatenate([labels for _, labels in parts])
    if include_test:
        x_test, y_test = _decode_batch(raw[TEST_FILE], str(directory / TEST_FILE))
    else:
        x_test, y_test = np.zeros((0, 32, 32, 3), np.uint8), np.zeros((0,), np.int64)
    if len(y_train) == 0:
        raise DataError(f"CIFAR-10 directory {directory} holds no training images (expected {_EXPECTED})")
    result = (x_train, y_train, x_test, y_test)
    with _CACHE_LOCK:
        _CACHE.clear()  # keep one data set in memory
        _CACHE[key] = result
    return result


#: The official files' sizes in bytes (10,000 images a batch; the archive holds 50,000 training images).
_OFFICIAL_BATCH_BYTES = 31_035_704
_OFFICIAL_ARCHIVE_BYTES = 170_498_071


def count_training_images(data_dir: str | os.PathLike) -> int:
    """How many training images ``data_dir`` holds, without decoding them (TensorFlow-free).

    The official files count by their known sizes; other batch files (a subset such as tests/data)
    by their labels. Raises :class:`DataError` like :func:`load_cifar10` when the data is missing.
    """
    directory = Path(data_dir).expanduser()
    if not directory.is_dir():
        raise DataError(f"CIFAR-10 directory {directory} does not exist (expected {_EXPECTED} inside it)")
    batch_dir = directory if (directory / TRAIN_FILES[0]).exists() or directory.name == BATCH_DIR else directory / BATCH_DIR
    archive = directory / ARCHIVE
    if not batch_dir.is_dir() and archive.is_file() and archive.stat().st_size == _OFFICIAL_ARCHIVE_BYTES:
        return 50_000
    sizes = {name: (batch_dir / name).stat().st_size for name in TRAIN_FILES if (batch_dir / name).is_file()}
    if len(sizes) == len(TRAIN_FILES) and all(size == _OFFICIAL_BATCH_BYTES for size in sizes.values()):
        return 10_000 * len(TRAIN_FILES)
    raw = _read_files(directory, TRAIN_FILES)
    count = 0
    for name, data in raw.items():
        try:
            count += len(pickle.loads(data, encoding="bytes")[b"labels"])
        except Exception as error:  # noqa: BLE001 - any unpickling failure means a corrupt file
            raise DataError(f"{directory / name}: not a CIFAR-10 batch ({type(error).__name__}: {error})") from None
    return count


def _download() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    import keras

    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
    except Exception as error:  # noqa: BLE001 - network or cache failure
        raise DataError(
            f"no data directory given (--data-dir or REGSEARCH_DATA_DIR) and downloading CIFAR-10 failed: {error}; "
            f"give a directory holding {_EXPECTED}"
        ) from None
    return x_train, y_train.reshape(-1).astype(np.int64), x_test, y_test.reshape(-1).astype(np.int64)


# --------------------------------------------------------------------------------------------------
# Subsets and the split
# --------------------------------------------------------------------------------------------------


def _balanced_subset(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``size`` examples spread as evenly as possible over the classes (seeded)."""
    classes = np.unique(labels)
    per_class = np.full(len(classes), size // len(classes))
    per_class[rng.permutation(len(classes))[: size % len(classes)]] += 1
    chosen = []
    for cls, count in zip(classes, per_class):
        members = np.flatnonzero(labels == cls)
        if count > len(members):
            raise ValueError(
                f"train_size={size} needs {count} images of class {int(cls)}, only {len(members)} available"
            )
        chosen.append(rng.choice(members, size=count, replace=False))
    return rng.permutation(np.concatenate(chosen))


def _stratified_split(labels: np.ndarray, val_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, val indices): ``val_fraction`` of every class goes to validation (at least 1 each)."""
    train_parts, val_parts = [], []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_val = 0 if val_fraction == 0 else max(1, int(round(len(members) * val_fraction)))
        if n_val >= len(members):
            raise ValueError(f"val_fraction={val_fraction} leaves no training images of class {int(cls)}")
        val_parts.append(members[:n_val])
        train_parts.append(members[n_val:])
    return rng.permutation(np.concatenate(train_parts)), rng.permutation(np.concatenate(val_parts))


def load_cifar10(
    data_dir: str | os.PathLike | None = None,
    *,
    train_size: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    split_seed: int | None = None,
    include_test: bool = True,
) -> CifarData:
    """Load CIFAR-10 and split off a stratified validation set from the training images.

    ``train_size`` draws that many training images, class-balanced (seeded), *before* the split, so
    ``len(x_train) + len(x_val) == train_size``. ``val_fraction`` in [0, 1) of each class goes to
    validation. ``seed`` draws the pool and, unless ``split_seed`` is given, the split; ``split_seed``
    draws another validation split from the same pool (a study's confirmation repeats).
    ``include_test=False`` skips reading the test batch (empty ``x_test``).
    Raises :class:`DataError` (a ``ValueError``) naming the directory and expected files when the data
    is missing or corrupt, and ``ValueError`` naming the argument for bad arguments.
    """
    if train_size is not None and (isinstance(train_size, bool) or not isinstance(train_size, (int, np.integer)) or train_size < NUM_CLASSES):
        raise ValueError(f"train_size must be an int >= {NUM_CLASSES} (one image per class), got {train_size!r}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if split_seed is not None and (isinstance(split_seed, bool) or not isinstance(split_seed, (int, np.integer))):
        raise ValueError(f"split_seed must be an int or None, got {split_seed!r}")

    directory = data_dir or None
    if directory is not None:
        directory = Path(directory).expanduser()
        x_all, y_all, x_test, y_test = _read_directory(directory, include_test)
        source = str(directory)
    else:
        x_all, y_all, x_test, y_test = _download()
        source = "keras.datasets.cifar10"
        if not include_test:
            x_test, y_test = x_test[:0], y_test[:0]

    rng = np.random.default_rng(seed)
    if train_size is not None:
        if train_size > len(y_all):
            raise ValueError(f"train_size={train_size} exceeds the {len(y_all)} training images in {source}")
        pool = _balanced_subset(y_all, int(train_size), rng)
    else:
        pool = np.arange(len(y_all))
    split_rng = rng if split_seed is None else np.random.default_rng(split_seed)
    train_index, val_index = _stratified_split(y_all[pool], float(val_fraction), split_rng)
    train_index, val_index = pool[train_index], pool[val_index]
    return CifarData(
        x_train=x_all[train_index],
        y_train=y_all[train_index],
        x_val=x_all[val_index],
        y_val=y_all[val_index],
        x_test=x_test,
        y_test=y_test,
        source=source,
    )
