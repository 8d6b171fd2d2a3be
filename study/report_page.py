"""The study's report page: one self-contained HTML file (figures embedded as data URIs, no script, no network)
that reads the same in a browser from disk and in the MLflow UI's artifact view of the parent run.

Its sections, each an ``<section id=...>`` that is always present (with a sentence when it has nothing to
show): verdicts, summary, comparison, heatmaps, parallel, grad-norms, dynamics, importance, trials, settings.
"""

from __future__ import annotations

import base64
import datetime
import html
import math
from pathlib import Path

import pandas as pd

from study.verdicts import method_text

SECTIONS = {
    "verdicts": "Verdicts",
    "summary": "Summary",
    "comparison": "Methods compared",
    "trainer": "Use it in your own training script",
    "heatmaps": "τ × α heatmaps",
    "parallel": "Every trial: parallel coordinates",
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
    "heatmaps": "Each cell is the {test} of that setting's trials (each at its best validation evaluation), "
                "mean ± standard deviation over the seeds and the runs that failed; the red box marks the cell "
                "validation chose (best mean validation {metric}), which need not be the best test cell. The title "
                "gives its verdicts.",
    "parallel": "One line per trial from its searched values to its {test} at its best validation evaluation; "
                "colour follows the test score, dotted lines are baselines.",
    "grad-norms": "Mean absolute gradient of each layer at every probed optimizer step, for a vanilla trial and "
                  "a DynSDPB trial (log scale; the DynSDPB paper's Figures 2, 4 and 5).",
    "dynamics": "DynSDPB sets α and τ per sample from the teacher's uncertainty and discrimination. Lines: the "
                "batch mean of each logging window; shaded: the batch minimum to maximum.",
    "importance": "fANOVA importance of each searched field for the best validation {metric} (Optuna).",
}


def write_page(out: Path, spec, table: pd.DataFrame, comparison: list[dict], judged: list, headlines: list[str],
               parent_run, arguments: dict[str, str]) -> Path:
    """Write ``out/index.html`` from the report's tables and the figures already drawn under ``out``."""
    names = {"metric": spec.metric, "test": spec.metric.test}
    sections = {
        "verdicts": _verdicts(judged, spec),
        "summary": _summary(spec, table, headlines, parent_run),
        "comparison": _comparison(comparison, spec),
        "trainer": _trainer(arguments),
        "heatmaps": _figures(out / "heatmaps", CAPTIONS["heatmaps"].format(**names),
                             "No heatmap: heatmaps are drawn for grid searches over two fields."),
        "parallel": _figures(out / "trials", CAPTIONS["parallel"].format(**names),
                             "Drawn for three or more scored trials over a numeric searched field."),
        "grad-norms": _figures(out / "grad_norms", CAPTIONS["grad-norms"],
                               "No gradient norms: the study ran no vanilla or DynSDPB trial, or "
                               "training.grad_norm_every was 0."),
        "dynamics": _figures(out / "dynamics", CAPTIONS["dynamics"], "No DynSDPB trial in this study."),
        "importance": _figures(out / "importance", CAPTIONS["importance"].format(metric=spec.metric),
                               "No importances: they are computed for TPE and random searches over two or more "
                               "fields with at least three finished trials."),
        "trials": _trials(table, spec),
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
        ("Metric", f"{spec.metric} chooses ({'higher' if spec.mode == 'max' else 'lower'} is better): each trial's "
                   f"best evaluation, the best setting, ASHA and TPE; {spec.metric.test} at that evaluation is "
                   "what is compared"),
        ("Methods searched", ", ".join(spec.methods)), ("Baselines", ", ".join(spec.baselines) or "none"),
        ("Search", f"{spec.search.algorithm} over {', '.join(spec.search.space)}"
                   + (f", ASHA (grace period {spec.scheduler.grace_period} evaluations, reduction factor "
                      f"{spec.scheduler.reduction_factor:g})" if spec.scheduler.type == "asha" else "")),
        ("Evaluations", "once an epoch" if spec.training.eval_every is None else
         f"every {spec.training.eval_every} {'steps' if isinstance(spec.training.eval_every, int) else 'epoch'} and "
         "at each epoch's end"),
        ("Seeds", ", ".join(map(str, spec.seeds)) if not spec.rerun_best else
         f"search {', '.join(map(str, spec.seeds))}; re-runs and baselines {', '.join(map(str, spec.verdict_seeds))}"
         + (f"; adaptive confirmation of {' vs '.join(spec.primary)} up to {len(spec.confirmation_seeds)} seeds "
            f"({spec.confirmation_seeds[0]}–{spec.confirmation_seeds[-1]}), {spec.round_seeds} a round"
            + (f", {spec.rerun_best.budget_minutes:g} min budget" if spec.rerun_best.budget_minutes else "")
            if spec.adaptive else "")),
        ("Trials", f"{len(table)} ({counts})" if len(table) else "none recorded"),
        ("Started", _time(parent_run.info.start_time)),
        ("MLflow run", f"{parent_run.info.run_name} ({parent_run.info.run_id})"),
    ]
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts)
    best = "".join(f"<li>{_e(line)}</li>" for line in headlines)
    return f"<table>{rows}</table>" + (f"<p>Cells chosen on validation:</p><ul>{best}</ul>" if best else "")


def _verdicts(judged: list, spec) -> str:
    if not judged:
        return "<p>Nothing to compare: the study ran no searched method beside a control.</p>"
    rows = "".join(
        f"<tr><td>{_e(v.subject)} vs {_e(v.control)}</td><td><b>{_e(v.word)}</b></td>"
        + ("<td colspan=5>" + _e(v.reason) + "</td>" if v.word == "no verdict" else
           f'<td class="num">{v.difference:+.4f}</td><td class="num">[{v.low:+.4f}, {v.high:+.4f}]</td>'
           f'<td class="num">{v.p_value:.3f}</td><td class="num">{v.improvement:.0%}</td>'
           f"<td>{_e(_failures(v))}</td>")
        + f'<td class="num">{v.n}</td><td>{_e(v.plan.text() if v.plan else "")}</td></tr>' for v in judged)
    head = ["comparison", "verdict", "difference", "95 % interval", "p (sign-flip)", "better on", "failed alone",
            "seeds", "seeds that would decide"]
    return (f"<table><tr>{''.join(f'<th>{_e(h)}</th>' for h in head)}</tr>{rows}</table>"
            f'<p class="muted">Difference: mean over shared seeds of {_e(spec.metric.test)} of the first method '
            f"minus the second's. {_e(method_text(spec.metric.test, spec.equivalence_margin))} "
            "Better on: the share of seeds where the first method "
            "scored higher (ties half). Failed alone: paired runs where only one of the two failed, with an exact "
            "McNemar test. <i>Equivalent</i> means the difference is shown to lie within the margin; <i>not "
            "distinguishable</i> means these seeds cannot tell, not that the methods are the same.</p>")


def _failures(verdict) -> str:
    if verdict.subject_only_failed is None:
        return "—"
    return (f"{verdict.subject_only_failed} vs {verdict.control_only_failed}"
            + (f" (p = {verdict.failures_p_value:.2f})" if verdict.subject_only_failed + verdict.control_only_failed
               else ""))


def _comparison(rows: list[dict], spec) -> str:
    if not rows:
        return "<p>No finished trial to compare.</p>"
    head = ["method", "chosen by", "setting", "optimizer steps", "samples", "training s",
            f"{spec.metric.test}: mean", "median", "std", "min – max", "failed [95 % CI]", "mean of the rest",
            "seeds"]
    lines = []
    for row in rows:
        test = row["test"]
        cells = [row["method"], row["how"], row["setting"] or "—"]
        failed = "—" if test.failed is None else \
            f"{test.failed}/{test.n} [{test.failure_low:.2f}, {test.failure_high:.2f}]"
        numbers = [_number(row["steps"], ".0f"), _number(row["samples"], ".0f"), _number(row["train_seconds"], ".0f"),
                   _number(test.mean), _number(test.median), _number(test.std),
                   f"{_number(test.min)} – {_number(test.max)}", failed,
                   _number(test.clicked_mean) if test.failed else "—", str(test.n)]
        lines.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells)
                     + "".join(f'<td class="num">{_e(n)}</td>' for n in numbers) + "</tr>")
    return (f"<table><tr>{''.join(f'<th>{_e(h)}</th>' for h in head)}</tr>{''.join(lines)}</table>"
            "<p class=\"muted\">Each method at the configuration validation chose; scores are test scores of each "
            "trial at its best validation evaluation, every run counted; std is over seeds; steps, samples and "
            "seconds are means over seeds (samples count a revisited sample again). A run failed when its best "
            "validation score stayed by the study's rule (set before it ran) at the majority class; the mean of "
            "the rest is conditional on not failing.</p>")


def _figures(folder: Path, caption: str, empty: str) -> str:
    images = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if not images:
        return f"<p>{_e(empty)}</p>"
    return "\n".join(
        f'<figure><img alt="{_e(path.stem)}" src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}">'
        f"<figcaption>{_e(path.name)}: {_e(caption)}</figcaption></figure>" for path in images)


def _trials(table: pd.DataFrame, spec) -> str:
    if table.empty:
        return "<p>No trial recorded.</p>"
    columns = ["trial", "phase", "method", *spec.search.space, "seed", "status", "evaluations", spec.metric.best,
               spec.metric.test, "seconds", "failure"]
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(row[c]) for c in columns) + "</tr>" for _, row in table.iterrows())
    return f"<table><tr>{head}</tr>{body}</table>"


def _number(value: float, spec: str = ".4f") -> str:
    return "—" if math.isnan(value) else format(value, spec)


def _cell(value) -> str:
    if isinstance(value, float):
        return '<td class="num">' + ("—" if math.isnan(value) else f"{value:.4g}") + "</td>"
    return f"<td>{_e(value)}</td>"


def _trainer(arguments: dict[str, str]) -> str:
    if not arguments:
        return "<p>No searched method: nothing was chosen.</p>"
    lines = "\n".join(f"# {method}\nargs = SelfDistillationArguments(output_dir, {text})"
                      for method, text in arguments.items())
    return ("<p>The chosen settings as arguments of a transformers Trainer with selfd's methods "
            "(<code>trainables.hf</code>; README, “Use it in your own training script”):</p>"
            f"<pre>from trainables.hf import SelfDistillationArguments, SelfDistillationTrainer\n{_e(lines)}\n"
            "SelfDistillationTrainer(model=model, args=args, train_dataset=train, data_collator=collator).train()"
            "</pre>")


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
