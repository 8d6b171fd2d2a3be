"""The MLflow child run of one trial, nested under the study's parent run.

A retried or resumed trial finds its run again by the ``selfd.trial_id`` tag instead of creating another, so
a study never holds duplicate runs; the steps it trains again (those after its last checkpoint, already logged
before the interruption) are not logged twice. Metrics are buffered and sent with ``log_batch`` (≤ 1000 a call). The
driver, which sees how each trial ended, sets the run's final status.

A tracking server that fails mid-study does not stop training: from the first failed call on, the trial's
records (its run, metrics, final status) go to ``<study dir>/mlflow-unsent/<trial id>.jsonl`` instead, and
``selfd report --sync`` sends them once the server is back.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from trainables.errors import first_line

TRIAL_ID_TAG = "selfd.trial_id"
BATCH_LIMIT = 1000
UNSENT_DIR = "mlflow-unsent"
# what a failing tracking store raises (after the client's own retries)
TRACKING_ERRORS = (MlflowException, requests.RequestException, OSError)
PHASE_TAG, METHOD_TAG = "selfd.phase", "selfd.method"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialTracking:
    """Where a trial records itself: the study's store, experiment and parent run, the study phase each method's
    trials belong to (method → phase name, as ``study.state.Phase`` writes it: one Tune experiment can run several
    phases' trials), and the folder for records MLflow could not take."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    phases: dict[str, str]
    unsent_dir: str


def bounded_retries() -> None:
    """MLflow retries a failed request 7 times over ~4 minutes by default; a study waits ~15 s, then keeps the
    record locally. Settings from the environment win."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


def find_trial_run(client: MlflowClient, experiment_id: str, trial_id: str):
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{TRIAL_ID_TAG}` = '{trial_id}'", max_results=1)
    return runs[0] if runs else None


def keep_unsent(unsent_dir: str | Path, trial_id: str, record: dict) -> None:
    """Append one record for ``selfd report --sync``: {"create": ...}, {"metrics": [...]} or {"end": ...}."""
    folder = Path(unsent_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{trial_id}.jsonl", "a") as file:
        file.write(json.dumps(record) + "\n")


class TrialRun:
    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, trial_id: str, trial_name: str,
                 params: dict, tags: dict | None = None, unsent_dir: str | None = None) -> None:
        self.client = MlflowClient(tracking_uri)
        self.trial_id, self.unsent_dir = trial_id, unsent_dir
        self.pending: list[Metric] = []
        self.logged_until: dict[str, int] = {}  # a resumed run's last logged step per metric
        self.run_id = None
        tags = {MLFLOW_PARENT_RUN_ID: parent_run_id, TRIAL_ID_TAG: trial_id, **(tags or {})}
        try:
            existing = find_trial_run(self.client, experiment_id, trial_id)
            if existing is not None:
                self.run_id = existing.info.run_id
                self.client.update_run(self.run_id, status="RUNNING")
                self.logged_until = {key: max(m.step for m in self.client.get_metric_history(self.run_id, key))
                                     for key in existing.data.metrics}
                # a retried or resumed trial may run on another node now
                self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
            else:
                self.run_id = self.client.create_run(experiment_id, run_name=trial_name, tags=tags).info.run_id
                self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        except TRACKING_ERRORS as error:
            self._go_offline(error)
            keep_unsent(unsent_dir, trial_id, {"create": {
                "experiment_id": experiment_id, "run_name": trial_name, "tags": tags,
                "params": {k: str(v) for k, v in params.items()}}})

    @property
    def offline(self) -> bool:
        return self.client is None

    def log(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.pending += [Metric(key, float(value), now, step) for key, value in metrics.items()
                         if isinstance(value, (int, float)) and math.isfinite(value)
                         and step > self.logged_until.get(key, -1)]

    def flush(self) -> None:
        while self.pending and not self.offline:
            batch = self.pending[:BATCH_LIMIT]
            try:
                self.client.log_batch(self.run_id, metrics=batch)
            except TRACKING_ERRORS as error:
                self._go_offline(error)
                break
            self.pending = self.pending[BATCH_LIMIT:]
        if self.pending:
            keep_unsent(self.unsent_dir, self.trial_id,
                        {"metrics": [[m.key, m.value, m.timestamp, m.step] for m in self.pending]})
            self.pending = []

    def _go_offline(self, error: BaseException) -> None:
        if self.unsent_dir is None:
            raise error
        log.warning("MLflow is unreachable (%s); trial %s keeps its records in %s",
                    first_line(error), self.trial_id, self.unsent_dir)
        self.client = None
