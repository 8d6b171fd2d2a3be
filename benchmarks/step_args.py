"""The command line the per-step benchmarks share: each measures a few variants, each in its own process."""

from __future__ import annotations

import argparse


def step_parser(doc: str, variants, steps: int, warmup: int, batch_size: int,
                max_length: int) -> argparse.ArgumentParser:
    """--json, --steps, --warmup, --batch-size, --max-length, and the hidden --child VARIANT that one process runs."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--max-length", type=int, default=max_length)
    parser.add_argument("--child", choices=variants, help=argparse.SUPPRESS)
    return parser
