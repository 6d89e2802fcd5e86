"""The trainer is a library: no module under trainer/ imports the service, and one recipe feeds every form."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from trainer import ARCHITECTURES, MODELS, BestConfig, Recipe, RegularizationConfig, TrainSettings

TRAINER = Path(__file__).resolve().parents[2] / "trainer"

# Source and declarations, no Keras: the JAX pass of `make test` would only repeat these.
pytestmark = pytest.mark.one_backend


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module":
            found.update(arg.value for arg in node.args if isinstance(arg, ast.Constant) and isinstance(arg.value, str))
    return found


def test_no_trainer_module_imports_the_service():
    files = sorted(TRAINER.glob("*.py"))
    assert len(files) >= 10, files
    offenders = {
        path.name: sorted(name for name in imported_modules(path) if name == "service" or name.startswith("service."))
        for path in files
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_the_recipe_is_declared_once():
    """TrainSettings and BestConfig are Recipes: same defaults and bounds by construction."""
    for model in (TrainSettings, BestConfig):
        assert issubclass(model, Recipe)
        for name, field in Recipe.model_fields.items():
            if name != "model":  # a best config must name its network
                assert model.model_fields[name].default == field.default or name == "data", (model, name)
            assert model.model_fields[name].metadata == field.metadata, (model, name)
    assert (TrainSettings().epochs, TrainSettings().batch_size) == (Recipe().epochs, Recipe().batch_size) == (10, 128)
    with pytest.raises(ValueError, match="width"):
        TrainSettings(width=9)
    best = BestConfig(model="vgg", regularization=RegularizationConfig(), learning_rate=0.05, seed=3)
    assert best.recipe() == Recipe(model="vgg", learning_rate=0.05, seed=3)
    assert BestConfig.from_dict(best.to_dict()) == best


def test_models_come_from_the_architecture_declaration():
    assert MODELS == tuple(ARCHITECTURES) == ("baseline", "vgg")
    for architecture in ARCHITECTURES.values():
        kinds = [layer.kind for layer in architecture.layers]
        for index, kind in enumerate(kinds):
            if kind == "dropout":
                assert kinds[index - 1] in ("pool", "flatten", "dense"), (architecture.name, index)
