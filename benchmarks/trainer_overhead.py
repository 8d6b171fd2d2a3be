"""Seconds per optimizer step of the Trainer integration (trainables/hf) against the recipe on the same run config:
MiniLM-L6 on the RTE-like task, static SelfD and DynSDPB, float32 on the CPU (or the GPU where there is one).

Each (path, method, repeat) runs in its own process; paths and methods are interleaved across repeats so machine
noise falls on all of them alike. A step is timed from one step's end to the next after ``--warmup`` steps: the
recipe's by its reporter (``log_every=1``), the Trainer's by a callback's ``on_step_end``; the figure is the median
over steps, then over repeats. The Trainer's step includes its data loader and collator (padding in Python).

    python benchmarks/trainer_overhead.py --json
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from step_args import step_parser

METHODS = ("static", "dynamic")
VARIANTS = tuple(f"{path}-{method}" for method in METHODS for path in ("recipe", "trainer"))
TARGET = 1.10  # the Trainer's step within 1.10 × the recipe's


def measure(variant: str, steps: int, warmup: int, batch_size: int, max_length: int) -> dict:
    import torch

    from trainables.config import parse_config
    from trainables.methods import METHODS as TRAINING

    path, method = variant.split("-", 1)
    fresh = TRAINING[method].fresh_size(batch_size)
    config = parse_config({
        "method": method, "model": "minilm-l6",
        "task": {"name": "epistemic_reasoning", "max_length": max_length,
                 "train_subset": fresh * (steps + warmup + 1), "validation_subset": 16},
        "training": {"epochs": 1, "batch_size": batch_size, "log_every": 1, "grad_norm_every": 0,
                     "precision": "fp32"}})
    times: list[float] = []
    if path == "recipe":
        from trainables.recipe import fine_tune

        class Clock:
            def log_step(self, step, metrics):
                times.append(time.perf_counter())

            def log_evaluation(self, *args):
                pass

        fine_tune(config, Clock())
    else:
        from transformers import TrainerCallback

        from trainables.devices import use_cpu_threads
        from trainables.hf.from_recipe import trainer_like_recipe

        class Clock(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                times.append(time.perf_counter())

        use_cpu_threads(None)  # as the recipe does: one thread per CPU this process may run on
        trainer = trainer_like_recipe(config, f"/tmp/selfd-trainer-overhead-{os.getpid()}", logging_steps=1)
        trainer.add_callback(Clock())
        trainer.train()
    durations = [b - a for a, b in zip(times, times[1:])][warmup - 1:warmup - 1 + steps]
    return {"seconds_per_step": statistics.median(durations), "steps_timed": len(durations),
            "threads": torch.get_num_threads()}


def main() -> None:
    parser = step_parser(__doc__, VARIANTS, steps=30, warmup=5, batch_size=16, max_length=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    shape = (args.steps, args.warmup, args.batch_size, args.max_length)
    if args.child:
        print(json.dumps(measure(args.child, *shape)))
        return

    def child(variant: str) -> dict:
        command = [sys.executable, __file__, "--child", variant, "--steps", str(args.steps), "--warmup",
                   str(args.warmup), "--batch-size", str(args.batch_size), "--max-length", str(args.max_length)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        result = json.loads(output.strip().splitlines()[-1])
        if not args.json:
            print(f"{variant}: {result}", file=sys.stderr)
        return result

    runs = {variant: [] for variant in VARIANTS}
    for _ in range(args.repeats):
        for variant in VARIANTS:
            runs[variant].append(child(variant))
    seconds = {variant: round(statistics.median(r["seconds_per_step"] for r in rs), 4) for variant, rs in runs.items()}
    ratios = {method: round(seconds[f"trainer-{method}"] / seconds[f"recipe-{method}"], 3) for method in METHODS}
    print(json.dumps({
        "benchmark": "trainer_overhead", "model": "minilm-l6", "task": "epistemic_reasoning", "precision": "fp32",
        "batch_size": args.batch_size, "max_length": args.max_length, "threads": runs[VARIANTS[0]][0]["threads"],
        "steps_timed": runs[VARIANTS[0]][0]["steps_timed"], "repeats": args.repeats,
        "seconds_per_step": seconds, "trainer_vs_recipe": ratios, "target": TARGET,
        "target_met": all(ratio <= TARGET for ratio in ratios.values())}, indent=2))


if __name__ == "__main__":
    main()
