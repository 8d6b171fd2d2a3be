"""The study's MLflow side, in the driver: tracking store, experiment, parent run, each child run's final
status (FINISHED, KILLED when ASHA stopped the trial early, FAILED with the reason), and sending what trials
kept locally while the tracking server was unreachable.

The store and experiment are created here, before any trial starts: trials only add runs to them (concurrent
first-time set-up of a sqlite store races).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from ray import tune

from study.spec import LOGIN_IN_URI
from trainables.errors import ConfigError, first_line
from trainables.mlflow_run import (BATCH_LIMIT, TRACKING_ERRORS, UNSENT_DIR, TrialTracking, find_trial_run,
                                   keep_unsent)

log = logging.getLogger(__name__)

# how a run ended, as MLflow spells it (run statuses are strings in its API)
FINISHED, KILLED, FAILED = map(RunStatus.to_string, (RunStatus.FINISHED, RunStatus.KILLED, RunStatus.FAILED))


@dataclass(frozen=True)
class Tracking:
    tracking_uri: str
    experiment_id: str
    parent_run_id: str

    def for_trials(self, phases: dict[str, str], study_dir: Path) -> TrialTracking:
        return TrialTracking(self.tracking_uri, self.experiment_id, self.parent_run_id, phases,
                             str(study_dir / UNSENT_DIR))

    def run_url(self, server: str) -> str:
        """The parent run's page in the MLflow UI served at ``server``."""
        return f"{server.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.parent_run_id}"


def tracking_uri(configured: str | None, study_dir: Path) -> str:
    """The spec's URI, else MLflow's own MLFLOW_TRACKING_URI, else a sqlite store in the study directory."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(study_dir / 'mlflow.db').resolve()}"
    if urllib.parse.urlsplit(uri).username is not None:
        raise ConfigError(f"the MLflow tracking URI {LOGIN_IN_URI}")
    return uri


def check_reachable(uri: str) -> None:
    """A tracking server must answer /health, and take this client's login, now, before the study creates anything."""
    if not uri.startswith(("http://", "https://")):
        return
    base = uri.rstrip("/")
    for path, headers in (("/health", {}), ("/api/2.0/mlflow/experiments/search?max_results=1", _login_header())):
        try:
            with urllib.request.urlopen(urllib.request.Request(base + path, headers=headers), timeout=10):
                pass
        except urllib.error.HTTPError as error:
            if error.code in (401, 403):
                given = "with the login in" if os.environ.get("MLFLOW_TRACKING_USERNAME") else "without"
                raise ConfigError(f"MLflow at {uri} refused this client ({given} MLFLOW_TRACKING_USERNAME / "
                                  "MLFLOW_TRACKING_PASSWORD): set them to an account of that server") from None
            raise ConfigError(f"{uri} answered {path.partition('?')[0]} with HTTP {error.code}: is it an MLflow tracking server?") from None
        except (urllib.error.URLError, socket.timeout, ConnectionError) as error:
            reason = getattr(error, "reason", error)
            raise ConfigError(f"MLflow tracking server {uri} is unreachable ({reason})") from None


def _login_header() -> dict:
    """The login MLflow's own client sends (basic auth, or a bearer token)."""
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    if token := os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return {"Authorization": f"Bearer {token}"}
    return {}


def experiment_id(client: MlflowClient, name: str, study_dir: Path, uri: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    local = not uri.startswith(("http://", "https://"))
    location = (study_dir / "mlartifacts").resolve().as_uri() if local else None
    return client.create_experiment(name, artifact_location=location)


class TrialStatus(tune.Callback):
    """Ends each trial's child run with how the trial ended (the trial itself cannot see ASHA stop it)."""

    def __init__(self, tracking: Tracking, study_dir: Path) -> None:
        self.tracking = tracking
        self.unsent_dir = study_dir / UNSENT_DIR
        self.ended: list[str] = []  # folders of trials that ended since the last experiment-state save
        self.recorded: list[str] = []  # ... and those that ended before it

    def get_state(self) -> None:
        # Tune calls this each time it saves the experiment state, which it then copies to the study directory
        # in the background. A trial's checkpoint goes one save after the save that records the trial as
        # ended, so a driver killed at any point never resumes a trial from a deleted checkpoint. (An ended
        # trial is never resumed; its weights and optimizer state only take disk space.)
        for folder in self.recorded:
            for checkpoint in Path(folder).glob("checkpoint_*"):
                shutil.rmtree(checkpoint, ignore_errors=True)
        self.recorded, self.ended = self.ended, []
        return None

    def _end(self, trial, status: str, tags: dict) -> None:
        try:
            client = MlflowClient(self.tracking.tracking_uri)
            run = find_trial_run(client, self.tracking.experiment_id, trial.trial_id)
            if run is not None:
                client.log_batch(run.info.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
                client.set_terminated(run.info.run_id, status)
                return
            if not (self.unsent_dir / f"{trial.trial_id}.jsonl").is_file():
                return  # the trial failed before it could create its run
        except TRACKING_ERRORS as error:
            log.warning("MLflow is unreachable (%s); trial %s ended %s, kept in %s",
                        first_line(error), trial.trial_id, status, self.unsent_dir)
        keep_unsent(self.unsent_dir, trial.trial_id, {"end": {"status": status, "tags": tags}})

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        if last.get("step", 0) < last.get("total_steps", 0):  # it ended before its last step: ASHA stopped it
            self._end(trial, KILLED, {"selfd.stopped_early": (
                f"ASHA stopped it after evaluation {last.get('training_iteration')} (step {last['step']} of "
                f"{last['total_steps']}, epoch {last.get('trained_epochs', 0):g})")})
        else:
            self._end(trial, FINISHED, {})
        self.ended.append(trial.path)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, FAILED, {"selfd.failure": failure_reason(trial)[:500]})


def failure_reason(trial) -> str:
    """The last line of a failed trial's error."""
    # the driver's copy of the error file is written before the error callbacks; the storage copy may lag
    error_file = Path(trial.error_file) if trial.error_file else None
    text = error_file.read_text() if error_file and error_file.is_file() else str(trial.get_error() or "")
    reason = [line.strip() for line in text.splitlines() if line.strip()]
    return reason[-1] if reason else "unknown error"


def unsent_trials(study_dir: Path) -> list[Path]:
    return sorted((Path(study_dir) / UNSENT_DIR).glob("*.jsonl"))


def send_unsent(study_dir: Path, tracking: Tracking) -> int:
    """Send the records trials kept while MLflow was unreachable; returns how many trials still have some."""
    client = MlflowClient(tracking.tracking_uri)
    left = 0
    for path in unsent_trials(study_dir):
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        try:
            _send(client, tracking, path.stem, records)
        except (*TRACKING_ERRORS, ConfigError) as error:
            log.warning("trial %s not sent: %s", path.stem, first_line(error))
            left += 1
            continue
        path.unlink()
    return left


def _send(client: MlflowClient, tracking: Tracking, trial_id: str, records: list[dict]) -> None:
    created = next((r["create"] for r in records if "create" in r), None)
    run = find_trial_run(client, tracking.experiment_id, trial_id)
    if run is None:
        if created is None:
            raise ConfigError(f"trial {trial_id} has no run in MLflow and no record to create one")
        run = client.create_run(created["experiment_id"], run_name=created["run_name"], tags=created["tags"])
    run_id = run.info.run_id
    # the params the run lacks: all of a run created here, or those of one the server created before it went away
    missing = {k: v for k, v in (created or {}).get("params", {}).items() if k not in run.data.params}
    if missing:
        client.log_batch(run_id, params=[Param(k, v) for k, v in missing.items()])
    metrics = [Metric(*m) for r in records if "metrics" in r for m in r["metrics"]]
    for start in range(0, len(metrics), BATCH_LIMIT):
        client.log_batch(run_id, metrics=metrics[start:start + BATCH_LIMIT])
    end = next((r["end"] for r in reversed(records) if "end" in r), None)
    if end is not None:
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in end["tags"].items()])
        client.set_terminated(run_id, end["status"])
