"""The paper-scale specs end to end on the CPU through the offline hub path: fig3_rte.yaml, fig3_boolq.yaml and
nlg_llama.yaml, their whole τ × α grids, baselines and seeds, from a Hugging Face cache built by
``offline_hub.py`` (tiny random models under the real repo ids, small data sets under the real ids), with
``HF_HUB_OFFLINE=1``. Only sizes shrink, by ``--override``: examples (the cache's), epochs, max length and CPU
resources. Prints JSON: each spec's wall time, trials, splits (split.json) and verdict lines.

    python benchmarks/hub_offline.py --json [--examples 48] [--specs fig3_rte.yaml ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from offline_hub import build_cache, offline_environment, selfd_cache  # noqa: E402

SPECS = ("fig3_rte.yaml", "fig3_boolq.yaml", "nlg_llama.yaml")
SIZES = ["training.epochs=1", "resources.cpu=1", "resources.gpu=0", "max_concurrent_trials=2", "training.log_every=2",
         "training.grad_norm_every=2"]
LENGTHS = {"fig3_rte.yaml": ["task.max_length=48"], "fig3_boolq.yaml": ["task.max_length=48"],
           "nlg_llama.yaml": ["task.max_length=96", "task.max_target_length=16", "task.train_subset=64",
                              "task.validation_subset=16"]}  # strategyqa_gen is packaged: 2,290 examples


def run_spec(spec: str, study_dir: Path, env: dict) -> dict:
    started = time.monotonic()
    overrides = [part for size in [*SIZES, *LENGTHS[spec]] for part in ("--override", size)]
    ran = subprocess.run([str(Path(sys.executable).parent / "selfd"), "run", str(ROOT / "search_spaces" / spec),
                          "--study-dir", str(study_dir), *overrides], env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if ran.returncode != 0:
        return {"exit_code": ran.returncode, "stderr": ran.stderr[-3000:]}
    trials = len((study_dir / "report" / "results.csv").read_text().splitlines()) - 1
    return {"exit_code": 0, "seconds": round(seconds, 1), "trials": trials,
            "verdicts": [line.removeprefix("verdict: ") for line in ran.stdout.splitlines()
                         if line.startswith("verdict: ")]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=48, help="training examples per hub data set")
    parser.add_argument("--specs", nargs="+", default=list(SPECS))
    parser.add_argument("--json", action="store_true", help="print the figures as JSON (the default is the same)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="selfd-hub-") as scratch:
        folder = Path(scratch)
        build_cache(folder / "hf", examples=args.examples)
        cache = selfd_cache(folder / "selfd-cache")
        env = offline_environment(folder / "hf", cache)
        results = {}
        for spec in args.specs:
            results[spec] = run_spec(spec, folder / spec.removesuffix(".yaml"), env)
        results["splits"] = {path.parent.name.rsplit("-", 1)[0]: {k: v for k, v in json.loads(path.read_text()).items()
                                                                if k in ("sizes", "split", "label_counts")}
                             for path in sorted((cache / "tasks").glob("*/split.json"))}
    print(json.dumps({"examples": args.examples, "sizes": SIZES, "lengths": LENGTHS, **results}, indent=2))


if __name__ == "__main__":
    main()
