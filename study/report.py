"""A study's report, built from its MLflow runs: the verdicts, the method comparison, results table, τ/α heatmaps,
parallel coordinates of every trial, gradient-norm traces, DynSDPB α/τ traces, parameter importances, a summary
and the self-contained page ``index.html``, written to ``<study dir>/report`` and logged to the parent run (the
verdicts also as its tags and metrics).

Validation chose every configuration (``study.comparison``); the scores compared here are test scores.

Re-running it replaces the files and the parent run's artifacts; it never creates runs.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID  # noqa: E402

from study import state as phases  # noqa: E402
from study.comparison import FAILED_RUN, failed_runs, label, selections, verdicts  # noqa: E402
from study.report_page import write_page  # noqa: E402
from study.verdicts import Outcomes, Verdict, method_text  # noqa: E402
from study.spec import StudySpec  # noqa: E402
from study.state import StudyState  # noqa: E402
from study.tracking import FAILED, FINISHED  # noqa: E402
from trainables.losses import Extreme  # noqa: E402
from trainables.mlflow_run import PHASE_TAG  # noqa: E402

FAILED_TRIALS_TAG = "selfd.failed_trials"  # on the parent run: how many trials ended FAILED

REFERENCE_METHODS = ("vanilla", "dynamic")
FIGURE_FOLDERS = ("heatmaps", "trials", "grad_norms", "dynamics", "importance")
DYNAMICS_TRIALS = 6  # α/τ traces drawn, at most: more lines are unreadable
PARALLEL_MIN_TRIALS = 3  # fewer lines show no pattern


def write_report(study_dir: Path) -> tuple[Path, list[str]]:
    """Write ``report/`` and log it to the parent run; returns the folder and one line per verdict."""
    study_dir = Path(study_dir).resolve()
    spec, state, table, chosen = read_results(study_dir)
    client = MlflowClient(state.tracking.tracking_uri)
    out = study_dir / "report"
    for folder in FIGURE_FOLDERS:
        shutil.rmtree(out / folder, ignore_errors=True)  # figures of an earlier report must not linger
        (out / folder).mkdir(parents=True)
    table.to_csv(out / "results.csv", index=False)

    judged = verdicts(chosen, spec, stopped=state.stopped)
    settings = {selection.method: selection.setting for selection in chosen}
    heatmaps = [data for method in spec.methods for x, y in spec.heatmap_axes
                if spec.search.algorithm == "grid" and x != y and method in settings
                and (data := heatmap(table, spec, method, x, y, settings[method], judged, out / "heatmaps"))]
    parallel_coordinates(table, spec, out / "trials")
    traces = grad_norm_figure(client, table, spec, out / "grad_norms")
    dynamics_figure(client, table, spec, out / "dynamics")
    importance = importance_figure(table, spec, out / "importance")
    comparison = [selection.summary(spec) for selection in chosen]
    arguments = trainer_settings(spec, chosen)
    (out / "summary.md").write_text(summary(spec, table, judged, comparison, heatmaps, traces, importance,
                                            state.failure_threshold, arguments))
    (out / "verdicts.json").write_text(json.dumps([_verdict_record(v) for v in judged], indent=2))
    write_page(out, spec, table, comparison, judged, [headline(data) for data in heatmaps],
               client.get_run(state.tracking.parent_run_id), arguments)

    parent = state.tracking.parent_run_id
    log_verdicts(client, parent, judged)
    # failed trials do not fail the study: the results table's FAILED rows are counted here (one count: the one
    # summary.md shows) and each is marked FAILED in its own run
    client.set_tag(parent, FAILED_TRIALS_TAG, str(int((table.status == FAILED).sum())))
    for name in ("results.csv", "summary.md", "verdicts.json"):
        client.log_artifact(parent, str(out / name))
    client.log_artifact(parent, str(out / "index.html"), "report")
    for folder in FIGURE_FOLDERS:
        if any((out / folder).iterdir()):
            client.log_artifacts(parent, str(out / folder), folder)
    return out, [verdict.text() for verdict in judged], arguments


def trainer_settings(spec: StudySpec, chosen: list) -> dict[str, str]:
    """Each searched method at the setting the study chose, as ``SelfDistillationArguments`` keyword arguments to
    paste into one's own Trainer script (``trainables/hf``)."""
    from trainables.config import parse_config
    from trainables.hf.settings import arguments_text, trainer_arguments
    from trainables.task_kinds import TaskKind, task_kind

    causal_lm = task_kind(spec.task) is TaskKind.GENERATION
    return {selection.method: arguments_text(trainer_arguments(
                parse_config(spec.base_run(selection.method), values=selection.setting), causal_lm))
            for selection in chosen if selection.method in map(str, spec.methods)}


def read_results(study_dir: Path) -> tuple[StudySpec, StudyState, pd.DataFrame, list]:
    """A study's spec, state, results table (``results_table``) and the configurations it compares."""
    study_dir = Path(study_dir).resolve()
    state = StudyState.read(study_dir)
    spec = StudySpec.model_validate(yaml.safe_load((study_dir / "spec.yaml").read_text()))
    table = results_table(MlflowClient(state.tracking.tracking_uri), state, spec)
    return spec, state, table, selections(table, spec, state)


def primary_verdict(study_dir: Path) -> Verdict | None:
    """An adaptive study's primary comparison on every seed so far (what decides whether confirmation goes on);
    None while one of its two methods has no scored trial."""
    spec, state, _, chosen = read_results(study_dir)
    primary = tuple(map(str, spec.primary))
    return next(iter(verdicts(chosen, spec, stopped=state.stopped, only=primary)), None)


def results_table(client: MlflowClient, state: StudyState, spec: StudySpec) -> pd.DataFrame:
    """One row per trial: phase, method, searched values, seed, status, evaluations, the best validation score,
    the test score at that evaluation (what the study compares), the last validation score, and its cost."""
    tracking = state.tracking
    runs = client.search_runs([tracking.experiment_id], max_results=10000,
                              filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{tracking.parent_run_id}'")
    metric = spec.metric
    rows = []
    for run in runs:
        history = sorted(client.get_metric_history(run.info.run_id, metric), key=lambda m: m.step)
        tests = {m.step: m.value for m in client.get_metric_history(run.info.run_id, metric.test)}
        best = (max if spec.mode == "max" else min)(history, key=lambda m: m.value) if history else None
        params, metrics = run.data.params, run.data.metrics
        rows.append({
            "trial": run.info.run_name,
            "phase": run.data.tags.get(PHASE_TAG, ""),
            "method": params.get("method", ""),
            **{name: _number(params.get(name)) for name in spec.search.space},
            "seed": int(params.get("training.seed", -1)),
            "status": run.info.status,
            "evaluations": len(history),
            metric.best: best.value if best else math.nan,
            metric.test: tests.get(best.step, math.nan) if best else math.nan,  # chosen by validation
            metric.final: history[-1].value if history else math.nan,
            **{column: metrics.get(metric_name, math.nan) for column, metric_name in COST_COLUMNS.items()},
            "failure": run.data.tags.get("selfd.failure", ""),
            "run_id": run.info.run_id,
        })
    columns = ["trial", "phase", "method", *spec.search.space, "seed", "status", "evaluations",
               metric.best, metric.test, metric.final, *COST_COLUMNS, "failure", "run_id"]
    table = pd.DataFrame(rows, columns=columns).sort_values(["phase", "method", "trial"], ignore_index=True)
    table.insert(columns.index(metric.final), FAILED_RUN, failed_runs(table[metric.best], spec,
                                                                      state.failure_threshold))
    return table


# column: the trial's metric (its last value): optimizer steps, rows trained on, seconds in steps, seconds in all
COST_COLUMNS = {"steps": "step", "samples": "samples", "train_seconds": "train_seconds", "seconds": "seconds"}


def heatmap(table: pd.DataFrame, spec: StudySpec, method: str, x: str, y: str, setting: dict,
            judged: list[Verdict], folder: Path) -> dict | None:
    """Test score (mean ± std over seeds, and failed runs when the cell ran several) per (x, y) cell; the cell
    validation chose boxed; its verdicts in the title."""
    rows = table[(table.phase == phases.search(method).name) & table[spec.metric.best].notna()]
    if rows.empty:
        return None
    x_values = sorted(spec.search.space[x].values)
    y_values = sorted(spec.search.space[y].values)
    cells = []
    for yv in y_values:
        for xv in x_values:
            cell = rows[(rows[x] == xv) & (rows[y] == yv)]
            validation = cell[spec.metric.best].tolist()
            scored = cell[cell[spec.metric.test].notna()]
            flags = None if scored[FAILED_RUN].isna().any() else scored[FAILED_RUN].astype(bool).tolist()
            test = Outcomes.of(scored[spec.metric.test], flags)
            cells.append({"x": xv, "y": yv, "n": len(validation),
                          "validation_mean": sum(validation) / len(validation) if validation else None,
                          "mean": None if test.n == 0 else test.mean, "std": 0.0 if test.n < 2 else test.std,
                          "median": test.median, "min": test.min, "max": test.max, "failed": test.failed})
    best = next(c for c in cells if math.isclose(c["x"], setting[x]) and math.isclose(c["y"], setting[y]))
    seeds = sorted(set(rows.seed))
    mine = [v for v in judged if v.subject == method]

    means = [[math.nan if c["mean"] is None else c["mean"] for c in cells[i * len(x_values):(i + 1) * len(x_values)]]
             for i in range(len(y_values))]  # cells run over x within each y
    figure, axes = plt.subplots(figsize=(1.3 * len(x_values) + 3, 1.0 * len(y_values) + 2.4))
    image = axes.imshow(means, cmap="viridis", origin="lower", aspect="auto")
    figure.colorbar(image, ax=axes, label=f"{spec.metric.test}" + (" (mean over seeds)" if len(seeds) > 1 else ""))
    axes.set_xticks(range(len(x_values)), [f"{v:g}" for v in x_values])
    axes.set_yticks(range(len(y_values)), [f"{v:g}" for v in y_values])
    axes.set_xlabel(label(x))
    axes.set_ylabel(label(y))
    for cell in cells:
        if cell["mean"] is None:
            continue
        i, j = y_values.index(cell["y"]), x_values.index(cell["x"])
        light = image.norm(cell["mean"]) > 0.6  # viridis is light at the top of its range: dark text there
        text = f"{cell['mean']:.3f}"
        if cell["n"] > 1:  # one seed: no spread, and its failure shows in its score
            text += f"\n±{cell['std']:.3f}"
            if cell["failed"] is not None:
                text += f"\nfailed {cell['failed']}/{cell['n']}"
        axes.text(j, i, text, ha="center", va="center", fontsize=8,
                  color="black" if light or cell is best else "white",
                  bbox=dict(facecolor="yellow", edgecolor="none", pad=1) if cell is best else None)
    bi, bj = y_values.index(best["y"]), x_values.index(best["x"])
    axes.add_patch(plt.Rectangle((bj - 0.5, bi - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.5))
    words = "\n".join(f"vs {v.control}: {v.word}" + ("" if v.word == "no verdict" else
                                                     f" [{v.low:+.3f}, {v.high:+.3f}], {v.n} seeds") for v in mine)
    axes.set_title(f"{spec.task.name} · {method} · {spec.model.name} · {spec.metric.test}, seeds {seeds}\n"
                   f"chosen on validation (boxed): {label(x)}={best['x']:g}, {label(y)}={best['y']:g}"
                   + (f"\n{words}" if words else ""), fontsize=9)
    figure.tight_layout()
    stem = f"{spec.task.name}_{method}_{x.split('.')[-1]}_{y.split('.')[-1]}"
    figure.savefig(folder / f"{stem}.png", dpi=120)
    plt.close(figure)
    data = {"task": spec.task.name, "method": method, "model": spec.model.name, "metric": spec.metric.test,
            "chosen_on": spec.metric.value, "x": x, "y": y, "x_values": x_values, "y_values": y_values,
            "seeds": seeds, "cells": cells, "best": best, "verdicts": [_verdict_record(v) for v in mine]}
    (folder / f"{stem}.json").write_text(json.dumps(data, indent=2, default=float))
    return data


def parallel_coordinates(table: pd.DataFrame, spec: StudySpec, folder: Path) -> list[str]:
    """Every trial as one line across its searched fields to its test score (coloured by it), per method."""
    rows = table[table[spec.metric.test].notna()]
    names = [name for name in spec.search.space if pd.api.types.is_numeric_dtype(rows[name])]
    if len(rows) < PARALLEL_MIN_TRIALS or not names:
        return []
    axes_names = [*names, spec.metric.test]
    figure, axes = plt.subplots(figsize=(2.2 * len(axes_names) + 2, 4.2))
    lows, highs = rows[axes_names].min(), rows[axes_names].max()
    spans = (highs - lows).replace(0, 1)
    colour = plt.get_cmap("viridis")
    score = (rows[spec.metric.test] - lows[spec.metric.test]) / spans[spec.metric.test]
    for (_, row), shade in zip(rows.iterrows(), score):
        values = [(row[name] - lows[name]) / spans[name] if pd.notna(row[name]) else math.nan for name in axes_names]
        axes.plot(range(len(axes_names)), values, color=colour(shade), alpha=0.7,
                  linestyle="-" if row.phase != phases.BASELINES.name else ":")
    for i, name in enumerate(axes_names):
        axes.axvline(i, color="#888", linewidth=0.8)
        axes.text(i, -0.06, f"{lows[name]:.3g}", ha="center", va="top", fontsize=8)
        axes.text(i, 1.06, f"{highs[name]:.3g}", ha="center", va="bottom", fontsize=8)
    axes.set_xticks(range(len(axes_names)), [label(n) for n in axes_names])
    axes.set_yticks([])
    axes.set_ylim(-0.15, 1.15)
    axes.set_title(f"{len(rows)} trials: searched fields → {spec.metric.test} at the best validation evaluation "
                   "(dotted: baselines, which vary none of them)", fontsize=9)
    return _save(figure, f"Parallel coordinates · {spec.task.name} · {spec.model.name}",
                 folder / f"{spec.task.name}_parallel_coordinates.png")


def grad_norm_figure(client: MlflowClient, table: pd.DataFrame, spec: StudySpec, folder: Path) -> list[str]:
    """Per-layer log10 mean |grad| over steps, vanilla beside dynamic (the DynSDPB paper's Figures 2/4/5)."""
    panels = []
    for method in REFERENCE_METHODS:
        candidates = table[(table.method == method) & (table.status == FINISHED)]
        candidates = candidates.sort_values(["phase", "seed"],
                                            key=lambda c: c != phases.BASELINES.name if c.name == "phase" else c)
        if len(candidates):
            panels.append((method, candidates.iloc[0]))
    if not panels:
        return []
    run = client.get_run(panels[0][1].run_id)
    available = sorted(k.removeprefix("grad_norm/") for k in run.data.metrics if k.startswith("grad_norm/"))
    layers = spec.report.grad_norm_layers or _default_layers(available)
    if not available or not layers:  # training.grad_norm_every was 0
        return []
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), sharey=True, squeeze=False)
    for ax, (method, row) in zip(axes[0], panels):
        for layer in layers:
            history = sorted(client.get_metric_history(row.run_id, f"grad_norm/{layer}"), key=lambda m: m.step)
            if history:
                ax.plot([m.step for m in history], [10 ** m.value for m in history], label=layer)
        ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_title(f"{method} (seed {row.seed})")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean |gradient| of the layer (log scale)")
    axes[0][-1].legend(fontsize=8)
    return _save(figure, f"Per-layer gradient norms · {spec.task.name} · {spec.model.name}",
                 folder / f"{spec.task.name}_vanilla_vs_dynamic.png")


def _default_layers(available: list[str]) -> list[str]:
    blocks = [name for name in available if name.startswith("block_")]
    picked = [blocks[0], blocks[len(blocks) // 2], blocks[-1]] if blocks else []
    return [n for n in ["embeddings", *dict.fromkeys(picked), "head"] if n in available]


def dynamics_figure(client: MlflowClient, table: pd.DataFrame, spec: StudySpec, folder: Path) -> list[str]:
    """How DynSDPB set α and τ over training: per trial the batch mean, shaded from the batch minimum to maximum."""
    trials = table[(table.method == "dynamic") & (table.evaluations > 0)].head(DYNAMICS_TRIALS)
    if trials.empty:
        return []
    figure, axes = plt.subplots(1, 2, figsize=(12, 4), squeeze=False)
    for ax, name, symbol in zip(axes[0], ("alpha", "tau"), ("α", "τ")):
        for _, row in trials.iterrows():
            history = {part: sorted(client.get_metric_history(row.run_id, part.of(name)), key=lambda m: m.step)
                       for part in Extreme}
            if not history[Extreme.MEAN]:
                continue
            steps = [m.step for m in history[Extreme.MEAN]]
            line, = ax.plot(steps, [m.value for m in history[Extreme.MEAN]], label=_triallabel(row, spec))
            if len(history[Extreme.MIN]) == len(steps) == len(history[Extreme.MAX]):
                ax.fill_between(steps, [m.value for m in history[Extreme.MIN]],
                                [m.value for m in history[Extreme.MAX]], color=line.get_color(), alpha=0.15,
                                linewidth=0)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(f"{symbol} per sample")
        ax.set_title(f"DynSDPB {symbol} over training")
        ax.grid(alpha=0.3)
    axes[0][1].legend(fontsize=8)
    return _save(figure, f"DynSDPB's per-sample α and τ · {spec.task.name} · {spec.model.name}",
                 folder / f"{spec.task.name}_dynamic_alpha_tau.png")


def _save(figure, title: str, path: Path) -> list[str]:
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return [path.name]


def _triallabel(row: pd.Series, spec: StudySpec) -> str:
    searched = ", ".join(f"{label(n)}₀={row[n]:g}" if n.startswith("distill.") else f"{label(n)}={row[n]:g}"
                         for n in spec.search.space if isinstance(row.get(n), float) and not math.isnan(row[n]))
    return f"{row.phase} seed {row.seed}" + (f" ({searched})" if searched else "")


def importance_figure(table: pd.DataFrame, spec: StudySpec, folder: Path) -> dict:
    """Optuna's parameter importances of the searched fields, per method (TPE and random searches)."""
    import optuna

    if spec.search.algorithm == "grid" or len(spec.search.space) < 2:
        return {}
    score = spec.metric.best
    importances = {}
    for method in spec.methods:
        rows = table[(table.phase == phases.search(method).name) & table[score].notna()]
        if len(rows) < 3 or rows[score].nunique() < 2:  # every trial scored alike (all at the majority class, say):
            continue  # no field explains a variance of zero
        distributions = {name: d.distribution() for name, d in spec.search.space.items()}
        study = optuna.create_study(direction="maximize" if spec.mode == "max" else "minimize")
        study.add_trials([optuna.trial.create_trial(params={n: row[n] for n in distributions},
                                                    distributions=distributions, value=row[score])
                          for _, row in rows.iterrows()])
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=spec.search.seed)
        importances[method] = optuna.importance.get_param_importances(study, evaluator=evaluator)
    if importances:
        figure, axes = plt.subplots(1, len(importances), figsize=(5 * len(importances), 3), squeeze=False)
        for ax, (method, values) in zip(axes[0], importances.items()):
            ax.barh([label(n) for n in values], list(values.values()))
            ax.set_xlabel("importance (fANOVA)")
            ax.set_title(method)
        figure.tight_layout()
        figure.savefig(folder / f"{spec.task.name}_importance.png", dpi=120)
        plt.close(figure)
        (folder / f"{spec.task.name}_importance.json").write_text(json.dumps(importances, indent=2))
    return importances


def summary(spec: StudySpec, table: pd.DataFrame, judged: list[Verdict], comparison: list[dict],
            heatmaps: list[dict], traces: list[str], importance: dict, threshold: float | None,
            arguments: dict[str, str]) -> str:
    lines = [f"# Study {spec.name}", "", spec.description, "", "## Verdicts", "",
             method_text(spec.metric.test, spec.equivalence_margin), ""]
    lines += [f"- {verdict.text()}" for verdict in judged] or ["- nothing to compare: no two methods ran"]
    failed = (f"failed: best validation {spec.metric} at or {'below' if spec.mode == 'max' else 'above'} "
              f"{threshold:.4f}, 95 % exact interval of the rate" if threshold is not None else "no failure rule")
    lines += ["", "## Methods compared", "", f"Every run counts; {failed}.", "",
              f"| method | chosen by | setting | optimizer steps | samples | training s | {spec.metric.test} "
              "over seeds |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {row['method']} | {row['how']} | {row['setting'] or '—'} | {row['steps']:.0f} | "
              f"{row['samples']:.0f} | {row['train_seconds']:.0f} | {row['test'].text(4)} |" for row in comparison]
    lines += ["", f"Model `{spec.model.name}`, task `{spec.task.name}`, chosen on `{spec.metric}` ({spec.mode}), "
              f"search `{spec.search.algorithm}` over {', '.join(f'`{n}`' for n in spec.search.space)}.", "",
              "| status | trials |", "|---|---|"]
    lines += [f"| {status} | {count} |" for status, count in table.status.value_counts().items()]
    for data in heatmaps:
        best = data["best"]
        lines += ["", f"## {data['task']} · {data['method']}: the cell validation chose",
                  f"{label(data['x'])}={best['x']:g}, {label(data['y'])}={best['y']:g}: validation "
                  f"{best['validation_mean']:.4f}, test {cell_score(best, 4)}."]
    if traces:
        lines += ["", "Gradient-norm traces: " + ", ".join(f"`grad_norms/{t}`" for t in traces)]
    if importance:
        lines += ["", "## Parameter importance"] + [
            f"- {method}: " + ", ".join(f"{label(n)} {v:.2f}" for n, v in values.items())
            for method, values in importance.items()]
    if arguments:
        lines += ["", "## Use it in your own training script", "",
                  "`trainables.hf.SelfDistillationArguments` (a `transformers.TrainingArguments`) with the chosen "
                  "setting, for `SelfDistillationTrainer` or a Trainer subclass with `SelfDistillationMixin`:", ""]
        lines += [f"- {method}: `SelfDistillationArguments(output_dir, {text})`" for method, text in arguments.items()]
    lines += ["", "Per-trial results: `results.csv`; verdicts: `verdicts.json`."]
    return "\n".join(lines) + "\n"


def cell_score(cell: dict, digits: int) -> str:
    """A heatmap cell's test score: mean ± std over its seeds, or its one seed's score."""
    if cell["n"] > 1:
        failed = "" if cell.get("failed") is None else f", {cell['failed']} failed"
        return f"{cell['mean']:.{digits}f} ± {cell['std']:.{digits}f} over {cell['n']} seeds{failed}"
    return f"{cell['mean']:.{digits}f} at one seed"


def headline(data: dict) -> str:
    """A heatmap in one line: the cell validation chose, its test score and its verdicts."""
    best = data["best"]
    words = "; ".join(f"vs {v['control']}: {v['word']}" for v in data["verdicts"])
    return (f"{data['task']} · {data['method']}: chosen on validation {label(data['x'])}={best['x']:g}, "
            f"{label(data['y'])}={best['y']:g}: test {cell_score(best, 3)}"
            + (f"; {words}" if words else ""))


def log_verdicts(client: MlflowClient, parent_run_id: str, judged: list[Verdict]) -> None:
    """Each verdict on the parent run: its word as a tag, its numbers as metrics."""
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    tags, metrics = [], []
    for verdict in judged:
        key = f"{verdict.subject}_vs_{verdict.control}"
        tags.append(RunTag(f"selfd.verdict.{key}", str(verdict.word)))
        metrics += [Metric(f"verdict/{key}/{name}", value, now, 0) for name, value in verdict.numbers().items()]
    client.log_batch(parent_run_id, metrics=metrics, tags=tags)


def _verdict_record(verdict: Verdict) -> dict:
    return {**verdict.record(), "text": verdict.text()}


def _number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return value
