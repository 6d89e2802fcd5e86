"""The report's figures, as Plotly figures (``plotly.graph_objects``; Optuna's ``optuna.visualization`` draws
with the same library). Each function returns a figure, or None when the study has nothing to draw yet.

Accuracies and gaps are shown in percent (points), the way a person reads them; the hover text of every
point names its trial.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go

from service.report._data import ReportData, TrialPoint
from trainer import SEARCH_SPACE_BY_NAME

__all__ = ["FIGURES", "dropout_figure", "gap_figure", "importance_figure", "curves_figure", "sparsity_figure",
           "sure_figure", "weight_decay_figure"]

ACCURACY_AXIS = "validation accuracy (%)"
WEIGHT_DECAY_AXIS = "weight decay (L1 + L2 coefficient)"
L1_COLORS = "Viridis"
REFERENCE_STYLE = {"symbol": "star", "size": 17, "color": "#d62728", "line": {"width": 1, "color": "#1b1f24"}}
PRUNED_STYLE = {"symbol": "x-thin-open", "size": 9, "color": "#7f7f7f", "line": {"width": 2, "color": "#7f7f7f"}}
BAND_COLOR = "rgba(44, 160, 44, 0.14)"


def _layout(figure: go.Figure, *, x: str, y: str, log_x: bool = False, height: int | None = None) -> go.Figure:
    figure.update_layout(
        template="plotly_white",
        margin={"l": 60, "r": 16, "t": 28, "b": 56},
        legend={"orientation": "h", "yanchor": "top", "y": -0.2, "x": 0, "font": {"size": 12}},
        font={"size": 13},
        hoverlabel={"align": "left"},
        autosize=True,
        **({"height": height} if height else {}),
    )
    figure.update_xaxes(title_text=x, type="log" if log_x else "linear", automargin=True)
    figure.update_yaxes(title_text=y, automargin=True)
    return figure


def _percent(value: float | None) -> float | None:
    return None if value is None else 100.0 * float(value)


def _hover(trial: TrialPoint, extra: str = "") -> str:
    params = "<br>".join(
        f"{name} {trial.param(name):.3g}" for name in SEARCH_SPACE_BY_NAME if trial.param(name) is not None
    )
    stage = "" if trial.stage == "search" else f" ({trial.stage})"
    return f"trial #{trial.number}{stage}<br>{params}{extra}"


def _trial_trace(trials: Sequence[TrialPoint], x: str, *, name: str, y: Any = None, colored: bool = True,
                 marker: dict[str, Any] | None = None, extra: Any = None, showscale: bool = True) -> go.Scatter:
    """One marker per trial: x = parameter ``x``, y = its accuracy (or ``y(trial)``), coloured by its L1 share."""
    ys = [y(trial) if y else _percent(trial.value) for trial in trials]
    style: dict[str, Any] = dict(marker or {})
    if colored:
        style.update(color=[trial.param("l1_ratio") for trial in trials], colorscale=L1_COLORS, cmin=0.0, cmax=1.0, size=10,
                     line={"width": 0.5, "color": "#1b1f24"},
                     colorbar={"title": {"text": "L1 share", "side": "right"}, "thickness": 12, "len": 0.8} if showscale else None,
                     showscale=showscale)
    return go.Scatter(
        x=[trial.param(x) for trial in trials], y=ys, mode="markers", name=name, marker=style,
        text=[_hover(trial, extra(trial) if extra else "") for trial in trials], hovertemplate="%{text}<br>%{y:.1f}<extra></extra>",
    )


def _search_traces(data: ReportData, x: str, *, showscale: bool = True) -> list[go.Scatter]:
    """The complete search trials coloured by L1 share, the reference apart, the pruned ones apart at the epoch they stopped."""
    references = data.reference_numbers
    complete = [trial for trial in data.complete if trial.number not in references]
    traces = []
    if complete:
        traces.append(_trial_trace(complete, x, name="complete trial (colour: L1 share)", showscale=showscale))
    reference = [trial for trial in data.complete if trial.number in references]
    if reference:
        traces.append(_trial_trace(reference, x, name="reference (the defaults)", colored=False, marker=REFERENCE_STYLE))
    if data.pruned:
        traces.append(_trial_trace(
            data.pruned, x, name="pruned (accuracy at the epoch it stopped)", colored=False, marker=PRUNED_STYLE,
            y=lambda trial: _percent(trial.curve[trial.stopped_at]),
            extra=lambda trial: f"<br>pruned after epoch {trial.stopped_at} of {data.spec.epochs}",
        ))
    return traces


def _best_annotation(figure: go.Figure, data: ReportData, x: str, *, log_x: bool = False, **where: Any) -> None:
    best = data.best
    trial = data.trial(best.trial_number) if best is not None else None
    if trial is None or trial.value is None or trial.param(x) is None:
        return
    position = trial.param(x)
    figure.add_annotation(x=math.log10(position) if log_x else position, y=_percent(trial.value), text="best",
                          showarrow=True, arrowhead=2, ax=0, ay=-34, font={"size": 12}, **where)


def _robust_range(figure: go.Figure, data: ReportData, name: str, *, log_x: bool = False) -> None:
    """Shade the best's robust range of ``name`` (the best and its ties: as good, within noise)."""
    if data.best is None or name not in data.best.robust_ranges:
        return
    span = data.best.robust_ranges[name]
    if span.high > span.low:
        figure.add_vrect(x0=span.low, x1=span.high, fillcolor=BAND_COLOR, line_width=0, layer="below")
        label = "best's robust range"
    else:
        figure.add_vline(x=span.low, line_dash="dot", line_color="#2ca02c")
        label = "best (no tie)"
    # Placed by hand: on a log axis an annotation's x is log10 of the value (add_vrect's own label is not).
    figure.add_annotation(x=math.log10(span.low) if log_x else span.low, y=0, yref="paper", yanchor="bottom", xanchor="left",
                          text=label, showarrow=False, font={"size": 11, "color": "#2ca02c"})


def _log_axis(figure: go.Figure, low: float, high: float) -> None:
    """A log x axis over ``[low, high]`` (the searched bounds), a tick per decade."""
    figure.update_xaxes(type="log", range=[math.log10(low) - 0.1, math.log10(high) + 0.1], dtick=1, exponentformat="power")


def weight_decay_figure(data: ReportData) -> go.Figure | None:
    """1. Accuracy against weight decay (log axis), coloured by L1 share; pruned apart; reference; robust range."""
    traces = _search_traces(data, "weight_decay")
    if not traces:
        return None
    figure = go.Figure(traces)
    _layout(figure, x=WEIGHT_DECAY_AXIS, y=ACCURACY_AXIS, log_x=True)
    _log_axis(figure, data.spec.search_space.weight_decay.low, data.spec.search_space.weight_decay.high)
    _robust_range(figure, data, "weight_decay", log_x=True)
    _best_annotation(figure, data, "weight_decay", log_x=True)
    return figure


def dropout_figure(data: ReportData, name: str) -> go.Figure | None:
    """2. Accuracy against one dropout rate, with the band the search covers."""
    traces = _search_traces(data, name)
    if not traces:
        return None
    figure = go.Figure(traces)
    bounds = getattr(data.spec.search_space, name)
    _layout(figure, x=f"{name} (share of units dropped)", y=ACCURACY_AXIS)
    figure.add_vrect(x0=bounds.low, x1=bounds.high, fillcolor="rgba(31, 119, 180, 0.08)", line_width=0, layer="below",
                     annotation_text=f"searched {bounds.low:g}–{bounds.high:g}", annotation_position="top right",
                     annotation_font_size=11, annotation_font_color="#1f77b4")
    _robust_range(figure, data, name)
    low, high = min(bounds.low, 0.3), max(bounds.high, 0.5)
    figure.update_xaxes(range=[max(0.0, low - 0.05), min(1.0, high + 0.05)])
    _best_annotation(figure, data, name)
    return figure


def gap_figure(data: ReportData) -> go.Figure | None:
    """3. Final generalization gap (train - validation accuracy) against the weight decay, with max_gap."""
    trials = [trial for trial in data.complete if trial.row.get("gap") is not None]
    if not trials:
        return None
    dropout = [((trial.param("dropout_conv") or 0) + (trial.param("dropout_dense") or 0)) / 2 for trial in trials]
    figure = go.Figure(go.Scatter(
        x=[trial.param("weight_decay") for trial in trials], y=[_percent(trial.row["gap"]) for trial in trials],
        mode="markers", name="complete trial (colour: mean dropout rate)",
        marker={"color": dropout, "colorscale": "Plasma", "size": 10, "line": {"width": 0.5, "color": "#1b1f24"},
                "colorbar": {"title": {"text": "dropout", "side": "right"}, "thickness": 12, "len": 0.8},
                "symbol": ["star" if trial.number in data.reference_numbers else "circle" for trial in trials]},
        text=[_hover(trial, f"<br>train {_percent(trial.row.get('train_accuracy')) or 0:.1f} %, "
                            f"validation {_percent(trial.value):.1f} %") for trial in trials],
        hovertemplate="%{text}<br>gap %{y:.1f} points<extra></extra>",
    ))
    _layout(figure, x=WEIGHT_DECAY_AXIS, y="gap: train − val. (points)", log_x=True)
    _log_axis(figure, data.spec.search_space.weight_decay.low, data.spec.search_space.weight_decay.high)
    if data.spec.max_gap is not None:
        figure.add_hline(y=100 * data.spec.max_gap, line_dash="dash", line_color="#d62728",
                         annotation_text=f"max_gap {100 * data.spec.max_gap:g} points: above it a trial is infeasible",
                         annotation_position="top left", annotation_font_size=11)
    figure.add_hline(y=0, line_color="#aaaaaa", line_width=1)
    return figure


def sparsity_figure(data: ReportData) -> go.Figure | None:
    """4. Share of near-zero kernel weights against the L1 share, coloured by the weight decay."""
    trials = [trial for trial in data.complete if trial.row.get("sparsity") is not None]
    if not trials:
        return None
    figure = go.Figure(go.Scatter(
        x=[trial.param("l1_ratio") for trial in trials], y=[_percent(trial.row["sparsity"]) for trial in trials],
        mode="markers", name="complete trial (colour: log10 weight decay)",
        marker={"color": [math.log10(trial.param("weight_decay")) for trial in trials], "colorscale": "Cividis", "size": 10,
                "line": {"width": 0.5, "color": "#1b1f24"},
                "colorbar": {"title": {"text": "log10 wd", "side": "right"}, "thickness": 12, "len": 0.8},
                "symbol": ["star" if trial.number in data.reference_numbers else "circle" for trial in trials]},
        text=[_hover(trial) for trial in trials],
        hovertemplate="%{text}<br>sparsity %{y:.2f} %<extra></extra>",
    ))
    _layout(figure, x="L1 share (l1_ratio)", y="weights |w| < 0.001 (%)")
    figure.update_xaxes(range=[-0.03, 1.03])
    return figure


def curve_runs(data: ReportData) -> list[tuple[str, list[TrialPoint]]]:
    """The configs whose learning curves are drawn: the confirmation's candidates (top configs and the reference),
    best first, each with its runs (its search trial, then its complete repeats)."""
    numbers = [candidate["trial_number"] for candidate in (data.summary or {}).get("candidates", [])]
    if not data.spec.confirm.top_k or not numbers:  # confirmation off (or not begun): the top 3 by value and the reference
        ranked = sorted(data.complete, key=lambda trial: (-trial.value, trial.number))
        numbers = [*numbers, *(trial.number for trial in ranked if trial.number not in numbers)][:3]
    numbers += [number for number in sorted(data.reference_numbers) if number not in numbers]
    best = data.best.trial_number if data.best is not None else None
    runs = []
    for number in numbers:
        trial = data.trial(number)
        if trial is None or not trial.curve:
            continue
        label = f"#{number}" + (" best" if number == best else "") + (" reference" if number in data.reference_numbers else "")
        runs.append((label, [trial, *data.repeats_of(number)]))
    return runs


def curves_figure(data: ReportData) -> go.Figure | None:
    """5. Validation accuracy per epoch of the top configs and the reference; repeats as a band around the mean."""
    runs = curve_runs(data)
    if not runs:
        return None
    figure = go.Figure()
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
    for index, (label, trials) in enumerate(runs):
        color = "#d62728" if "reference" in label else palette[index % len(palette)]
        epochs = sorted(set.intersection(*(set(trial.curve) for trial in trials)))
        values = [[100 * trial.curve[epoch] for trial in trials] for epoch in epochs]
        mean = [sum(column) / len(column) for column in values]
        if len(trials) > 1:
            figure.add_trace(go.Scatter(x=epochs, y=[max(column) for column in values], mode="lines", line={"width": 0},
                                        showlegend=False, hoverinfo="skip", legendgroup=label))
            figure.add_trace(go.Scatter(x=epochs, y=[min(column) for column in values], mode="lines", line={"width": 0},
                                        fill="tonexty", fillcolor=_transparent(color), showlegend=False, hoverinfo="skip",
                                        legendgroup=label))
        runs_text = f"mean of {len(trials)} runs" if len(trials) > 1 else "1 run"
        figure.add_trace(go.Scatter(
            x=epochs, y=mean, mode="lines+markers", name=f"{label} ({runs_text})", legendgroup=label,
            line={"color": color, "width": 2.5 if "best" in label else 1.8, "dash": "dash" if "reference" in label else "solid"},
            marker={"size": 7, "color": color},
            hovertemplate=f"{label}, {runs_text}<br>epoch %{{x}}: %{{y:.1f}} %<extra></extra>",
        ))
    _layout(figure, x="epoch", y=ACCURACY_AXIS)
    figure.update_xaxes(dtick=1 if data.spec.epochs <= 20 else None)
    return figure


def _transparent(color: str) -> str:
    red, green, blue = (int(color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({red}, {green}, {blue}, 0.18)"


def sure_figure(data: ReportData) -> go.Figure | None:
    """6. Each candidate's mean validation accuracy with its 95 % interval (the confirmation's statistics)."""
    candidates = (data.summary or {}).get("candidates", [])
    if not candidates:
        return None
    references = data.reference_numbers
    labels = [f"#{c['trial_number']}" + (" best" if i == 0 else "") + (" reference" if c["trial_number"] in references else "")
              for i, c in enumerate(candidates)]
    means = [100 * c["mean"] for c in candidates]
    plus = [None if c.get("ci_high") is None else 100 * (c["ci_high"] - c["mean"]) for c in candidates]
    minus = [None if c.get("ci_low") is None else 100 * (c["mean"] - c["ci_low"]) for c in candidates]
    figure = go.Figure(go.Scatter(
        x=means, y=labels, mode="markers", name="mean over its runs, with its 95 % interval",
        marker={"size": 11, "color": ["#d62728" if c["trial_number"] in references else "#1f77b4" for c in candidates],
                "symbol": ["star" if c["trial_number"] in references else "circle" for c in candidates]},
        error_x={"type": "data", "symmetric": False, "array": [p or 0 for p in plus], "arrayminus": [m or 0 for m in minus],
                 "thickness": 2, "width": 6, "color": "#57606a"},
        text=[f"{c['n']} run(s)" for c in candidates],
        hovertemplate="%{y}: mean %{x:.1f} % over %{text}<extra></extra>",
    ))
    _layout(figure, x="mean validation accuracy (%)", y="", height=max(220, 90 + 46 * len(candidates)))
    figure.update_yaxes(autorange="reversed", type="category")
    return figure


def importance_figure(data: ReportData) -> go.Figure | None:
    """7. Each parameter's importance, as ``GET .../importance`` answers it."""
    if data.importance is None:
        return None
    items = list(data.importance.importances.items())
    figure = go.Figure(go.Bar(
        x=[100 * value for _, value in items], y=[name for name, _ in items], orientation="h", marker={"color": "#1f77b4"},
        name=f"{data.importance.evaluator}, {data.importance.n_trials} complete trials",
        hovertemplate="%{y}: %{x:.1f} % of the total<extra></extra>", showlegend=False,
    ))
    _layout(figure, x=f"importance (% of the total, {data.importance.evaluator})", y="", height=300)
    figure.update_yaxes(autorange="reversed")
    return figure


#: The figures in page order: (element id, builder).
FIGURES: tuple[tuple[str, Any], ...] = (
    ("fig-weight-decay", weight_decay_figure),
    ("fig-dropout-conv", lambda data: dropout_figure(data, "dropout_conv")),
    ("fig-dropout-dense", lambda data: dropout_figure(data, "dropout_dense")),
    ("fig-gap", gap_figure),
    ("fig-sparsity", sparsity_figure),
    ("fig-curves", curves_figure),
    ("fig-sure", sure_figure),
    ("fig-importance", importance_figure),
)
