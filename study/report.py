"""A study's report, built from its MLflow runs: results table, τ/α heatmaps, gradient-norm traces, DynSDPB α/τ
traces, parameter importances, the method comparison, a summary and the self-contained page ``index.html``,
written to ``<study dir>/report`` and logged to the parent run.

Re-running it replaces the files and the parent run's artifacts; it never creates runs.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID  # noqa: E402

from study.report_page import write_page  # noqa: E402
from study import state as phases  # noqa: E402
from study.spec import StudySpec  # noqa: E402
from study.state import StudyState  # noqa: E402
from trainables.mlflow_run import PHASE_TAG  # noqa: E402

REFERENCE_METHODS = ("vanilla", "dynamic")
FIGURE_FOLDERS = ("heatmaps", "grad_norms", "dynamics", "importance")
DYNAMICS_TRIALS = 6  # α/τ traces drawn, at most: more lines are unreadable


def write_report(study_dir: Path) -> tuple[Path, list[str]]:
    """Write ``report/`` and log it to the parent run; returns the folder and one headline per heatmap."""
    study_dir = Path(study_dir).resolve()
    state = StudyState.read(study_dir)
    spec = StudySpec.model_validate(yaml.safe_load((study_dir / "spec.yaml").read_text()))
    client = MlflowClient(state.tracking.tracking_uri)
    table = results_table(client, state, spec)
    out = study_dir / "report"
    for folder in FIGURE_FOLDERS:
        shutil.rmtree(out / folder, ignore_errors=True)  # figures of an earlier report must not linger
        (out / folder).mkdir(parents=True)
    table.to_csv(out / "results.csv", index=False)

    heatmaps = [data for method in spec.methods for x, y in spec.heatmap_axes
                if spec.search.algorithm == "grid" and x != y
                and (data := heatmap(table, spec, method, x, y, out / "heatmaps"))]
    traces = grad_norm_figure(client, table, spec, out / "grad_norms")
    dynamics = dynamics_figure(client, table, spec, out / "dynamics")
    importance = importance_figure(table, spec, out / "importance")
    comparison = method_comparison(table, spec, heatmaps, state)
    (out / "summary.md").write_text(summary(spec, table, heatmaps, traces, importance))
    write_page(out, spec, table, comparison, [headline(data, spec.mode) for data in heatmaps],
               client.get_run(state.tracking.parent_run_id))

    parent = state.tracking.parent_run_id
    for name in ("results.csv", "summary.md"):
        client.log_artifact(parent, str(out / name))
    client.log_artifact(parent, str(out / "index.html"), "report")
    for folder in FIGURE_FOLDERS:
        if any((out / folder).iterdir()):
            client.log_artifacts(parent, str(out / folder), folder)
    return out, [headline(data, spec.mode) for data in heatmaps]


def results_table(client: MlflowClient, state: StudyState, spec: StudySpec) -> pd.DataFrame:
    """One row per trial: phase, method, searched values, seed, status, epochs, best and final metric."""
    tracking = state.tracking
    runs = client.search_runs([tracking.experiment_id], max_results=10000,
                              filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{tracking.parent_run_id}'")
    rows = []
    for run in runs:
        history = sorted(client.get_metric_history(run.info.run_id, spec.metric), key=lambda m: m.step)
        values = [m.value for m in history]
        best = (max(values) if spec.mode == "max" else min(values)) if values else math.nan
        params = run.data.params
        rows.append({
            "trial": run.info.run_name,
            "phase": run.data.tags.get(PHASE_TAG, ""),
            "method": params.get("method", ""),
            **{name: _number(params.get(name)) for name in spec.search.space},
            "seed": int(params.get("training.seed", -1)),
            "status": run.info.status,
            "epochs": len(values),
            spec.metric.best: best,
            spec.metric.final: values[-1] if values else math.nan,
            "seconds": run.data.metrics.get("seconds", math.nan),
            "failure": run.data.tags.get("selfd.failure", ""),
            "run_id": run.info.run_id,
        })
    columns = ["trial", "phase", "method", *spec.search.space, "seed", "status", "epochs",
               spec.metric.best, spec.metric.final, "seconds", "failure", "run_id"]
    return pd.DataFrame(rows, columns=columns).sort_values(["phase", "method", "trial"], ignore_index=True)


def heatmap(table: pd.DataFrame, spec: StudySpec, method: str, x: str, y: str, folder: Path) -> dict | None:
    """Mean ± std over seeds of the best metric per (x, y) cell, best cell boxed, references in the title."""
    score = spec.metric.best
    rows = table[(table.phase == phases.search(method).name) & table[score].notna()]
    if rows.empty:
        return None
    x_values = sorted(spec.search.space[x].values)
    y_values = sorted(spec.search.space[y].values)
    cells = []
    for yv in y_values:
        for xv in x_values:
            scores = rows[(rows[x] == xv) & (rows[y] == yv)][score].tolist()
            cells.append({"x": xv, "y": yv, "n": len(scores),
                          "mean": statistics.mean(scores) if scores else None,
                          "std": statistics.stdev(scores) if len(scores) > 1 else 0.0 if scores else None})
    scored = [c for c in cells if c["mean"] is not None]
    best = (max if spec.mode == "max" else min)(scored, key=lambda c: c["mean"])
    seeds = sorted(set(rows.seed))
    reference = {}
    for ref in REFERENCE_METHODS:
        baseline = (table.phase == phases.BASELINES.name) & (table.method == ref) & table.seed.isin(seeds)
        ref_scores = table[baseline][score]
        if len(ref_scores):
            reference[ref] = {"mean": float(ref_scores.mean()), "std": float(ref_scores.std(ddof=1)) if len(ref_scores) > 1 else 0.0,
                              "n": int(len(ref_scores))}

    means = [[math.nan if c["mean"] is None else c["mean"] for c in cells[i * len(x_values):(i + 1) * len(x_values)]]
             for i in range(len(y_values))]  # cells run over x within each y
    figure, axes = plt.subplots(figsize=(1.3 * len(x_values) + 3, 1.0 * len(y_values) + 2.2))
    image = axes.imshow(means, cmap="viridis", origin="lower", aspect="auto")
    figure.colorbar(image, ax=axes, label=f"{spec.metric} (mean over seeds)")
    axes.set_xticks(range(len(x_values)), [f"{v:g}" for v in x_values])
    axes.set_yticks(range(len(y_values)), [f"{v:g}" for v in y_values])
    axes.set_xlabel(_label(x))
    axes.set_ylabel(_label(y))
    for cell in cells:
        if cell["mean"] is None:
            continue
        i, j = y_values.index(cell["y"]), x_values.index(cell["x"])
        light = image.norm(cell["mean"]) > 0.6  # viridis is light at the top of its range: dark text there
        axes.text(j, i, f"{cell['mean']:.3f}\n±{cell['std']:.3f}", ha="center", va="center", fontsize=8,
                  color="black" if light or cell is best else "white",
                  bbox=dict(facecolor="yellow", edgecolor="none", pad=1) if cell is best else None)
    bi, bj = y_values.index(best["y"]), x_values.index(best["x"])
    axes.add_patch(plt.Rectangle((bj - 0.5, bi - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.5))
    refs = "; ".join(f"{name}: {r['mean']:.3f} ± {r['std']:.3f}" for name, r in reference.items())
    axes.set_title(f"{spec.task.name} · {method} · {spec.model.name} · seeds {seeds}\n"
                   f"best {best['mean']:.3f} at {_label(x)}={best['x']:g}, {_label(y)}={best['y']:g}"
                   + (f"\nreference (same seeds) — {refs}" if refs else ""), fontsize=9)
    figure.tight_layout()
    stem = f"{spec.task.name}_{method}_{x.split('.')[-1]}_{y.split('.')[-1]}"
    figure.savefig(folder / f"{stem}.png", dpi=120)
    plt.close(figure)
    data = {"task": spec.task.name, "method": method, "model": spec.model.name, "metric": spec.metric,
            "x": x, "y": y, "x_values": x_values, "y_values": y_values, "seeds": seeds, "cells": cells,
            "best": best, "reference": reference}
    (folder / f"{stem}.json").write_text(json.dumps(data, indent=2))
    return data


def grad_norm_figure(client: MlflowClient, table: pd.DataFrame, spec: StudySpec, folder: Path) -> list[str]:
    """Per-layer log10 mean |grad| over steps, vanilla beside dynamic (the DynSDPB paper's Figures 2/4/5)."""
    panels = []
    for method in REFERENCE_METHODS:
        candidates = table[(table.method == method) & (table.status == "FINISHED")]
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
    trials = table[(table.method == "dynamic") & (table.epochs > 0)].head(DYNAMICS_TRIALS)
    if trials.empty:
        return []
    figure, axes = plt.subplots(1, 2, figsize=(12, 4), squeeze=False)
    for ax, name, symbol in zip(axes[0], ("alpha", "tau"), ("α", "τ")):
        for _, row in trials.iterrows():
            history = {part: sorted(client.get_metric_history(row.run_id, f"{name}_{part}"), key=lambda m: m.step)
                       for part in ("mean", "min", "max")}
            if not history["mean"]:
                continue
            steps = [m.step for m in history["mean"]]
            line, = ax.plot(steps, [m.value for m in history["mean"]], label=_trial_label(row, spec))
            if len(history["min"]) == len(steps) == len(history["max"]):
                ax.fill_between(steps, [m.value for m in history["min"]], [m.value for m in history["max"]],
                                color=line.get_color(), alpha=0.15, linewidth=0)
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


def _trial_label(row: pd.Series, spec: StudySpec) -> str:
    searched = ", ".join(f"{_label(n)}₀={row[n]:g}" if n.startswith("distill.") else f"{_label(n)}={row[n]:g}"
                         for n in spec.search.space if isinstance(row.get(n), float) and not math.isnan(row[n]))
    return f"{row.phase} seed {row.seed}" + (f" ({searched})" if searched else "")


def method_comparison(table: pd.DataFrame, spec: StudySpec, heatmaps: list[dict], state: StudyState) -> list[dict]:
    """Each method at its best: baselines at the base settings, searched methods at their best setting (re-run
    over seeds when the study re-runs it, else the heatmap's best cell, else the best trial); mean ± std over seeds."""
    score = spec.metric.best
    scored = table[table[score].notna()]
    rows = []

    def add(method: str, how: str, setting: str, scores: pd.Series) -> None:
        rows.append({"method": method, "how": how, "setting": setting, "n": int(len(scores)),
                     "mean": float(scores.mean()), "std": float(scores.std(ddof=1)) if len(scores) > 1 else 0.0})

    for method, group in scored[scored.phase == phases.BASELINES.name].groupby("method", sort=False):
        setting = "" if method == "vanilla" else f"α={spec.distill.alpha:g}, τ={spec.distill.tau:g}"
        add(method, "base settings", setting, group[score])
    for method in spec.methods:
        reruns = scored[scored.phase == phases.rerun(method).name]
        search = state.ended(phases.search(method))
        best = (search.best if search else None) or {}
        cell = next((d for d in heatmaps if d["method"] == method), None)
        if len(reruns):
            add(method, "best setting re-run", _setting(best), reruns[score])
        elif cell is not None:
            best_cell = cell["best"]
            cell_rows = scored[(scored.phase == phases.search(method).name) & (scored[cell["x"]] == best_cell["x"])
                               & (scored[cell["y"]] == best_cell["y"])]
            add(method, "best grid cell", _setting({cell["x"]: best_cell["x"], cell["y"]: best_cell["y"]}),
                cell_rows[score])
        else:
            search = scored[scored.phase == phases.search(method).name]
            if len(search):
                top = search.sort_values(score, ascending=spec.mode == "min").iloc[:1]
                add(method, "best trial", _setting({n: top.iloc[0][n] for n in spec.search.space}), top[score])
    return rows


def _setting(values: dict) -> str:
    return ", ".join(f"{_label(name)}={value:g}" if isinstance(value, (int, float)) else f"{_label(name)}={value}"
                     for name, value in values.items())


def importance_figure(table: pd.DataFrame, spec: StudySpec, folder: Path) -> dict:
    """Optuna's parameter importances of the searched fields, per method (TPE and random searches)."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    if spec.search.algorithm == "grid" or len(spec.search.space) < 2:
        return {}
    score = spec.metric.best
    importances = {}
    for method in spec.methods:
        rows = table[(table.phase == phases.search(method).name) & table[score].notna()]
        if len(rows) < 3:
            continue
        distributions = {name: CategoricalDistribution(d.values) if d.values is not None
                         else FloatDistribution(d.low, d.high, log=d.log) for name, d in spec.search.space.items()}
        study = optuna.create_study(direction="maximize" if spec.mode == "max" else "minimize")
        study.add_trials([optuna.trial.create_trial(params={n: row[n] for n in distributions},
                                                    distributions=distributions, value=row[score])
                          for _, row in rows.iterrows()])
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=spec.search.seed)
        importances[method] = optuna.importance.get_param_importances(study, evaluator=evaluator)
    if importances:
        figure, axes = plt.subplots(1, len(importances), figsize=(5 * len(importances), 3), squeeze=False)
        for ax, (method, values) in zip(axes[0], importances.items()):
            ax.barh([_label(n) for n in values], list(values.values()))
            ax.set_xlabel("importance (fANOVA)")
            ax.set_title(method)
        figure.tight_layout()
        figure.savefig(folder / f"{spec.task.name}_importance.png", dpi=120)
        plt.close(figure)
        (folder / f"{spec.task.name}_importance.json").write_text(json.dumps(importances, indent=2))
    return importances


def summary(spec: StudySpec, table: pd.DataFrame, heatmaps: list[dict], traces: list[str], importance: dict) -> str:
    score = spec.metric.best
    lines = [f"# Study {spec.name}", "", spec.description, "",
             f"Model `{spec.model.name}`, task `{spec.task.name}`, metric `{spec.metric}` ({spec.mode}), "
             f"search `{spec.search.algorithm}` over {', '.join(f'`{n}`' for n in spec.search.space)}.", "",
             "| status | trials |", "|---|---|"]
    lines += [f"| {status} | {count} |" for status, count in table.status.value_counts().items()]
    for data in heatmaps:
        best = data["best"]
        lines += ["", f"## {data['task']} · {data['method']}: best cell",
                  f"{_label(data['x'])}={best['x']:g}, {_label(data['y'])}={best['y']:g}: "
                  f"{best['mean']:.4f} ± {best['std']:.4f} over {best['n']} seeds."]
        for name, ref in data["reference"].items():
            verdict = "beats" if _beats(best, ref, spec.mode) else "does not beat"
            lines.append(f"- {name}: {ref['mean']:.4f} ± {ref['std']:.4f} — the best cell {verdict} it.")
    reruns = table[table.phase.map(lambda name: bool(name) and phases.Phase.parse(name).kind is phases.PhaseKind.RERUN)]
    if len(reruns):
        lines += ["", "## Best settings re-run over seeds", "", "| method | mean | std | seeds |", "|---|---|---|---|"]
        per_method = {m: rows.set_index("seed")[score] for m, rows in reruns.groupby("method")}
        for method, scores in per_method.items():
            lines.append(f"| {method} | {scores.mean():.4f} | {scores.std(ddof=1):.4f} | {len(scores)} |")
        if {"dynamic", "static"} <= set(per_method):
            lines += ["", paired_comparison(per_method["dynamic"], per_method["static"])]
    if traces:
        lines += ["", "Gradient-norm traces: " + ", ".join(f"`grad_norms/{t}`" for t in traces)]
    if importance:
        lines += ["", "## Parameter importance"] + [
            f"- {method}: " + ", ".join(f"{_label(n)} {v:.2f}" for n, v in values.items())
            for method, values in importance.items()]
    lines += ["", "Per-trial results: `results.csv`."]
    return "\n".join(lines) + "\n"


def headline(data: dict, mode: str) -> str:
    """A heatmap in one line: its best cell and whether it beats each reference method."""
    best = data["best"]
    refs = "; ".join(f"{name} {ref['mean']:.3f} ± {ref['std']:.3f} ({'beaten' if _beats(best, ref, mode) else 'not beaten'})"
                     for name, ref in data["reference"].items())
    return (f"{data['task']} · {data['method']}: best cell {_label(data['x'])}={best['x']:g}, "
            f"{_label(data['y'])}={best['y']:g}: {best['mean']:.3f} ± {best['std']:.3f}" + (f"; {refs}" if refs else ""))


def _beats(cell: dict, reference: dict, mode: str) -> bool:
    return cell["mean"] > reference["mean"] if mode == "max" else cell["mean"] < reference["mean"]


def paired_comparison(dynamic: pd.Series, static: pd.Series) -> str:
    """Dynamic minus static on the seeds both ran: mean difference, wins, and a paired t-test."""
    from scipy.stats import ttest_rel

    seeds = sorted(set(dynamic.index) & set(static.index))
    if len(seeds) < 2:
        return "Paired comparison: fewer than two common seeds."
    a, b = dynamic[seeds], static[seeds]
    diff = a - b
    test = ttest_rel(a, b)
    p = "n/a (identical scores)" if math.isnan(test.pvalue) else f"{test.pvalue:.3f}"
    return (f"Paired over seeds {seeds}: dynamic − static = {diff.mean():+.4f} ± {diff.std(ddof=1):.4f}; "
            f"dynamic wins {(diff > 0).sum()}/{len(seeds)}; paired t-test p = {p}.")


def _label(field: str) -> str:
    return {"distill.tau": "τ", "distill.alpha": "α", "training.learning_rate": "learning rate"}.get(field, field)


def _number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return value
