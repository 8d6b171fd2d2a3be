"""A study whose driver is killed (SIGKILL of its whole process group, Ray included, as a reboot would) or stopped
(SIGTERM, as `docker stop`, Slurm and Kubernetes do) resumes with `selfd resume`: every planned trial ends exactly
once, in Tune and in MLflow. One driver at a time runs a study."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ray.tune import ExperimentAnalysis

from test_study import TINY, study_runs, write_spec

SELFD = str(Path(sys.executable).parent / "selfd")


def wait_until(condition, timeout: float, what: str, process=None, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        assert process is None or process.poll() is None, f"the driver exited before {what}"
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


# three trials of three epochs, one at a time: a driver can be stopped with one ended and one midway
THREE_TRIALS = {**TINY, "baselines": [], "seeds": [0],
                "training": {**TINY["training"], "epochs": 3, "grad_norm_every": 0},
                "search": {"algorithm": "grid", "space": {"distill.alpha": {"values": [0.5, 1.0, 2.0]}}},
                "max_concurrent_trials": 1}


def one_ended_one_midway(study_dir: Path, ended: int = 1):
    """(finished child runs, running child runs whose trial has checkpointed an epoch), once ``ended`` trials
    have finished and one is midway."""
    if not (study_dir / "study.json").is_file():
        return None
    client, _, _, children = study_runs(study_dir)
    phase = study_dir / "tune" / "search-static"

    def checkpointed(trial_id: str) -> bool:  # an epoch's checkpoint, and Tune's saved state knows the trial
        states = " ".join(path.read_text() for path in phase.glob("experiment_state-*.json"))
        return any(phase.glob(f"run_trial_{trial_id}_*/checkpoint_*")) and trial_id in states

    finished = [c for c in children if c.info.status == "FINISHED"]
    midway = [c for c in children if c.info.status == "RUNNING" and checkpointed(c.data.tags["selfd.trial_id"])]
    return (finished, midway) if len(finished) >= ended and midway else None


def assert_every_trial_ended_once(study_dir: Path) -> None:
    """Three trials, each FINISHED once in MLflow with every epoch logged once, TERMINATED in Tune."""
    client, info, parents, children = study_runs(study_dir)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 3 and {c.info.status for c in children} == {"FINISHED"}
    assert len({c.data.tags["selfd.trial_id"] for c in children}) == 3  # no duplicate child runs
    for child in children:
        assert [m.step for m in client.get_metric_history(child.info.run_id, "val_accuracy")] == [1, 2, 3]
    trials = ExperimentAnalysis(str(study_dir / "tune" / "search-static")).trials
    assert len(trials) == 3 and {t.status for t in trials} == {"TERMINATED"}
    assert {t.last_result["training_iteration"] for t in trials} == {3}


def test_a_stopped_then_killed_driver_resumes_every_trial_exactly_once_on_postgresql(tmp_path, postgresql):
    """SIGTERM to the driver (what `docker stop` sends): exit code 143, one line saying how to resume, no stack
    dumps, and no run duplicated; a second driver is refused while the first runs, and `run` into the study is
    refused. Then the resumed driver is SIGKILLed with its whole process group, Ray included (a reboot), and
    resumed again: every trial ends exactly once. The tracking server is compose's: docker/mlflow-server.sh on
    PostgreSQL."""
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    from conftest import free_port, start_mlflow_server, stop_process_group

    port = free_port()
    server = start_mlflow_server(tmp_path, port, store=postgresql("resumable"))
    spec = write_spec(tmp_path, {**THREE_TRIALS, "name": "resumable",
                                 "mlflow": {"tracking_uri": f"http://127.0.0.1:{port}"}})
    study_dir = tmp_path / "study"
    try:
        driver = subprocess.Popen([SELFD, "run", str(spec), "--study-dir", str(study_dir)], start_new_session=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_until(lambda: (study_dir / "study.json").is_file(), 300, "the study to start", driver)
            second = subprocess.run([SELFD, "resume", str(study_dir)], capture_output=True, text=True, timeout=120)
            assert second.returncode == 2, second.stderr[-2000:]
            assert second.stderr.strip() == (f"selfd: error: {study_dir.resolve()} is being run by selfd pid "
                                             f"{driver.pid} on {os.uname().nodename}; one driver at a time: wait for "
                                             "it to end, or stop it (it stays resumable) and then `selfd resume`")
            finished, midway = wait_until(lambda: one_ended_one_midway(study_dir), 300,
                                          "a finished and a half-done trial", driver)
            # the stop comes as the trial's second checkpoint replaces its first, near the moment (milliseconds
            # wide) when an interrupt raised at once would leave a state naming the deleted checkpoint
            wait_until(lambda: any((study_dir / "tune" / "search-static").glob(
                f"run_trial_{midway[0].data.tags['selfd.trial_id']}_*/checkpoint_000001")), 300,
                "the half-done trial's second checkpoint", driver, every=0.02)
            signalled = time.monotonic()
            driver.send_signal(signal.SIGTERM)
            _, err = driver.communicate(timeout=120)
            stopped_after = time.monotonic() - signalled
        finally:
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)
        print(f"SIGTERM: the driver exited {stopped_after:.1f} s after the signal")
        assert driver.returncode == 143, err[-3000:]
        assert [line for line in err.splitlines() if line.startswith("selfd:") and "downloading" not in line] == [
            f"selfd: stopped by SIGTERM; continue with `selfd resume {study_dir}`"]
        for dump in ("Traceback", "SIGTERM received", "AbslFailureSignalHandler", "***"):
            assert dump not in err, err[-3000:]
        assert stopped_after < 10  # within `docker stop`'s grace period
        _, info, _, _ = study_runs(study_dir)
        client = MlflowClient(info["tracking_uri"])
        stopped_runs = {r.info.run_id for r in client.search_runs([info["experiment_id"]], run_view_type=ViewType.ALL)}

        rerun = subprocess.run([SELFD, "run", str(spec), "--study-dir", str(study_dir)], capture_output=True,
                               text=True, timeout=120)
        assert rerun.returncode == 2 and f"selfd resume {study_dir}" in rerun.stderr  # nothing lost by a slip

        resumed = subprocess.Popen([SELFD, "resume", str(study_dir)], start_new_session=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: one_ended_one_midway(study_dir, ended=2), 300,
                       "the resumed study's third trial midway", resumed)
        finally:
            with contextlib.suppress(ProcessLookupError):  # gone already when the wait above failed
                os.killpg(resumed.pid, signal.SIGKILL)  # the driver and the Ray processes it started
            resumed.wait()
        last = subprocess.run([SELFD, "resume", str(study_dir)], capture_output=True, text=True, timeout=600)
        assert last.returncode == 0, last.stderr[-3000:]

        assert_every_trial_ended_once(study_dir)
        _, _, parents, children = study_runs(study_dir)
        assert parents[0].data.tags["selfd.resumed"] == "2"
        # the stop duplicated nothing: every run it left is one of the study's (none deleted as a duplicate)
        assert stopped_runs <= {parents[0].info.run_id, *(c.info.run_id for c in children)}
        assert {c.info.run_id for c in children} >= {*(c.info.run_id for c in finished), midway[0].info.run_id}

        again = subprocess.run([SELFD, "resume", str(study_dir)], capture_output=True, text=True, timeout=120)
        assert again.returncode == 0 and "nothing to resume" in again.stdout
        assert len(study_runs(study_dir)[3]) == 3
    finally:
        stop_process_group(server)


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
