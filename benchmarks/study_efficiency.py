"""Does TPE + ASHA pick as good a setting as the full grid, for less compute, and better than random search at the
same budget? All through ``selfd run``.

The spec's searched method (its baselines dropped) is searched twice:

- **grid**: the spec's grid, every cell at every one of ``--seeds`` (one evaluation an epoch, no early stopping,
  no re-runs); the selected setting is the cell with the best mean validation score over the seeds, and its score
  is that cell's test score over the seeds (mean ± std);
- **TPE + ASHA**, once per ``--search-seeds`` value (Optuna's sampler seed): ``--samples`` trials at the first
  of ``--seeds``, each searched field a range spanning the grid's values, evaluations every ``--eval-every`` of an
  epoch, ASHA with ``--grace-period`` evaluations and ``--reduction-factor``; its best trial's setting (on
  validation) is then re-run at ``--seeds`` (``rerun_best``), so its test score is a mean over the same
  seeds as the grid's;
- **random + ASHA**, the anchor TPE must beat: the same, with Optuna's random sampler.

Compared: the test score of each selected setting (TPE's mean and spread over the search seeds) and the
trial-seconds each search used (each trial's own wall time: setup, training, evaluation; the re-runs are counted
apart: they measure the choice, and the grid needs none). Targets: TPE + ASHA within 1 point of the grid's
selected setting at ≤ 35 % of its trial-seconds, and no worse than random search on test. The default spec is the
RTE-like one, whose cells differ by tens of points: where every cell scores alike (the BoolQ-like spec's lie within
a point), any choice is "within 1 point of the grid" and the benchmark could not fail. Every figure is read from
the studies' ``report/results.csv``.

    python benchmarks/study_efficiency.py --json                # on search_spaces/fig3_rte_cpu.yaml
    python benchmarks/study_efficiency.py --spec S.yaml --samples 16 --search-seeds 0 1 2 3 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

from study import state as phases
from study.comparison import chosen_setting
from study.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"points_behind_grid": 1.0, "trial_seconds_vs_grid": 0.35, "points_ahead_of_random": 0.0}
SAMPLERS = ("tpe", "random")


def run_study(spec: Path, study_dir: Path, seeds: list[int], overrides: list[str]) -> float | None:
    """Wall seconds of ``selfd run`` (from process start to exit, report included). A study that finished in an
    earlier run of this benchmark (``--study-root``) is read again, not re-run: its wall time is the one recorded
    then (None if none was)."""
    wall_file = study_dir / "benchmark_wall_seconds"
    if (study_dir / "report" / "results.csv").is_file():
        return float(wall_file.read_text()) if wall_file.is_file() else None
    command = [str(Path(sys.executable).with_name("selfd")), "run", str(spec), "--study-dir", str(study_dir)]
    for override in ["baselines=[]", f"seeds={json.dumps(seeds)}", *overrides]:
        command += ["--override", override]
    print(f"$ {' '.join(command)}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    wall_file.write_text(f"{wall:.1f}")
    return wall


def cost(trials: pd.DataFrame) -> dict:
    return {"trials": len(trials), "stopped_by_asha": int((trials["status"] == "KILLED").sum()),
            "trial_seconds": round(float(trials["seconds"].sum()), 1)}


def scores(values: pd.Series) -> dict:
    return {"mean": round(float(values.mean()), 4), "std": round(float(values.std(ddof=1)), 4) if len(values) > 1
            else 0.0, "seeds": len(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", type=Path, default=ROOT / "search_spaces" / "fig3_rte_cpu.yaml")
    parser.add_argument("--samples", type=int, default=12, help="TPE trials per search (default 12)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="training seeds: the grid's, and those the TPE choices are re-run at (default 0 1 2)")
    parser.add_argument("--search-seeds", type=int, nargs="+", default=[0, 1, 2], help="TPE sampler seeds")
    parser.add_argument("--eval-every", type=float, default=0.2, help="TPE trials: evaluations every this "
                        "fraction of an epoch (default 0.2: 10 evaluations over 2 epochs, ASHA rungs at 1, 2, 4, 8)")
    parser.add_argument("--grace-period", type=int, default=1, help="ASHA: evaluations before stopping (default 1)")
    parser.add_argument("--reduction-factor", type=float, default=2.0, help="ASHA reduction factor (default 2)")
    parser.add_argument("--study-root", type=Path, help="keep the studies here (default: a temporary folder); "
                        "studies that finished there in an earlier run are read, not run again")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    spec = load_spec(args.spec)  # as `selfd run` reads it
    method, metric = spec.methods[0], spec.metric
    test, searched = metric.test, list(spec.space_for(method))
    if spec.search.algorithm != "grid":
        parser.error(f"--spec {args.spec} searches with {spec.search.algorithm}; this benchmark needs a grid spec")
    ranges = {name: {"low": min(d.values), "high": max(d.values)} for name, d in spec.space_for(method).items()}
    sampled = [f"search.num_samples={args.samples}",
           f"search.space={yaml.safe_dump(ranges, default_flow_style=True).strip()}",
           f"training.eval_every={args.eval_every}", "scheduler.type=asha",
           f"scheduler.grace_period={args.grace_period}", f"scheduler.reduction_factor={args.reduction_factor}",
           f"rerun_best.seeds={json.dumps(args.seeds)}"]

    with tempfile.TemporaryDirectory(prefix="selfd-efficiency-") as scratch:
        root = args.study_root or Path(scratch)
        grid_wall = run_study(args.spec, root / "grid", args.seeds, ["rerun_best=null"])
        grid = pd.read_csv(root / "grid" / "report" / "results.csv")
        searches = {sampler: [] for sampler in SAMPLERS}
        for sampler in SAMPLERS:
            for seed in args.search_seeds:
                folder = root / f"{sampler}_asha_seed{seed}"
                wall = run_study(args.spec, folder, args.seeds,
                                 [f"search.algorithm={sampler}", *sampled, f"search.seed={seed}"])
                searches[sampler].append((seed, wall, pd.read_csv(folder / "report" / "results.csv")))

    cells = grid.groupby(searched)
    setting = chosen_setting(grid, spec, method)  # as the study chose it
    chosen = tuple(setting[name] for name in searched)
    cell_means = cells[metric.best].mean()
    grid_result = {**cost(grid), "wall_seconds": grid_wall and round(grid_wall, 1),
                   "selected": dict(zip(searched, map(float, chosen))),
                   metric.best: scores(cells.get_group(chosen)[metric.best]),
                   test: scores(cells.get_group(chosen)[test]),
                   # how far apart validation sets the cells: a spread within its noise leaves any choice to luck
                   "cells_validation_spread_points": round(100 * float(cell_means.max() - cell_means.min()), 2),
                   "cells_test_spread_points": round(100 * float(cells[test].mean().max() - cells[test].mean().min()),
                                                     2)}
    results = {sampler: [] for sampler in SAMPLERS}
    for sampler in SAMPLERS:
        for seed, wall, table in searches[sampler]:
            search = table[table["phase"] == phases.search(method).name]
            rerun = table[table["phase"] == phases.rerun(method).name]
            results[sampler].append({
                "search_seed": seed, **cost(search), "wall_seconds": wall and round(wall, 1),
                "evaluations": int(search["evaluations"].sum()),
                "selected": {name: round(float(rerun[name].iloc[0]), 3) for name in searched},
                metric.best: scores(rerun[metric.best]),
                test: scores(rerun[test]),
                "rerun_trial_seconds": round(float(rerun["seconds"].sum()), 1),
            })
    tpe_results = results["tpe"]
    random_tests = [r[test]["mean"] for r in results["random"]]
    tpe_tests = [r[test]["mean"] for r in tpe_results]
    behind = 100 * (grid_result[test]["mean"] - statistics.mean(tpe_tests))
    tpe_vals = [r[metric.best]["mean"] for r in tpe_results]
    sign = 1 if metric.mode == "max" else -1
    seconds = statistics.mean(r["trial_seconds"] for r in tpe_results) / grid_result["trial_seconds"]
    with_reruns = statistics.mean(r["trial_seconds"] + r["rerun_trial_seconds"] for r in tpe_results) \
        / grid_result["trial_seconds"]
    report = {
        "benchmark": "study_efficiency",
        "spec": str(args.spec.relative_to(ROOT) if args.spec.is_relative_to(ROOT) else args.spec),
        "method": str(method), "metric": str(metric), "seeds": args.seeds,
        "tpe_asha": {"samples": args.samples, "ranges": ranges, "eval_every": args.eval_every,
                     "grace_period": args.grace_period, "reduction_factor": args.reduction_factor},
        "grid": grid_result,
        "tpe_asha_searches": tpe_results,
        "random_asha_searches": results["random"],
        "comparison": {
            f"tpe_asha_{test}": {"mean": round(statistics.mean(tpe_tests), 4),
                                 "std": round(statistics.stdev(tpe_tests), 4) if len(tpe_tests) > 1 else 0.0},
            "points_behind_grid": round(behind, 2),  # grid's selected setting − TPE + ASHA's, mean over searches
            # the same on validation, what both searches chose on
            "validation_points_behind_grid": round(sign * 100 * (grid_result[metric.best]["mean"]
                                                                 - statistics.mean(tpe_vals)), 2),
            "trial_seconds_vs_grid": round(seconds, 3),
            "trial_seconds_with_reruns_vs_grid": round(with_reruns, 3),
            f"random_asha_{test}": {"mean": round(statistics.mean(random_tests), 4),
                                    "std": round(statistics.stdev(random_tests), 4) if len(random_tests) > 1 else 0.0},
            # TPE + ASHA's selected setting − random + ASHA's, on test, mean over search seeds
            "points_ahead_of_random": round(sign * 100 * (statistics.mean(tpe_tests) - statistics.mean(random_tests)),
                                            2),
            "random_trial_seconds_vs_grid": round(statistics.mean(r["trial_seconds"] for r in results["random"])
                                                  / grid_result["trial_seconds"], 3),
        },
        "targets": TARGETS,
    }
    report["targets_met"] = (behind <= TARGETS["points_behind_grid"] and seconds <= TARGETS["trial_seconds_vs_grid"]
                             and report["comparison"]["points_ahead_of_random"] >= TARGETS["points_ahead_of_random"])
    print(json.dumps(report, indent=2) if args.json else report)


if __name__ == "__main__":
    main()
