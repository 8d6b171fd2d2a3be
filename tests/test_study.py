"""Studies end to end on a real local Ray instance with a real MLflow sqlite store."""

import dataclasses
import json
import re
import struct

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from ray.tune import ExperimentAnalysis
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from conftest import free_port, wait_until_healthy
from study.cli import main

TINY = {
    "name": "tiny",
    "description": "a 2 x 2 grid on 32 examples",
    "methods": ["static"],
    "baselines": ["vanilla", "vanilla_repeat", "dynamic"],
    "seeds": [0, 1],
    "model": {"name": "minilm-l6", "num_layers": 2},
    "task": {"name": "epistemic_reasoning", "max_length": 64, "train_subset": 32, "validation_subset": 32,
             "test_subset": 32},
    "training": {"epochs": 2, "batch_size": 8, "learning_rate": 1e-4, "log_every": 2, "grad_norm_every": 2},
    "search": {"algorithm": "grid", "space": {"distill.tau": {"values": [1.0, 3.0]},
                                              "distill.alpha": {"values": [0.5, 1.0]}}},
    "scheduler": {"type": "none"},
    "resources": {"cpu": 1},
    "max_concurrent_trials": 2,
}


def write_spec(folder, spec):
    path = folder / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def study_runs(study_dir):
    info = json.loads((study_dir / "study.json").read_text())
    client = MlflowClient(info["tracking_uri"])
    runs = client.search_runs([info["experiment_id"]], max_results=1000)
    parents = [r for r in runs if MLFLOW_PARENT_RUN_ID not in r.data.tags]
    children = [r for r in runs if r.data.tags.get(MLFLOW_PARENT_RUN_ID) == info["parent_run_id"]]
    return client, info, parents, children


@pytest.fixture(scope="module")
def grid_study(local_ray, tmp_path_factory):
    folder = tmp_path_factory.mktemp("grid")
    assert main(["run", str(write_spec(folder, TINY)), "--study-dir", str(folder / "study")]) == 0
    return folder / "study"


def test_grid_study_records_parent_children_metrics_and_heatmap(grid_study):
    client, info, parents, children = study_runs(grid_study)
    assert len(parents) == 1 and parents[0].info.run_id == info["parent_run_id"]
    assert len(children) == 2 * 2 * 2 + 3 * 2  # grid cells × seeds + baselines × seeds
    searched = [c for c in children if c.data.tags["selfd.phase"] == "search-static"]
    cells = {(c.data.params["distill.tau"], c.data.params["distill.alpha"], c.data.params["training.seed"])
             for c in searched}
    assert cells == {(t, a, s) for t in ("1.0", "3.0") for a in ("0.5", "1.0") for s in ("0", "1")}
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.params["method"] in ("static", "vanilla", "vanilla_repeat", "dynamic")
        assert child.data.params["training.cpus"] == "1"  # threads = the CPUs the trial holds
        run_id = child.info.run_id
        assert [m.step for m in client.get_metric_history(run_id, "val_accuracy")] == [1, 2]
        validation = [m.value for m in sorted(client.get_metric_history(run_id, "val_accuracy"), key=lambda m: m.step)]
        chosen = [step for step, value in enumerate(validation, 1) if value > max(validation[:step - 1], default=-1)]
        # test is scored where validation makes an evaluation the best so far, and nowhere else
        assert [m.step for m in client.get_metric_history(run_id, "test_accuracy")] == chosen
        assert child.data.params["training.metric_for_best_model"] == "val_accuracy"  # the study's metric
        assert len(client.get_metric_history(run_id, "loss")) >= 4  # 32 examples, every 2nd step, 2 epochs
        assert client.get_metric_history(run_id, "grad_norm/block_00")
    dynamic = next(c for c in children if c.data.params["method"] == "dynamic")
    assert {"alpha_mean", "alpha_min", "alpha_max", "tau_mean", "kd", "ce"} <= set(dynamic.data.metrics)

    artifacts = {a.path for a in client.list_artifacts(info["parent_run_id"], "heatmaps")}
    png = next(p for p in artifacts if p.endswith(".png"))
    local = client.download_artifacts(info["parent_run_id"], png, str(grid_study / "downloaded"))
    with open(local, "rb") as image:
        header = image.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    assert width > 300 and height > 200
    import matplotlib.image

    pixels = matplotlib.image.imread(local)
    assert pixels.std() > 0.05  # a drawn figure, not a blank canvas
    data = json.loads((grid_study / "report" / "heatmaps" / png.split("/")[-1].replace(".png", ".json")).read_text())
    assert len(data["cells"]) == 4 and all(cell["n"] == 2 for cell in data["cells"])
    assert data["metric"] == "test_accuracy" and data["chosen_on"] == "val_accuracy"
    # two seeds: every verdict says it cannot be given, and why, in the heatmap, the summary and on the parent run
    assert [(v["control"], v["word"]) for v in data["verdicts"]] == [("vanilla_repeat", "no verdict"),
                                                                    ("vanilla", "no verdict")]
    summary = (grid_study / "report" / "summary.md").read_text()
    assert summary.index("## Verdicts") < summary.index("## Methods compared")
    assert "- static vs vanilla_repeat: no verdict (2 shared seeds; a paired verdict needs at least 3" in summary
    assert "- dynamic vs static: no verdict" in summary
    tags = client.get_run(info["parent_run_id"]).data.tags
    assert tags["selfd.verdict.static_vs_vanilla_repeat"] == tags["selfd.verdict.dynamic_vs_static"] == "no verdict"
    page = (grid_study / "report" / "index.html").read_text()
    assert page.index('id="verdicts"') < page.index('id="summary"') and "parallel_coordinates.png" in page
    table = pd.read_csv(grid_study / "report" / "results.csv")
    assert table["test_accuracy"].between(0, 1).all() and (table["steps"] > 0).all()
    # failed runs: by the rule fixed when the study began (validation's majority class + 0.02), counted everywhere
    threshold = json.loads((grid_study / "study.json").read_text())["failure_threshold"]
    assert 0.5 <= threshold <= 1.02
    assert (table["failed_run"] == (table["best_val_accuracy"] <= threshold)).all()
    assert [cell["failed"] for cell in data["cells"]] == [
        int(table[(table["distill.tau"] == c["x"]) & (table["distill.alpha"] == c["y"])
                  & (table.phase == "search-static")]["failed_run"].sum()) for c in data["cells"]]
    assert f"at or below {threshold:.4f}" in summary and "failed " in summary
    assert (table["samples"] >= table["steps"] * 4).all()
    assert {a.path for a in client.list_artifacts(info["parent_run_id"])} >= {
        "results.csv", "summary.md", "verdicts.json", "heatmaps", "trials", "grad_norms"}
    # ended trials leave no checkpoints behind
    assert not list((grid_study / "tune").rglob("checkpoint_*"))


def test_report_twice_keeps_runs_and_replaces_artifacts(grid_study, capsys):
    client, info, parents, children = study_runs(grid_study)
    before = sorted(a.path for a in client.list_artifacts(info["parent_run_id"], "heatmaps"))
    for _ in range(2):
        assert main(["report", str(grid_study)]) == 0
    *_, first, second, third, trainer, report_line = capsys.readouterr().out.splitlines()
    assert [first, second, third] == [
        "verdict: static vs vanilla_repeat: no verdict (2 shared seeds; a paired verdict needs at least 3 — run more "
        "seeds)", "verdict: static vs vanilla: no verdict (2 shared seeds; a paired verdict needs at least 3 — run "
        "more seeds)", "verdict: dynamic vs static: no verdict (2 shared seeds; a paired verdict needs at least 3 — "
        "run more seeds)"]
    assert report_line == f"report: {grid_study / 'report'}"
    # the searched method's chosen cell, as arguments to paste into one's own Trainer script
    from trainables.hf import SelfDistillationArguments

    chosen = json.loads(next((grid_study / "report" / "heatmaps").glob("*.json")).read_text())["best"]
    assert trainer.startswith("trainer: static: SelfDistillationArguments(output_dir, selfd_method='static', ")
    args = eval(trainer.split(": ", 2)[2], {"SelfDistillationArguments": SelfDistillationArguments,  # noqa: S307
                                            "output_dir": str(grid_study / "trainer")})
    assert (args.selfd_tau, args.selfd_alpha) == (chosen["x"], chosen["y"])
    assert (args.per_device_train_batch_size, args.learning_rate, args.num_train_epochs) == (8, 1e-4, 2)
    assert "selfd_alpha=" in (grid_study / "report" / "summary.md").read_text()
    client, info, parents_after, children_after = study_runs(grid_study)
    assert len(parents_after) == len(parents) == 1 and len(children_after) == len(children)
    assert sorted(a.path for a in client.list_artifacts(info["parent_run_id"], "heatmaps")) == before


def test_plan_prices_the_seeds_each_verdict_needs_from_the_study_itself(grid_study, capsys):
    """Two seeds give no verdict but serve as a pilot: each comparison gets the paired seeds for 80 % power to
    detect the difference asked for, priced at the trial seconds the study measured."""
    table = pd.read_csv(grid_study / "report" / "results.csv")
    assert main(["plan", str(grid_study), "--detect", "0.05"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["static vs vanilla_repeat", "static vs vanilla",
                                                      "dynamic vs static"]
    for line in lines:
        found = re.search(r"no verdict after 2 paired seeds; to detect ±0\.050: (\d+) paired seeds \((\d+) more, "
                          r"≈ ([\d.]+) trial-hours, ([\d.]+) h at 2 trials at once\)", line)
        assert found, line
        seeds, more, hours, wall = int(found[1]), int(found[2]), float(found[3]), float(found[4])
        assert seeds >= 6 and more == seeds - 2 and wall == pytest.approx(hours / 2, abs=0.01)
        assert 0 < hours <= more * 2 * table["seconds"].max() / 3600 + 0.01
        assert "80 % power, planned from the" in line
    assert main(["plan", str(grid_study), "--detect", "-1"]) == 2
    assert "not a positive difference" in capsys.readouterr().err


def test_a_finished_study_is_never_run_over(grid_study, capsys):
    """`selfd run` into a finished study refuses, `--if-exists continue` rebuilds its report and runs nothing, and
    `--if-exists beside` runs a new study next to it: the old one's files, Tune records and MLflow runs stay."""
    spec = grid_study / "spec.yaml"  # the study's own spec, as it ran
    kept = {path: path.read_bytes() for path in (grid_study / "study.json", spec)}
    tune = {path: path.stat().st_mtime_ns for path in (grid_study / "tune").rglob("*") if path.is_file()}
    runs = {run.info.run_id for run in [*study_runs(grid_study)[2], *study_runs(grid_study)[3]]}
    capsys.readouterr()

    assert main(["run", str(spec), "--study-dir", str(grid_study)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"selfd: error: {grid_study} holds a finished study: `selfd report {grid_study}` rebuilds its report; or "
        "start another with a new --study-dir or --if-exists beside (nothing of this one is touched)")

    assert main(["run", str(spec), "--study-dir", str(grid_study), "--if-exists", "continue"]) == 0
    shown = capsys.readouterr()
    assert "holds this finished study: its report is rebuilt, nothing is run" in shown.err
    assert "verdict: static vs vanilla_repeat: no verdict" in shown.out

    other = ["--override", "training.epochs=1"]
    assert main(["run", str(spec), "--study-dir", str(grid_study), "--if-exists", "continue", *other]) == 2
    assert "holds a study of another spec (it differs in training.epochs)" in capsys.readouterr().err

    one_trial = ["--override", "baselines=[]", "--override", "seeds=[0]", "--override", "training.epochs=1",
                 "--override", "search.space.distill.tau.values=[1.0]",
                 "--override", "search.space.distill.alpha.values=[1.0]"]
    assert main(["run", str(spec), "--study-dir", str(grid_study), "--if-exists", "beside", *one_trial]) == 0
    beside = grid_study.with_name(f"{grid_study.name}-2")
    assert f"{grid_study} holds a study (left as it is); this one goes to {beside}" in capsys.readouterr().err
    assert len(study_runs(beside)[3]) == 1 and json.loads((beside / "study.json").read_text())["finished"]

    assert {path: path.read_bytes() for path in kept} == kept
    assert {path: path.stat().st_mtime_ns for path in (grid_study / "tune").rglob("*") if path.is_file()} == tune
    assert {run.info.run_id for run in [*study_runs(grid_study)[2], *study_runs(grid_study)[3]]} == runs
    assert main(["report", str(grid_study)]) == 0


def test_tpe_with_asha_stops_trials_and_marks_their_runs(local_ray, tmp_path):
    # one epoch evaluated 4 times: ASHA's rungs count evaluations
    spec = {**TINY, "name": "tpe", "baselines": [], "metric": "val_loss",
            "training": {**TINY["training"], "epochs": 1, "eval_every": 0.25, "grad_norm_every": 0},
            "search": {"algorithm": "tpe", "num_samples": 6, "seed": 0,
                       "space": {"training.learning_rate": {"low": 1e-6, "high": 1e-3, "log": True},
                                 "distill.alpha": {"low": 0.0, "high": 2.0}}},
            "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2}}
    study_dir = tmp_path / "study"
    assert main(["run", str(write_spec(tmp_path, spec)), "--study-dir", str(study_dir)]) == 0
    client, info, parents, children = study_runs(study_dir)
    assert len(children) == 6
    stopped = [c for c in children if c.info.status == "KILLED"]
    assert stopped, [c.info.status for c in children]
    for run in stopped:
        assert re.fullmatch(r"ASHA stopped it after evaluation [123] \(step \d+ of 8, epoch 0\.\d+\)",
                            run.data.tags["selfd.stopped_early"]), run.data.tags["selfd.stopped_early"]
        assert len(client.get_metric_history(run.info.run_id, "val_loss")) < 4
    assert all(c.info.status in ("FINISHED", "KILLED") for c in children)
    assert (study_dir / "report" / "importance" / "epistemic_reasoning_importance.png").is_file()


def test_selfd_ui_serves_the_study_on_loopback(grid_study):
    import os
    import signal
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    _, info, _, _ = study_runs(grid_study)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "study.cli", "ui", str(grid_study), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        # printed once the server is healthy; the server's own lines may come first
        url_line = next((line for line in server.stdout if line.startswith("MLflow UI for")), "")
        assert f"{base}/#/experiments/{info['experiment_id']}/runs/{info['parent_run_id']}" in url_line
        wait_until_healthy(base, server)
        run = json.loads(urllib.request.urlopen(f"{base}/api/2.0/mlflow/runs/get?run_id={info['parent_run_id']}").read())
        assert run["run"]["info"]["run_name"].startswith("tiny ")
        listing = json.loads(urllib.request.urlopen(
            f"{base}/api/2.0/mlflow/artifacts/list?run_id={info['parent_run_id']}&path=heatmaps").read())
        png = next(f["path"] for f in listing["files"] if f["path"].endswith(".png"))
        image = urllib.request.urlopen(f"{base}/get-artifact?path={png}&run_uuid={info['parent_run_id']}").read()
        assert image[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    with pytest.raises(urllib.error.URLError):  # the MLflow server went with `selfd ui`
        urllib.request.urlopen(f"{base}/health", timeout=5)


def test_best_settings_and_tuned_baselines_rerun_over_seeds_with_verdicts(local_ray, tmp_path, capsys):
    spec = {**TINY, "name": "rerun", "methods": ["static"], "baselines": ["vanilla_repeat"],
            "tune_baselines": True, "seeds": [0], "training": {**TINY["training"], "epochs": 1, "grad_norm_every": 0},
            "search": {"algorithm": "grid", "space": {"distill.alpha": {"values": [0.5, 1.0]},
                                                      "training.learning_rate": {"values": [1e-4]}}},
            "rerun_best": {"seeds": [1, 2]}}  # fresh seeds: test scores that chose nothing
    study_dir = tmp_path / "study"
    assert main(["run", str(write_spec(tmp_path, spec)), "--study-dir", str(study_dir)]) == 0
    # progress: a line per ended trial, counted against every phase's trials, with the time left from the 2nd on
    progress = [line for line in capsys.readouterr().err.splitlines() if line.startswith("progress: ")]
    assert [int(re.match(r"progress: (\d+)/7 trials", line).group(1)) for line in progress] == list(range(1, 8))
    assert all("about" in line and "left" in line for line in progress[:-1]) and progress[-1].endswith("done")
    assert sum("confirm-1: method=static" in line and "best_val_accuracy 0." in line for line in progress) == 2
    _, _, _, children = study_runs(study_dir)
    phases = sorted(c.data.tags["selfd.phase"] for c in children)
    assert {c.data.params["training.seed"] for c in children if c.data.tags["selfd.phase"].startswith("rerun-")} \
        == {"1", "2"}
    assert phases == (["rerun-static"] * 2 + ["rerun-vanilla_repeat"] * 2 + ["search-static"] * 2
                      + ["search-vanilla_repeat"])
    # the tuned baseline searched the field it shares (the learning rate), not α, which it ignores
    baseline = [c for c in children if c.data.tags["selfd.phase"] == "search-vanilla_repeat"]
    assert baseline[0].data.params["distill.alpha"] == str(TINY.get("distill", {}).get("alpha", 1.0))
    summary = (study_dir / "report" / "summary.md").read_text()
    for method in ("static", "vanilla_repeat"):
        assert f"| {method} | best setting re-run |" in summary
    assert "| vanilla_repeat | best setting re-run | learning rate=0.0001 |" in summary
    assert "- static vs vanilla_repeat: no verdict (2 shared seeds" in summary
    # the comparison names the setting each method was re-run at (it was read from an object without phases)
    page = (study_dir / "report" / "index.html").read_text()
    row = re.search(r"<tr[^>]*><td>static</td><td>best setting re-run</td><td>([^<]*)</td>", page)
    assert row and re.fullmatch(r"α=(0\.5|1), learning rate=0\.0001", row.group(1)), row and row.group(1)


def test_a_diverging_trial_fails_with_its_reason_and_the_study_goes_on(local_ray, tmp_path, capsys):
    spec = {**TINY, "name": "diverge", "baselines": [], "seeds": [0],
            "training": {**TINY["training"], "epochs": 1, "grad_norm_every": 0, "max_grad_norm": None},
            "search": {"algorithm": "grid", "space": {"training.learning_rate": {"values": [1e-4, 1e4]}}},
            "failure": {"max_retries": 1}}
    study_dir = tmp_path / "study"
    assert main(["run", str(write_spec(tmp_path, spec)), "--study-dir", str(study_dir)]) == 0
    progress = [line for line in capsys.readouterr().err.splitlines() if line.startswith("progress: ")]
    assert len(progress) == 2 and any("learning_rate=10000.0 " in line and ": failed: " in line
                                      and "loss became" in line for line in progress), progress
    analysis = ExperimentAnalysis(str(study_dir / "tune" / "search-static"))
    trials = {t.config["training.learning_rate"]: t for t in analysis.trials}
    assert trials[1e4].status == "ERROR" and trials[1e4].run_metadata.num_failures == 2  # retried once, per the policy
    assert trials[1e-4].status == "TERMINATED"
    client, info, parents, children = study_runs(study_dir)
    status = {c.data.params["training.learning_rate"]: c for c in children}
    assert status["0.0001"].info.status == "FINISHED"
    failed = status["10000.0"]
    assert failed.info.status == "FAILED"
    assert "TrainingDiverged" in failed.data.tags["selfd.failure"] and "loss became" in failed.data.tags["selfd.failure"]
    parent = client.get_run(info["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["selfd.failed_trials"] == "1"
    assert "FAILED" in (study_dir / "report" / "results.csv").read_text()


def test_choices_are_blind_to_the_test_labels(grid_study, tmp_path):
    """Test scores that run against validation (and are shuffled) change no choice of a real study: not the
    configuration each method is compared at, not the cell a heatmap boxes. (tests/test_fine_tune.py shows the
    same for a run: its training and validation never read the test split.)"""
    import numpy as np

    from study.comparison import selections
    from study.report import heatmap, results_table
    from study.spec import StudySpec
    from study.state import StudyState, search

    state = StudyState.read(grid_study)
    spec = StudySpec.model_validate(yaml.safe_load((grid_study / "spec.yaml").read_text()))
    table = results_table(MlflowClient(state.tracking.tracking_uri), state, spec)
    permuted = table.copy()
    noise = np.random.default_rng(0).uniform(0, 0.05, len(table))
    permuted["test_accuracy"] = 1.0 - table["best_val_accuracy"] + noise  # a choice that read test would flip
    assert not np.allclose(permuted["test_accuracy"], table["test_accuracy"])

    def choices(results):
        chosen = selections(results, spec, state)
        setting = next(s.setting for s in chosen if s.method == "static")
        cell = heatmap(results, spec, "static", "distill.tau", "distill.alpha", setting, [], tmp_path)["best"]
        return [(s.method, s.how, s.setting, sorted(s.rows.trial)) for s in chosen], (cell["x"], cell["y"])

    assert choices(permuted) == choices(table)
    # the search's own choice (recorded when its phase ended, from validation) is the one compared
    assert [s.setting for s in selections(table, spec, state) if s.method == "static"] == [
        state.ended(search("static")).best]


def test_adaptive_confirmation_adds_rounds_until_max_seeds_and_says_undetermined(local_ray, tmp_path, capsys):
    """rerun_best.seeds as a range: 3 seeds, then a seed a round to the primary comparison's two methods; with 4
    seeds at most the anytime-valid rule cannot decide (its e-value stays below 20), so it stops at max seeds."""
    from study.runner import _confirmation_stop, _round_seconds
    from study.spec import StudySpec
    from study.state import StopReason, StudyState

    spec = {**TINY, "name": "adaptive", "methods": ["static"], "baselines": ["vanilla_repeat"], "seeds": [0],
            "training": {**TINY["training"], "epochs": 1, "grad_norm_every": 0},
            "search": {"algorithm": "grid", "space": {"distill.alpha": {"values": [0.5]}}},
            "rerun_best": {"seeds": {"min": 3, "max": 4, "round": 1}}}
    study_dir = tmp_path / "study"
    assert main(["run", str(write_spec(tmp_path, spec)), "--study-dir", str(study_dir)]) == 0
    out, err = capsys.readouterr()
    state = StudyState.read(study_dir)
    assert state.stopped is StopReason.MAX_SEEDS
    assert [name for name in state.phases] == ["search-static", "confirm-1", "confirm-2"]
    progress = [line for line in err.splitlines() if line.startswith("progress: ")]
    assert progress[0].startswith("progress: 1/7 (up to 9) trials") and progress[-1].startswith("progress: 9/9")
    assert progress[-1].endswith("done")
    _, _, _, children = study_runs(study_dir)
    rounds = [c for c in children if c.data.tags["selfd.phase"].startswith("confirm-")]
    chosen = json.loads((study_dir / "study.json").read_text())["phases"]["search-static"]["best"]["distill.alpha"]
    assert sorted((c.data.params["method"], c.data.params["training.seed"]) for c in rounds) == [
        ("static", "4"), ("vanilla_repeat", "4")]
    assert {float(c.data.params["distill.alpha"]) for c in rounds if c.data.params["method"] == "static"} == {chosen}
    verdicts = json.loads((study_dir / "report" / "verdicts.json").read_text())
    primary = verdicts[0]
    assert (primary["subject"], primary["control"], primary["word"]) == ("static", "vanilla_repeat", "undetermined")
    assert primary["seeds"] == [1, 2, 3, 4] and primary["stopped"] == "max seeds" and primary["evalue"] < 20
    assert "verdict: static vs vanilla_repeat: undetermined after 4 paired seeds (adaptive, stopped: max seeds)" in out
    # a time budget the next round would overrun stops confirmation before it
    budgeted = StudySpec.model_validate({**yaml.safe_load((study_dir / "spec.yaml").read_text()),
                                         "rerun_best": {"seeds": {"min": 3, "max": 9, "round": 1},
                                                        "budget_minutes": state.seconds / 60 + 0.001}})
    assert _confirmation_stop(budgeted, study_dir, state, 4) is StopReason.BUDGET
    # before any added round, a round is timed as a wave of round 1's: 6 trials, 2 at a time, against 2
    before = dataclasses.replace(state, phases={name: r for name, r in state.phases.items() if name != "confirm-2"})
    assert _round_seconds(budgeted, before, 2) == pytest.approx(state.phases["confirm-1"].seconds / 3)
    assert _round_seconds(budgeted, state, 3) == state.phases["confirm-2"].seconds


def test_importances_are_left_out_where_every_trial_scored_alike(tmp_path):
    """A random search whose trials all stayed at the majority class has no variance to explain: Optuna's fANOVA
    raises on it, and the report leaves the importance out instead of failing (found by
    benchmarks/study_efficiency.py)."""
    from study.report import importance_figure
    from study.spec import StudySpec

    spec = StudySpec.model_validate({**TINY, "search": {"algorithm": "random", "num_samples": 4, "space": {
        "distill.tau": {"low": 1.0, "high": 5.0}, "distill.alpha": {"low": 0.1, "high": 2.0}}}})
    rows = [{"phase": "search-static", "distill.tau": 1.0 + i, "distill.alpha": 0.1 + i / 4,
             "best_val_accuracy": 0.63} for i in range(4)]
    assert importance_figure(pd.DataFrame(rows), spec, tmp_path) == {}
    rows[0]["best_val_accuracy"] = 0.9
    assert set(importance_figure(pd.DataFrame(rows), spec, tmp_path)) == {"static"}
    assert (tmp_path / "epistemic_reasoning_importance.png").is_file()


def test_a_two_trial_decoder_study_through_tune_and_mlflow(local_ray, tmp_path):
    spec = {"name": "nlg_tiny", "methods": ["dynamic"], "baselines": [], "seeds": [0],
            "model": {"name": "smollm2-135m", "num_layers": 2},
            "task": {"name": "strategyqa_gen", "max_length": 64, "max_target_length": 8, "train_subset": 8,
                     "validation_subset": 4},
            "training": {"epochs": 1, "batch_size": 4, "learning_rate": 3e-4, "log_every": 1, "grad_norm_every": 2},
            "distill": {"teacher_storage": "topk", "topk": 32},
            "search": {"algorithm": "grid", "space": {"distill.alpha": {"values": [0.5, 1.0]}}},
            "scheduler": {"type": "none"}, "resources": {"cpu": 1}, "max_concurrent_trials": 2,
            "metric": "val_rougeL"}
    assert main(["run", str(write_spec(tmp_path, spec)), "--study-dir", str(tmp_path / "study")]) == 0
    info = json.loads((tmp_path / "study" / "study.json").read_text())
    client = MlflowClient(info["tracking_uri"])
    children = client.search_runs([info["experiment_id"]], f"tags.mlflow.parentRunId = '{info['parent_run_id']}'")
    assert len(children) == 2 and {c.info.status for c in children} == {"FINISHED"}
    for child in children:
        assert {"val_rougeL", "val_accuracy", "kd", "alpha_mean", "grad_norm/block_00"} <= set(child.data.metrics)
    assert "best_val_rougeL" in (tmp_path / "study" / "report" / "results.csv").read_text()
