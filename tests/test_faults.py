"""Faults a study survives: a tracking server that goes away mid-study (trials keep training, MLflow is
backfilled later with `selfd report --sync`). The server is compose's: docker/mlflow-server.sh on PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mlflow import MlflowClient

from conftest import free_port, start_mlflow_server, stop_process_group
from test_resume import wait_until
from test_study import TINY, write_spec

SELFD = str(Path(sys.executable).parent / "selfd")


def test_mlflow_outage_mid_study_is_kept_locally_then_synced(tmp_path, postgresql):
    store = postgresql("outage")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    spec = {**TINY, "name": "outage", "baselines": [], "seeds": [0],
            "task": {**TINY["task"], "train_subset": 64},  # trials long enough that two are left when MLflow goes
            "training": {**TINY["training"], "epochs": 2, "grad_norm_every": 0},
            "search": {"algorithm": "grid", "space": {"distill.alpha": {"values": [0.5, 1.0, 2.0]}}},
            "max_concurrent_trials": 1, "mlflow": {"tracking_uri": uri}}
    study_dir = tmp_path / "study"
    server = start_mlflow_server(tmp_path, port, store=store)
    # no retries: each call to the stopped server fails at once instead of after MLflow's backoff (~15 s a call
    # under selfd's bounded retries), which is what this test waited for most of its time
    driver = subprocess.Popen([SELFD, "run", str(write_spec(tmp_path, spec)), "--study-dir", str(study_dir)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"})
    try:
        client = MlflowClient(uri)

        def first_trial_ended():
            experiment = client.get_experiment_by_name("outage")
            runs = client.search_runs([experiment.experiment_id]) if experiment else []
            return any(r.info.status == "FINISHED" for r in runs)

        wait_until(first_trial_ended, 300, "the first trial to end", driver)
        stop_process_group(server)  # MLflow goes away with two trials still to run
        out, err = driver.communicate(timeout=600)
    finally:
        driver.kill()
        stop_process_group(server)
    assert driver.returncode == 3, err[-3000:]
    assert f"selfd report --sync {study_dir}" in err
    assert len(list((study_dir / "mlflow-unsent").glob("*.jsonl"))) >= 2
    trials = list((study_dir / "tune" / "search-static").glob("run_trial_*/result.json"))
    assert len(trials) == 3 and all(len(t.read_text().splitlines()) == 2 for t in trials)  # every epoch trained

    server = start_mlflow_server(tmp_path, port, store=store)  # back, on the same store
    try:
        synced = subprocess.run([SELFD, "report", "--sync", str(study_dir)], capture_output=True, text=True,
                                timeout=300)
        assert synced.returncode == 0, synced.stderr[-3000:]
        assert not list((study_dir / "mlflow-unsent").glob("*.jsonl"))
        experiment = client.get_experiment_by_name("outage").experiment_id
        runs = client.search_runs([experiment])
        parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert parent.info.status == "FINISHED" and parent.data.tags["selfd.failed_trials"] == "0"
        assert len(children) == 3 and {c.info.status for c in children} == {"FINISHED"}
        for child in children:
            assert [m.step for m in client.get_metric_history(child.info.run_id, "val_accuracy")] == [1, 2]
            assert child.data.params["distill.alpha"] in ("0.5", "1.0", "2.0")
        assert "results.csv" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    finally:
        stop_process_group(server)


def test_sync_logs_the_params_of_a_run_created_just_before_the_outage(tmp_path):
    """The race CI once hit: the server stopped between a trial's create_run and the log_batch of its params, so
    the run exists (found by its trial tag) without params, and the trial kept a create record. The state is
    built with a real sqlite store; `send_unsent` must log the params the run lacks."""
    from study.tracking import Tracking, send_unsent
    from trainables.mlflow_run import TRIAL_ID_TAG, UNSENT_DIR, keep_unsent

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("race")
    parent = client.create_run(experiment).info.run_id
    tags = {"mlflow.parentRunId": parent, TRIAL_ID_TAG: "t1"}
    child = client.create_run(experiment, run_name="trial", tags=tags).info.run_id
    params = {"method": "static", "distill.alpha": "0.5"}
    keep_unsent(tmp_path / UNSENT_DIR, "t1", {"create": {"experiment_id": experiment, "run_name": "trial",
                                                          "tags": tags, "params": params}})
    keep_unsent(tmp_path / UNSENT_DIR, "t1", {"metrics": [["val_accuracy", 0.6, 0, 1]]})
    assert send_unsent(tmp_path, Tracking(uri, experiment, parent)) == 0
    run = client.get_run(child)
    assert run.data.params == params and run.data.metrics == {"val_accuracy": 0.6}
    assert len(client.search_runs([experiment])) == 2  # no second child run
