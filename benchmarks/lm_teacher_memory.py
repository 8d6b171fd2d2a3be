"""What keeping token-level teachers costs a decoder: SmolLM2-135M, batch 8, 128-token sequences (xsum).

1. Seconds per step and peak RSS of ``vanilla_repeat`` (DLB batches, α = 0) against ``dynamic`` with teachers
   kept ``full`` (fp32), ``bf16``, ``int8`` and ``topk`` (k = 64). Each variant runs in its own process through
   the real training loop; a step is timed from one log call to the next after ``--warmup`` steps (median).
2. Teacher storage of the 4 revisited sequences (their target tokens) against the model's parameter memory.
3. The KL error of each storage against ``full`` on a real batch: the teachers are the model's logits, the
   student the same model after one AdamW step; per sequence |KL − KL_full| / KL_full, mean and max, at τ = 1
   and τ = 2 (top-k also at k = 1024 and 8192, to show how slowly its error falls at τ = 2).
Targets (the default storage, int8): KL error ≤ 5 % (mean) at τ = 1 and τ = 2, storage ≤ 2 % of parameter
memory, time ≤ 1.10 × vanilla_repeat.

    python benchmarks/lm_teacher_memory.py --json
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

from step_args import step_parser
from step_overhead import peak_rss_mb, reset_peak_rss

VARIANTS = {"vanilla_repeat": ("vanilla_repeat", "full", 64), "dynamic_full": ("dynamic", "full", 64),
            "dynamic_bf16": ("dynamic", "bf16", 64), "dynamic_int8": ("dynamic", "int8", 64),
            "dynamic_topk64": ("dynamic", "topk", 64)}
STORAGES = {"full": ("full", 0), "bf16": ("bf16", 0), "int8": ("int8", 0), "topk64": ("topk", 64),
            "topk1024": ("topk", 1024), "topk8192": ("topk", 8192)}
DEFAULT = "int8"
TARGETS = {"time_vs_vanilla_repeat": 1.10, "teacher_storage_vs_parameters": 0.02, "kl_error_mean": 0.05}


def base_config(method: str, storage: str, k: int, batch_size: int, max_length: int, sequences: int):
    from trainables.config import parse_config

    return parse_config({
        "method": method, "model": "smollm2-135m",
        "task": {"name": "xsum", "max_length": max_length, "max_target_length": 32, "train_subset": sequences,
                 "validation_subset": 2},
        "training": {"epochs": 1, "batch_size": batch_size, "log_every": 1, "grad_norm_every": 0},
        "distill": {"teacher_storage": storage, "topk": k}})


def measure(variant: str, steps: int, warmup: int, batch_size: int, max_length: int) -> dict:
    from trainables.recipe import fine_tune

    config = base_config(*VARIANTS[variant], batch_size, max_length, batch_size // 2 * (steps + warmup))
    times, peak = [], {}

    class StepClock:
        def log_step(self, step, metrics):
            times.append(time.perf_counter())
            if step == warmup:
                reset_peak_rss()
            if step == warmup + steps:
                peak["mb"] = peak_rss_mb()

        def log_evaluation(self, evaluation, metrics, save_checkpoint=None):
            pass

    fine_tune(config, StepClock())
    durations = [b - a for a, b in zip(times, times[1:])][warmup - 1:]
    return {"seconds_per_step": round(statistics.median(durations), 3), "steps_timed": len(durations),
            "peak_rss_mb": round(peak["mb"], 1)}


def storage_and_kl_error(batch_size: int, max_length: int) -> dict:
    """Teacher bytes of one step's revisited half, and each storage's KL error against full."""
    import torch
    from torch.nn.utils.rnn import pad_sequence

    from trainables.generation_tasks import load_generation_task, tokenized_generation_task
    from trainables.models import load_causal_lm, load_tokenizer, resolve_model
    from trainables.token_teachers import keep_teachers, token_kd

    config = base_config("dynamic", "full", 64, batch_size, max_length, batch_size // 2)
    path = resolve_model("smollm2-135m")
    tokenizer = load_tokenizer(path)
    train, *_ = tokenized_generation_task(load_generation_task(config.task), tokenizer, "smollm2-135m", max_length,
                                         config.task.max_target_length)
    inputs = pad_sequence([torch.tensor(r) for r in train["input_ids"]], batch_first=True,
                          padding_value=tokenizer.pad_token_id)
    labels = pad_sequence([torch.tensor(r) for r in train["labels"]], batch_first=True, padding_value=-100)
    lengths = torch.tensor([len(r) for r in train["input_ids"]])
    attention = torch.arange(inputs.shape[1]) < lengths.unsqueeze(1)
    model = load_causal_lm(path)
    parameter_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    torch.manual_seed(0)
    outputs = model(input_ids=inputs, attention_mask=attention.long())
    teacher = outputs.logits.detach()[:, :-1]
    targets, mask = labels[:, 1:], labels[:, 1:] != -100
    torch.nn.functional.cross_entropy(outputs.logits[:, :-1].flatten(0, 1), targets.flatten(),
                                      ignore_index=-100).backward()
    torch.optim.AdamW(model.parameters(), lr=1e-4).step()
    with torch.no_grad():
        student = model(input_ids=inputs, attention_mask=attention.long()).logits[:, :-1]
    clean = targets.clamp(min=0)
    result = {"sequences": len(inputs), "positions": int(teacher.shape[1]), "target_tokens": int(mask.sum()),
              "vocabulary": int(teacher.shape[2]),
              "parameter_mb": round(parameter_bytes / 2**20, 1), "storages": {}}
    for name, (storage, k) in STORAGES.items():
        entry = {}
        for tau in (1.0, 2.0):
            alpha, taus = torch.ones(clean.shape), torch.full(clean.shape, tau)
            full = token_kd(student, keep_teachers(teacher, clean, mask, alpha, taus, "full"))
            kept = keep_teachers(teacher, clean, mask, alpha, taus, storage, k or 64)
            error = ((token_kd(student, kept) - full).abs() / full)
            entry[f"kl_error_tau{tau:g}"] = {"mean": round(error.mean().item(), 4), "max": round(error.max().item(), 4)}
        entry["teacher_mb"] = round(kept.nbytes() / 2**20, 3)
        entry["teacher_vs_parameters"] = round(kept.nbytes() / parameter_bytes, 5)
        result["storages"][name] = entry
    return result


def main() -> None:
    args = step_parser(__doc__, VARIANTS, steps=8, warmup=2, batch_size=8, max_length=128).parse_args()
    shape = (args.batch_size, args.max_length)
    if args.child:
        print(json.dumps(measure(args.child, args.steps, args.warmup, *shape)))
        return

    variants = {}
    for variant in VARIANTS:
        command = [sys.executable, __file__, "--child", variant, "--steps", str(args.steps), "--warmup",
                   str(args.warmup), "--batch-size", str(args.batch_size), "--max-length", str(args.max_length)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        variants[variant] = json.loads(output.strip().splitlines()[-1])
        if not args.json:
            print(f"{variant}: {variants[variant]}", file=sys.stderr)
    storage = storage_and_kl_error(*shape)
    base = variants["vanilla_repeat"]["seconds_per_step"]
    ratios = {name: round(v["seconds_per_step"] / base, 3) for name, v in variants.items()}
    result = {"benchmark": "lm_teacher_memory", "model": "smollm2-135m", "task": "xsum",
              "batch_size": args.batch_size, "max_length": args.max_length, "variants": variants,
              "time_vs_vanilla_repeat": ratios, "storage": storage, "targets": TARGETS,
              "targets_met": {
                  "time": ratios[f"dynamic_{DEFAULT}"] <= TARGETS["time_vs_vanilla_repeat"],
                  "storage": storage["storages"][DEFAULT]["teacher_vs_parameters"]
                  <= TARGETS["teacher_storage_vs_parameters"],
                  "kl_error": all(storage["storages"][DEFAULT][f"kl_error_tau{tau}"]["mean"] <= TARGETS["kl_error_mean"]
                                  for tau in (1, 2))}}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
