"""The GPU path, measured: the training recipe itself (``trainables/recipe.py``) on CUDA with randomly
initialised models of the paper's shapes, then what a study of the paper-scale specs costs on that GPU.

1. Classifier, DeBERTa-v3-large's shape, B = 16, 256 tokens (multiemo reviews, cut at 256), bf16 autocast:
   seconds per step and peak GPU memory of vanilla, vanilla_repeat, static and dynamic.
2. Decoders, a LLaMA-family shape of about 1 B parameters (Llama-3.2-1B's) and SmolLM2-135M's, B = 8,
   512 tokens (xsum): vanilla_repeat and dynamic with full, bf16, int8 and top-k teachers.
3. 1, 2, 4 and 8 trial processes sharing the GPU (what ``resources.gpu: 1, 0.5, 0.25, 0.125`` give), each
   running static on the classifier: aggregate steps per second and each process's peak memory.
4. From these, the GPU-hours of fig3_rte.yaml, fig3_boolq.yaml and nlg_llama.yaml on this GPU (SuperGLUE RTE
   and BoolQ at their published sizes; strategyqa_gen as packaged) and the ``resources.gpu`` each should use.

Every variant runs in its own process (its own peak memory); a step is timed from one log call to the next
after ``--warmup`` steps (the log call reads the loss, so the GPU has finished the step), median of ``--steps``.
No weights travel: each model is built from its configuration and saved as a local folder that the recipe
loads by path, with a tokenizer in its real format, so the GPU run reads what users' runs read: DeBERTa-v3's is a
SentencePiece ``spm.model`` without ``tokenizer.json`` and Llama-3.2's a byte-level BPE ``tokenizer.json``, both
built offline (``offline_hub.py``, small vocabularies: token ids stay below every shape's vocabulary), SmolLM2's
is its own (the packaged model's). Data comes from the selfd cache (``SELFD_CACHE``).

For a GPU machine without network, ``--bundle DIR`` gathers here what it lacks: wheels of the packages the
recipe needs beyond torch and transformers (for CPython 3.12), the two tokenizers and the prepared splits, as a
selfd cache. There (DIR inside the repository, named in the device's ``carry``):

    python3 -m pip install -q --no-index --no-deps --target /tmp/site DIR/wheels/*.whl
    PYTHONPATH=/tmp/site:. SELFD_CACHE=DIR/cache HF_HUB_OFFLINE=1 python3 benchmarks/gpu_check.py --json

    python benchmarks/gpu_check.py --json              # one GPU (sized for < 8 min on an H100; not yet run on one)
    python benchmarks/gpu_check.py --smoke --json      # tiny shapes on the CPU, SmolLM2's decoder shape only
    python benchmarks/gpu_check.py --bundle .gpu       # what a GPU machine without network needs
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("vanilla", "vanilla_repeat", "static", "dynamic")
TEACHERS = ("full", "bf16", "int8", "topk")
SHARING = (1, 2, 4, 8)
# Published training-set sizes (SuperGLUE; Wang et al., 2019): the hub tasks' train split, of which selfd carves
# validation_fraction for validation (their official validation split is the test split).
PUBLISHED_TRAIN = {"rte": 2490, "boolq": 9427}
SPECS = ("fig3_rte.yaml", "fig3_boolq.yaml", "nlg_llama.yaml")

# (model type, configuration, tokenizer) of each shape: a packaged alias's, or one built in its real format (SPM,
# LLAMA3); the smoke shapes keep the type, not the size
SHAPES = {
    "deberta-v3-large": ("deberta-v2", dict(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, vocab_size=128100,
        max_position_embeddings=512, relative_attention=True, position_buckets=256, norm_rel_ebd="layer_norm",
        share_att_key=True, pos_att_type=["p2c", "c2p"], position_biased_input=False, type_vocab_size=0,
        max_relative_positions=-1, pad_token_id=0), "spm"),
    "llama-1b": ("llama", dict(
        hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
        intermediate_size=8192, vocab_size=128256, max_position_embeddings=4096, rope_theta=500000.0,
        tie_word_embeddings=True), "llama3"),
    "smollm2-135m": ("llama", dict(
        hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, intermediate_size=1536,
        vocab_size=49152, max_position_embeddings=8192, rope_theta=100000.0, tie_word_embeddings=True),
        "smollm2-135m"),
}
TOKENIZER_FILES = ("tokenizer", "special_tokens", "vocab", "merges", "added_tokens", "spm")  # name prefixes
BUILT_TOKENIZERS = ("spm", "llama3")  # offline_hub.py's DeBERTa-v3 and Llama-3 formats
SMOKE_SIZE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def shape_config(shape: str, smoke: bool):
    from transformers import AutoConfig

    model_type, fields, _ = SHAPES[shape]
    fields = dict(fields)
    if smoke:
        fields |= SMOKE_SIZE | ({"num_key_value_heads": 1} if model_type == "llama" else {})
    return AutoConfig.for_model(model_type, **fields)


def build_model_folder(shape: str, folder: Path, smoke: bool) -> Path:
    """A randomly initialised model of ``shape`` saved in ``folder`` with its tokenizer: what the recipe loads."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from trainables.models import resolve_model

    config = shape_config(shape, smoke)
    kind = AutoModelForCausalLM if config.model_type == "llama" else AutoModelForSequenceClassification
    torch.manual_seed(0)
    kind.from_config(config).save_pretrained(folder)
    source = SHAPES[shape][2]
    tokenizer_folder = built_tokenizer(source) if source in BUILT_TOKENIZERS else Path(resolve_model(source))
    for path in tokenizer_folder.iterdir():  # tokenizer files only: never the source model's weights or config
        if path.name.startswith(TOKENIZER_FILES):
            shutil.copy(path, folder / path.name)
    return folder


def built_tokenizer(kind: str) -> Path:
    """A tokenizer in DeBERTa-v3's (``spm``) or Llama-3's (``llama3``) format, built once into the selfd cache."""
    from offline_hub import byte_level_tokenizer, sentencepiece_tokenizer

    from trainables.cache import cached_entry

    build = sentencepiece_tokenizer if kind == "spm" else byte_level_tokenizer
    return cached_entry(f"tokenizers/{kind}", build)


def run_config(shape_folder: Path, shape: str, method: str, storage: str, batch_size: int, max_length: int,
               steps: int, device: str):
    from trainables.config import parse_config
    from trainables.methods import METHODS as RULES

    fresh = RULES[method].fresh_size(batch_size)
    decoder = SHAPES[shape][0] == "llama"
    task = ({"name": "xsum", "max_target_length": 64} if decoder else {"name": "multiemo"}) | {
        "max_length": max_length, "train_subset": fresh * steps, "validation_subset": 2}
    return parse_config({
        "method": method, "model": {"name": str(shape_folder)}, "task": task,
        "training": {"epochs": 1, "batch_size": batch_size, "log_every": 1, "grad_norm_every": 0,
                     "device": device, "precision": "auto"},
        "distill": {"teacher_storage": storage, "topk": 64}})


def measure(folder: Path, shape: str, method: str, storage: str, batch_size: int, max_length: int,
            steps: int, warmup: int, device: str, barrier: tuple[Path, int] | None = None) -> dict:
    """One variant through the real recipe; with ``barrier`` (folder, processes), timing starts once every
    process sharing the GPU has warmed up."""
    import torch

    from trainables.recipe import fine_tune

    cuda = device == "cuda"
    times: list[float] = []

    class StepClock:
        def log_step(self, step, metrics):
            if step == warmup and barrier is not None:
                folder, processes = barrier
                (folder / f"ready-{os.getpid()}").touch()
                while len(list(folder.glob("ready-*"))) < processes:
                    time.sleep(0.05)
            if step == warmup and cuda:
                torch.cuda.reset_peak_memory_stats()
            times.append(time.perf_counter())

        def log_evaluation(self, evaluation, metrics, save_checkpoint=None):
            pass

    config = run_config(folder, shape, method, storage, batch_size, max_length, steps + warmup + 1, device)
    summary = fine_tune(config, StepClock())
    durations = [b - a for a, b in zip(times, times[1:])][warmup - 1:warmup - 1 + steps]
    result = {"seconds_per_step": round(statistics.median(durations), 4), "steps_timed": len(durations),
              "device": summary["device"]}
    if cuda:
        result |= {"peak_allocated_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1),
                   "peak_reserved_mib": round(torch.cuda.max_memory_reserved() / 2**20, 1),
                   "gpu": torch.cuda.get_device_name()}
    return result


def child(args, shape: str, method: str, storage: str = "full", batch_size: int = 16, max_length: int = 256,
          barrier: tuple[Path, int] | None = None, wait: bool = True):
    """One variant in its own process (its own peak memory); ``--smoke`` runs it in this one, but for sharing."""
    task = {"folder": str(args.models / shape), "shape": shape, "method": method, "storage": storage,
            "batch_size": batch_size, "max_length": max_length, "steps": args.steps, "warmup": args.warmup,
            "device": args.device}
    if args.smoke and barrier is None:
        return measure(**{**task, "folder": Path(task["folder"])})
    command = [sys.executable, __file__, "--child", json.dumps(
        {**task, "barrier": [str(barrier[0]), barrier[1]] if barrier else None})]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return finish(process, f"{shape} {method} {storage}") if wait else process


def finish(process: subprocess.Popen, what: str) -> dict:
    out, err = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"gpu_check: {what} failed: {err.strip().splitlines()[-1] if err.strip() else '?'}")
    result = json.loads(out.strip().splitlines()[-1])
    print(f"{what}: {result}", file=sys.stderr, flush=True)
    return result


def sharing(args, processes: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="selfd-gpu-barrier-") as folder:
        running = [child(args, "deberta-v3-large", "static", barrier=(Path(folder), processes), wait=False)
                   for _ in range(processes)]
        results = [finish(p, f"{processes} processes sharing") for p in running]
    per_step = [r["seconds_per_step"] for r in results]
    return {"processes": processes, "resources_gpu": round(1 / processes, 3),
            "aggregate_steps_per_second": round(sum(1 / s for s in per_step), 3),
            "seconds_per_step_each": per_step,
            "peak_reserved_mib_each": [r.get("peak_reserved_mib") for r in results]}


def gpu_hours(classifier: dict, decoders: dict, shared: list[dict]) -> dict:
    """Each paper-scale spec's GPU-hours on this GPU at the measured step times (one trial per GPU, and at the
    best sharing measured), and the ``resources.gpu`` that gives the most steps per second."""
    from study.spec import load_spec
    from trainables.methods import METHODS as RULES

    best = max(shared, key=lambda s: s["aggregate_steps_per_second"])
    alone = next((s["aggregate_steps_per_second"] for s in shared if s["processes"] == 1),
                 1 / classifier["static"]["seconds_per_step"])
    speedup = best["aggregate_steps_per_second"] / alone  # sharing's throughput over one trial alone
    estimates = {}
    for name in SPECS:
        spec = load_spec(ROOT / "search_spaces" / name)
        trials = collections.Counter({str(m): spec.method_search_trials(m) for m in spec.searched})
        trials.update({str(m): len(spec.verdict_seeds) for m in spec.fixed_baselines})
        if spec.rerun_best:
            trials.update({str(m): len(spec.verdict_seeds) for m in spec.searched})
        rounds = collections.Counter()  # adaptive confirmation, if it runs every seed of its range
        if spec.adaptive:
            rounds.update({str(m): len(spec.confirmation_seeds) - len(spec.verdict_seeds) for m in spec.primary})
        if spec.task.name in PUBLISHED_TRAIN:  # validation is carved from the published train split
            published = PUBLISHED_TRAIN[spec.task.name]
            train = published - math.ceil(published * spec.task.validation_fraction)
        else:
            from trainables.generation_tasks import load_generation_task

            train = len(load_generation_task(spec.task).train)

        def trial_seconds(method: str) -> float:
            steps = math.ceil(train / RULES[method].fresh_size(spec.training.batch_size)) * spec.training.epochs
            if name == "nlg_llama.yaml":
                variant = "vanilla_repeat" if method in ("vanilla", "vanilla_repeat") else spec.distill.teacher_storage
                per_step = decoders.get("llama-1b", decoders["smollm2-135m"])[variant]["seconds_per_step"]
            else:
                per_step = classifier[method]["seconds_per_step"]
            # the spec's own batch and length, scaled from the measured shape by tokens per step
            per_step *= spec.training.batch_size * spec.task.max_length / (16 * 256 if name != "nlg_llama.yaml"
                                                                            else 8 * 512)
            return steps * per_step

        seconds = sum(count * trial_seconds(method) for method, count in trials.items())
        most = seconds + sum(count * trial_seconds(method) for method, count in rounds.items())
        estimates[name] = {"trials": sum(trials.values()), "confirmation_trials_up_to": sum(rounds.values()),
                           "train_examples": train,
                           "gpu_hours_one_trial_per_gpu": round(seconds / 3600, 2),
                           "gpu_hours_shared": round(seconds / 3600 / speedup, 2),
                           "gpu_hours_one_trial_per_gpu_every_round": round(most / 3600, 2),
                           "resources_gpu": best["resources_gpu"]}
    return estimates


# what the recipe imports beyond the GPU image's packages (torch, transformers, pyarrow, filelock, absl-py, ...)
WHEELS = ("pydantic", "pydantic-core", "annotated-types", "typing-inspection", "datasets", "dill", "multiprocess",
          "rouge-score", "nltk", "defusedxml", "sentencepiece")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def bundle(folder: Path) -> None:
    """Wheels, tokenizers and prepared splits for a GPU machine without network, in ``folder``."""
    from importlib.metadata import version

    from trainables.config import parse_config
    from trainables.generation_tasks import load_generation_task
    from trainables.models import resolve_model
    from trainables.tasks import load_task

    wheels = folder / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    for name in WHEELS:  # the versions installed here, for CPython 3.12 (a pure-Python sdist is built into a wheel)
        pinned = f"{name}=={version(name)}"
        platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
        fetched = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                                  "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                                  *platforms, "-d", str(wheels), pinned], capture_output=True, text=True)
        if fetched.returncode != 0:
            subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels), pinned],
                           check=True)
    cache = folder / "cache"
    for kind in BUILT_TOKENIZERS:
        shutil.copytree(built_tokenizer(kind), cache / "tokenizers" / kind, dirs_exist_ok=True)
    for alias in {tokenizer for _, _, tokenizer in SHAPES.values()} - set(BUILT_TOKENIZERS):
        target = cache / "models" / alias
        target.mkdir(parents=True, exist_ok=True)
        for path in Path(resolve_model(alias)).iterdir():
            if path.name.startswith((*TOKENIZER_FILES, "config")):  # resolve_model needs the folder, not weights
                shutil.copy(path, target / path.name)
    tasks = [load_task(parse_config({"task": {"name": "multiemo"}}).task).folder]
    for name in ("xsum", "strategyqa_gen"):
        tasks.append(load_generation_task(parse_config({"model": "smollm2-135m", "task": name}).task).folder)
    for prepared in tasks:
        shutil.copytree(prepared, cache / "tasks" / prepared.name, dirs_exist_ok=True)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    print(f"{folder}: {size / 2**20:.1f} MiB ({len(list(wheels.iterdir()))} wheels, {len(tasks)} prepared tasks)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, few steps, on the CPU: checks the script")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--bundle", type=Path, metavar="DIR", help="gather what a GPU machine without network needs")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bundle:
        bundle(args.bundle)
        return
    if args.child:
        task = json.loads(args.child)
        barrier = task.pop("barrier")
        print(json.dumps(measure(**{**task, "folder": Path(task["folder"])},
                                 barrier=(Path(barrier[0]), barrier[1]) if barrier else None)))
        return

    import torch

    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device; run with --smoke for the CPU check of this script")
    args.device = "cpu" if args.smoke else "cuda"
    if args.smoke:
        args.steps, args.warmup = min(args.steps, 3), min(args.warmup, 2)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="selfd-gpu-models-") as models:
        args.models = Path(models)
        decoder_shapes = ("smollm2-135m",) if args.smoke else ("llama-1b", "smollm2-135m")  # smoke: one is enough
        for shape in ("deberta-v3-large", *decoder_shapes):
            build_model_folder(shape, args.models / shape, args.smoke)
        length = 32 if args.smoke else None
        classifier = {m: child(args, "deberta-v3-large", m, max_length=length or 256) for m in METHODS}
        decoder_length = 128 if args.smoke else 512  # room for the prompt template and 64 target tokens
        decoders = {shape: {"vanilla_repeat": child(args, shape, "vanilla_repeat", "full", 8, decoder_length)}
                    | {storage: child(args, shape, "dynamic", storage, 8, decoder_length) for storage in TEACHERS}
                    for shape in decoder_shapes}
        shared = [sharing(args, n) for n in ((2,) if args.smoke else SHARING)]
    base = classifier["vanilla_repeat"]

    def ratios(variant: dict, against: dict) -> dict:
        out = {"time": round(variant["seconds_per_step"] / against["seconds_per_step"], 3)}
        if "peak_allocated_mib" in variant:
            out["memory"] = round(variant["peak_allocated_mib"] / against["peak_allocated_mib"], 4)
        return out

    result = {
        "benchmark": "gpu_check", "smoke": args.smoke, "device": base["device"], "gpu": base.get("gpu"),
        "torch": torch.__version__, "steps_timed": args.steps, "warmup": args.warmup,
        "classifier": {"shape": "deberta-v3-large", "batch_size": 16, "max_length": length or 256,
                       "methods": classifier,
                       "vs_vanilla_repeat": {m: ratios(classifier[m], base) for m in ("static", "dynamic")}},
        "decoders": {shape: {"batch_size": 8, "max_length": decoder_length, "variants": variants,
                             "vs_vanilla_repeat": {s: ratios(variants[s], variants["vanilla_repeat"])
                                                   for s in TEACHERS}}
                     for shape, variants in decoders.items()},
        "sharing": shared,
        "gpu_hours": gpu_hours(classifier, decoders, shared),
        "targets": {"time": 1.05, "memory": 1.02},
        "seconds": round(time.perf_counter() - started, 1),
    }
    vs = result["classifier"]["vs_vanilla_repeat"].values()
    result["targets_met"] = all(r["time"] <= 1.05 and r.get("memory", 1.0) <= 1.02 for r in vs)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
