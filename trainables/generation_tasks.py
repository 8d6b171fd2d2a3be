"""Generation tasks for decoder-only models: packaged BIG-bench tasks as (prompt, target) pairs, split and
tokenized once, and scored from greedy generations.

- ``strategyqa_gen``: question → "Yes. <supporting facts>" or "No. <supporting facts>". Scores: answer accuracy
  (the first generated word against the reference's Yes/No) and ROUGE-L of the explanation after it.
- ``xsum`` (BIG-bench ``gem/xsum``): news article → one-sentence summary. Score: ROUGE-L.
Each task has one prompt template (``GENERATION_TASKS``). A tokenized row holds ``input_ids`` (prompt, target,
EOS), ``labels`` (-100 on the prompt, so only target tokens are learnt and distilled) and ``prompt_length``
(where greedy generation starts at evaluation). Splits get the same treatment as the classification tasks: a
seeded split recorded in ``split.json`` under ``SELFD_CACHE/tasks``, token ids cached under
``SELFD_CACHE/tokenized``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trainables.cache import cached_entry, content_hash
from trainables.config import TaskConfig
from trainables.errors import ConfigError
from trainables.tasks import BIGBENCH, SPLITS, bigbench_task_json, carve_splits, prepared_splits


def _strategyqa(example: dict) -> dict:
    return {"source": example["input"], "target": " ".join(example["target"].split())}


def _xsum(example: dict) -> dict:
    return {"source": " ".join(example["input"].split()), "target": example["target"].strip()}


@dataclass(frozen=True)
class GenerationTask:
    path: str  # folder under bigbench/benchmark_tasks
    prefix: str  # the prompt is prefix + source (truncated to fit) + suffix
    suffix: str
    convert: Callable[[dict], dict]
    scores: tuple[str, ...]  # validation metrics, as reported (val_…)


GENERATION_TASKS = {
    "strategyqa_gen": GenerationTask("strategyqa", "Question: ", "\nAnswer (Yes or No, then why):", _strategyqa,
                                     ("val_accuracy", "val_rougeL")),
    "xsum": GenerationTask("gem/xsum", "Article: ", "\nOne-sentence summary:", _xsum, ("val_rougeL",)),
}


@dataclass(frozen=True)
class GenerationData:
    name: str
    task: GenerationTask
    train: object  # datasets.Dataset with columns source, target
    validation: object
    test: object
    fingerprint: str
    folder: Path  # the prepared splits in the cache


def load_generation_task(config: TaskConfig) -> GenerationData:
    """The task's seeded train / validation / test splits of (source, target) pairs (both carved from BIG-bench's
    one split), from the cache when one exists."""
    import datasets

    if config.name not in GENERATION_TASKS:
        raise ConfigError(f"unknown generation task {config.name!r}; known: {', '.join(GENERATION_TASKS)}")
    task = GENERATION_TASKS[config.name]
    datasets.disable_progress_bars()

    def build(folder: Path) -> None:
        examples = json.loads(bigbench_task_json(task.path).read_text())["examples"]
        rows = datasets.Dataset.from_list([task.convert(example) for example in examples])
        splits, made = carve_splits(config, {"train": rows}, stratify=None)
        digest = {name: content_hash(part["source"], part["target"]) for name, part in splits.items()}
        for name, split in splits.items():
            split.save_to_disk(str(folder / name))
        (folder / "split.json").write_text(json.dumps({
            "task": config.name, "source": f"bigbench=={BIGBENCH[1]} {task.path}",
            "split": {"seed": config.split_seed, "validation_fraction": config.validation_fraction,
                      "test_fraction": config.test_fraction, "made": made},
            "sizes": {name: len(split) for name, split in splits.items()},
            "content_hash": digest, "fingerprint": content_hash(digest)}, indent=2))

    key = content_hash("generation", BIGBENCH, task.path, config.validation_fraction, config.test_fraction,
                       config.split_seed)
    folder = cached_entry(f"tasks/{config.name}-{key}", build)
    _, splits, fingerprint = prepared_splits(folder, config)
    return GenerationData(config.name, task, *splits, fingerprint, folder)


def tokenized_generation_task(data: GenerationData, tokenizer, tokenizer_id: str, max_length: int,
                              max_target_length: int):
    """(train, validation, test) rows of ``input_ids``, ``labels``, ``prompt_length``, cached on disk.

    The target is cut to ``max_target_length`` tokens (then EOS); the source is cut so that prompt and target
    fit ``max_length``, keeping the template's prefix and suffix whole.
    """
    from datasets import Dataset, load_from_disk

    key = content_hash(data.fingerprint, tokenizer_id, type(tokenizer).__name__, len(tokenizer), max_length,
                       max_target_length, data.task.prefix, data.task.suffix)

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    prefix, suffix = encode(data.task.prefix), encode(data.task.suffix)
    start = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    room = max_length - max_target_length - 1 - len(start) - len(prefix) - len(suffix)
    if room < 8:
        raise ConfigError(f"task.max_length {max_length} leaves {room} tokens for the {data.name} source after the "
                          f"prompt template and {max_target_length} target tokens; raise it")

    def tokenize(folder: Path) -> None:
        for name, split in zip(SPLITS, (data.train, data.validation, data.test)):
            rows = {"input_ids": [], "labels": [], "prompt_length": []}
            for source, target in zip(split["source"], split["target"]):
                prompt = start + prefix + encode(source)[:room] + suffix
                answer = encode(" " + target)[:max_target_length] + [tokenizer.eos_token_id]
                rows["input_ids"].append(prompt + answer)
                rows["labels"].append([-100] * len(prompt) + answer)
                rows["prompt_length"].append(len(prompt))
            Dataset.from_dict(rows).save_to_disk(str(folder / name))

    folder = cached_entry(f"tokenized/{data.name}-{key}", tokenize)
    return tuple(load_from_disk(str(folder / name)) for name in SPLITS)


def score_generations(name: str, predictions: list[str], references: list[str]) -> dict[str, float]:
    """The task's scores of greedy generations against the reference targets, named as validation metrics
    (``val_accuracy``, ``val_rougeL``)."""
    from rouge_score.rouge_scorer import RougeScorer

    rouge = RougeScorer(["rougeL"], use_stemmer=True)
    if name == "strategyqa_gen":
        predicted, expected = map(_split_answers, (predictions, references))
        accuracy = sum(p[0] == e[0] for p, e in zip(predicted, expected)) / len(references)
        explanations = [rouge.score(e[1], p[1])["rougeL"].fmeasure for p, e in zip(predicted, expected)]
        return {"val_accuracy": accuracy, "val_rougeL": sum(explanations) / len(references)}
    rouge_l = [rouge.score(reference, prediction)["rougeL"].fmeasure
               for prediction, reference in zip(predictions, references)]
    return {"val_rougeL": sum(rouge_l) / len(references)}


def _split_answers(texts: list[str]) -> list[tuple[str, str]]:
    """("yes" / "no" / the first word otherwise, the text after it) of each "Yes. because …" string."""
    answers = []
    for text in texts:
        match = re.match(r"\W*(\w+)\W*(.*)", text, flags=re.DOTALL)
        answers.append((match.group(1).lower(), match.group(2).strip()) if match else ("", ""))
    return answers
