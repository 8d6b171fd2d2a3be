"""Where a study's time goes: a real ``selfd run`` of a spec, then its trials' own clocks and the study's.

Each trial reports, with every evaluation, the seconds it spent so far in: setup (data and model loading,
optimizer; ``setup_seconds``), training steps (``train_seconds``), evaluation (``eval_seconds``), MLflow logging
(``log_seconds``) and saving checkpoints (``checkpoint_seconds``); Tune adds the trial's wall time
(``time_total_s``). Per trial, what is left of its wall time is Tune's reporting and checkpoint upload. Per study,
what the trials do not account for (wall − Σ trial wall ÷ concurrency) is Ray's start, trial scheduling, worker
processes and imports, and the report; ``selfd report`` (run again) and ``selfd ui --screenshots`` are timed on
their own.

    python benchmarks/trial_time.py --json                               # fig3_rte_cpu.yaml as it ships
    python benchmarks/trial_time.py --spec S.yaml --override seeds=[0,1] --json
    python benchmarks/trial_time.py --finished studies/fig3_rte_cpu --json  # the trials of a study that ran
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("setup_seconds", "train_seconds", "eval_seconds", "log_seconds", "checkpoint_seconds")


def timed(command: list[str]) -> float:
    print(f"$ {' '.join(command)}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def trial_parts(study_dir: Path) -> pd.DataFrame:
    """Each trial's last report: its cumulative seconds per part and its wall time."""
    rows = []
    for result in sorted((study_dir / "tune").glob("*/run_trial_*/result.json")):
        lines = result.read_text().splitlines()
        if lines:
            last = json.loads(lines[-1])
            rows.append({"phase": result.parent.parent.name, "method": last["config"]["method"],
                         "wall_seconds": last["time_total_s"], **{part: last[part] for part in PARTS}})
    return pd.DataFrame(rows)


def rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", type=Path, default=ROOT / "search_spaces" / "fig3_rte_cpu.yaml")
    parser.add_argument("--override", action="append", default=None, help="as selfd run's (default: none)")
    parser.add_argument("--study-dir", type=Path, help="keep the study here (default: a temporary folder)")
    parser.add_argument("--finished", type=Path, metavar="STUDY_DIR",
                        help="read the trials of a study that ran already (e.g. studies/fig3_rte_cpu after make "
                             "demo) instead of running one; its wall time is then not measured")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if args.finished and (args.override or args.study_dir):
        parser.error("--finished reads a study that ran; --override and --study-dir shape one to run")
    overrides = args.override or []

    from study.spec import load_spec

    if args.finished:
        spec, table = load_spec(args.finished / "spec.yaml"), trial_parts(args.finished)
        wall = report = screenshots = None
    else:
        spec = load_spec(args.spec, overrides)
        selfd = str(Path(sys.executable).with_name("selfd"))
        with tempfile.TemporaryDirectory(prefix="selfd-trial-time-") as scratch:
            study_dir = args.study_dir or Path(scratch) / "study"
            run = [selfd, "run", str(args.spec), "--study-dir", str(study_dir)]
            wall = timed(run + [part for o in overrides for part in ("--override", o)])
            report = timed([selfd, "report", str(study_dir)])
            screenshots = timed([selfd, "ui", str(study_dir), "--screenshots"])
            table = trial_parts(study_dir)

    table["other_in_trial_seconds"] = table["wall_seconds"] - table[list(PARTS)].sum(axis=1)
    columns = ["wall_seconds", *PARTS, "other_in_trial_seconds"]
    trial_wall = float(table["wall_seconds"].sum())
    result = {
        "benchmark": "trial_time", "spec": f"{spec.name}.yaml", "overrides": overrides,
        "finished_study": args.finished and str(args.finished), "trials": len(table),
        "concurrency": spec.max_concurrent_trials,
        "mean_per_trial": {c: round(float(table[c].mean()), 2) for c in columns},
        "share_of_trial_wall": {c: round(float(table[c].sum()) / trial_wall, 3) for c in columns[1:]},
        "by_method": {method: {c: round(float(group[c].mean()), 2) for c in columns}
                      for method, group in table.groupby("method")},
        "study": {"wall_seconds": rounded(wall),
                  "trial_wall_per_concurrent_slot": round(trial_wall / spec.max_concurrent_trials, 1),
                  "outside_trials_seconds": rounded(wall and wall - trial_wall / spec.max_concurrent_trials),
                  "report_seconds": rounded(report), "screenshots_seconds": rounded(screenshots)},
    }
    print(json.dumps(result, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
