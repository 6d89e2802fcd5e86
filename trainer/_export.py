"""Production hand-off: a study's best regularization, out of the search and into the user's training.

Three forms of the same best config (what ``GET /v1/studies/{name}/best?format=...`` serves):

* ``json``: :meth:`BestConfig.to_dict` (what ``regsearch best NAME -o best.json`` writes and
  :func:`load_best` reads back);
* ``keras``: :func:`keras_settings`, the layer-level settings (the regularizer exactly as
  ``keras.regularizers.serialize`` gives it, every dropout rate and the layer it belongs to);
* ``python``: :func:`python_snippet`, a self-contained Keras script that builds the study's network
  with those settings.

``keras_settings``, ``python_snippet`` and ``load_best`` are pure Python: the API process calls them
and must never import TensorFlow. Only :func:`apply_regularization` imports Keras, on first call.

Both read the networks from :data:`trainer.ARCHITECTURES` (the declaration :func:`trainer.build_model`
builds); the snippet spells the layers out as plain Keras calls so that it runs without regsearch.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit, urlunsplit

from trainer._architecture import ARCHITECTURES, LayerSpec
from trainer._best import BestConfig
from trainer._space import PENALTY_KNOBS, RATE_KNOBS, SEARCH_SPACE_BY_NAME, RegularizationConfig, where

if TYPE_CHECKING:  # pragma: no cover
    import keras

__all__ = [
    "BestConfigUnavailable",
    "apply_regularization",
    "best_from_dict",
    "dropout_parameter",
    "keras_settings",
    "load_best",
    "python_snippet",
]


def _layer_plan(model: str, width: float) -> list[tuple[str, str, dict[str, Any]]]:
    """``(name, class_name, details)`` of every regularized or dropout layer, in model order."""
    plan: list[tuple[str, str, dict[str, Any]]] = []
    previous = None
    for layer in ARCHITECTURES[model].scaled_layers(width):
        if layer.kind == "conv":
            plan.append((layer.name, "Conv2D", {"filters": layer.units}))
        elif layer.kind == "dense":
            plan.append((layer.name, "Dense", {"units": layer.units}))
        elif layer.kind == "dropout":
            plan.append((layer.name, "Dropout", {"parameter": layer.rate, "after": previous}))
        previous = layer.name
    plan.append(("classifier", "Dense", {"units": 10}))  # CIFAR-10's classes (build_model's num_classes)
    return plan


# --------------------------------------------------------------------------------------------------
# keras_settings: the layer-level form
# --------------------------------------------------------------------------------------------------


def _serialized_l1l2(l1: float, l2: float) -> dict[str, Any]:
    """``keras.regularizers.serialize(keras.regularizers.L1L2(l1, l2))``, without importing Keras."""
    return {
        "module": "keras.regularizers",
        "class_name": "L1L2",
        "config": {"l1": float(l1), "l2": float(l2)},
        "registered_name": None,
    }


def _as_best(best: Any, what: str = "best") -> BestConfig:
    if not isinstance(best, BestConfig):
        raise ValueError(f"{what} must be a BestConfig (see trainer.load_best), got {type(best).__name__}")
    return best


def keras_settings(best: BestConfig) -> dict[str, Any]:
    """The layer-level Keras settings of a best config (``best?format=keras``).

    ``kernel_regularizer`` is exactly what ``keras.regularizers.serialize(L1L2(l1, l2))`` returns, so
    ``keras.regularizers.deserialize(settings["kernel_regularizer"])`` rebuilds it. ``layers`` maps each
    layer name of :func:`trainer.build_model`'s network to its settings (the regularizer for every
    Conv2D/Dense kernel, the rate for every Dropout); ``dropout`` says where each rate goes.
    """
    best = _as_best(best)
    regularization = best.regularization
    regularizer = _serialized_l1l2(regularization.l1, regularization.l2)
    rates = regularization.keras_values()
    layers: dict[str, dict[str, Any]] = {}
    dropout: dict[str, dict[str, Any]] = {
        name: {"rate": rates[name], "where": where(name, best.model), "layers": []} for name in RATE_KNOBS
    }
    for name, class_name, details in _layer_plan(best.model, best.width):
        if class_name == "Dropout":
            parameter = details["parameter"]
            layers[name] = {"class_name": "Dropout", "rate": rates[parameter], "parameter": parameter, "after": details["after"]}
            dropout[parameter]["layers"].append(name)
        else:
            layers[name] = {"class_name": class_name, **details, "kernel_regularizer": regularizer}
    return {
        "study": best.study,
        "trial_number": best.trial_number,
        "model": best.model,
        "width": best.width,
        "kernel_regularizer": regularizer,
        "regularized": SEARCH_SPACE_BY_NAME[PENALTY_KNOBS[0]].effect.where,
        "dropout": dropout,
        "layers": layers,
        "train_size": best.train_size,
        "train_size_rule": _TRAIN_SIZE_RULE,
        "uncertainty": _uncertainty(best),
    }


def _uncertainty(best: BestConfig) -> dict[str, Any] | None:
    """How sure the study is of this best (mean, interval, ties, robust ranges), or None for old files."""
    if best.mean is None:
        return None
    fields = ("confirmed", "mean", "std", "n", "ci_low", "ci_high", "confidence", "first_value", "ties", "robust_ranges", "test")
    return best.model_dump(mode="json", include=set(fields))


_TRAIN_SIZE_RULE = (
    "for n training images multiply l1 and l2 by train_size/n (the lambda/(2n) rule: see "
    "trainer.rescale_for_train_size; regsearch retrain does it)."
)


# --------------------------------------------------------------------------------------------------
# python_snippet: the copy-paste form
# --------------------------------------------------------------------------------------------------


def _keras_call(layer: LayerSpec) -> str:
    """The plain Keras call that builds one declared layer (``units`` already scaled)."""
    name = f'name="{layer.name}"'
    if layer.kind == "conv":
        return f'keras.layers.Conv2D({layer.units}, 3, padding="{layer.padding}", kernel_regularizer=regularizer(), {name})'
    if layer.kind == "dense":
        return f'keras.layers.Dense({layer.units}, activation="relu", kernel_regularizer=regularizer(), {name})'
    if layer.kind == "dropout":
        return f"keras.layers.Dropout({layer.rate.upper()}, {name})"
    simple = {
        "relu": 'keras.layers.Activation("relu", {})',
        "batchnorm": "keras.layers.BatchNormalization({})",
        "pool": "keras.layers.MaxPooling2D(2, {})",
        "flatten": "keras.layers.Flatten({})",
    }
    return simple[layer.kind].format(name)


def python_snippet(best: BestConfig) -> str:
    """A self-contained Keras 3 script that builds the study's network with the found regularization.

    It imports only ``keras``, defines ``build_model(input_shape=(32, 32, 3), num_classes=10)`` (the
    layers of :data:`trainer.ARCHITECTURES`, so the same names and parameter count as
    :func:`trainer.build_model`) and ends with ``model = build_model()``, so it runs as pasted. The
    model takes raw pixels (0..255).
    """
    best = _as_best(best)
    regularization = best.regularization
    architecture = ARCHITECTURES[best.model]

    found = f"study {best.study!r}" if best.study else "a regsearch study"
    if best.trial_number is not None:
        found += f", trial {best.trial_number}"
    if best.value is not None:
        found += f" ({best.metric} {best.value:.4f})"
    recipe = best.recipe()
    settings = [f"model={recipe.model}", f"width={recipe.width:g}", f"epochs={recipe.epochs}",
                f"batch_size={recipe.batch_size}", f"learning_rate={recipe.learning_rate:g}", f"seed={recipe.seed}"]
    if recipe.data.augment:
        settings.append("augment=True")

    lines = [
        f'"""The {best.model} CIFAR-10 convnet with the best regularization of {found}.',
        "",
        f"Generated by regsearch ({', '.join(settings)}); needs only Keras 3.",
        "Every Conv2D/Dense kernel carries L1L2(l1=L1, l2=L2); biases and BatchNormalization are not penalized.",
        '"""',
        "",
        "import keras",
        "",
        f"WEIGHT_DECAY = {regularization.weight_decay!r}",
        f"L1_RATIO = {regularization.l1_ratio!r}",
        f"L1 = {regularization.l1!r}  # WEIGHT_DECAY * L1_RATIO",
        f"L2 = {regularization.l2!r}  # WEIGHT_DECAY * (1 - L1_RATIO)",
        *(f"{name.upper()} = {getattr(regularization, name)!r}  # {where(name, best.model)}" for name in RATE_KNOBS),
    ]
    lines += [f"# {line}" for line in best.uncertainty_lines()]
    if best.train_size:
        lines += [
            f"# Found on {best.train_size} training images: on n images use L1 * {best.train_size} / n and",
            f"# L2 * {best.train_size} / n (the lambda/(2n) rule; `regsearch retrain` applies it).",
        ]
    lines += [
        "",
        "",
        "def regularizer():",
        "    return keras.regularizers.L1L2(l1=L1, l2=L2)",
        "",
        "",
        "def build_model(input_shape=(32, 32, 3), num_classes=10):",
        '    inputs = keras.Input(shape=input_shape, name="image")',
        '    x = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)  # raw pixels 0..255 in',
    ]
    lines += [f"    x = {_keras_call(layer)}(x)" for layer in architecture.scaled_layers(best.width)]
    lines += [
        "    outputs = keras.layers.Dense(",
        '        num_classes, activation="softmax", kernel_regularizer=regularizer(), name="classifier"',
        "    )(x)",
        f'    return keras.Model(inputs, outputs, name="{best.model}")',
        "",
        "",
        "model = build_model()",
        'if __name__ == "__main__":',
        "    model.summary()",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# load_best: a file written by `regsearch best -o`, or the service
# --------------------------------------------------------------------------------------------------


class BestConfigUnavailable(LookupError):
    """The best config could not be fetched: unreachable server, unknown study, or no completed trial yet."""


def best_from_dict(values: Any, source: str = "config") -> BestConfig:
    """:meth:`BestConfig.from_dict`; the ``ValueError`` starts with ``source`` and names the field, on one line."""
    try:
        return BestConfig.from_dict(values)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{source}: {error}") from None


def _service_url(source: str, study: str | None) -> tuple[str, str]:
    """``(url, study)`` of the JSON best endpoint for a base URL + study, or a full ``.../best`` URL."""
    parts = urlsplit(source)
    path = parts.path.rstrip("/")
    segments = path.split("/")
    if len(segments) >= 4 and segments[-1] == "best" and segments[-3] == "studies":
        url_study = segments[-2]
        if study is not None and study != url_study:
            raise ValueError(f"study {study!r} does not match the study in the URL ({url_study!r})")
        study = url_study
    elif study:
        path = f"{path}/v1/studies/{quote(study, safe='')}/best"
    else:
        raise ValueError(f"give the study name with a service URL ({source}), or the full /v1/studies/NAME/best URL")
    return urlunsplit((parts.scheme, parts.netloc, path, "", "")), study


def _service_token() -> str | None:
    """The regsearch service's token: ``REGSEARCH_TOKEN``, else its token file on this machine.

    The same places the service's CLI looks (service/config.py: ``token``, ``token_file``); spelled
    out here because the trainer never imports the service.
    """
    import os

    token = os.environ.get("REGSEARCH_TOKEN")
    if token:
        return token.strip()
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    path = os.environ.get("REGSEARCH_TOKEN_FILE") or str(Path(config_home) / "regsearch" / "token")
    try:
        return Path(path).expanduser().read_text().strip() or None
    except OSError:
        return None


def _fetch(source: str, study: str | None, timeout: float) -> tuple[Any, str]:
    import httpx  # the API's client dependency; imported here so that file loading never needs it

    url, study = _service_url(source, study)
    try:
        token = _service_token()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = httpx.get(url, params={"format": "json"}, headers=headers, timeout=timeout, follow_redirects=True)
    except httpx.HTTPError as error:
        reason = str(error) or type(error).__name__
        raise BestConfigUnavailable(f"cannot reach the regsearch service at {url}: {reason}") from None
    if response.status_code != 200:
        detail: Any = None
        try:
            detail = response.json().get("detail")
        except (ValueError, AttributeError):
            pass
        if isinstance(detail, list):  # FastAPI validation errors
            detail = "; ".join(str(item.get("msg", item)) if isinstance(item, Mapping) else str(item) for item in detail)
        detail = detail or response.text.strip()[:200] or response.reason_phrase
        if response.status_code == 404:
            raise BestConfigUnavailable(f"no best config for study {study!r} at {url}: {detail}")
        hint = " (set REGSEARCH_TOKEN to a regsearch token with read scope)" if response.status_code in (401, 403) else ""
        raise BestConfigUnavailable(f"{url} answered HTTP {response.status_code}: {detail}{hint}")
    try:
        return response.json(), url
    except ValueError:
        raise BestConfigUnavailable(f"{url} did not return JSON") from None


def load_best(source: str | Path | Mapping[str, Any] | BestConfig, study: str | None = None, *, timeout: float = 10.0) -> BestConfig:
    """Read a study's best config from a file, a service, or an already-parsed mapping.

    ``source`` is one of:

    * a path to the JSON written by ``regsearch best NAME -o best.json``;
    * a service URL: ``http://host:port`` with ``study`` given, or the full
      ``http://host:port/v1/studies/NAME/best`` URL;
    * the JSON form as a mapping (or a :class:`BestConfig`, returned as is).

    A missing or out-of-range field raises ``ValueError`` naming it (``best.json: config is missing
    field(s): dropout_conv``). An unreachable server, an unknown study or a study without a
    completed trial raises :class:`BestConfigUnavailable` (a ``LookupError``) with one clear line.
    """
    if isinstance(source, BestConfig):
        return source
    if isinstance(source, Mapping):
        return best_from_dict(source, "config")
    if not isinstance(source, (str, Path)):
        raise ValueError(f"source must be a file path, a service URL or a mapping, got {type(source).__name__}")
    text = str(source)
    if text.startswith(("http://", "https://")):
        values, url = _fetch(text, study, timeout)
        best = best_from_dict(values, url)
    else:
        path = Path(source)
        try:
            raw = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such file (write one with `regsearch best NAME -o {path.name}`)") from None
        except OSError as error:
            raise OSError(f"{path}: cannot read: {error.strerror or error}") from None
        try:
            values = json.loads(raw)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from None
        best = best_from_dict(values, str(path))
    if study is not None and best.study is not None and best.study != study:
        raise ValueError(f"{text} holds the best config of study {best.study!r}, not {study!r}")
    return best


# --------------------------------------------------------------------------------------------------
# apply_regularization: the user's own model
# --------------------------------------------------------------------------------------------------


def _kernel_regularizer_keys(layer: Any) -> tuple[str, ...]:
    """The regularizer arguments of ``layer``'s kernels: empty for layers that are not Conv or Dense."""
    import keras

    layers = keras.layers
    if isinstance(layer, (layers.SeparableConv1D, layers.SeparableConv2D)):
        return ("depthwise_regularizer", "pointwise_regularizer")
    if isinstance(layer, (layers.DepthwiseConv1D, layers.DepthwiseConv2D)):
        return ("depthwise_regularizer",)
    conv_and_dense = (
        layers.Conv1D, layers.Conv2D, layers.Conv3D,
        layers.Conv1DTranspose, layers.Conv2DTranspose, layers.Conv3DTranspose,
        layers.Dense, layers.EinsumDense,
    )  # fmt: skip
    if isinstance(layer, conv_and_dense):
        return ("kernel_regularizer",)
    return ()


def _feeding_layers(layer: Any) -> list[Any]:
    """The layers whose outputs ``layer`` consumes (first call site)."""
    nodes = getattr(layer, "_inbound_nodes", None) or []
    if not nodes:
        return []
    feeders = []
    for tensor in nodes[0].input_tensors:
        history = getattr(tensor, "_keras_history", None)
        if history is not None:
            feeders.append(history.operation)
    return feeders


def dropout_parameter(dropout: Any) -> str:
    """``"dropout_conv"`` or ``"dropout_dense"``: which rate a Dropout layer of a built model takes.

    Decided by the layer that feeds it, looking back through layers that only transform values
    (activations, normalization, other dropouts, reshapes of the same kind): a Conv or (non-global)
    pooling layer means the Dropout closes a conv block -> ``dropout_conv``; a Dense layer, Flatten or
    global pooling means it sits in the classifier head -> ``dropout_dense``. When the look-back ends
    elsewhere (the model input, a merge such as Add/Concatenate), the rank of the Dropout's input
    decides: a feature map (batch + 2 or more axes) -> ``dropout_conv``, a flat vector -> ``dropout_dense``.
    """
    import keras

    layers = keras.layers
    pooling = (
        layers.MaxPooling1D, layers.MaxPooling2D, layers.MaxPooling3D,
        layers.AveragePooling1D, layers.AveragePooling2D, layers.AveragePooling3D,
    )  # fmt: skip
    global_pooling = (
        layers.GlobalMaxPooling1D, layers.GlobalMaxPooling2D, layers.GlobalMaxPooling3D,
        layers.GlobalAveragePooling1D, layers.GlobalAveragePooling2D, layers.GlobalAveragePooling3D,
    )  # fmt: skip
    layer = dropout
    for _ in range(1000):  # a chain of value-only layers; the bound only guards against cycles
        feeders = _feeding_layers(layer)
        if len(feeders) != 1:
            break
        layer = feeders[0]
        if isinstance(layer, (layers.Dense, layers.EinsumDense, layers.Flatten) + global_pooling):
            return "dropout_dense"
        if _kernel_regularizer_keys(layer) or isinstance(layer, pooling):
            return "dropout_conv"
        if isinstance(layer, layers.InputLayer) or isinstance(layer, keras.Model):
            break
    nodes = getattr(dropout, "_inbound_nodes", None) or []
    shape = nodes[0].input_tensors[0].shape if nodes and nodes[0].input_tensors else None
    return "dropout_conv" if shape is not None and len(shape) > 2 else "dropout_dense"


def _all_layers(model: Any) -> list[Any]:
    """Every layer of ``model``, nested models included (depth first, model order)."""
    import keras

    found = []
    for layer in model.layers:
        found.append(layer)
        if isinstance(layer, keras.Model):
            found.extend(_all_layers(layer))
    return found


def apply_regularization(model: "keras.Model", config: RegularizationConfig | BestConfig) -> "keras.Model":
    """Return a copy of the user's own Keras model carrying ``config``'s regularization, weights kept.

    * Every Conv (1D/2D/3D, transposed; the depthwise and pointwise kernels of SeparableConv, the
      depthwise kernel of DepthwiseConv) and Dense/EinsumDense kernel gets
      ``keras.regularizers.L1L2(l1=config.l1, l2=config.l2)``, replacing any kernel regularizer it had
      (bias and activity regularizers are left alone).
    * Every ``keras.layers.Dropout`` (SpatialDropout included) gets ``dropout_conv`` or
      ``dropout_dense`` by the rule of :func:`dropout_parameter`: after a conv/pooling block ->
      ``dropout_conv``; after a Dense layer, Flatten or global pooling -> ``dropout_dense``. No Dropout
      layer is added: a model without one gets a warning.

    Works for Sequential and Functional models (nested models too). The copy is uncompiled: compile it
    with your optimizer and loss. ``config`` is a :class:`RegularizationConfig` or a :class:`BestConfig`.
    Raises ``ValueError`` for a model that is not built or has no Conv or Dense layer.
    """
    import keras

    if isinstance(config, BestConfig):
        config = config.regularization
    if not isinstance(config, RegularizationConfig):
        raise ValueError(f"config must be a RegularizationConfig or BestConfig, got {type(config).__name__}")
    from keras.src.models.functional import Functional  # what keras.Model(inputs, outputs) builds

    if not isinstance(model, keras.Model):
        raise ValueError(f"model must be a keras.Model (Sequential or Functional), got {type(model).__name__}")
    if not isinstance(model, (keras.Sequential, Functional)):
        raise ValueError(
            f"model {model.name!r} is a subclassed keras.Model ({type(model).__name__}): its layers are wired in "
            "Python code, so it cannot be copied layer by layer; build it as a Functional or Sequential model"
        )
    if isinstance(model, keras.Sequential) and not model.built:
        raise ValueError(
            f"model {model.name!r} is not built: start it with keras.Input(shape=...) or call model.build(input_shape)"
        )

    layers = _all_layers(model)
    regularized = [layer for layer in layers if _kernel_regularizer_keys(layer)]
    if not regularized:
        kinds = sorted({type(layer).__name__ for layer in layers}) or ["no layers"]
        raise ValueError(
            f"model {model.name!r} has no Conv or Dense layer to regularize (it has: {', '.join(kinds)})"
        )
    rates = {"dropout_conv": config.dropout_conv, "dropout_dense": config.dropout_dense}
    dropout_rates = {id(layer): rates[dropout_parameter(layer)] for layer in layers if isinstance(layer, keras.layers.Dropout)}
    if not dropout_rates and (config.dropout_conv or config.dropout_dense):
        warnings.warn(
            f"model {model.name!r} has no Dropout layer; only the L1L2 regularizer was applied "
            "(apply_regularization sets the rates of existing Dropout layers, it does not add any)",
            stacklevel=2,
        )

    def clone_layer(layer: Any) -> Any:
        layer_config = layer.get_config()
        for key in _kernel_regularizer_keys(layer):
            layer_config[key] = keras.regularizers.L1L2(l1=config.l1, l2=config.l2)
        if id(layer) in dropout_rates:
            layer_config["rate"] = dropout_rates[id(layer)]
        return type(layer).from_config(layer_config)

    copy = keras.models.clone_model(model, clone_function=clone_layer, recursive=True)
    copy.set_weights(model.get_weights())
    return copy
