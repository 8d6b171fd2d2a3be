"""The study's report page: one self-contained HTML file (figures embedded as data URIs, no script, no network)
that reads the same in a browser from disk and in the MLflow UI's artifact view of the parent run.

Its sections, each an ``<section id=...>`` that is always present (with a sentence when it has nothing to
show): summary, comparison, heatmaps, grad-norms, dynamics, importance, trials, settings.
"""

from __future__ import annotations

import base64
import datetime
import html
import math
from pathlib import Path

import pandas as pd

SECTIONS = {
    "summary": "Summary",
    "comparison": "Methods compared",
    "heatmaps": "τ × α heatmaps",
    "grad-norms": "Per-layer gradient norms",
    "dynamics": "DynSDPB's α and τ during training",
    "importance": "Parameter importance",
    "trials": "Trials",
    "settings": "Study settings",
}

STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; color: #1f2328; max-width: 1100px; margin: 0 auto; padding: 1.5em; }
h1 { margin-bottom: 0.1em; } h2 { border-bottom: 1px solid #d0d7de; padding-bottom: 0.2em; margin-top: 2em; }
nav a { margin-right: 1em; } .muted { color: #59636e; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 14px; }
th, td { border: 1px solid #d0d7de; padding: 0.25em 0.6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } tr.best td { background: #fff8c5; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #d0d7de; }
figcaption { color: #59636e; font-size: 14px; }
pre { background: #f6f8fa; padding: 1em; overflow-x: auto; font-size: 13px; }
"""

CAPTIONS = {
    "heatmaps": "Each cell is the best validation {metric} a trial reached with that setting, mean ± standard "
                "deviation over the seeds; the red box marks the best cell. The title gives the reference methods "
                "(run with the base settings) on the same seeds.",
    "grad-norms": "Mean absolute gradient of each layer at every probed optimizer step, for a vanilla trial and "
                  "a DynSDPB trial (log scale; the DynSDPB paper's Figures 2, 4 and 5).",
    "dynamics": "DynSDPB sets α and τ per sample from the teacher's uncertainty and discrimination. Lines: the "
                "batch mean of each logging window; shaded: the batch minimum to maximum.",
    "importance": "fANOVA importance of each searched field for the best validation {metric} (Optuna).",
}


def write_page(out: Path, spec, table: pd.DataFrame, comparison: list[dict], headlines: list[str],
               parent_run) -> Path:
    """Write ``out/index.html`` from the report's tables and the figures already drawn under ``out``."""
    score = spec.metric.best
    sections = {
        "summary": _summary(spec, table, headlines, parent_run),
        "comparison": _comparison(comparison, spec),
        "heatmaps": _figures(out / "heatmaps", CAPTIONS["heatmaps"].format(metric=spec.metric),
                             "No heatmap: heatmaps are drawn for grid searches over two fields."),
        "grad-norms": _figures(out / "grad_norms", CAPTIONS["grad-norms"],
                               "No gradient norms: the study ran no vanilla or DynSDPB trial, or "
                               "training.grad_norm_every was 0."),
        "dynamics": _figures(out / "dynamics", CAPTIONS["dynamics"], "No DynSDPB trial in this study."),
        "importance": _figures(out / "importance", CAPTIONS["importance"].format(metric=spec.metric),
                               "No importances: they are computed for TPE and random searches over two or more "
                               "fields with at least three finished trials."),
        "trials": _trials(table, spec, score),
        "settings": _settings(out.parent / "spec.yaml", parent_run),
    }
    body = "\n".join(f'<section id="{key}">\n<h2>{SECTIONS[key]}</h2>\n{content}\n</section>'
                     for key, content in sections.items())
    nav = " ".join(f'<a href="#{key}">{title}</a>' for key, title in SECTIONS.items())
    page = (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{_e(spec.name)} · selfd study report</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            f"<h1>Study {_e(spec.name)}</h1>\n<p class=\"muted\">{_e(spec.description)}</p>\n<nav>{nav}</nav>\n"
            f"{body}\n</body>\n</html>\n")
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def _summary(spec, table: pd.DataFrame, headlines: list[str], parent_run) -> str:
    counts = ", ".join(f"{count} {status.lower()}" for status, count in table.status.value_counts().items())
    facts = [
        ("Model", spec.model.name), ("Task", spec.task.name),
        ("Metric", f"{spec.metric} ({'higher' if spec.mode == 'max' else 'lower'} is better; best epoch of each trial)"),
        ("Methods searched", ", ".join(spec.methods)), ("Baselines", ", ".join(spec.baselines) or "none"),
        ("Search", f"{spec.search.algorithm} over {', '.join(spec.search.space)}"
                   + (f", ASHA (grace {spec.scheduler.grace_period} epoch)" if spec.scheduler.type == "asha" else "")),
        ("Seeds", ", ".join(map(str, spec.seeds))),
        ("Trials", f"{len(table)} ({counts})" if len(table) else "none recorded"),
        ("Started", _time(parent_run.info.start_time)),
        ("MLflow run", f"{parent_run.info.run_name} ({parent_run.info.run_id})"),
    ]
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts)
    best = "".join(f"<li>{_e(line)}</li>" for line in headlines)
    return f"<table>{rows}</table>" + (f"<p>Best cells:</p><ul>{best}</ul>" if best else "")


def _comparison(rows: list[dict], spec) -> str:
    if not rows:
        return "<p>No finished trial to compare.</p>"
    vanilla = next((r for r in rows if r["method"] == "vanilla"), None)
    best = (max if spec.mode == "max" else min)(rows, key=lambda r: r["mean"])
    head = ["method", "at", "setting", "seeds", f"{spec.metric} mean ± std"] + (["vs vanilla"] if vanilla else [])
    lines = []
    for row in rows:
        cells = [f"<td>{_e(row['method'])}</td>", f"<td>{_e(row['how'])}</td>", f"<td>{_e(row['setting'] or '—')}</td>",
                 f'<td class="num">{row["n"]}</td>', f'<td class="num">{row["mean"]:.4f} ± {row["std"]:.4f}</td>']
        if vanilla:
            cells.append(f'<td class="num">{row["mean"] - vanilla["mean"]:+.4f}</td>')
        lines.append(f'<tr{" class=best" if row is best else ""}>{"".join(cells)}</tr>')
    return (f"<table><tr>{''.join(f'<th>{_e(h)}</th>' for h in head)}</tr>{''.join(lines)}</table>"
            "<p class=\"muted\">Scores are each trial's best validation epoch; std is the sample standard deviation "
            "over seeds (0 with one seed). The highlighted row is the best mean.</p>")


def _figures(folder: Path, caption: str, empty: str) -> str:
    images = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if not images:
        return f"<p>{_e(empty)}</p>"
    return "\n".join(
        f'<figure><img alt="{_e(path.stem)}" src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}">'
        f"<figcaption>{_e(path.name)}: {_e(caption)}</figcaption></figure>" for path in images)


def _trials(table: pd.DataFrame, spec, score: str) -> str:
    if table.empty:
        return "<p>No trial recorded.</p>"
    columns = ["trial", "phase", "method", *spec.search.space, "seed", "status", "epochs", score, "seconds", "failure"]
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(row[c]) for c in columns) + "</tr>" for _, row in table.iterrows())
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(value) -> str:
    if isinstance(value, float):
        return '<td class="num">' + ("—" if math.isnan(value) else f"{value:.4g}") + "</td>"
    return f"<td>{_e(value)}</td>"


def _settings(spec_file: Path, parent_run) -> str:
    tags = parent_run.data.tags
    facts = [("Ray", tags.get("selfd.ray_address", "")), ("Host", tags.get("selfd.host", "")),
             ("selfd", tags.get("selfd.version", "")), ("Study directory", tags.get("selfd.study_dir", ""))]
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts)
    return (f"<table>{rows}</table><p>The resolved study spec (every default filled in):</p>"
            f"<pre>{_e(spec_file.read_text())}</pre>")


def _time(milliseconds: int | None) -> str:
    if not milliseconds:
        return ""
    return datetime.datetime.fromtimestamp(milliseconds / 1000).strftime("%Y-%m-%d %H:%M:%S")


def _e(value) -> str:
    return html.escape(str(value))
