"""CIFAR-10 loading: the official layout and archive, balanced subsets, the stratified split, clear errors."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import keras
import numpy as np
import pytest

from trainer import DataError, load_cifar10
from trainer._pipeline import make_dataset

FILES = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]


def test_loads_the_official_layout_with_a_stratified_validation_split(cifar_dir):
    data = load_cifar10(cifar_dir, val_fraction=0.1, seed=0)
    assert data.x_train.dtype == np.uint8 and data.x_train.shape[1:] == (32, 32, 3)
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (540, 60, 200)
    assert np.bincount(data.y_val, minlength=10).tolist() == [6] * 10
    assert np.bincount(data.y_train, minlength=10).tolist() == [54] * 10
    # validation images come from the training batches, never from the test batch
    train_pixels = {image.tobytes() for image in data.x_train}
    test_pixels = {image.tobytes() for image in data.x_test}
    assert not any(image.tobytes() in train_pixels for image in data.x_val)
    assert not any(image.tobytes() in test_pixels for image in data.x_val)


def test_train_size_draws_a_class_balanced_seeded_subset(cifar_dir):
    data = load_cifar10(cifar_dir, train_size=200, val_fraction=0.2, seed=3)
    assert len(data.y_train) + len(data.y_val) == 200
    assert np.bincount(data.y_train, minlength=10).tolist() == [16] * 10
    assert np.bincount(data.y_val, minlength=10).tolist() == [4] * 10
    again = load_cifar10(cifar_dir, train_size=200, val_fraction=0.2, seed=3)
    other = load_cifar10(cifar_dir, train_size=200, val_fraction=0.2, seed=4)
    np.testing.assert_array_equal(again.x_val, data.x_val)
    assert not np.array_equal(other.x_val, data.x_val)


def test_reads_the_archive_and_ignores_the_environment_variable(cifar_dir, tmp_path, monkeypatch):
    """The trainer is a library: the directory is an argument (the CLI passes REGSEARCH_DATA_DIR's setting)."""
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(Path(cifar_dir) / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    monkeypatch.setenv("REGSEARCH_DATA_DIR", "/nonexistent")
    from_archive = load_cifar10(tmp_path, train_size=100, seed=1)
    from_directory = load_cifar10(cifar_dir, train_size=100, seed=1)
    assert from_archive.source == str(tmp_path)
    np.testing.assert_array_equal(from_archive.x_train, from_directory.x_train)
    np.testing.assert_array_equal(from_archive.y_test, from_directory.y_test)


def test_missing_directory_names_it_and_the_expected_files(tmp_path):
    with pytest.raises(DataError) as error:
        load_cifar10(tmp_path / "nowhere")
    message = str(error.value)
    assert str(tmp_path / "nowhere") in message and "data_batch_1" in message and "cifar-10-python.tar.gz" in message


def test_empty_directory_and_missing_file_are_named(cifar_dir, tmp_path):
    with pytest.raises(DataError, match="no CIFAR-10 data in .*data_batch_1"):
        load_cifar10(tmp_path)
    copy = tmp_path / "cifar-10-batches-py"
    shutil.copytree(Path(cifar_dir) / "cifar-10-batches-py", copy)
    (copy / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"cifar-10-batches-py lacks data_batch_3"):
        load_cifar10(tmp_path)


def test_corrupt_batch_is_reported_with_its_path(cifar_dir, tmp_path):
    copy = tmp_path / "cifar-10-batches-py"
    shutil.copytree(Path(cifar_dir) / "cifar-10-batches-py", copy)
    (copy / "data_batch_2").write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match=r"data_batch_2: not a CIFAR-10 batch"):
        load_cifar10(tmp_path)
    with pytest.raises(ValueError):  # DataError is a ValueError, as the API contract says
        load_cifar10(tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"train_size": 5}, "train_size"), ({"train_size": 10_000}, "train_size"), ({"val_fraction": 1.0}, "val_fraction")],
)
def test_bad_arguments_name_the_field(cifar_dir, kwargs, field):
    with pytest.raises(ValueError, match=field):
        load_cifar10(cifar_dir, **kwargs)


def test_pipeline_batches_float_pixels_and_augments(cifar_dir):
    data = load_cifar10(cifar_dir, train_size=100, seed=0)
    to_numpy = keras.ops.convert_to_numpy
    plain = make_dataset(data.x_train, data.y_train, 16)[0]
    augmented = make_dataset(data.x_train, data.y_train, 16, augment=True, seed=1)[0]
    assert tuple(plain[0].shape) == (16, 32, 32, 3) and to_numpy(plain[0]).dtype == np.float32
    np.testing.assert_array_equal(to_numpy(plain[0]), data.x_train[:16].astype("float32"))
    np.testing.assert_array_equal(to_numpy(augmented[1]), data.y_train[:16])  # same order, labels untouched
    assert not np.allclose(to_numpy(augmented[0]), to_numpy(plain[0]))
    assert 0.0 <= float(to_numpy(augmented[0]).min()) and float(to_numpy(augmented[0]).max()) <= 255.0
    # The same seed, epoch and batch give the same flips and shifts (stateless draws); epochs differ.
    again = make_dataset(data.x_train, data.y_train, 16, augment=True, seed=1)
    np.testing.assert_array_equal(to_numpy(again.batch(0, 0)[0]), to_numpy(augmented[0]))
    assert not np.array_equal(to_numpy(again.batch(1, 0)[0]), to_numpy(augmented[0]))


def test_augmentation_shifts_height_and_width_independently_within_ten_percent():
    """Two bright pixels per image, symmetric about the middle column (so a flip leaves them alone), through flips
    and shifts: their row and column move by different amounts (Keras, given one seed, draws both shifts alike:
    every shift was diagonal), each within 10% of the 32 pixels."""
    from trainer._pipeline import _augmenter, augment

    images = np.zeros((64, 32, 32, 3), dtype=np.float32)
    images[:, 16, 15:17, :] = 255.0
    moved = keras.ops.convert_to_numpy(augment(keras.ops.convert_to_tensor(images), _augmenter(), 12345))[..., 0]
    rows, columns = np.indices((32, 32))
    weights = moved.sum(axis=(1, 2))
    assert np.all(weights > 0)  # the pixels stay inside the image
    row_shift = (moved * rows).sum(axis=(1, 2)) / weights - 16
    column_shift = (moved * columns).sum(axis=(1, 2)) / weights - 15.5
    assert np.all(np.abs(row_shift) <= 3.2 + 1e-3) and np.all(np.abs(column_shift) <= 3.2 + 1e-3)
    assert np.std(row_shift - column_shift) > 1.0  # diagonal shifts only: the difference stays 0
    np.testing.assert_array_equal(moved, keras.ops.convert_to_numpy(augment(keras.ops.convert_to_tensor(images), _augmenter(), 12345))[..., 0])


def test_shuffled_batches_are_a_seeded_permutation_per_epoch(cifar_dir):
    data = load_cifar10(cifar_dir, train_size=100, seed=0)
    batches = make_dataset(data.x_train, data.y_train, 16, shuffle=True, seed=3, drop_remainder=True)
    assert len(batches) == len(data.y_train) // 16
    first = np.concatenate([keras.ops.convert_to_numpy(batches.batch(0, index)[1]) for index in range(len(batches))])
    seen = np.concatenate([batches.indices(0, index) for index in range(len(batches))])
    np.testing.assert_array_equal(first, data.y_train[seen])
    assert len(set(seen.tolist())) == len(seen)  # no image twice in an epoch
    assert not np.array_equal(batches.order(0), batches.order(1))
    np.testing.assert_array_equal(batches.order(1), make_dataset(data.x_train, data.y_train, 16, shuffle=True, seed=3).order(1))


def test_fit_reads_epoch_e_in_epoch_e_s_order(cifar_dir):
    """Through Keras' own fit on the backend under test: epoch e's batches in the order of ``order(e)``."""
    data = load_cifar10(cifar_dir, train_size=100, seed=0)
    batches = make_dataset(data.x_train, data.y_train, 16, shuffle=True, seed=3, drop_remainder=True)
    read: list[int] = []
    batch = batches.batch
    batches.batch = lambda epoch, index: (read.append(epoch), batch(epoch, index))[1]
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.fit(batches, epochs=3, verbose=0, callbacks=[batches.follower()])
    assert sorted(set(read)) == [0, 1, 2] and read == sorted(read)
    assert read.count(1) == read.count(2) == len(batches)  # (TensorFlow may also peek at a batch of epoch 0)


def test_what_fit_reads_is_every_epoch_s_batches_in_order(cifar_dir):
    """``_backend.feed``, what ``train`` hands ``fit``: on TensorFlow an in-graph pipeline, which must give
    ``fit`` exactly ``Batches.batch(epoch, index)`` for every epoch, each epoch in its own order (a model
    records each step's labels and pixel sum); elsewhere the batches themselves."""
    from trainer import _backend

    data = load_cifar10(cifar_dir, train_size=100, seed=0)
    batches = make_dataset(data.x_train, data.y_train, 16, shuffle=True, seed=3, drop_remainder=True)
    epochs = 3
    fed, callbacks, steps = _backend.feed(batches, epochs)
    if keras.backend.backend() != "tensorflow":
        assert fed is batches and steps is None and len(callbacks) == 1
        return
    assert steps == len(batches) and not callbacks

    class Recorder(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.labels = self.add_weight(shape=(epochs * steps, 16), initializer="zeros", dtype="int32", trainable=False)
            self.sums = self.add_weight(shape=(epochs * steps,), initializer="zeros", dtype="float32", trainable=False)
            self.step = self.add_weight(shape=(), initializer="zeros", dtype="int32", trainable=False)

        def call(self, inputs):
            return inputs

        def train_step(self, data):
            images, labels = data
            at = keras.ops.reshape(self.step, (1, 1))
            self.labels.assign(keras.ops.scatter_update(self.labels, at, keras.ops.cast(labels, "int32")[None]))
            self.sums.assign(keras.ops.scatter_update(self.sums, at, keras.ops.sum(images)[None]))
            self.step.assign(self.step + 1)
            return {"step": self.step}

    recorder = Recorder()
    recorder.compile()
    recorder.fit(fed, epochs=epochs, steps_per_epoch=steps, verbose=0, shuffle=False)
    assert int(keras.ops.convert_to_numpy(recorder.step)) == epochs * steps
    expected = [batches.batch(*divmod(position, steps)) for position in range(epochs * steps)]
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(recorder.labels), [keras.ops.convert_to_numpy(labels) for _, labels in expected])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(recorder.sums), [float(np.sum(keras.ops.convert_to_numpy(images))) for images, _ in expected], rtol=1e-6)
    assert not np.array_equal(keras.ops.convert_to_numpy(recorder.labels[:steps]), keras.ops.convert_to_numpy(recorder.labels[steps : 2 * steps]))
    augmented = make_dataset(data.x_train, data.y_train, 16, shuffle=True, augment=True, seed=3, drop_remainder=True)
    assert _backend.feed(augmented, 3)[0] is augmented  # augmentation stays in the PyDataset
