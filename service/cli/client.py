"""``regsearch submit | watch | best | studies | trials | importance | report``: the command-line client of the HTTP API."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from service.cli import CommandError
from service.cli.options import add_model_options, values_from_args
from service.models import ACTIVE_STATUSES, StudyStatus
from service.schemas import StudySpec

_NOT_FLAGS = ("search_space", "enqueue")  # StudySpec fields given in the spec file only

FINAL_STATUSES = tuple(status for status in StudyStatus if status not in ACTIVE_STATUSES)


def _add_url(parser) -> None:
    parser.add_argument("--url", default=None, help="server URL (default REGSEARCH_URL or http://127.0.0.1:8000)")


def register(subparsers) -> None:
    submit = subparsers.add_parser(
        "submit", help="submit a study (a JSON/YAML spec file and/or flags)",
        description="Submit a study. Flags override the spec file's fields; every field but the name has a default.",
    )
    submit.add_argument("spec", nargs="?", help="study spec file (.json, .yaml or .yml)")
    add_model_options(submit, StudySpec, exclude=_NOT_FLAGS, defaults=False, default_text="the spec file's, else the API's")
    submit.add_argument("--watch", action="store_true", help="then watch it until it ends")
    _add_url(submit)
    submit.set_defaults(func=_submit)

    watch = subparsers.add_parser("watch", help="live progress of a study until it ends")
    watch.add_argument("name")
    watch.add_argument("--interval", type=float, default=2.0, help="seconds between polls")
    _add_url(watch)
    watch.set_defaults(func=_watch)

    best = subparsers.add_parser("best", help="the best config of a study")
    best.add_argument("name")
    best.add_argument("--json", action="store_true", help="print the best-config JSON")
    best.add_argument("-o", "--output", help="write the config to this file (json unless --format says otherwise)")
    best.add_argument("--format", choices=("json", "keras", "python"), default=None)
    best.add_argument("--model", metavar="OUT.keras", help="also download the best config's trained model (a .keras file)")
    _add_url(best)
    best.set_defaults(func=_best)

    listing = subparsers.add_parser("studies", help="list the studies; edit, delete, restore or purge one; list the trash")
    listing.add_argument("action", nargs="?", default="list", choices=("list", "edit", "delete", "trash", "restore", "purge"),
                         help="list (default); edit NAME (its n_trials and budgets, as PATCH /v1/studies/NAME); delete NAME "
                         "(to the trash); trash (list it); restore NAME; purge NAME (admin)")
    listing.add_argument("target", nargs="?", metavar="NAME", help="the study to edit, delete, restore or purge")
    edit = listing.add_argument_group("edit", "the fields to change (the others stay); 'none' removes a budget")
    edit.add_argument("--n-trials", type=int, help=StudySpec.model_fields["n_trials"].description)
    for budget in ("max_runtime_s", "max_trial_hours"):
        edit.add_argument(f"--{budget.replace('_', '-')}", type=_budget, metavar="VALUE|none",
                          help=StudySpec.model_fields[budget].description.replace("%", "%%"))
    listing.add_argument("--json", action="store_true", help="print the API's JSON")
    mine = listing.add_mutually_exclusive_group()
    mine.add_argument("--mine", action="store_true",
                      help="list (or trash) only the studies of this CLI's token's owner (GET /v1/whoami)")
    mine.add_argument("--owner", help="list (or trash) only this owner's studies")
    _add_url(listing)
    listing.set_defaults(func=_studies)

    # -- issue 11 --
    trials = subparsers.add_parser("trials", help="a study's trials, one row each (the API's export columns)")
    trials.add_argument("name")
    shape = trials.add_mutually_exclusive_group()
    shape.add_argument("--csv", action="store_true", help="CSV, as GET /v1/studies/NAME/trials?format=csv")
    shape.add_argument("--json", action="store_true", help="a JSON array of rows, as ?format=json")
    trials.add_argument("-o", "--output", help="write to this file instead of standard output")
    _add_url(trials)
    trials.set_defaults(func=_trials)

    importance = subparsers.add_parser("importance", help="each searched parameter's importance in a study")
    importance.add_argument("name")
    importance.add_argument("--evaluator", choices=("ped-anova", "fanova"), default="ped-anova")
    importance.add_argument("--json", action="store_true", help="print the API's JSON")
    _add_url(importance)
    importance.set_defaults(func=_importance)

    # -- issue 19 --
    report = subparsers.add_parser(
        "report", help="a study's regularization report: one HTML page that works offline",
        description="Save the study's regularization report (GET /v1/studies/NAME/report): accuracy against weight decay "
        "and dropout, the generalization gap, sparsity, learning curves, how sure the best is, importance and the hand-off, "
        "in one self-contained HTML file (plotly.js inlined) to open in any browser, offline.",
    )
    report.add_argument("name")
    report.add_argument("-o", "--output", default=None, help="the HTML file to write (default NAME-report.html)")
    _add_url(report)
    report.set_defaults(func=_report)


def _client(args):
    from service.client import RegsearchClient

    return RegsearchClient(args.url)


def _call(function, *args: Any, **kwargs: Any) -> Any:
    from service.client import ClientError

    try:
        return function(*args, **kwargs)
    except ClientError as error:
        raise CommandError(str(error)) from None


def _load_spec(path: str) -> dict[str, Any]:
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as error:
        raise CommandError(f"cannot read spec file {path}: {error.strerror}") from None
    try:
        if file.suffix.lower() in (".yaml", ".yml"):
            import yaml

            spec = yaml.safe_load(text)
        else:
            spec = json.loads(text)
    except Exception as error:  # noqa: BLE001 - any parse error is the user's file
        raise CommandError(f"cannot parse spec file {path}: {error}".splitlines()[0]) from None
    if not isinstance(spec, dict):
        raise CommandError(f"spec file {path} must hold a mapping of study fields")
    problem = _not_json(spec)
    if problem:
        raise CommandError(f"spec file {path}: {problem}")
    return spec


def _not_json(value: Any, where: str = "") -> str | None:
    """Why ``value`` (a parsed spec) is not plain JSON, naming the field; None when it is. YAML also
    parses .nan/.inf, dates and !!binary, which a study spec cannot hold."""
    if isinstance(value, dict):
        for key, item in value.items():
            problem = _not_json(item, f"{where}.{key}" if where else str(key))
            if problem:
                return problem
        return None
    if isinstance(value, list):
        return next((problem for index, item in enumerate(value) if (problem := _not_json(item, f"{where}[{index}]"))), None)
    if isinstance(value, float) and not math.isfinite(value):
        return f"{where} must be a finite number, got {value}"
    if value is None or isinstance(value, str | int | float):
        return None
    return f"{where} must be a number, a string, a list or a mapping, got a YAML {type(value).__name__}"


def _submit(args) -> int:
    spec = _load_spec(args.spec) if args.spec else {}
    flags = values_from_args(args, StudySpec, exclude=_NOT_FLAGS)
    for key, value in flags.items():  # a nested block's flags (data, confirm, stop_when) update the file's block
        if isinstance(value, dict):
            flags[key] = {**(spec.get(key) or {}), **value}
    spec.update(flags)
    if "name" not in spec:
        raise CommandError("a study needs a name: --name NAME or a 'name' in the spec file")
    with _client(args) as client:
        study, created = _call(client.submit, spec)
        verb = "submitted" if created else "already exists (identical spec)"
        print(f"study {study['name']} {verb}: {study['status']}, {study['n_trials']} trials of {study['spec']['model']}")
        print(f"  {client.url}{study['links']['self']}")
        print(f"  dashboard: {client.url}{study['links']['dashboard']}")
        if args.watch:
            return _watch_study(client, study["name"], 2.0)
    return 0


def _best_text(best: dict[str, Any] | None, margin: dict[str, Any] | None = None) -> str:
    if not best:
        return "best -"
    text = f"best {best['value']:.4f} (#{best['trial_number']})"
    if best.get("n") and best["n"] > 1:
        text += f" mean of {best['n']}"
        if best.get("ci_low") is not None:
            text += f" [{best['ci_low']:.4f}, {best['ci_high']:.4f}]"
    if best.get("confirmed") is False and best.get("n", 1) > 1:
        text += " unconfirmed"
    return text + _margin_text(margin)


def _margin_text(margin: dict[str, Any] | None) -> str:
    """``, +0.0123 over the reference`` (with its interval when there are repeats), or nothing yet."""
    if not margin:
        return ""
    interval = f" [{margin['low']:+.4f}, {margin['high']:+.4f}]" if margin.get("low") is not None else ""
    return f", {margin['value']:+.4f}{interval} over the reference"


def _watch_study(client, name: str, interval: float) -> int:
    from tqdm import tqdm

    study = _call(client.study, name)
    bar = tqdm(total=study["n_trials"], initial=study["trials_finished"], desc=name, unit="trial", file=sys.stderr, dynamic_ncols=True)
    try:
        while True:
            bar.update(study["trials_finished"] - bar.n)
            counts = study["counts"]
            bar.set_postfix_str(f"{_best_text(study['best'], study.get('margin'))}, {counts['running']} running, "
                                f"{counts['pruned']} pruned, {study['status']}")
            if study["status"] in FINAL_STATUSES:
                break
            time.sleep(interval)
            study = _call(client.study, name)
    finally:
        bar.close()
    confirmed = f", {study.get('confirm_finished', 0)}/{study['confirm_trials']} confirmation trials" if study.get("confirm_trials") else ""
    if study.get("search_ended_by") not in (None, "n_trials"):
        confirmed += f", search ended by {study['search_ended_by']}"
    print(f"study {name} {study['status']}: {study['trials_finished']}/{study['n_trials']} trials{confirmed}, "
          f"{_best_text(study['best'], study.get('margin'))}"
          + (f" - {study['error']}" if study["status"] == "failed" and study.get("error") else ""))
    return 1 if study["status"] == "failed" else 0


def _watch(args) -> int:
    with _client(args) as client:
        return _watch_study(client, args.name, args.interval)


def _best(args) -> int:
    output_format = args.format or "json"
    if args.model:  # refused before anything is downloaded
        if not args.model.endswith(".keras"):
            raise CommandError(f"--model must name a .keras file, got {args.model!r}")
        if not Path(args.model).absolute().parent.is_dir():
            raise CommandError(f"cannot write {args.model}: no directory {str(Path(args.model).parent)!r}")
    with _client(args) as client:
        best = _call(client.best, args.name, output_format)
        if args.model:
            headers = _call(client.best_model, args.name, args.model)
            print(f"wrote {args.model} (trial {headers.get('x-regsearch-trial')}; the study's stored models take "
                  f"{int(headers.get('x-regsearch-disk-bytes', 0)) / 1e6:.1f} MB)", file=sys.stderr)
    if output_format == "python":
        text = best
    else:
        text = json.dumps(best, indent=2) + "\n"
    if args.output:
        _write_text(args.output, text)
        print(f"wrote {args.output}")
        return 0
    if args.json or args.format:
        sys.stdout.write(text)
        return 0
    params = ", ".join(f"{key}={value:.4g}" for key, value in best["params"].items())
    keras_values = ", ".join(f"{key}={value:.4g}" for key, value in best["keras"].items())
    print(f"study {best['study']}: best {best['metric']} {best['value']:.4f} (trial {best['trial_number']}, since {best['best_since']})")
    print(f"  params: {params}")
    print(f"  keras:  {keras_values}")
    print(f"  model {best['model']} width {best['width']}, trained on {best['train_size']} images, {best['epochs']} epochs")
    from trainer import BestConfig

    for line in BestConfig.model_validate(best).uncertainty_lines():
        print(f"  {line}")
    if best.get("margin"):
        print(f"  margin over the reference (defaults): {_margin_text(best['margin']).removeprefix(', ')}")
    return 0


def _budget(text: str) -> float | str:
    """A budget flag's value: a number, or ``none`` (the budget removed)."""
    if text.strip().lower() in ("none", "null"):
        return "none"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds/hours or 'none', got {text!r}") from None
    return value


def _edit(args) -> int:
    changes: dict[str, Any] = {}
    if args.n_trials is not None:
        changes["n_trials"] = args.n_trials
    for budget in ("max_runtime_s", "max_trial_hours"):
        value = getattr(args, budget)
        if value is not None:
            changes[budget] = None if value == "none" else value
    if not changes:
        raise CommandError("nothing to change: give --n-trials, --max-runtime-s and/or --max-trial-hours")
    problem = _not_json(changes)
    if problem:
        raise CommandError(problem)
    with _client(args) as client:
        study = _call(client.edit, args.target, changes)
    if args.json:
        print(json.dumps(study, indent=2))
        return 0
    spec = study["spec"]
    budgets = ", ".join(f"{budget} {spec[budget]:g}" for budget in ("max_runtime_s", "max_trial_hours") if spec.get(budget))
    print(f"study {study['name']} {study['status']}: n_trials {spec['n_trials']}, {budgets or 'no budget'}"
          + (f" (search ended by {study['search_ended_by']})" if study.get("search_ended_by") else ""))
    return 0


def _studies(args) -> int:
    if args.action == "edit":
        if not args.target:
            raise CommandError("give the study's NAME: regsearch studies edit NAME --n-trials N")
        return _edit(args)
    if args.action in ("delete", "restore", "purge"):
        if not args.target:
            print(f"regsearch studies {args.action}: give the study's NAME", file=sys.stderr)
            return 1
        with _client(args) as client:
            result = _call(getattr(client, args.action), args.target)
        if args.json and result is not None:
            print(json.dumps(result, indent=2))
        else:
            done = {"delete": "moved to the trash (regsearch studies restore NAME brings it back)",
                    "restore": "restored", "purge": "purged for good"}[args.action]
            print(f"study {args.target!r} {done}")
        return 0
    with _client(args) as client:
        owner = _call(client.whoami)["owner"] if args.mine else args.owner
        rows = _call(client.trash if args.action == "trash" else client.studies, owner)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        whose = f" of {owner}" if owner else ""
        print(("the trash is empty" if not owner else f"no studies{whose} in the trash") if args.action == "trash"
              else f"no studies{whose}")
        return 0
    width = max(4, *(len(row["name"]) for row in rows))
    owners = max(5, *(len(row["owner"]) for row in rows))
    print(f"{'NAME':<{width}}  {'OWNER':<{owners}}  {'STATUS':<9}  {'TRIALS':>9}  {'RUNNING':>7}  BEST")
    for row in rows:
        best = f"{row['best']['value']:.4f}" if row["best"] else "-"
        print(f"{row['name']:<{width}}  {row['owner']:<{owners}}  {row['status']:<9}  {row['trials_finished']:>4}/{row['n_trials']:<4}  "
              f"{row['counts']['running']:>7}  {best}")
    return 0


# -- issue 11 --
def _trials(args) -> int:
    output_format = "csv" if args.csv else "json" if args.json else None
    with _client(args) as client:
        if output_format is None:
            return _trials_table(client, args)
        if args.output:
            try:
                out = open(args.output, "w", newline="")
            except OSError as error:
                raise CommandError(f"cannot write {args.output}: {error.strerror}") from None
            with out:
                _call(client.export_trials, args.name, output_format, out)
            print(f"wrote {args.output}", file=sys.stderr)
        else:
            _call(client.export_trials, args.name, output_format, sys.stdout)
    return 0


def _trials_table(client, args) -> int:
    """A readable table of the export's main columns (--csv/--json give them all)."""
    import csv
    import io

    from service.features import PARAM_COLUMNS

    buffer = io.StringIO()
    _call(client.export_trials, args.name, "csv", buffer)
    rows = list(csv.DictReader(io.StringIO(buffer.getvalue())))
    columns = ["number", "state", "stage", *PARAM_COLUMNS, "value", "gap", "feasible", "epochs_run"]
    lines = ["  ".join(columns)]
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column, "")
            try:
                value = f"{float(value):.4g}" if column not in ("number", "epochs_run") and value not in ("", "True", "False") else value
            except ValueError:
                pass
            cells.append(value or "-")
        lines.append("  ".join(cells))
    text = "\n".join(lines) + "\n"
    if args.output:
        _write_text(args.output, text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _importance(args) -> int:
    with _client(args) as client:
        result = _call(client.importance, args.name, args.evaluator)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"study {result['study']}: parameter importance ({result['evaluator']}, {result['n_trials']} complete trials)")
    for name, value in result["importances"].items():
        print(f"  {name:<14} {value:6.3f}")
    return 0


# -- issue 19 --
def _write_text(path: str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path``; an OS error is the CLI's one line."""
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as error:
        raise CommandError(f"cannot write {path}: {error.strerror}") from None


def _report(args) -> int:
    output = args.output or f"{args.name}-report.html"
    with _client(args) as client:
        page = _call(client.report, args.name)
    _write_text(output, page)
    print(f"wrote {output} ({len(page.encode('utf-8')) / 1e6:.1f} MB): open it in a browser; it works offline")
    return 0
