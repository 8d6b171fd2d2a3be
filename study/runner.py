"""Run a study: check everything it needs, then run its phases as Ray Tune experiments recorded in MLflow.

Phases, in order, each one Tune experiment under ``<study dir>/tune/<phase>``:
1. ``search-<method>`` — the search (Optuna grid / TPE / random) with ASHA; a grid covers every combination
   with every seed, TPE and random draw ``num_samples`` settings per method at the first seed;
2. ``confirm-1`` — with ``rerun_best``, each baseline method with the base settings (no early stopping; its
   trials tagged ``baselines``) and each method's best setting again (tagged ``rerun-<method>``), over the verdict
   seeds (``rerun_best.seeds``, the first ``min`` of an adaptive range); one phase, so that its trials fill every
   slot. Without ``rerun_best``, ``baselines``: the baselines alone over ``seeds``;
3. ``confirm-<round>`` — adaptive confirmation: after each round, the primary comparison's anytime-valid rule
   (study.verdicts) looks at every paired seed so far; until it decides, or ``max`` seeds, or the time budget,
   the next round runs both of its methods on the next seeds.
Every trial is a child run of one MLflow parent run per study execution. ``study.json`` in the study directory
records the phases that have ended, so ``selfd resume`` skips them and restores the one in progress from
Tune's saved state. A directory holds one study: ``run`` refuses one that holds a study (study.directory), and
one driver at a time runs it (its lock).
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import shutil
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from study import signals
from study import state as phases
from study.directory import check_writable, driving, holds_study, refusal
from study.progress import StudyProgress
from study.spec import StudySpec, check_scheduler
from study.state import Phase, PhaseKind, PhaseRecord, StopReason, StudyState
from study.tracking import (FINISHED, KILLED, Tracking, TrialStatus, check_reachable, experiment_id, send_unsent,
                            tracking_uri)
from trainables.errors import ConfigError
from trainables.mlflow_run import TRACKING_ERRORS, bounded_retries
from trainables.schema import flatten, with_values


def run_study(spec: StudySpec, study_dir: Path, address: str | None = None) -> Tracking:
    """Run ``spec`` into ``study_dir``; returns where it is recorded. Bad input raises before any run exists."""
    from mlflow import MlflowClient
    from mlflow.entities import Param

    study_dir = study_dir.resolve()
    check_writable(study_dir)
    if holds_study(study_dir):
        raise ConfigError(refusal(study_dir))
    uri = tracking_uri(spec.mlflow.tracking_uri, study_dir)
    data = _prepare(spec, uri, address)

    study_dir.mkdir(parents=True, exist_ok=True)
    with driving(study_dir):
        if holds_study(study_dir):  # another driver began it while this one prepared
            raise ConfigError(refusal(study_dir))
        (study_dir / "spec.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
        client = MlflowClient(uri)
        experiment = experiment_id(client, spec.mlflow.experiment or spec.name, study_dir, uri)
        parent = client.create_run(experiment, run_name=f"{spec.name} {time.strftime('%Y-%m-%d %H:%M:%S')}", tags={
            "selfd.study": spec.name, "selfd.study_dir": str(study_dir), "selfd.ray_address": address or "local",
            "selfd.host": platform.node(), "selfd.version": _version(), "mlflow.note.content": spec.description})
        params = flatten(spec.model_dump(mode="json"))
        client.log_batch(parent.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
        tracking = Tracking(uri, experiment, parent.info.run_id)
        StudyState(spec.name, tracking, failure_threshold=spec.failure_threshold(data.majority_score)).write(study_dir)
        _run_phases(spec, study_dir, tracking, data.train_size)
    return tracking


def resume_study(study_dir: Path, address: str | None = None) -> Tracking | None:
    """Continue an interrupted study: ended phases and trials are kept, unfinished trials go on from their last
    checkpoint, in the same MLflow parent and child runs. Returns None when the study had already finished."""
    from mlflow import MlflowClient

    from study.spec import load_spec

    study_dir = Path(study_dir).resolve()
    StudyState.read(study_dir)  # a study directory, before the lock file is made in it
    with driving(study_dir):
        state = StudyState.read(study_dir)
        tracking = state.tracking
        if state.finished:
            return None
        spec = load_spec(study_dir / "spec.yaml")
        train_size = _prepare(spec, tracking.tracking_uri, address).train_size
        client = MlflowClient(tracking.tracking_uri)
        client.update_run(tracking.parent_run_id, status="RUNNING")
        client.set_tag(tracking.parent_run_id, "selfd.resumed", str(state.resumed + 1))
        replace(state, resumed=state.resumed + 1).write(study_dir)
        _run_phases(spec, study_dir, tracking, train_size)
        # A trial that started after Tune's last saved experiment state is unknown to the restored phase: its
        # setting ran again as a new trial, and its own child run, still RUNNING, would count twice. It goes to
        # MLflow's deleted runs (restorable there).
        for run in client.search_runs([tracking.experiment_id],
                                      f"tags.mlflow.parentRunId = '{tracking.parent_run_id}' "
                                      "and attributes.status = 'RUNNING'"):
            client.delete_run(run.info.run_id)
    return tracking


def _prepare(spec: StudySpec, uri: str, address: str | None) -> PreparedData:
    """Everything a study needs before its first trial; returns what the data says."""
    # one checkpoint per trial evaluation makes Tune snapshot often; that is expected here, not a warning
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Ctrl-C raises in the driver instead of Tune ending the phase as if it were done; `selfd resume` goes on
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    quiet_library_info()
    bounded_retries()
    check_reachable(uri)
    data = prepare_data(spec)  # before Ray: bad data or an unreachable hub asset ends the command here
    check_scheduler(spec, data.train_size)
    connect_ray(address, spec)
    signals.stop_on_termination()  # again: ray.init replaced the handlers with its own
    return data


def quiet_library_info() -> None:
    """The terminal shows selfd's lines: Tune's per-experiment boxes and TensorBoard hint (its new output engine;
    with ``verbose=0`` the classic one prints nothing), Optuna's and MLflow's INFO lines go; warnings and errors
    stay. (Trials quiet Ray Train's checkpoint lines themselves: trainables.tune_trial.)"""
    import optuna

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _run_phases(spec: StudySpec, study_dir: Path, tracking: Tracking, train_size: int) -> None:
    """The study's phases in order; a phase recorded as ended in the study file is not run again."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking.tracking_uri)
    state = StudyState.read(study_dir)
    planned = sum(phase_trials(spec, phase) for phase in planned_phases(spec)) + \
        sum(phase_trials(spec, phases.Phase.parse(name)) for name in state.phases if phases.is_added_round(name))
    most = None  # adaptive confirmation may add up to two trials for each seed it has not run
    if spec.adaptive:
        most = planned if state.stopped else \
            planned + 2 * (len(spec.confirmation_seeds) - _confirmed_seeds(spec, state))
    progress = StudyProgress(planned, spec.metric, most=most)
    try:
        best = {}
        for method, search in _searches(spec, train_size).items():
            best[method] = _phase(spec, study_dir, tracking, progress, phases.search(method), {}, search).best
        _first_round(spec, study_dir, tracking, progress, best)
        if spec.adaptive:
            _confirm(spec, study_dir, tracking, progress, best)
    except BaseException:
        with contextlib.suppress(*TRACKING_ERRORS):
            client.set_terminated(tracking.parent_run_id, KILLED)
        raise
    state = replace(StudyState.read(study_dir), finished=True)
    state.write(study_dir)
    with contextlib.suppress(*TRACKING_ERRORS):  # else `selfd report --sync` ends it
        end_parent(state)


def sync_study(study_dir: Path) -> int:
    """Send what trials kept while MLflow was unreachable and end a finished study's parent run; returns how
    many trials still have unsent records."""
    state = StudyState.read(study_dir)
    left = send_unsent(study_dir, state.tracking)
    if not left and state.finished:
        end_parent(state)
    return left


def end_parent(state: StudyState) -> None:
    """Mark a finished study's parent run FINISHED (its report counts the failed trials)."""
    from mlflow import MlflowClient

    MlflowClient(state.tracking.tracking_uri).set_terminated(state.tracking.parent_run_id, FINISHED)


def planned_phases(spec: StudySpec) -> list[Phase]:
    """The phases a run of ``spec`` goes through before any adaptive round."""
    first = [phases.FIRST_ROUND] if spec.rerun_best else [phases.BASELINES] if spec.fixed_baselines else []
    return [phases.search(m) for m in spec.searched] + first


def phase_trials(spec: StudySpec, phase: Phase) -> int:
    """The trials ``phase`` runs (round 1: as if every search found a setting to re-run)."""
    if phase == phases.FIRST_ROUND:
        return spec.baseline_trials + len(spec.searched) * len(spec.verdict_seeds)
    if phase.kind is PhaseKind.BASELINES:
        return spec.baseline_trials
    if phase.kind is PhaseKind.RERUN:
        return len(spec.verdict_seeds)
    if phase.kind is PhaseKind.CONFIRM:
        return 2 * len(_round_seeds(spec, phase.round))
    return spec.method_search_trials(phase.method)


def _first_round(spec: StudySpec, study_dir: Path, tracking: Tracking, progress: StudyProgress,
                 best: dict[str, dict | None]) -> None:
    """The fixed baselines at their base settings and, with ``rerun_best``, each searched method at its chosen
    setting, on the verdict seeds: one phase whose trials are tagged with the study phase they belong to."""
    seeds = spec.verdict_seeds
    reruns = {method: setting for method, setting in best.items() if setting is not None} if spec.rerun_best else {}
    state = StudyState.read(study_dir)
    legacy = {phases.BASELINES: _fixed(spec.fixed_baselines, seeds)} | {
        phases.rerun(method): _fixed([method], seeds, setting) for method, setting in reruns.items()}
    for phase, param_space in legacy.items():  # begun as a phase of its own (by selfd before 2026-11-30)
        if state.ended(phase) is None and (study_dir / "tune" / phase.name).exists():
            _phase(spec, study_dir, tracking, progress, phase, param_space)
    state = StudyState.read(study_dir)
    tags = {str(m): phases.BASELINES.name for m in spec.fixed_baselines if not state.ended(phases.BASELINES)} | {
        str(m): phases.rerun(m).name for m in reruns if not state.ended(phases.rerun(m))}
    if tags:
        _phase(spec, study_dir, tracking, progress, phases.FIRST_ROUND if spec.rerun_best else phases.BASELINES,
               _fixed(list(tags), seeds), settings=reruns, tags=tags)


def _round_seeds(spec: StudySpec, round_number: int) -> list[int]:
    """The seeds confirmation round ``round_number`` (2, 3, …) adds."""
    first = spec.adaptive.min + (round_number - 2) * spec.round_seeds
    return spec.confirmation_seeds[first:first + spec.round_seeds]


def _confirmed_seeds(spec: StudySpec, state: StudyState) -> int:
    rounds = [name for name in state.phases if phases.is_added_round(name)]
    return len(spec.verdict_seeds) + sum(len(_round_seeds(spec, phases.Phase.parse(n).round)) for n in rounds)


def _confirm(spec: StudySpec, study_dir: Path, tracking: Tracking, progress: StudyProgress,
             best: dict[str, dict | None]) -> None:
    """Adaptive confirmation's rounds, until the primary comparison is decided, or every seed of the range ran,
    or the next round would end past the time budget; why it stopped goes to the study file."""
    subject, control = map(str, spec.primary)
    if best.get(subject) is None:
        return  # its search scored no trial: nothing was re-run, nothing to confirm
    # the searched method at its chosen setting; the control at its own (tuned) or the base settings
    settings = {subject: best[subject], control: best.get(control) or {}}
    round_number = 2
    while True:
        state = StudyState.read(study_dir)
        if state.stopped:
            return
        stop = _confirmation_stop(spec, study_dir, state, round_number)
        if stop is not None:
            replace(state, stopped=stop).write(study_dir)
            progress.most = progress.total
            return
        seeds = _round_seeds(spec, round_number)
        phase = phases.confirm(round_number)
        if state.ended(phase) is None:
            progress.total += 2 * len(seeds)
        _phase(spec, study_dir, tracking, progress, phase, _fixed([subject, control], seeds), settings=settings)
        round_number += 1


def _confirmation_stop(spec: StudySpec, study_dir: Path, state: StudyState, round_number: int) -> StopReason | None:
    """Why confirmation adds no round ``round_number`` (None: it adds it)."""
    from study.report import primary_verdict

    phase = phases.confirm(round_number)
    if state.ended(phase) is not None or (study_dir / "tune" / phase.name).exists():
        return None  # begun before an interruption: the round is finished as it was planned
    verdict = primary_verdict(study_dir)
    if verdict is not None and verdict.word.decisive:
        return StopReason.DECIDED
    if not _round_seeds(spec, round_number):
        return StopReason.MAX_SEEDS
    budget = spec.rerun_best.budget_minutes
    if budget is not None and state.seconds + _round_seconds(spec, state, round_number) > budget * 60:
        return StopReason.BUDGET
    return None


def _round_seconds(spec: StudySpec, state: StudyState, round_number: int) -> float:
    """How long round ``round_number`` should take: the last added round's seconds, else round 1's per wave of
    trials (as many as run at once) times the waves of this round (a study begun before round 1 was one phase:
    its longest re-run phase)."""
    rounds = [record.seconds for name, record in state.phases.items() if phases.is_added_round(name)]
    if rounds:
        return rounds[-1]
    first = state.ended(phases.FIRST_ROUND)
    if first is None:
        return max((record.seconds for name, record in state.phases.items() if name.startswith(PhaseKind.RERUN)),
                   default=0.0)

    def waves(trials: int) -> int:
        return -(-trials // spec.max_concurrent_trials)

    return first.seconds * waves(phase_trials(spec, phases.confirm(round_number))) / \
        waves(phase_trials(spec, phases.FIRST_ROUND))


def _phase(spec: StudySpec, study_dir: Path, tracking: Tracking, progress: StudyProgress, phase: Phase,
           param_space: dict, search: Search | None = None, settings: dict[str, dict] | None = None,
           tags: dict[str, str] | None = None) -> PhaseRecord:
    """Run (or, after an interruption, finish) one phase; returns its record: failed trials, best setting and
    seconds. ``settings``: per method, the searched values its trials run at (default: its base settings);
    ``tags``: per method, the study phase its trials are tagged with (default: this phase)."""
    ended = StudyState.read(study_dir).ended(phase)
    if ended is not None:
        progress.phase_ended(phase_trials(spec, phase))
        return ended
    progress.phase = phase.name
    started = time.monotonic()
    tags = tags or {str(method): phase.name for method in {*spec.methods, *spec.baselines}}
    results = _fit(spec, study_dir, tracking, progress, phase, param_space, search, settings or {}, tags)
    progress.phase_ended(len(results))
    best = best_setting(results, spec, phase.method) if search else None
    record = PhaseRecord(best, round(time.monotonic() - started, 1))
    StudyState.read(study_dir).with_phase(phase, record).write(study_dir)
    for checkpoint in (study_dir / "tune" / phase.name).glob("*/checkpoint_*"):  # an ended phase never resumes
        shutil.rmtree(checkpoint, ignore_errors=True)
    return record


def read_study(study_dir: Path) -> Tracking:
    """Where a study directory's runs are recorded."""
    return StudyState.read(study_dir).tracking


def connect_ray(address: str | None, spec: StudySpec) -> None:
    """Embedded Ray by default; ``address`` joins a running cluster. Checks the cluster can host a trial."""
    import ray

    if address and "://" not in address and address != "auto":
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
        except (OSError, ValueError) as error:
            raise ConfigError(f"cannot reach the Ray cluster at {address} ({error})") from None
    if not address:  # Ray warns that an embedded instance uses token auth, its default; nothing to act on
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    if not ray.is_initialized():
        try:
            # "local": a new embedded instance, even where an earlier `ray start` left its address behind. Without
            # the dashboard, which nothing of a study reads: 11 fewer processes, each importing Ray on the CPUs the
            # trials start on (0.8 s less to start here)
            ray.init(address=address or "local", logging_level="WARNING", configure_logging=True,
                     **({} if address else {"include_dashboard": False}))
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise ConfigError(f"cannot connect to Ray at {address or 'a new local instance'}: {error}") from None
    resources = ray.cluster_resources()
    if spec.resources.gpu and resources.get("GPU", 0) < spec.resources.gpu:
        raise ConfigError(f"resources.gpu asks for {spec.resources.gpu} GPU per trial but the Ray cluster has "
                          f"{resources.get('GPU', 0):g}; set resources.gpu: 0 or add GPU nodes")
    if resources.get("CPU", 0) < spec.resources.cpu:
        raise ConfigError(f"resources.cpu asks for {spec.resources.cpu:g} CPUs per trial but the Ray cluster has "
                          f"{resources.get('CPU', 0):g}")


@dataclass(frozen=True)
class PreparedData:
    train_size: int
    majority_score: float | None  # the study metric of always predicting the majority class, on validation


def prepare_data(spec: StudySpec) -> PreparedData:
    """Fetch, split and tokenize once in the driver, so trials only load the cache (and bad data fails here), and
    check the model settings against the model's family (its config)."""
    from trainables.config import parse_config
    from trainables.models import check_model_settings
    from trainables.recipe import load_data
    from trainables.task_kinds import TaskKind, task_kind

    config = parse_config(spec.base_run(spec.methods[0]))
    objective = load_data(config)
    kind = task_kind(config.task)
    check_model_settings(config.model, objective.model_path, kind is TaskKind.GENERATION)
    majority = objective.task.majority_score(spec.metric) if kind is TaskKind.CLASSIFICATION else None
    return PreparedData(objective.train_size, majority)


@dataclass(frozen=True)
class Search:
    """A search phase's Tune parts: the Optuna searcher, how many trials it draws, and ASHA (or None)."""

    searcher: Any
    trials: int
    scheduler: Any = None


def _searches(spec: StudySpec, train_size: int) -> dict[str, Search]:
    """Per searched method: its searcher, trials and scheduler. TPE samples with Optuna's constant liar (a
    running trial counts as a poor result, so parallel trials spread out) after a third of its trials drew at
    random; ASHA counts evaluations (``training.eval_every``), up to the most a trial of the method reports."""
    import optuna
    from optuna.distributions import CategoricalDistribution
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    search = spec.search
    searches = {}
    for method in spec.searched:
        space = {"method": CategoricalDistribution([str(method)]),  # plain strings in Optuna and Tune
                 **{name: dimension.distribution() for name, dimension in spec.space_for(method).items()}}
        if search.algorithm == "grid":
            space["training.seed"] = CategoricalDistribution(spec.seeds)
            grid = {name: list(d.choices) for name, d in space.items()}
            sampler = optuna.samplers.GridSampler(grid, seed=search.seed)
        else:
            space["training.seed"] = CategoricalDistribution([spec.seeds[0]])
            sampler = (optuna.samplers.TPESampler(seed=search.seed, constant_liar=True,
                                                  n_startup_trials=max(2, search.num_samples // 3))
                       if search.algorithm == "tpe" else optuna.samplers.RandomSampler(seed=search.seed))
        scheduler = None
        if spec.scheduler.type == "asha":
            scheduler = ASHAScheduler(time_attr="training_iteration",
                                      max_t=spec.most_evaluations(method, train_size),
                                      grace_period=spec.scheduler.grace_period,
                                      reduction_factor=spec.scheduler.reduction_factor,
                                      metric=spec.metric, mode=spec.mode)
        searches[method] = Search(OptunaSearch(space=space, sampler=sampler, metric=spec.metric, mode=spec.mode),
                                  spec.method_search_trials(method), scheduler)
    return searches


def _fixed(methods: list[str], seeds: list[int], setting: dict | None = None) -> dict:
    from ray import tune

    return {"method": tune.grid_search([str(m) for m in methods]), "training.seed": tune.grid_search(seeds),
            **(setting or {})}


def _fit(spec: StudySpec, study_dir: Path, tracking: Tracking, progress: StudyProgress, phase: Phase,
         param_space: dict, search: Search | None, settings: dict[str, dict], tags: dict[str, str]):
    """Run one phase as a Tune experiment, or resume it where an earlier run left it; returns its ResultGrid."""
    from ray import tune

    from trainables.tune_trial import run_trial

    base_runs = {str(method): with_values(spec.base_run(method), settings.get(str(method), {}))
                 for method in {*spec.methods, *spec.baselines}}
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base_runs=base_runs, tracking=tracking.for_trials(tags, study_dir)),
        {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
    path = study_dir / "tune" / phase.name
    if tune.Tuner.can_restore(path):
        # finished and failed trials stay as they ended; unfinished ones go on from their last checkpoint
        tuner = tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=False)
    else:
        tuner = _tuner(spec, study_dir, tracking, progress, phase, trainable, param_space, search)
    with signals.tune_stops_itself():
        results = tuner.fit()
    signals.raise_if_stopped()  # the phase did not end: its trials stopped where they last checkpointed
    return results


def _tuner(spec: StudySpec, study_dir: Path, tracking: Tracking, progress: StudyProgress, phase: Phase, trainable,
           param_space: dict, search: Search | None):
    from ray import tune

    search = search or Search(searcher=None, trials=1)  # a fixed phase: its param_space's grid, run once
    return tune.Tuner(
        trainable,
        param_space=param_space,
        # metric and mode live on the searcher and the scheduler: Tune refuses them in two places
        # reused actors skip a process start and the torch/transformers imports per trial
        tune_config=tune.TuneConfig(search_alg=search.searcher, scheduler=search.scheduler, num_samples=search.trials,
                                    max_concurrent_trials=spec.max_concurrent_trials, reuse_actors=True),
        run_config=tune.RunConfig(
            name=phase.name, storage_path=str(study_dir / "tune"),
            failure_config=tune.FailureConfig(max_failures=spec.failure.max_retries),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            # Tune's own trial tables are left out (verbose=0): `progress` prints a line per ended trial
            callbacks=[TrialStatus(tracking, study_dir), progress], verbose=0),
    )


def best_setting(results, spec: StudySpec, method: str) -> dict | None:
    """``method``'s searched values that validation chose (study.comparison.chosen_setting) from a search
    phase's Tune results: each trial's searched values and best validation score."""
    import pandas as pd

    from study.comparison import chosen_setting

    rows = []
    for result in results:
        if result.metrics_dataframe is None or spec.metric not in result.metrics_dataframe:
            continue  # failed before its first evaluation
        history = result.metrics_dataframe[spec.metric]
        rows.append({**{name: result.config[name] for name in spec.space_for(method)},
                     spec.metric.best: history.max() if spec.mode == "max" else history.min()})
    if not rows:
        return None
    return {name: _plain(value) for name, value in chosen_setting(pd.DataFrame(rows), spec, method).items()}


def _plain(value):
    """A numpy scalar as the Python number it holds (study.json is JSON)."""
    return value.item() if hasattr(value, "item") else value


def _version() -> str:
    from importlib.metadata import version

    return version("selfd")
