"""The answer's words are true: no tie claimed against nobody, no margin of a config over itself, an
interval that covers zero read as "the defaults are as good"."""

from __future__ import annotations

from types import SimpleNamespace

from service.api.dashboard_view import margin_line
from trainer import BestConfig

BEST = {"model": "baseline", "params": {"weight_decay": 1e-4, "l1_ratio": 0.0, "dropout_conv": 0.3, "dropout_dense": 0.5},
        "mean": 0.3, "n": 3, "ci_low": 0.25, "ci_high": 0.35, "std": 0.02, "confirmed": True}


def test_ties_are_worded_by_how_many_configs_were_compared():
    alone = BestConfig.model_validate({**BEST, "candidates": 1}).uncertainty_lines()
    assert "no tie possible: no other config was compared" in alone and not any("significantly" in line for line in alone)
    three = BestConfig.model_validate({**BEST, "candidates": 4}).uncertainty_lines()
    assert "no tie: the other 3 compared configs are significantly worse" in three
    reference = BestConfig.model_validate({**BEST, "candidates": 4, "is_reference": True}).uncertainty_lines()
    assert any(line.startswith("the best is the reference config itself (the defaults)") for line in reference)


def test_the_margin_over_the_defaults_says_what_its_interval_supports():
    def margin(value, low=None, high=None):
        return SimpleNamespace(is_reference=False, margin=SimpleNamespace(value=value, low=low, high=high))

    assert margin_line(SimpleNamespace(is_reference=True, margin=None)).startswith("Margin over the defaults: none, the best *is*")
    assert "the defaults are as good, within noise" in margin_line(margin(0.01, -0.02, 0.04))
    assert "better than the defaults" in margin_line(margin(0.05, 0.01, 0.09))
    assert "single runs: no interval" in margin_line(margin(0.05))
