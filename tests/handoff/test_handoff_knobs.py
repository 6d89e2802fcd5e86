"""A knob is declared once, with its effect: a throwaway knob added to the table reaches the network and every export.

No parameter is added to regsearch: a copy of the trainer gets one more row in ``SEARCH_SPACE`` (a rate knob,
``dropout_extra``) and one more layer tagged with it in the vgg network (where it acts), and a process importing
that copy (and the real service) sees the knob in the config, the plain and the search networks, the best-config
JSON, ``keras_settings``, the snippet, the study spec, the Optuna distributions, the CSV columns and the CLI
summary; a stored config without the knob still loads, with its default.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

from tests.support import ROOT

KNOB_ROW = '''    ParamSpec(
        name="dropout_extra",
        default=0.1,
        low=0.0,
        high=0.2,
        log=False,
        minimum=0.0,
        minimum_inclusive=True,
        maximum=1.0,
        maximum_inclusive=False,
        description="A throwaway knob of the test.",
        effect=Effect("rate", "after Flatten"),
    ),
)
'''
EXTRA_LAYER = '            LayerSpec("flatten", "flatten"),\n            LayerSpec("dropout", "extra_dropout", rate="dropout_extra"),\n            LayerSpec("dense", "dense", 256),'

CHECK = textwrap.dedent(
    """
    import dataclasses, types
    import trainer, keras
    assert trainer.__file__.startswith(COPY), trainer.__file__
    from trainer import BestConfig, RegularizationConfig, build_model
    from trainer._export import keras_settings, python_snippet
    from trainer._keras_file import regularization_of
    from trainer._models import Knobs, build_search_model

    config = RegularizationConfig(dropout_extra=0.15)
    old = {"weight_decay": 1e-4, "l1_ratio": 0.0, "dropout_conv": 0.3, "dropout_dense": 0.5}
    assert RegularizationConfig.from_dict(old).dropout_extra == 0.1  # a config stored before the knob: its default
    assert config.keras_values()["dropout_extra"] == 0.15

    # the network: the plain build and the search build
    plain = build_model(config, "vgg", width=0.25)
    assert plain.get_layer("extra_dropout").rate == 0.15
    assert regularization_of(plain)["dropout_extra"] == 0.15
    knobs = Knobs(config)
    assert abs(float(knobs.dropout_extra.numpy()) - 0.15) < 1e-7  # a float32 variable
    search = build_search_model(knobs, "vgg", width=0.25)
    assert search.get_layer("extra_dropout").which == "dropout_extra"
    assert plain.count_params() == search.count_params() - len(knobs.weights)  # the knobs are the search model's weights

    # every export
    best = BestConfig.model_validate({"model": "vgg", "width": 0.25, "params": config.to_dict(), "study": "s"})
    assert best.to_dict()["params"]["dropout_extra"] == 0.15 and best.to_dict()["keras"]["dropout_extra"] == 0.15
    assert BestConfig.from_dict({"model": "vgg", "params": old}).regularization.dropout_extra == 0.1
    settings = keras_settings(best)
    assert settings["dropout"]["dropout_extra"] == {"rate": 0.15, "where": "after Flatten", "layers": ["extra_dropout"]}
    assert settings["layers"]["extra_dropout"]["rate"] == 0.15
    snippet = python_snippet(best)
    assert "DROPOUT_EXTRA = 0.15  # after Flatten" in snippet
    namespace = {}
    exec(snippet, namespace)
    assert namespace["model"].get_layer("extra_dropout").rate == 0.15

    # the service: the spec, the search model, the export columns, the CLI summary
    from service._optuna import distributions
    from service.cli.train import _summary
    from service.features import PARAM_COLUMNS
    from service.schemas import StudySpec
    spec = StudySpec.model_validate({"name": "k", "search_space": {"dropout_extra": {"low": 0.0, "high": 0.1}}})
    assert distributions(spec)["dropout_extra"].high == 0.1
    assert "dropout_extra" in StudySpec.model_json_schema()["$defs"]["SearchSpace"]["properties"]
    assert "dropout_extra" in PARAM_COLUMNS
    result = types.SimpleNamespace(config=config, settings=types.SimpleNamespace(model="vgg", width=0.25), precision="float32",
                                   train_size=1, val_size=1, history=[], val_accuracy=0.0, gap=0.0,
                                   weight_norms={"l2": 0.0}, sparsity=0.0, wall_time_s=0.0, images_per_second=0.0)
    assert "dropout_extra=0.15" in _summary(result)
    print("ok")
    """
)


def test_a_throwaway_knob_reaches_the_network_and_every_export(tmp_path):
    copy = tmp_path / "trainer"
    shutil.copytree(ROOT / "trainer", copy, ignore=shutil.ignore_patterns("__pycache__"))
    space = (copy / "_space.py").read_text()
    table_end = space.index("\n)\n", space.index("SEARCH_SPACE: tuple[ParamSpec, ...] = ("))
    (copy / "_space.py").write_text(space[:table_end + 1] + KNOB_ROW + space[table_end + 3:])
    architecture = (copy / "_architecture.py").read_text()
    vgg = architecture.index('"vgg": Architecture(')
    flatten_dense = '            LayerSpec("flatten", "flatten"),\n            LayerSpec("dense", "dense", 256),'
    assert architecture.index(flatten_dense, vgg) > vgg
    (copy / "_architecture.py").write_text(architecture[:vgg] + architecture[vgg:].replace(flatten_dense, EXTRA_LAYER, 1))

    env = {**os.environ, "PYTHONPATH": str(tmp_path), "TF_CPP_MIN_LOG_LEVEL": "3"}
    script = f"COPY = {str(tmp_path)!r}\n" + CHECK
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")
