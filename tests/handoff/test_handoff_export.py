"""The hand-off forms of a best config: keras settings, the Python snippet, load_best, apply_regularization.

Real Keras throughout: the snippet runs in a fresh interpreter, the user models are real Functional and
Sequential models, and penalties are checked against numpy sums over the actual kernels.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from tests.support import base_env
from trainer import (
    BestConfig,
    RegularizationConfig,
    apply_regularization,
    build_model,
    keras_settings,
    load_best,
    python_snippet,
    rescale_for_train_size,
)

CONFIG = RegularizationConfig(weight_decay=3e-3, l1_ratio=0.25, dropout_conv=0.35, dropout_dense=0.45)


def best_config(model: str = "baseline", width: float = 0.25, regularization: RegularizationConfig = CONFIG) -> BestConfig:
    return BestConfig(
        model=model,
        regularization=regularization,
        width=width,
        study="handoff-demo",
        trial_number=7,
        value=0.4125,
        train_size=540,
        epochs=3,
        batch_size=64,
        seed=0,
    )


def known_weights(model: keras.Model, seed: int = 0) -> list[np.ndarray]:
    """Deterministic non-trivial weights (with signs, so L1 and L2 both matter)."""
    rng = np.random.default_rng(seed)
    return [rng.normal(0.0, 0.05, size=w.shape).astype(np.float32) for w in model.get_weights()]


def expected_penalty(kernels: list[np.ndarray], config: RegularizationConfig) -> float:
    return float(sum(config.l1 * np.abs(k).astype(np.float64).sum() + config.l2 * np.square(k.astype(np.float64)).sum() for k in kernels))


def regularization_loss(model: keras.Model) -> float:
    return float(sum(float(loss) for loss in model.losses))


def dropout_rates(model: keras.Model) -> dict[str, float]:
    return {layer.name: layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)}


# --------------------------------------------------------------------------------------------------
# keras_settings
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "regularization",
    [CONFIG, RegularizationConfig(weight_decay=1e-4, l1_ratio=0.0), RegularizationConfig(weight_decay=7e-6, l1_ratio=1.0)],
    ids=["mixed", "pure-l2", "pure-l1"],
)
def test_keras_settings_regularizer_is_what_keras_serialize_gives(regularization):
    settings = keras_settings(best_config(regularization=regularization))
    real = keras.regularizers.serialize(keras.regularizers.L1L2(l1=regularization.l1, l2=regularization.l2))
    assert settings["kernel_regularizer"] == real
    assert json.loads(json.dumps(settings))["kernel_regularizer"] == real  # survives the API's JSON
    rebuilt = keras.regularizers.deserialize(settings["kernel_regularizer"])
    assert (rebuilt.l1, rebuilt.l2) == (regularization.l1, regularization.l2)


@pytest.mark.parametrize("model_name", ["baseline", "vgg"])
def test_keras_settings_name_every_regularized_and_dropout_layer_of_build_model(model_name):
    best = best_config(model_name)
    settings = keras_settings(best)
    model = build_model(best)
    kernels = {layer.name for layer in model.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))}
    dropouts = dropout_rates(model)
    listed_kernels = {name for name, entry in settings["layers"].items() if "kernel_regularizer" in entry}
    listed_dropouts = {name: entry["rate"] for name, entry in settings["layers"].items() if entry["class_name"] == "Dropout"}
    assert listed_kernels == kernels
    for name in kernels:
        layer, entry = model.get_layer(name), settings["layers"][name]
        assert entry["class_name"] == type(layer).__name__
        assert entry.get("filters", entry.get("units")) == getattr(layer, "filters", getattr(layer, "units", None))
    assert listed_dropouts == pytest.approx(dropouts)
    assert set(settings["dropout"]["dropout_conv"]["layers"]) == set(dropouts) - {"classifier_dropout"}
    for name in settings["dropout"]["dropout_conv"]["layers"]:
        assert dropouts[name] == pytest.approx(CONFIG.dropout_conv)
    assert settings["dropout"]["dropout_dense"]["layers"] == ["classifier_dropout"]
    assert settings["dropout"]["dropout_dense"]["rate"] == CONFIG.dropout_dense


# --------------------------------------------------------------------------------------------------
# python_snippet: runs as pasted, in a fresh interpreter, and matches trainer.build_model
# --------------------------------------------------------------------------------------------------


def test_python_snippet_runs_in_a_fresh_interpreter_and_matches_build_model(tmp_path):
    cases = {}
    for model_name in ("baseline", "vgg"):
        best = best_config(model_name)
        snippet = tmp_path / f"{model_name}_snippet.py"
        snippet.write_text(python_snippet(best))
        reference = build_model(best)
        weights = known_weights(reference)
        reference.set_weights(weights)
        np.savez(tmp_path / f"{model_name}_weights.npz", *weights)
        kernels = [layer.kernel.numpy() for layer in reference.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))]
        cases[model_name] = {
            "params": reference.count_params(),
            "layers": [(layer.name, type(layer).__name__) for layer in reference.layers],
            "dropouts": dropout_rates(reference),
            "penalty": expected_penalty(kernels, CONFIG),
            "reference_penalty": regularization_loss(reference),
        }

    # The snippet is run as a script (`python snippet.py`, as pasted into a file) and then its model gets
    # the reference weights; only keras is imported in that interpreter besides the harness's numpy.
    harness = textwrap.dedent(
        """
        import json, runpy, sys
        import numpy as np
        out = {}
        for name in ("baseline", "vgg"):
            namespace = runpy.run_path(f"{name}_snippet.py", run_name="__main__")
            model = namespace["model"]
            with np.load(f"{name}_weights.npz") as archive:
                model.set_weights([archive[f"arr_{i}"] for i in range(len(archive.files))])
            out[name] = {
                "params": model.count_params(),
                "layers": [(layer.name, type(layer).__name__) for layer in model.layers],
                "dropouts": {l.name: l.rate for l in model.layers if type(l).__name__ == "Dropout"},
                "penalty": float(sum(float(loss) for loss in model.losses)),
                "regsearch_imported": "trainer" in sys.modules or "service" in sys.modules,
            }
        print("RESULT " + json.dumps(out))
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", harness], cwd=tmp_path, env=base_env(), capture_output=True, text=True, timeout=180
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    line = next(line for line in completed.stdout.splitlines() if line.startswith("RESULT "))
    results = json.loads(line.removeprefix("RESULT "))
    assert "Total params" in completed.stdout  # `model.summary()` ran: the script runs as pasted
    for model_name, expected in cases.items():
        got = results[model_name]
        assert not got["regsearch_imported"]
        assert got["params"] == expected["params"]
        assert [tuple(item) for item in got["layers"]] == expected["layers"]
        assert got["dropouts"] == pytest.approx(expected["dropouts"])
        assert expected["penalty"] > 0
        assert got["penalty"] == pytest.approx(expected["penalty"], rel=1e-5)
        assert got["penalty"] == pytest.approx(expected["reference_penalty"], rel=1e-6)


# --------------------------------------------------------------------------------------------------
# apply_regularization on the user's own models
# --------------------------------------------------------------------------------------------------


def user_functional_model() -> keras.Model:
    """A user's network, unlike ours: separable/depthwise convs, global pooling, a skip, its own L2."""
    inputs = keras.Input(shape=(16, 16, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="stem")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = keras.layers.Dropout(0.05, name="after_pool")(x)
    branch = keras.layers.SeparableConv2D(6, 3, padding="same", name="separable")(x)
    branch = keras.layers.DepthwiseConv2D(3, padding="same", name="depthwise")(branch)
    x = keras.layers.Add(name="skip")([x, branch])
    x = keras.layers.Activation("relu", name="skip_relu")(x)
    x = keras.layers.Dropout(0.05, name="after_skip")(x)  # fed by a merge of feature maps: a conv dropout
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(12, activation="relu", kernel_regularizer=keras.regularizers.L2(0.5), name="hidden")(x)
    x = keras.layers.Dropout(0.05, name="after_hidden")(x)
    outputs = keras.layers.Dense(4, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs, name="user_functional")


def penalized_kernels(model: keras.Model) -> list[np.ndarray]:
    """Every Conv/Dense kernel (depthwise and pointwise kernels of separable convs)."""
    kernels = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.SeparableConv2D):
            kernels += [layer.depthwise_kernel.numpy(), layer.pointwise_kernel.numpy()]
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            kernels.append(layer.kernel.numpy())
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            kernels.append(layer.kernel.numpy())
    return kernels


def test_apply_regularization_on_a_functional_model_keeps_weights_and_adds_exactly_the_penalties():
    user = user_functional_model()
    user.set_weights(known_weights(user, seed=1))
    images = np.random.default_rng(2).uniform(0, 1, size=(5, 16, 16, 3)).astype(np.float32)
    before = user.predict(images, verbose=0)
    user_penalty = regularization_loss(user)  # only the user's own L2(0.5) on "hidden"

    regularized = apply_regularization(user, best_config())

    assert regularized is not user
    assert isinstance(regularized, keras.Model) and not isinstance(regularized, keras.Sequential)
    for original, copied in zip(user.get_weights(), regularized.get_weights(), strict=True):
        np.testing.assert_array_equal(original, copied)
    np.testing.assert_allclose(regularized.predict(images, verbose=0), before, rtol=1e-6, atol=1e-7)

    kernels = penalized_kernels(user)
    assert len(kernels) == 6  # stem, separable (2), depthwise, hidden, head
    assert len(regularized.losses) == 6  # one penalty per kernel: the user's L2 replaced, biases untouched
    assert regularization_loss(regularized) == pytest.approx(expected_penalty(kernels, CONFIG), rel=1e-5)
    assert dropout_rates(regularized) == {
        "after_pool": CONFIG.dropout_conv,
        "after_skip": CONFIG.dropout_conv,
        "after_hidden": CONFIG.dropout_dense,
    }
    # The user's model itself is untouched.
    assert set(dropout_rates(user).values()) == {0.05}
    assert regularization_loss(user) == pytest.approx(user_penalty)


def test_apply_regularization_on_a_sequential_model_and_a_plain_regularization_config():
    user = keras.Sequential(
        [
            keras.Input(shape=(12, 12, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Dropout(0.1),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.1),  # on the classifier's input (after Flatten): a dense dropout
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dropout(0.1),
            keras.layers.Dense(3),
        ],
        name="user_sequential",
    )
    user.set_weights(known_weights(user, seed=3))
    config = RegularizationConfig(weight_decay=2e-2, l1_ratio=0.6, dropout_conv=0.3, dropout_dense=0.5)

    regularized = apply_regularization(user, config)

    assert isinstance(regularized, keras.Sequential)
    for original, copied in zip(user.get_weights(), regularized.get_weights(), strict=True):
        np.testing.assert_array_equal(original, copied)
    assert regularization_loss(regularized) == pytest.approx(expected_penalty(penalized_kernels(user), config), rel=1e-5)
    assert [layer.rate for layer in regularized.layers if isinstance(layer, keras.layers.Dropout)] == [0.3, 0.5, 0.5]


def test_apply_regularization_matches_build_model_on_our_own_network():
    """Re-regularizing our network with a new config equals building it with that config."""
    ours = build_model(best_config("vgg"))
    ours.set_weights(known_weights(ours, seed=4))
    other = RegularizationConfig(weight_decay=5e-4, l1_ratio=0.5, dropout_conv=0.4, dropout_dense=0.3)
    rebuilt = build_model(other, "vgg", width=0.25)
    rebuilt.set_weights(ours.get_weights())
    regularized = apply_regularization(ours, other)
    assert regularization_loss(regularized) == pytest.approx(regularization_loss(rebuilt), rel=1e-6)
    assert dropout_rates(regularized) == dropout_rates(rebuilt)


def test_apply_regularization_refuses_a_model_without_conv_or_dense():
    inputs = keras.Input(shape=(8,))
    outputs = keras.layers.Dropout(0.2)(keras.layers.LayerNormalization()(inputs))
    with pytest.raises(ValueError, match="no Conv or Dense layer"):
        apply_regularization(keras.Model(inputs, outputs, name="norm_only"), CONFIG)
    with pytest.raises(ValueError, match="not built"):
        apply_regularization(keras.Sequential([keras.layers.Dense(2)]), CONFIG)

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__(name="subclassed")
            self.dense = keras.layers.Dense(2)

        def call(self, inputs):
            return self.dense(inputs)

    subclassed = Subclassed()
    subclassed(np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match="subclassed keras.Model"):
        apply_regularization(subclassed, CONFIG)


# --------------------------------------------------------------------------------------------------
# load_best: the file `regsearch best -o` writes
# --------------------------------------------------------------------------------------------------


def best_json(tmp_path, **changes) -> str:
    values = best_config().to_dict() | {"best_since": "2026-11-24T20:00:00+00:00", "direction": "maximize"}
    for key, value in changes.items():
        if key.startswith("params."):
            values["params"] = dict(values["params"])
            if value is None:
                del values["params"][key.removeprefix("params.")]
            else:
                values["params"][key.removeprefix("params.")] = value
        elif value is None:
            del values[key]
        else:
            values[key] = value
    path = tmp_path / "best.json"
    path.write_text(json.dumps(values))
    return str(path)


def test_load_best_reads_back_the_file_regsearch_best_writes(tmp_path):
    assert load_best(best_json(tmp_path)) == best_config()
    assert load_best(best_json(tmp_path), study="handoff-demo") == best_config()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"params.dropout_conv": None}, "dropout_conv"),
        ({"params.weight_decay": None}, "weight_decay"),
        ({"model": None}, "model"),
        ({"params.dropout_dense": 1.0}, "dropout_dense"),
        ({"params.l1_ratio": 1.5}, "l1_ratio"),
        ({"params.weight_decay": -1e-4}, "weight_decay"),
        ({"width": 0}, "width"),
        ({"model": "resnet"}, "model"),
        ({"train_size": 0}, "train_size"),
        ({"keras": {"l1": 1.0, "l2": 0.0, "dropout_conv": 0.35, "dropout_dense": 0.45}}, "keras.l1"),
    ],
    ids=lambda value: json.dumps(value) if isinstance(value, dict) else value,
)
def test_load_best_refuses_a_missing_or_out_of_range_field_naming_it(tmp_path, changes, field):
    path = best_json(tmp_path, **changes)
    with pytest.raises(ValueError, match=rf"best\.json: .*{field}") as raised:
        load_best(path)
    assert "\n" not in str(raised.value)


def test_load_best_refuses_other_studies_and_bad_files(tmp_path):
    with pytest.raises(ValueError, match="'handoff-demo', not 'other'"):
        load_best(best_json(tmp_path), study="other")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json: not valid JSON"):
        load_best(broken)
    with pytest.raises(FileNotFoundError, match="regsearch best NAME -o"):
        load_best(tmp_path / "absent.json")


# --------------------------------------------------------------------------------------------------
# The lambda/(2n) carry-over
# --------------------------------------------------------------------------------------------------


def test_rescale_for_train_size_keeps_the_textbook_lambda():
    found = RegularizationConfig(weight_decay=2e-3, l1_ratio=0.3, dropout_conv=0.4, dropout_dense=0.35)
    n_study, n_full = 4_500, 50_000
    carried = rescale_for_train_size(found, n_study, n_full)
    # lambda = 2 n l2 (and lambda_1 = n l1) stay fixed; the Keras coefficients shrink as 1/n.
    assert 2 * n_full * carried.l2 == pytest.approx(2 * n_study * found.l2)
    assert n_full * carried.l1 == pytest.approx(n_study * found.l1)
    assert carried.weight_decay == pytest.approx(found.weight_decay * n_study / n_full)
    assert (carried.l1_ratio, carried.dropout_conv, carried.dropout_dense) == (0.3, 0.4, 0.35)
    assert rescale_for_train_size(found, 600, 600) == found
    with pytest.raises(ValueError, match="positive"):
        rescale_for_train_size(found, 0, 600)
