"""The Ray Tune trial function: one fine-tuning run, reported to Tune per evaluation with a checkpoint and logged
to the trial's MLflow child run.

The trial's ``config`` holds ``method`` and the searched fields as dotted paths (``distill.tau``); everything
else comes from the study's base run configs, passed once with ``tune.with_parameters``. The run uses as
many CPU threads as the trial holds CPUs; with a GPU in its resources it trains on CUDA.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from contextlib import nullcontext

import ray
from ray import tune

from trainables.config import parse_config
from trainables.mlflow_run import METHOD_TAG, PHASE_TAG, TrialRun, TrialTracking, bounded_retries
from trainables.recipe import FineTuneRecipe, Reporter
from trainables.schema import flatten


class TuneReporter(Reporter):
    """Per logging step: metrics to MLflow. Per evaluation: metrics to MLflow (its step is the evaluation's number)
    and to Tune (one ``training_iteration`` each: what ASHA counts), with a checkpoint, and the
    seconds spent so far on MLflow (``log_seconds``, the run's creation included) and checkpoints."""

    def __init__(self, run: TrialRun, log_seconds: float = 0.0) -> None:
        self.run = run
        self.log_seconds, self.checkpoint_seconds = log_seconds, 0.0

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step)  # buffered: sent with the epoch's metrics

    def log_evaluation(self, evaluation: int, metrics: dict[str, float], save_checkpoint) -> None:
        started = time.perf_counter()
        self.run.log(metrics, evaluation)
        self.run.flush()
        saving = time.perf_counter()
        self.log_seconds += saving - started
        with tempfile.TemporaryDirectory(prefix="selfd-checkpoint-") as folder:
            save_checkpoint(folder)
            self.checkpoint_seconds += time.perf_counter() - saving
            tune.report({**metrics, "evaluation": evaluation, "log_seconds": self.log_seconds,
                         "checkpoint_seconds": self.checkpoint_seconds},
                        checkpoint=tune.Checkpoint.from_directory(folder))


def run_trial(config: dict, *, base_runs: dict[str, dict], tracking: TrialTracking) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # no tokenizer threads beside the trial's own
    # Ray forwards this process's log lines to the driver's terminal: its INFO line per checkpoint is not news
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    bounded_retries()
    values = dict(config)
    method = values.pop("method")
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    run_config = parse_config(base_runs[method], values={**values, "training.cpus": max(1, round(cpus))})

    context = tune.get_context()
    creating = time.perf_counter()
    params = flatten(run_config.model_dump(mode="json"))
    run = TrialRun(tracking.tracking_uri, tracking.experiment_id, tracking.parent_run_id,
                   context.get_trial_id(), context.get_trial_name(), params,
                   tags={PHASE_TAG: tracking.phases[method], METHOD_TAG: method,
                         "selfd.node_id": ray.get_runtime_context().get_node_id()},
                   unsent_dir=tracking.unsent_dir)
    log_seconds = time.perf_counter() - creating
    checkpoint = tune.get_checkpoint()  # set when the trial is retried or the study resumed
    try:
        with checkpoint.as_directory() if checkpoint else nullcontext() as folder:
            recipe = FineTuneRecipe(run_config)
            recipe.setup(resume_from=folder)
            recipe.train(TuneReporter(run, log_seconds))
    finally:
        run.flush()
