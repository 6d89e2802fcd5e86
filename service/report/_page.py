"""The report as one self-contained HTML page: the figures, the words around them and Plotly's JavaScript
inlined from the installed ``plotly`` package (no CDN: the page, saved to a file, works offline)."""

from __future__ import annotations

import functools
import html
import json
from typing import Any

from service.report._data import ReportData
from service.report._figures import FIGURES
from trainer import SEARCH_SPACE_BY_NAME

__all__ = ["plotly_js", "render", "how_sure"]

PLOT_CONFIG = {"responsive": True, "displaylogo": False, "modeBarButtonsToRemove": ["lasso2d", "select2d"]}

CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: #1b1f24; background: #f4f5f7; }
main { max-width: 1120px; margin: 0 auto; padding: 12px; }
header h1 { font-size: 1.5em; margin: 8px 0 2px; word-break: break-word; }
.meta { color: #57606a; font-size: .92em; margin: 0; }
.status { display: inline-block; padding: 1px 8px; border-radius: 10px; background: #ddf4ff; color: #0a3069; font-weight: 600; }
.status.completed { background: #dafbe1; color: #116329; }
.status.failed, .status.stopped { background: #ffebe9; color: #82071e; }
section { background: #fff; border: 1px solid #d8dee4; border-radius: 8px; padding: 12px 16px; margin: 14px 0; }
section h2 { font-size: 1.15em; margin: 2px 0 6px; }
section p { margin: 6px 0; }
.plot { width: 100%; height: 430px; }
.plot.short { height: auto; }
.grid { display: grid; grid-template-columns: 1fr 1fr; gap: 12px; }
.note { color: #57606a; font-style: italic; }
.lead { font-size: 1.08em; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; font-size: .93em; margin: 6px 0; }
th, td { border-bottom: 1px solid #e4e7eb; padding: 3px 10px 3px 0; text-align: left; vertical-align: top; }
td.num { font-variant-numeric: tabular-nums; }
pre { background: #f6f8fa; border: 1px solid #e4e7eb; border-radius: 6px; padding: 8px 10px; overflow-x: auto; font-size: .88em; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
nav { font-size: .9em; margin: 8px 0; }
nav a { margin-right: 10px; white-space: nowrap; }
@media (max-width: 720px) {
  main { padding: 6px; }
  .grid { grid-template-columns: 1fr; }
  .plot { height: 360px; }
  section { padding: 10px; }
  header h1 { font-size: 1.25em; }
}
"""


#: Fit every plot to its box once the page is laid out (a plot drawn while the page loads can take a
#: provisional width: phones), and again on rotation; plotly's ``responsive`` covers later resizes.
RESIZE_SCRIPT = (
    "function fitPlots(){document.querySelectorAll('.js-plotly-plot').forEach(function(gd){Plotly.Plots.resize(gd);});}"
    "window.addEventListener('load',fitPlots);window.addEventListener('orientationchange',fitPlots);"
)


@functools.lru_cache(maxsize=1)
def plotly_js() -> str:
    """plotly.js as the installed ``plotly`` package ships it (read once per process)."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def _e(value: Any) -> str:
    return html.escape(str(value))


def _pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f} %"


def _points(value: float, digits: int = 1) -> str:
    return f"{100 * value:.{digits}f}"


def _figure_html(figure: Any, element_id: str, css: str = "plot") -> str:
    body = figure.to_html(full_html=False, include_plotlyjs=False, div_id=element_id, config=PLOT_CONFIG,
                          default_width="100%", default_height="100%")
    style = f' style="height:{figure.layout.height}px"' if figure.layout.height else ""
    return f'<div class="{css}" data-figure="{element_id}"{style}>{body}</div>'


def _missing(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _candidate(data: ReportData, number: int) -> dict[str, Any] | None:
    return next((c for c in (data.summary or {}).get("candidates", []) if c["trial_number"] == number), None)


def _runs_text(stats: dict[str, Any]) -> str:
    """``a mean validation accuracy of 62.3 % over 3 runs (95 % interval ...)``, or the single run's value."""
    n = stats.get("n") or 1
    if n == 1:
        return f"a validation accuracy of {_pct(stats.get('mean'))} in its single run (no interval: repeats give one)"
    text = f"a mean validation accuracy of {_pct(stats.get('mean'))} over {n} runs"
    if stats.get("ci_low") is not None and stats.get("ci_high") is not None:
        text += f" (95 % interval {_points(stats['ci_low'])} to {_points(stats['ci_high'])} %)"
    return text


def how_sure(data: ReportData) -> list[str]:
    """Section 6 in words: the best's mean and interval, the reference's, the margin with its interval, the ties."""
    best = data.best
    if best is None:
        return ["No trial has completed yet: nothing to compare."]
    lines = [f"The best config (trial #{best.trial_number}) reaches {_runs_text(best.model_dump())}."]
    margin = data.study.margin
    references = sorted(data.reference_numbers)
    if references:
        reference = _candidate(data, references[0])
        if reference is not None:
            lines.append(f"The defaults (the reference, trial #{references[0]}) reach {_runs_text(reference)}.")
        elif margin is not None:
            lines.append(f"The defaults (the reference, trial #{references[0]}) reach {_pct(margin.reference)}.")
    elif data.spec.reference:
        lines.append("The reference (the defaults) has not completed yet, so there is no margin over it.")
    else:
        lines.append("This study has no reference run (reference: false), so there is no margin over the defaults.")
    if best.is_reference or best.trial_number in references:
        lines.append("The best is the defaults themselves: the search found nothing better.")
    elif margin is not None:
        verb = "beats" if margin.value >= 0 else "trails"
        sentence = f"The best {verb} the defaults by {_points(abs(margin.value))} points"
        if margin.low is not None and margin.high is not None:
            sentence += f", 95 % interval {_points(margin.low)} to {_points(margin.high)} points"
            sentence += (" (the interval includes zero: within noise of the defaults)." if margin.low <= 0 <= margin.high
                         else " (the interval excludes zero).")
        else:
            sentence += " in single runs (no interval: the confirmation repeats give one)."
        lines.append(sentence)
    if best.ties:
        tied = ", ".join(f"#{tie.trial_number} (mean {_pct(tie.mean)}" + (f", p = {tie.p_value:.2f}" if tie.p_value is not None else "")
                         + ")" for tie in best.ties)
        lines.append(f"Tied with the best, within noise: {tied}. Any of them is as good a choice; "
                     "the robust ranges below span them.")
    elif best.candidates and best.candidates > 1:
        others = best.candidates - 1
        lines.append(f"No tie: the other {others} compared config{'s are' if others > 1 else ' is'} significantly worse than the best.")
    elif best.candidates == 1:
        lines.append("No tie possible: no other config was compared.")
    if best.confirmed:
        lines.append(f"Confirmed: every candidate has all its {1 + data.spec.confirm.repeats} runs "
                     "(its search trial and its repeats, each on another validation split).")
    elif not data.spec.confirm.enabled:
        lines.append("Confirmation is off for this study (confirm.top_k = 0): single runs, no intervals.")
    elif data.active:
        lines.append(f"Not final: the study is {data.study.status}; the confirmation repeats "
                     f"({data.study.confirm_finished} of {data.study.confirm_trials or 'not yet planned'} done) will firm this up.")
    if best.test:
        lines.append(f"Ties: {best.test}.")
    return lines


def _ranges_table(data: ReportData) -> str:
    best = data.best
    if best is None or not best.robust_ranges:
        return ""
    rows = []
    for name, span in best.robust_ranges.items():
        value = best.params[name] if hasattr(best, "params") else getattr(best.regularization, name)
        width = "the best alone (no tie)" if span.low == span.high else f"{span.low:.3g} to {span.high:.3g}"
        rows.append(f"<tr><td><code>{_e(name)}</code></td><td class=num>{value:.3g}</td><td class=num>{_e(width)}</td>"
                    f"<td>{_e(SEARCH_SPACE_BY_NAME[name].description if name in SEARCH_SPACE_BY_NAME else '')}</td></tr>")
    return ('<div class="table-wrap"><table><tr><th>parameter</th><th>best</th><th>robust range</th><th>meaning</th></tr>'
            + "".join(rows) + "</table></div>")


def _handoff(data: ReportData) -> str:
    best, keras = data.best, data.keras
    if best is None or keras is None:
        return _missing("The hand-off appears when a trial has completed.")
    reg = best.regularization
    regularizer = keras["kernel_regularizer"]["config"]
    layers = "".join(
        f"<tr><td><code>{_e(name)}</code></td><td>{_e(layer['class_name'])}</td><td><code>"
        + (_e(f"rate={layer['rate']:.3g}") if layer["class_name"] == "Dropout" else _e(f"L1L2(l1={regularizer['l1']:.3g}, l2={regularizer['l2']:.3g})"))
        + "</code></td></tr>"
        for name, layer in keras["layers"].items()
    )
    code = (
        "import keras\n"
        f"regularizer = keras.regularizers.L1L2(l1={reg.l1!r}, l2={reg.l2!r})  # every Conv2D and Dense kernel\n"
        f"dropout_conv = {reg.dropout_conv!r}   # {keras['dropout']['dropout_conv']['where']}\n"
        f"dropout_dense = {reg.dropout_dense!r}  # {keras['dropout']['dropout_dense']['where']}\n"
    )
    parts = [
        f"<p>The best config as Keras settings ({_e(best.model)} network at width {best.width:g}; "
        f"weight decay {reg.weight_decay:.3g} with an L1 share of {reg.l1_ratio:.2f}):</p>",
        f"<pre><code>{_e(code)}</code></pre>",
        f'<div class="table-wrap"><table><tr><th>layer</th><th>class</th><th>setting</th></tr>{layers}</table></div>',
    ]
    carry = data.carry_over
    if carry is not None:
        full = carry["full"]
        parts.append(
            f"<p><b>Carry-over rule</b> (λ/(2n)): Keras adds l1·Σ|w| + l2·Σw² to each batch's mean loss without dividing by "
            f"the n training images, so the coefficients that keep the textbook λ fixed scale as 1/n. This study trained on "
            f"n = {carry['n_study']:,} images; on n images use l1 and l2 × {carry['n_study']:,}/n. On the full CIFAR-10 training set "
            f"(n = {carry['n_full']:,}) that is × {carry['factor']:.4g}: weight decay {reg.weight_decay:.3g} → "
            f"<b>{full.weight_decay:.3g}</b> (l1 {full.l1:.3g}, l2 {full.l2:.3g}); the L1 share and the dropout rates stay.</p>"
        )
    url = f" --url {data.base_url}" if data.base_url else ""
    parts.append(
        "<p>Train it on all training images (training and validation split together; the rule above is applied, "
        "<code>--no-rescale</code> keeps the study's coefficients) and test it once:</p>"
        f"<pre><code>{_e(f'regsearch retrain {data.name}{url} --output models/{data.name}')}</code></pre>"
    )
    return "".join(parts)


def _header(data: ReportData) -> str:
    study, spec = data.study, data.spec
    status = study.status.value if hasattr(study.status, "value") else str(study.status)
    train = f"{spec.data.train_size:,} images drawn" if spec.data.train_size else "all training images"
    meta = (f"{spec.model} network, width {spec.width:g}, {spec.epochs} epoch{'s' if spec.epochs != 1 else ''}, batch {spec.batch_size}, "
            f"{train}, {100 * spec.data.val_fraction:g} % held out for validation; sampler {spec.sampler}, pruner {spec.pruner}")
    counts = study.counts
    progress = (f"{study.trials_finished} of {study.n_trials} search trials finished ({counts.complete} complete, "
                f"{counts.pruned} pruned, {counts.failed} failed, {counts.running} running)")
    if study.confirm_trials:
        progress += f"; confirmation {study.confirm_finished} of {study.confirm_trials}"
    live = ("<p class=meta><b>Live:</b> the study is still running; this page shows it as of "
            f"{data.generated_at:%Y-%m-%d %H:%M:%S} UTC. Reload for the latest.</p>" if data.active else
            f"<p class=meta>Final: generated {data.generated_at:%Y-%m-%d %H:%M:%S} UTC, after the study ended.</p>")
    if study.error:
        live += f"<p class=meta>Error: {_e(study.error)}</p>"
    return (f"<header><h1>Regularization report: {_e(study.name)}</h1>"
            f"<p class=meta><span class=\"status {_e(status)}\">{_e(status)}</span> {_e(progress)}</p>"
            f"<p class=meta>{_e(meta)}</p>{live}</header>")


def _summary(data: ReportData) -> str:
    best = data.best
    if best is None:
        counts = data.study.counts
        return ('<section id="summary"><h2>No complete trial yet</h2>'
                f"<p class=lead>Study {_e(data.name)} has no complete trial yet (status {_e(data.study.status)}; "
                f"{counts.running} running, {counts.waiting} waiting, {counts.pruned} pruned, {counts.failed} failed). "
                "The plots and the best config appear here as trials complete: reload this page.</p></section>")
    reg = best.regularization
    return ('<section id="summary"><h2>The answer</h2>'
            f"<p class=lead>Best so far: weight decay <b>{reg.weight_decay:.3g}</b> (L1 share {reg.l1_ratio:.2f}: "
            f"l1 {reg.l1:.3g}, l2 {reg.l2:.3g}), dropout <b>{reg.dropout_conv:.2f}</b> after the conv blocks and "
            f"<b>{reg.dropout_dense:.2f}</b> before the classifier. {_e(how_sure(data)[0])}</p>"
            + "".join(f"<p>{_e(line)}</p>" for line in how_sure(data)[1:3]) + "</section>")


def _section(section_id: str, title: str, intro: str, body: str) -> str:
    return f'<section id="{section_id}"><h2>{_e(title)}</h2><p>{intro}</p>{body}</section>'


SECTIONS = (
    ("weight-decay", "1. Accuracy against weight decay"),
    ("dropout", "2. Accuracy against each dropout rate"),
    ("gap", "3. Generalization gap against the regularization"),
    ("sparsity", "4. Sparsity against the L1 share"),
    ("curves", "5. Learning curves of the top configs"),
    ("sure", "6. How sure"),
    ("importance", "7. Which parameter matters"),
    ("handoff", "8. The hand-off"),
)


def render(data: ReportData) -> str:
    """The whole page."""
    figures = {element_id: build(data) for element_id, build in FIGURES}

    def plot(element_id: str, missing: str) -> str:
        figure = figures[element_id]
        return _missing(missing) if figure is None else _figure_html(figure, element_id)

    none_yet = "Nothing to draw yet: no search trial has completed or been pruned."
    max_gap = (f" The dashed line is this study's <code>max_gap</code> ({100 * data.spec.max_gap:g} points): a trial above it "
               "is infeasible and never the best." if data.spec.max_gap is not None else " This study sets no <code>max_gap</code>.")
    importance_missing = (f"{data.importance_note}. Importance is computed once there are enough complete trials."
                          if data.importance_note else "No importance yet.")
    sure_words = "".join(f"<p>{_e(line)}</p>" for line in how_sure(data))
    bodies = {
        "weight-decay": (
            "Each point is a search trial: x its weight decay (the total L1 + L2 coefficient of every Conv2D and Dense kernel, "
            "log scale), y its final validation accuracy in percent, colour its L1 share (0: pure L2, 1: pure L1). Pruned "
            "trials (grey crosses) sit at the accuracy of the epoch they were stopped; the red star is the reference (the "
            "defaults: L2 1e-4, dropout 0.3 and 0.5); the green band is the best's robust range (the best and its ties).",
            plot("fig-weight-decay", none_yet)),
        "dropout": (
            "The same trials against each dropout rate (the share of units dropped): after the conv blocks "
            "(<code>dropout_conv</code>) and before the classifier (<code>dropout_dense</code>). The blue band is the range "
            "the search covers (0.3 to 0.5 by default).",
            '<div class="grid">' + plot("fig-dropout-conv", none_yet) + plot("fig-dropout-dense", none_yet) + "</div>"),
        "gap": (
            "The generalization gap of each complete trial at its end: training minus validation accuracy, in points, both "
            "measured in inference mode (training accuracy on a fixed sample of training images), against the weight decay; "
            "colour: the mean of the two dropout rates. Regularization that works pulls the gap towards zero." + max_gap,
            plot("fig-gap", "Nothing to draw yet: no complete trial has a measured gap.")),
        "sparsity": (
            "Sparsity of each complete trial's trained network: the share of its Conv2D and Dense kernel weights with "
            "|w| &lt; 0.001, in percent, measured once when the trial ends, against the L1 share of its weight decay. "
            "An L1 penalty drives weights to zero; L2 only shrinks them.",
            plot("fig-sparsity", "Nothing to draw yet: no complete trial has a measured sparsity.")),
        "curves": (
            "Validation accuracy (%) after each epoch of the top configs and the reference. A config with confirmation "
            "repeats is drawn as the mean of its runs (its search trial and its repeats, each on another validation split) "
            "with a band from its lowest to its highest run.",
            plot("fig-curves", "Nothing to draw yet: no complete trial.")),
        "sure": (
            "Mean validation accuracy of each candidate over its runs with its 95 % interval (Student t); the best is the "
            "candidate of the highest mean.",
            sure_words + _ranges_table(data) + plot("fig-sure", "No candidate yet.")),
        "importance": (
            "How much each parameter explains of the accuracy, by Optuna's evaluator over the study's complete trials "
            "(confirmation repeats left out): the same numbers as <code>GET /v1/studies/NAME/importance</code>.",
            plot("fig-importance", importance_missing)),
        "handoff": (
            "Carry the best config into production training.",
            _handoff(data)),
    }
    nav = " ".join(f'<a href="#{section_id}">{_e(title)}</a>' for section_id, title in SECTIONS)
    sections = "".join(_section(section_id, title, *bodies[section_id]) for section_id, title in SECTIONS)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(data.name)}: regularization report</title><style>{CSS}</style>"
        f'<script type="text/javascript">{plotly_js()}</script></head><body><main>'
        f"{_header(data)}<nav>{nav}</nav>{_summary(data)}{sections}"
        f'<p class=meta>regsearch report of study {_e(data.name)}; data: <code>{_e(json.dumps(_counts(data)))}</code></p>'
        f"</main><script>{RESIZE_SCRIPT}</script></body></html>\n"
    )


def _counts(data: ReportData) -> dict[str, int]:
    """What the figures rest on (also a check for readers and tests)."""
    return {"complete": len(data.complete), "pruned": len(data.pruned),
            "confirmation_runs": sum(1 for trial in data.trials if trial.stage == "confirm" and trial.state == "complete")}
