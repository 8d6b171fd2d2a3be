"""The MLflow child run of one trial, nested under the study's parent run.

A retried or resumed trial finds its run again by the ``selfd.trial_id`` tag instead of creating another, so
a study never holds duplicate runs. Metrics are buffered and sent with ``log_batch`` (≤ 1000 a call). The
driver, which sees how each trial ended, sets the run's final status.
"""

from __future__ import annotations

import math
import time

from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

TRIAL_ID_TAG = "selfd.trial_id"
BATCH_LIMIT = 1000


def find_trial_run(client: MlflowClient, experiment_id: str, trial_id: str):
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{TRIAL_ID_TAG}` = '{trial_id}'", max_results=1)
    return runs[0] if runs else None


class TrialRun:
    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, trial_id: str, trial_name: str,
                 params: dict, tags: dict | None = None) -> None:
        self.client = MlflowClient(tracking_uri)
        existing = find_trial_run(self.client, experiment_id, trial_id)
        if existing is not None:
            self.run_id = existing.info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            run = self.client.create_run(experiment_id, run_name=trial_name, tags={
                MLFLOW_PARENT_RUN_ID: parent_run_id, TRIAL_ID_TAG: trial_id, **(tags or {})})
            self.run_id = run.info.run_id
            self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        self.pending: list[Metric] = []

    def log(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.pending += [Metric(key, float(value), now, step) for key, value in metrics.items()
                         if isinstance(value, (int, float)) and math.isfinite(value)]

    def flush(self) -> None:
        while self.pending:
            batch, self.pending = self.pending[:BATCH_LIMIT], self.pending[BATCH_LIMIT:]
            self.client.log_batch(self.run_id, metrics=batch)
