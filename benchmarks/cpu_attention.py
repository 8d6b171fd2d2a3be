"""Seconds per training step on the CPU for each attention kernel and precision: which to put in a CPU spec.

MiniLM-L6 with a 2-way head in training mode (dropout on), batch 16 (half of the rows padded to half length, as
right-padded batches are), one full step (forward, backward, clipping, fused AdamW), at each sequence length;
median of the timed steps.

    python benchmarks/cpu_attention.py --json [--threads 1] [--lengths 48 128 256]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from trainables.devices import has_native_bf16
from trainables.models import load_classifier, load_tokenizer, resolve_model

KERNELS = ("sdpa", "eager")
PRECISIONS = ("fp32", "bf16")


def seconds_per_step(path: str, pad_token_id: int, attention: str, bf16: bool, length: int, steps: int) -> float:
    torch.manual_seed(0)
    model = load_classifier(path, ("no", "yes"), pad_token_id, attn_implementation=attention).train()  # dropout on
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    ids = torch.randint(1000, 20000, (16, length))
    mask = torch.ones_like(ids)
    mask[:8, length // 2:] = 0
    ids[mask == 0] = pad_token_id
    labels = torch.randint(0, 2, (16,))
    times = []
    for step in range(steps + 3):  # 3 warm-up steps
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=ids, attention_mask=mask).logits
        F.cross_entropy(logits.float(), labels).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= 3:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: one CPU per trial)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[48, 128, 256])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    path = resolve_model("minilm-l6")
    pad_token_id = load_tokenizer(path).pad_token_id
    from transformers.utils import logging

    logging.set_verbosity_error()
    rows = []
    for length in args.lengths:
        row = {"length": length}
        for precision in PRECISIONS:
            for attention in KERNELS:
                row[f"{attention}_{precision}"] = round(
                    seconds_per_step(path, pad_token_id, attention, precision == "bf16", length, args.steps), 3)
        row["fastest"] = min((k for k in row if k != "length"), key=row.get)
        rows.append(row)
    report = {"benchmark": "cpu_attention", "model": "minilm-l6", "batch_size": 16, "threads": args.threads,
              "bf16_native": has_native_bf16(torch.device("cpu")),
              "seconds_per_step": rows}
    print(json.dumps(report, indent=2) if args.json else report)


if __name__ == "__main__":
    main()
