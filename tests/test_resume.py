"""A study whose driver is killed (SIGKILL of its whole process group, Ray included, as a reboot would) resumes
with `selfd resume`: every planned trial ends exactly once, in Tune and in MLflow."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ray.tune import ExperimentAnalysis

from test_study import TINY, study_runs, write_spec

SELFD = str(Path(sys.executable).parent / "selfd")


def wait_until(condition, timeout: float, what: str, process=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        assert process is None or process.poll() is None, f"the driver exited before {what}"
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_killed_driver_resumes_every_trial_exactly_once(tmp_path):
    spec = {**TINY, "name": "resumable", "baselines": [], "seeds": [0],
            "training": {**TINY["training"], "epochs": 3, "grad_norm_every": 0},
            "search": {"algorithm": "grid", "space": {"distill.alpha": {"values": [0.5, 1.0, 2.0]}}},
            "max_concurrent_trials": 1}
    study_dir = tmp_path / "study"
    driver = subprocess.Popen([SELFD, "run", str(write_spec(tmp_path, spec)), "--study-dir", str(study_dir)],
                              start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def one_ended_one_midway():
        if not (study_dir / "study.json").is_file():
            return None
        client, _, _, children = study_runs(study_dir)
        finished = [c for c in children if c.info.status == "FINISHED"]
        midway = [c for c in children if c.info.status == "RUNNING" and checkpointed(c.data.tags["selfd.trial_id"])]
        return (finished, midway) if finished and midway else None

    def checkpointed(trial_id: str) -> bool:  # an epoch's checkpoint, and Tune's saved state knows the trial
        phase = study_dir / "tune" / "search-static"
        states = " ".join(path.read_text() for path in phase.glob("experiment_state-*.json"))
        return any(phase.glob(f"run_trial_{trial_id}_*/checkpoint_*")) and trial_id in states

    try:
        finished, midway = wait_until(one_ended_one_midway, 300, "a finished and a half-done trial", driver)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray processes it started
        driver.wait()
    ended_before = {c.data.tags["selfd.trial_id"]: c.info.run_id for c in finished}
    resumed_run = midway[0].info.run_id

    rerun = subprocess.run([SELFD, "run", str(tmp_path / "resumable.yaml"), "--study-dir", str(study_dir)],
                           capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 2 and f"selfd resume {study_dir}" in rerun.stderr  # nothing lost by a slip

    resumed = subprocess.run([SELFD, "resume", str(study_dir)], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    client, info, parents, children = study_runs(study_dir)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["selfd.resumed"] == "1"
    assert len(children) == 3 and {c.info.status for c in children} == {"FINISHED"}
    assert len({c.data.tags["selfd.trial_id"] for c in children}) == 3  # no duplicate child runs
    for child in children:
        steps = sorted({m.step for m in client.get_metric_history(child.info.run_id, "val_accuracy")})
        assert steps == [1, 2, 3]
    for run_id in [*ended_before.values(), resumed_run]:  # ended: not trained again; midway: from its checkpoint
        assert [m.step for m in client.get_metric_history(run_id, "val_accuracy")] == [1, 2, 3]
    trials = ExperimentAnalysis(str(study_dir / "tune" / "search-static")).trials
    assert len(trials) == 3 and {t.status for t in trials} == {"TERMINATED"}
    assert {t.last_result["training_iteration"] for t in trials} == {3}

    again = subprocess.run([SELFD, "resume", str(study_dir)], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "nothing to resume" in again.stdout
    assert len(study_runs(study_dir)[3]) == 3


def test_a_resumed_trial_does_not_log_the_steps_it_trains_again(tmp_path):
    """Killed after logging epoch 2 but before Tune saved its checkpoint, a trial trains epoch 2 again."""
    from mlflow import MlflowClient

    from trainables.mlflow_run import TrialRun

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = MlflowClient(uri).create_experiment("resumed")
    parent = MlflowClient(uri).create_run(experiment).info.run_id
    first = TrialRun(uri, experiment, parent, "t1", "trial", {"lr": 1})
    for epoch in (1, 2):
        first.log({"val_accuracy": 0.5 + epoch / 10}, epoch)
    first.flush()
    again = TrialRun(uri, experiment, parent, "t1", "trial", {"lr": 1})  # resumed from epoch 1's checkpoint
    assert again.run_id == first.run_id
    for epoch in (2, 3):
        again.log({"val_accuracy": 0.5 + epoch / 10}, epoch)
    again.flush()
    history = MlflowClient(uri).get_metric_history(first.run_id, "val_accuracy")
    assert [m.step for m in history] == [1, 2, 3]
