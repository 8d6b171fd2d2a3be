"""How much a TPE + ASHA search saves over the full grid, and what running trials as a study costs.

Runs the spec's grid (its search phase only: baselines are dropped) and a TPE + ASHA search over the same space,
each through ``selfd run`` exactly as a user runs it, then reads each study's ``report/results.csv``:

- best value found: the grid's best cell (mean over the spec's seeds) and its best trial at TPE's seed (TPE
  draws its settings at the spec's first seed), against TPE's best trial;
- compute: trial-epochs (epochs each trial reported, summed) and trial seconds (each trial's own training time);
- study overhead: the study's wall time ÷ (trial seconds ÷ max_concurrent_trials), 1.0 being a study that
  only trains.

ASHA decides at evaluations, and trials evaluate once per epoch: a spec that trains one epoch (as
fig3_rte_cpu.yaml does) leaves ASHA nothing to decide, so both studies here train ``--epochs`` (default 2).

    python benchmarks/study_efficiency.py --json                 # on search_spaces/fig3_rte_cpu.yaml
    python benchmarks/study_efficiency.py --spec S.yaml --samples 10 --epochs 3 --json
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

from study.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"accuracy_points_behind_grid": 1.0, "trial_epochs_vs_grid": 0.35, "study_overhead": 1.15}


def run_study(spec: Path, study_dir: Path, overrides: list[str]) -> float:
    """Wall seconds of ``selfd run`` (from process start to exit, report included)."""
    command = [str(Path(sys.executable).with_name("selfd")), "run", str(spec), "--study-dir", str(study_dir)]
    for override in ["baselines=[]", *overrides]:
        command += ["--override", override]
    print(f"$ {' '.join(command)}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def measure(table: pd.DataFrame, metric: str, wall: float, concurrency: int) -> dict:
    trial_seconds = float(table["seconds"].sum())
    return {
        "trials": len(table),
        "trials_stopped_early": int((table["status"] == "KILLED").sum()),
        "trial_epochs": int(table["epochs"].sum()),
        "trial_seconds": round(trial_seconds, 1),
        "wall_seconds": round(wall, 1),
        "study_overhead": round(wall / (trial_seconds / concurrency), 3),
        "best_trial": float(table[f"best_{metric}"].max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", type=Path, default=ROOT / "search_spaces" / "fig3_rte_cpu.yaml")
    parser.add_argument("--samples", type=int, default=8, help="TPE trials (default 8)")
    parser.add_argument("--grace-period", type=int, default=1, help="ASHA epochs before stopping (default 1)")
    parser.add_argument("--reduction-factor", type=float, default=2.0, help="ASHA reduction factor (default 2)")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs of every trial (default 2)")
    parser.add_argument("--study-root", type=Path, help="keep both studies here (default: a temporary folder)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    epochs = [f"training.epochs={args.epochs}"]
    spec = load_spec(args.spec, epochs)  # the spec's defaults, checked, as `selfd run` reads them
    metric, concurrency, seed = spec.metric, spec.max_concurrent_trials, spec.seeds[0]
    with tempfile.TemporaryDirectory(prefix="selfd-efficiency-") as scratch:
        root = args.study_root or Path(scratch)
        studies = {
            "grid": epochs,
            "tpe_asha": [*epochs, "search.algorithm=tpe", f"search.num_samples={args.samples}", "scheduler.type=asha",
                         f"scheduler.grace_period={args.grace_period}",
                         f"scheduler.reduction_factor={args.reduction_factor}"],
        }
        results, tables = {}, {}
        for name, overrides in studies.items():
            wall = run_study(args.spec, root / name, overrides)
            tables[name] = pd.read_csv(root / name / "report" / "results.csv")
            results[name] = measure(tables[name], metric, wall, concurrency)

    grid = tables["grid"]
    cells = grid.groupby(list(spec.search.space))[f"best_{metric}"].mean()
    results["grid"]["best_cell_mean"] = float(cells.max())
    results["grid"]["best_cell"] = dict(zip(cells.index.names, map(float, cells.idxmax())))
    results["grid"][f"best_trial_at_seed_{seed}"] = float(grid.loc[grid["seed"] == seed, f"best_{metric}"].max())
    behind = 100 * (results["grid"][f"best_trial_at_seed_{seed}"] - results["tpe_asha"]["best_trial"])
    epochs_ratio = results["tpe_asha"]["trial_epochs"] / results["grid"]["trial_epochs"]
    report = {
        "benchmark": "study_efficiency",
        "spec": str(args.spec.relative_to(ROOT) if args.spec.is_relative_to(ROOT) else args.spec),
        "metric": metric,
        "max_concurrent_trials": concurrency,
        "epochs": args.epochs,
        "tpe_asha": {"samples": args.samples, "grace_period": args.grace_period,
                     "reduction_factor": args.reduction_factor, "seed": seed},
        "results": results,
        "comparison": {
            "accuracy_points_behind_grid": round(behind, 2),  # grid's best trial at TPE's seed − TPE's best
            "trial_epochs_vs_grid": round(epochs_ratio, 3),
            "trial_seconds_vs_grid": round(results["tpe_asha"]["trial_seconds"] / results["grid"]["trial_seconds"], 3),
        },
        "targets": TARGETS,
    }
    report["targets_met"] = {
        "search": behind <= TARGETS["accuracy_points_behind_grid"] and epochs_ratio <= TARGETS["trial_epochs_vs_grid"],
        "study_overhead": results["grid"]["study_overhead"] <= TARGETS["study_overhead"],
    }
    print(json.dumps(report, indent=2) if args.json else report)


if __name__ == "__main__":
    main()
