"""Compare runs and sweeps: one markdown/CSV table from real run directories, plus plots and parameter importance.

A run directory is any folder with ``recipe.yaml`` and ``metrics.json`` (or ``history.jsonl`` for a run that was
pruned or stopped). The columns that differ between runs are found by comparing their resolved recipes, so the
same report serves an Optuna sweep folder, a W&B sweep's runs and a hand-picked set of runs (the seed's "freeze
strategy vs accuracy" table). When a sweep folder holds an Optuna journal, trial states and Optuna's parameter
importance come from the study; otherwise importance is the rank correlation with validation accuracy.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .atomic import atomic_directory
from .errors import UsageError
from .rundir import (
    METRICS_FILE,
    RECIPE_FILE,
    is_finished_status,
    is_run_dir,
    published_test_accuracy,
    read_history,
    read_metrics,
    read_recipe,
    run_status,
)

# Recipe keys that never change a result, or have their own column.
IGNORED_KEYS = (
    "output_dir",
    "resume",
    "track",
    "data.num_workers",
    "train.eval_batch_size",
    "model.name",
    "model.freeze",
    "train.distill.teacher",
)
MIN_TRIALS_FOR_IMPORTANCE = 20
BASE_COLUMNS = ("name", "status", "model", "freeze")
METRIC_COLUMNS = ("params", "best_val_acc", "test_acc", "epochs", "train_time_s")
HEADERS = {
    "name": "run",
    "status": "status",
    "model": "model",
    "freeze": "freeze",
    "teacher": "teacher",
    "params": "params",
    "best_val_acc": "best val acc",
    "test_acc": "test acc",
    "epochs": "epochs",
    "train_time_s": "train time",
}


# ------------------------------------------------------------------------------------------------- discovery
def find_runs(paths: Sequence[str | os.PathLike], may_be_empty: Sequence[Path] = ()) -> list[tuple[str, Path]]:
    """(display name, run directory) for every run under ``paths``, in natural order (trial_2 before trial_10).

    ``may_be_empty``: sweep folders whose trials may all have run on other machines (their study says what ran).
    """
    if not paths:
        raise UsageError("name at least one run or sweep directory (or a study with --storage URL)")
    found: dict[Path, str] = {}
    for given in map(Path, paths):
        if not given.is_dir():
            raise UsageError(f"{str(given)!r} is not a directory")
        prefix = f"{given.resolve().name}/" if len(paths) > 1 else ""
        if is_run_dir(given):
            found.setdefault(given.resolve(), given.resolve().name)
            continue
        for recipe in given.rglob(RECIPE_FILE):
            run = recipe.parent
            rel = run.relative_to(given)
            if any(part.startswith(".") for part in rel.parts) or not is_run_dir(run):
                continue
            found.setdefault(run.resolve(), prefix + rel.as_posix())
        if given not in may_be_empty and not any(p == given.resolve() or given.resolve() in p.parents for p in found):
            raise UsageError(f"no run directories ({RECIPE_FILE} + {METRICS_FILE}) under {str(given)!r}")
    return sorted(((name, path) for path, name in found.items()), key=lambda item: natural_key(item[0]))


def natural_key(text: str) -> list:
    """Sort key that orders the digit runs of ``text`` as numbers (``run-2`` before ``run-10``)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _study_rows(sweeps: Sequence[tuple], here: set[Path], several: bool) -> tuple[dict, Any, list[dict]]:
    """Per sweep: its trials by run folder, its study, and a row for each trial whose run folder is not ``here``
    (another machine ran it): what the study recorded of it."""
    from .sweep import latest_trials, open_study, trial_summary

    states: dict[Any, Any] = {}
    study, remote = None, []
    for sweep_dir, record, url in sweeps:
        study = open_study(sweep_dir or Path("."), record.get("name"), url)
        latest = latest_trials(study, sweep_dir)
        states.update(latest)
        recorded = study.user_attrs.get("sweep", {})  # what every worker of the study searched
        space = record.setdefault("parameters", recorded.get("parameters", {}))
        prefix = f"{sweep_dir.resolve().name}/" if sweep_dir is not None and several else ""
        for key, trial in latest.items():
            if key not in here:
                row = {"name": prefix + trial.user_attrs["run_dir"], "path": None}
                remote.append({**row, **trial_summary(trial, space, recorded.get("metric"))})
    return states, study, remote


# ------------------------------------------------------------------------------------------------------ rows
def _flatten(recipe: Mapping[str, Any], keep_whole: set[str], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in recipe.items():
        full = f"{prefix}{key}"
        if any(full == k or full.startswith(k + ".") for k in IGNORED_KEYS):
            continue
        if isinstance(value, Mapping) and full not in keep_whole:
            out.update(_flatten(value, keep_whole, f"{full}."))  # an empty mapping adds no column
        else:
            out[full] = value
    return out


def collect(paths: Sequence[str | os.PathLike], storage: str | None = None) -> tuple[list[dict], list[str], Any]:
    """Rows (one per run, sorted by best validation accuracy), the varying recipe keys, and the study if one.

    A sweep's trials whose run folders are not here (other machines ran them) are rows from its study: the
    parameters and results the study recorded. ``storage`` names the study's database (see ``inat-zoo sweep
    --storage``); with no ``paths`` the report is of that study alone.
    """
    from .sweep import find_sweeps

    sweeps = find_sweeps(paths, storage)
    runs = find_runs(paths, may_be_empty=[d for d, _, url in sweeps if url is not None]) if paths else []
    states, study, remote = _study_rows(sweeps, {path for _, path in runs}, several=len(paths) > 1)
    swept = [k for _, record, _ in sweeps for k in (record.get("parameters") or {})]
    if len(sweeps) != 1:
        study = None  # importance is per study; several sweeps are compared by correlation
    rows = []
    for name, run in runs:
        recipe = read_recipe(run)
        metrics = read_metrics(run)
        history = read_history(run)
        val_accs = [r["val_accuracy"] for r in history if r.get("val_accuracy") is not None]
        trial = states.get(run)
        if trial is not None and (trial.state.name != "COMPLETE" or metrics is None):
            status = trial.state.name.lower()
        else:  # a complete trial too may have been ended by early stopping
            status = run_status(metrics)
        row = {
            "name": name,
            "status": status,
            "model": (metrics or {}).get("model") or recipe.get("model", {}).get("name"),
            "freeze": (metrics or {}).get("freeze") or recipe.get("model", {}).get("freeze"),
            "teacher": (recipe.get("train", {}).get("distill") or {}).get("teacher"),
            "params": (metrics or {}).get("params"),
            "trainable_params": (metrics or {}).get("trainable_params"),
            "best_val_acc": metrics["validation"]["accuracy"] if metrics else (max(val_accs) if val_accs else None),
            "test_acc": published_test_accuracy(metrics),
            "epochs": metrics["epochs"] if metrics else len(history),
            "best_epoch": (metrics or {}).get("best_epoch"),
            "train_time_s": metrics["train_time_s"] if metrics else sum(r.get("epoch_time_s", 0.0) for r in history),
            "trial": trial.number if trial is not None else None,
            "path": os.fspath(run),
            "recipe": _flatten(recipe, set(swept)),
        }
        rows.append(row)
    rows += remote
    varying = _varying_keys(rows, swept)
    rows.sort(key=lambda r: (r["best_val_acc"] is None, -(r["best_val_acc"] or 0.0), natural_key(r["name"])))
    return rows, varying, study


def _varying_keys(rows: Sequence[dict], swept: Sequence[str]) -> list[str]:
    keys: list[str] = []
    local = [r for r in rows if r["path"] is not None]  # rows from a study know only the swept keys
    for key in [*swept, *sorted({k for r in local for k in r["recipe"]})]:
        if key in keys:
            continue
        values = {
            json.dumps(r["recipe"].get(key), sort_keys=True, default=str) for r in (rows if key in swept else local)
        }
        if len(values) > 1:
            keys.append(key)
    return keys


# ------------------------------------------------------------------------------------------------ formatting
def format_value(value: Any) -> str:
    """A table cell's text: '' for None, ``true``/``false``, floats to 4 significant digits, dicts/lists as JSON."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)


def _human_count(n: int | None) -> str:
    if n is None:
        return ""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _params_cell(total: int | None, trainable: int | None) -> str:
    if trainable is None or trainable == total:
        return _human_count(total)
    return f"{_human_count(total)} ({_human_count(trainable)} trained)"


def _base_columns(rows: Sequence[dict]) -> tuple[str, ...]:
    """The run columns; ``teacher`` (``train.distill.teacher``) only when some run was distilled."""
    return BASE_COLUMNS + ("teacher",) if any(r.get("teacher") for r in rows) else BASE_COLUMNS


def _cells(row: dict, varying: Sequence[str], base: Sequence[str] = BASE_COLUMNS) -> list[str]:
    cells = [format_value(row[c]) for c in base]
    cells += [format_value(row["recipe"].get(k)) for k in varying]
    pct = lambda v: "" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    cells += [
        _params_cell(row["params"], row["trainable_params"]),
        pct(row["best_val_acc"]),
        pct(row["test_acc"]),
        format_value(row["epochs"]),
        "" if row["train_time_s"] is None else f"{row['train_time_s']:.1f}s",
    ]
    return cells


def markdown_table(rows: Sequence[dict], varying: Sequence[str]) -> str:
    """The rows as a Markdown table: run columns, then the ``varying`` hyperparameters, then the metrics."""
    base = _base_columns(rows)
    header = [HEADERS[c] for c in base] + list(varying) + [HEADERS[c] for c in METRIC_COLUMNS]
    escape = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(escape(c) for c in _cells(r, varying, base)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def csv_text(rows: Sequence[dict], varying: Sequence[str]) -> str:
    """Machine-readable: raw numbers (accuracy as a fraction), one column per varying recipe key."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    fields = ["name", "status", "trial", *_base_columns(rows)[2:], *varying, "params", "trainable_params"]
    fields += ["best_val_acc", "test_acc", "epochs", "best_epoch", "train_time_s", "path"]
    writer.writerow(fields)
    for r in rows:
        writer.writerow([format_value(r["recipe"].get(f)) if f in varying else format_value(r[f]) for f in fields])
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------ importance
def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation of ``x`` and ``y`` (ties share their mean rank), by pandas' ``DataFrame.corr``
    (which needs no scipy, unlike ``Series.corr``); None when either side is constant."""
    import pandas as pd

    value = float(pd.DataFrame({"x": x, "y": y}, dtype=float).corr(method="spearman").loc["x", "y"])
    return None if math.isnan(value) else value


def _correlation_ratio(groups: Sequence[Any], y: Sequence[float]) -> float | None:
    """eta: how much of the accuracy's variance the categories explain (0..1), for non-numeric parameters."""
    mean = sum(y) / len(y)
    total = sum((v - mean) ** 2 for v in y)
    if total == 0:
        return None
    by: dict[str, list[float]] = {}
    for g, v in zip(groups, y, strict=True):
        by.setdefault(json.dumps(g, sort_keys=True, default=str), []).append(v)
    between = sum(len(vs) * (sum(vs) / len(vs) - mean) ** 2 for vs in by.values())
    return math.sqrt(between / total)


def correlations(rows: Sequence[dict], varying: Sequence[str]) -> dict[str, float]:
    """Spearman correlation with best validation accuracy (numeric keys; signed) or eta (categorical; 0..1)."""
    scored = [r for r in rows if r["best_val_acc"] is not None]
    out: dict[str, float] = {}
    if len(scored) < 3:
        return out
    y = [r["best_val_acc"] for r in scored]
    for key in varying:
        values = [r["recipe"].get(key) for r in scored]
        if len({json.dumps(v, sort_keys=True, default=str) for v in values}) < 2:
            continue
        if all(_is_number(v) for v in values):
            value = _spearman(values, y)
        else:
            value = _correlation_ratio(values, y)
        if value is not None:
            out[key] = value
    return dict(sorted(out.items(), key=lambda kv: -abs(kv[1])))


def importance(rows: Sequence[dict], varying: Sequence[str], study: Any) -> tuple[str, dict[str, float]]:
    """(method, scores): Optuna's importance for a study with enough complete trials, else correlation.

    Below MIN_TRIALS_FOR_IMPORTANCE PED-ANOVA's top-quantile is one or two trials and its ranking is noise (it
    often ranks a parameter with a tenth of the effect first), so the report says so and shows correlation.
    """
    method = "correlation with best validation accuracy (Spearman for numbers, eta for categories)"
    if study is not None:
        import optuna

        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if len(complete) >= MIN_TRIALS_FOR_IMPORTANCE and any(t.distributions for t in complete):
            scores = optuna.importance.get_param_importances(study)
            return "optuna parameter importance (PED-ANOVA) of the sweep objective", dict(scores)
        method += (
            f"; optuna's importance needs {MIN_TRIALS_FOR_IMPORTANCE} complete trials, the study has {len(complete)}"
        )
    return method, correlations(rows, varying)


# ------------------------------------------------------------------------------------------------------ plots
def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # no pyplot: no global state, nothing to close, headless by design

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def plot_accuracy(rows: Sequence[dict], path: Path) -> None:
    """Write a bar chart of best validation and test accuracy (percent) per run, in trial order, to ``path``."""
    ordered = sorted(rows, key=lambda r: (r["trial"] is None, r["trial"] or 0, natural_key(r["name"])))
    names = [r["name"] for r in ordered]
    val = [100 * (r["best_val_acc"] or 0.0) for r in ordered]
    test = [100 * r["test_acc"] if r["test_acc"] is not None else math.nan for r in ordered]
    fig = _figure(max(5.0, 0.5 * len(rows) + 2), 3.5)
    ax = fig.add_subplot()
    colors = ["tab:blue" if is_finished_status(r["status"]) else "tab:gray" for r in ordered]
    ax.bar(range(len(rows)), val, color=colors, label="best validation accuracy (gray: not finished)")
    ax.plot(range(len(rows)), test, "o", color="tab:orange", label="test accuracy")
    ax.set_xticks(
        range(len(rows)), names, rotation=45 if len(rows) > 6 else 0, ha="right" if len(rows) > 6 else "center"
    )
    ax.set_ylabel("accuracy (%)")
    ax.set_title("accuracy per run")
    fig.legend(loc="outside lower center", ncols=2, fontsize="small")
    fig.savefig(path)


def _axis_values(values: Sequence[Any]) -> tuple[list[float], list[float], list[str]]:
    """Positions in [0, 1] per value, and tick positions/labels: numbers keep their scale, categories spread out."""
    if all(_is_number(v) for v in values):
        lo, hi = min(values), max(values)
        log = lo > 0 and hi / lo > 20
        f = (lambda v: math.log(v)) if log else (lambda v: v)  # noqa: E731
        span = (f(hi) - f(lo)) or 1.0
        pos = [(f(v) - f(lo)) / span for v in values]
        return pos, [0.0, 1.0], [format_value(lo), format_value(hi)]
    shown = [format_value(v) or "(unset)" for v in values]
    labels = sorted(set(shown))
    step = 1.0 / max(len(labels) - 1, 1)
    return [labels.index(s) * step for s in shown], [i * step for i in range(len(labels))], labels


def plot_parallel_coordinates(rows: Sequence[dict], varying: Sequence[str], path: Path) -> bool:
    """One line per run across the varying parameters, colored by best validation accuracy."""
    scored = [r for r in rows if r["best_val_acc"] is not None]
    if not varying or not scored:
        return False
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    axes_names = [*varying, "best val acc"]
    columns = [[r["recipe"].get(k) for r in scored] for k in varying] + [[r["best_val_acc"] for r in scored]]
    placed = [_axis_values(col) for col in columns]
    accs = [r["best_val_acc"] for r in scored]
    norm = Normalize(min(accs), max(accs) if max(accs) > min(accs) else min(accs) + 1e-9)
    cmap = colormaps["viridis"]
    fig = _figure(max(6.0, 1.8 * len(axes_names)), 4.0)
    ax = fig.add_subplot()
    xs = list(range(len(axes_names)))
    for i, acc in enumerate(accs):
        ax.plot(xs, [p[0][i] for p in placed], color=cmap(norm(acc)), alpha=0.8, linewidth=1.5)
    for x, (_, ticks, labels) in zip(xs, placed, strict=True):
        ax.axvline(x, color="black", linewidth=0.8)
        for t, label in zip(ticks, labels, strict=True):
            ax.text(x + 0.03, t, label[:24], fontsize="x-small", va="center")
    ax.set_xticks(xs, axes_names, rotation=20, ha="right")
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(axes_names) - 0.5)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="best validation accuracy")
    ax.set_title("parallel coordinates")
    fig.savefig(path)
    return True


def plot_importance(scores: Mapping[str, float], method: str, path: Path) -> bool:
    """Write a bar chart of the hyperparameter importance ``scores`` (from ``method``) to ``path``.

    Returns False, writing nothing, when ``scores`` is empty.
    """
    if not scores:
        return False
    keys = list(scores)[::-1]
    fig = _figure(6.0, 1.0 + 0.4 * len(keys))
    ax = fig.add_subplot()
    ax.barh(keys, [scores[k] for k in keys], color=["tab:green" if scores[k] >= 0 else "tab:red" for k in keys])
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_title(method, fontsize="small")
    fig.savefig(path)
    return True


# ------------------------------------------------------------------------------------------------------ report
def _check_out(out: Path) -> None:
    """The report folder is ours to replace only if it is empty or an earlier report; never a user's folder."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "report.md").is_file())):
        raise UsageError(f"--out {str(out)!r} exists and is not an earlier report; choose another folder")


def write_report(
    paths: Sequence[str | os.PathLike], out: str | os.PathLike, storage: str | None = None
) -> dict[str, Any]:
    """Build the table, CSV, importance and plots for ``paths`` (and the study in ``storage``) into ``out``
    (replaced atomically)."""
    out = Path(out)
    _check_out(out)
    rows, varying, study = collect(paths, storage)
    table = markdown_table(rows, varying)
    method, scores = importance(rows, varying, study)
    finished = sum(is_finished_status(r["status"]) for r in rows)
    with atomic_directory(out, overwrite=True) as tmp:
        plot_accuracy(rows, tmp / "accuracy.png")
        has_pc = plot_parallel_coordinates(rows, varying, tmp / "parallel_coordinates.png")
        has_imp = plot_importance(scores, method, tmp / "importance.png")
        lines = [
            "# Run comparison",
            "",
            f"{len(rows)} runs from {', '.join(os.fspath(p) for p in paths) or 'the study'} ({finished} finished), "
            "sorted by best validation accuracy. Validation is a split of train/; test is the held-out val/ folder.",
            "",
            table,
            "## Parameter importance",
            "",
            f"Method: {method}.",
            "",
        ]
        if scores:
            lines += ["| parameter | score |", "|---|---|"]
            lines += [f"| {k} | {v:.3f} |" for k, v in scores.items()]
        else:
            lines.append("Not available: it needs at least 3 scored runs (2 complete trials of a study) that differ.")
        lines += ["", "## Plots", "", "![accuracy per run](accuracy.png)", ""]
        if has_pc:
            lines += ["![parallel coordinates](parallel_coordinates.png)", ""]
        if has_imp:
            lines += ["![parameter importance](importance.png)", ""]
        (tmp / "report.md").write_text("\n".join(lines), encoding="utf-8")
        (tmp / "report.csv").write_text(csv_text(rows, varying), encoding="utf-8")
    return {"rows": rows, "varying": varying, "table": table, "importance": scores, "method": method, "out": out}


# --------------------------------------------------------------------------------------------------------- CLI
def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``inat-zoo report`` to ``parser``."""
    parser.add_argument("paths", nargs="*", metavar="RUN_OR_SWEEP_DIR", help="run directories or folders of runs")
    parser.add_argument("--out", default=None, help="report folder (default: DIR/report for one DIR, else ./report)")
    parser.add_argument(
        "--storage", default=None, metavar="URL", help="the sweep's study database (as given to `inat-zoo sweep`)"
    )


def run_cli(args: argparse.Namespace) -> int:
    """Run ``inat-zoo report``: write the report folder and print its table; returns 0."""
    out = Path(args.out) if args.out else (Path(args.paths[0]) / "report" if len(args.paths) == 1 else Path("report"))
    result = write_report(args.paths, out, storage=args.storage)
    print(result["table"], end="")
    if result["importance"]:
        top = ", ".join(f"{k} {v:+.2f}" for k, v in list(result["importance"].items())[:5])
        print(f"\n{result['method']}: {top}")
    print(f"\nreport: {out / 'report.md'} (+ report.csv, plots)")
    return 0
