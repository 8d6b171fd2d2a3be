"""Seconds per optimizer step and peak RSS of each method on MiniLM-L6 with real data.

Each (method, repeat) runs in its own process, so peak RSS is that method's alone; methods are interleaved
across repeats so machine noise falls on all of them alike. A step is timed from one log call to the next
(``log_every=1``) after ``--warmup`` steps; the figure is the median over steps, then over repeats.

Memory is the high-water mark of RSS over the timed steps (Linux ``VmHWM``, reset after warm-up). With glibc's
default allocator it varies by a few percent between runs of the very same computation (heap fragmentation),
so one more run per method sets ``MALLOC_MMAP_THRESHOLD_`` to return freed blocks at once: its RSS peak then
follows live memory and is what the memory target is judged on (that run is slower and is not timed).

    python benchmarks/step_overhead.py --json
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from step_args import step_parser

METHODS = ("vanilla", "vanilla_repeat", "static", "dynamic")


def measure(method: str, steps: int, warmup: int, batch_size: int, max_length: int) -> dict:
    from trainables.config import parse_config
    from trainables.methods import METHODS
    from trainables.recipe import fine_tune

    fresh = METHODS[method].fresh_size(batch_size)
    config = parse_config({
        "method": method,
        "model": "minilm-l6",
        "task": {"name": "epistemic_reasoning", "max_length": max_length,
                 "train_subset": fresh * (steps + warmup), "validation_subset": 16},
        "training": {"epochs": 1, "batch_size": batch_size, "log_every": 1, "grad_norm_every": 0},
    })

    class StepClock:
        """Times each step; resets the peak-RSS mark after warm-up and reads it after the last step."""

        def __init__(self):
            self.times, self.peak_rss_mb = [], None

        def log_step(self, step, metrics):
            self.times.append(time.perf_counter())
            if step == warmup:
                reset_peak_rss()
            if step == warmup + steps:
                self.peak_rss_mb = peak_rss_mb()

        def log_evaluation(self, evaluation, metrics, save_checkpoint=None):
            pass

    clock = StepClock()
    summary = fine_tune(config, clock)
    durations = [b - a for a, b in zip(clock.times, clock.times[1:])][warmup - 1:]
    return {"seconds_per_step": statistics.median(durations), "steps_timed": len(durations),
            "peak_rss_mb": clock.peak_rss_mb, "threads": summary["threads"]}


def reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM, so the peak covers the timed steps, not model loading."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def peak_rss_mb() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def main() -> None:
    parser = step_parser(__doc__, METHODS, steps=30, warmup=5, batch_size=16, max_length=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    shape = (args.steps, args.warmup, args.batch_size, args.max_length)
    if args.child:
        print(json.dumps(measure(args.child, *shape)))
        return

    def child(method: str, env: dict | None = None) -> dict:
        command = [sys.executable, __file__, "--child", method, "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--batch-size", str(args.batch_size),
                   "--max-length", str(args.max_length)]
        output = subprocess.run(command, check=True, capture_output=True, text=True,
                                env={**os.environ, **(env or {})}).stdout
        result = json.loads(output.strip().splitlines()[-1])
        if not args.json:
            print(f"{method}{' (live memory)' if env else ''}: {result}", file=sys.stderr)
        return result

    runs = {method: [] for method in METHODS}
    for _ in range(args.repeats):
        for method in METHODS:
            runs[method].append(child(method))
    live = {method: child(method, {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"})
            for method in METHODS}

    methods = {method: {"seconds_per_step": round(statistics.median(r["seconds_per_step"] for r in rs), 4),
                        "peak_rss_mb": round(statistics.median(r["peak_rss_mb"] for r in rs), 1),
                        "peak_live_mb": round(live[method]["peak_rss_mb"], 1)}
               for method, rs in runs.items()}
    base = methods["vanilla_repeat"]
    ratios = {method: {"time": round(methods[method]["seconds_per_step"] / base["seconds_per_step"], 3),
                       "memory": round(methods[method]["peak_live_mb"] / base["peak_live_mb"], 4)}
              for method in ("static", "dynamic")}
    result = {
        "benchmark": "step_overhead",
        "model": "minilm-l6",
        "task": "epistemic_reasoning",
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "threads": runs["vanilla"][0]["threads"],
        "steps_timed": runs["vanilla"][0]["steps_timed"],
        "repeats": args.repeats,
        "methods": methods,
        "vs_vanilla_repeat": ratios,
        "targets": {"time": 1.05, "memory": 1.02},
        "targets_met": all(r["time"] <= 1.05 and r["memory"] <= 1.02 for r in ratios.values()),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
