"""Classification tasks: packaged BIG-bench tasks, hub data sets and local files, split and tokenized once.

Every task becomes three ``datasets.Dataset`` splits (``SPLITS``: train, validation, test) with columns ``text``,
``text_pair`` (may be empty) and ``label`` (an index into ``label_names``). Validation makes every choice of a
study; test is scored beside it and read by no choice. What the source lacks is carved from its train split,
seeded and stratified (``carve_splits``): BIG-bench tasks have one split, so both are carved; hub GLUE/SuperGLUE
tasks hide their test labels, so their official validation split is the test split and validation is carved;
local files give ``{train, validation, test}`` files, and what they leave out is carved.
The prepared splits are saved under ``SELFD_CACHE/tasks`` with a ``split.json`` that records the seed, the
fractions, each split's size, class counts and content hash, and the tokenized splits under
``SELFD_CACHE/tokenized``: every trial of a study loads the same data instead of rebuilding it.
"""

from __future__ import annotations

import hashlib
import json
import math
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trainables.cache import cached_entry, content_hash, registry_download
from trainables.config import TaskConfig
from trainables.metrics import Metric
from trainables.errors import AssetError, ConfigError, first_line
from trainables.hub import require_hub_asset

BIGBENCH = ("bigbench", "1.0.0")
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class TaskData:
    name: str
    label_names: tuple[str, ...]
    train: object  # datasets.Dataset
    validation: object  # datasets.Dataset
    test: object  # datasets.Dataset
    fingerprint: str  # content hash of the splits: equal fingerprints, equal data
    folder: Path  # the prepared splits in the cache

    @property
    def majority_accuracy(self) -> float:
        """The validation accuracy of always predicting the most frequent class."""
        return _majority(self.validation)

    @property
    def test_majority_accuracy(self) -> float:
        return _majority(self.test)

    def majority_score(self, metric: Metric) -> float | None:
        """The validation score (accuracy or macro-F1) of always predicting the most frequent class; None for a
        metric that is neither."""
        if metric is Metric.VAL_ACCURACY:
            return self.majority_accuracy
        if metric is not Metric.VAL_MACRO_F1:
            return None
        from sklearn.metrics import f1_score  # 0.8 s to import: only where the study's metric needs it

        labels = list(self.validation["label"])
        constant = [max(set(labels), key=labels.count)] * len(labels)
        return float(f1_score(labels, constant, average="macro", zero_division=0))


def _majority(split) -> float:
    labels = list(split["label"])
    return max(labels.count(c) for c in set(labels)) / len(labels)


# ---- packaged BIG-bench tasks --------------------------------------------------------------------------

def _strategyqa(example: dict) -> dict | None:
    # target is "Yes. <facts>" / "No. <facts>": the facts, without the answer word, are the passage
    answer, _, facts = example["target"].partition(". ")
    return {"text": example["input"], "text_pair": facts.strip(), "label": int(answer == "Yes")}


def _epistemic_reasoning(example: dict) -> dict | None:
    premise, _, hypothesis = example["input"].removeprefix("Premise: ").partition(" Hypothesis: ")
    scores = example["target_scores"]
    return {"text": premise, "text_pair": hypothesis, "label": int(scores["non-entailment"] == 1)}


def _fever(example: dict) -> dict | None:
    # "On June 2017, the following claim was made: <claim>\nQ: Was this claim true or false?": the claim alone
    claim = example["input"].removeprefix("On June 2017, the following claim was made: ").partition("\nQ:")[0]
    return {"text": claim.strip(), "text_pair": "", "label": int(example["target_scores"]["true"] == 1)}


def _multiemo(example: dict) -> dict | None:
    scores = example["target_scores"]
    if not (scores["positive"] or scores["negative"]):
        return None  # ambivalent and neutral reviews are left out: SST-2 is binary
    return {"text": example["input"], "text_pair": "", "label": int(scores["positive"] == 1)}


@dataclass(frozen=True)
class BigBenchTask:
    path: str  # folder under bigbench/benchmark_tasks
    label_names: tuple[str, ...]
    convert: Callable[[dict], dict | None]
    like: str


BIGBENCH_TASKS = {
    "strategyqa": BigBenchTask("strategyqa", ("no", "yes"), _strategyqa, "BoolQ"),
    "epistemic_reasoning": BigBenchTask("epistemic_reasoning", ("entailment", "non-entailment"),
                                        _epistemic_reasoning, "RTE"),
    "multiemo": BigBenchTask("multiemo/all_text_en", ("negative", "positive"), _multiemo, "SST-2"),
    "fever": BigBenchTask("fact_checker/fever", ("false", "true"), _fever, "BoolQ"),
}


def bigbench_task_json(path: str) -> Path:
    """``task.json`` of one BIG-bench task, extracted from the registry's sdist (never installed)."""

    def extract(folder: Path) -> None:
        member = f"bigbench-{BIGBENCH[1]}/bigbench/benchmark_tasks/{path}/task.json"
        with tarfile.open(registry_download(*BIGBENCH)) as sdist:
            try:
                (folder / "task.json").write_bytes(sdist.extractfile(member).read())
            except KeyError:
                raise AssetError(f"the bigbench sdist has no task {path}") from None

    return cached_entry(f"bigbench/{path.replace('/', '__')}", extract) / "task.json"


# ---- hub data sets ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HubTask:
    repo: str
    config: str
    text: str
    text_pair: str | None
    label_names: tuple[str, ...]
    validation_split: str = "validation"


HUB_TASKS = {
    "boolq": HubTask("aps/super_glue", "boolq", "question", "passage", ("false", "true")),
    "rte": HubTask("aps/super_glue", "rte", "premise", "hypothesis", ("entailment", "not_entailment")),
    "sst2": HubTask("nyu-mll/glue", "sst2", "sentence", None, ("negative", "positive")),
    "cola": HubTask("nyu-mll/glue", "cola", "sentence", None, ("unacceptable", "acceptable")),
    "mrpc": HubTask("nyu-mll/glue", "mrpc", "sentence1", "sentence2", ("not_equivalent", "equivalent")),
    "qqp": HubTask("nyu-mll/glue", "qqp", "question1", "question2", ("not_duplicate", "duplicate")),
    "qnli": HubTask("nyu-mll/glue", "qnli", "question", "sentence", ("entailment", "not_entailment")),
    "mnli": HubTask("nyu-mll/glue", "mnli", "premise", "hypothesis",
                    ("entailment", "neutral", "contradiction"), "validation_matched"),
}
KNOWN_TASKS = sorted([*BIGBENCH_TASKS, *HUB_TASKS])
DATA_ALTERNATIVES = f"use a packaged task ({', '.join(BIGBENCH_TASKS)}) or local files with task.files"


# ---- loading -----------------------------------------------------------------------------------------------

def load_task(config: TaskConfig) -> TaskData:
    """The task's prepared splits, from the cache when an earlier run made them.

    Raises ConfigError for bad task settings (unknown name, missing files or columns, label values that
    are not the task's labels) and AssetError when the data cannot be fetched; both before any model work.
    """
    import datasets

    datasets.disable_progress_bars()  # selfd prints its own progress
    datasets.logging.set_verbosity_error()  # not "Found the latest cached dataset configuration …" (offline)
    source_key, build = _task_source(config)
    key = content_hash(source_key, config.validation_fraction, config.test_fraction, config.split_seed)
    folder = cached_entry(f"tasks/{config.name}-{key}", build)
    record, splits, fingerprint = prepared_splits(folder, config)
    return TaskData(config.name, tuple(record["label_names"]), *splits, fingerprint, folder)


def prepared_splits(folder: Path, config: TaskConfig):
    """(split record, (train, validation, test), fingerprint) of a prepared task folder, each split cut to its
    configured subset (a seeded random one)."""
    import datasets

    record = json.loads((folder / "split.json").read_text())
    test_subset = config.test_subset if config.test_subset is not None else config.validation_subset
    subsets = (config.train_subset, config.validation_subset, test_subset)
    splits = []
    for name, subset in zip(SPLITS, subsets):
        split = datasets.load_from_disk(str(folder / name))
        if subset and subset < len(split):
            split = split.shuffle(seed=config.split_seed).select(range(subset))
        splits.append(split)
    return record, tuple(splits), content_hash(record["fingerprint"], *subsets)


def carve_splits(config: TaskConfig, given: dict, stratify: str | None) -> tuple[dict, dict]:
    """(train / validation / test datasets, how each was made) from the splits a source ``given`` (train at
    least): a missing test, then a missing validation, is carved from train, seeded by ``task.split_seed`` and
    stratified by the ``stratify`` column. Fractions are of the examples of the source's train split."""
    splits, made = dict(given), {name: "the source's own split" for name in given}
    carve = [(name, fraction) for name, fraction in (("test", config.test_fraction),
                                                    ("validation", config.validation_fraction))
             if splits.get(name) is None]
    left = 1.0
    for name, fraction in carve:
        try:
            parts = splits["train"].train_test_split(test_size=fraction / left, seed=config.split_seed,
                                                     stratify_by_column=stratify)
        except ValueError as error:  # too few examples, or too few of a label, to cut a stratified split
            raise ConfigError(f"task data: {len(splits['train'])} training examples are too few to carve a {name} "
                              f"split ({fraction:g} of them, stratified by {stratify}): {first_line(error)} Give "
                              f"more rows, or a {name} file of its own (task.files.{name})") from None
        splits["train"], splits[name] = parts["train"], parts["test"]
        made[name] = f"carved from train: {fraction:g} of it, seed {config.split_seed}"
        left -= fraction
    return {name: splits[name] for name in SPLITS}, {name: made[name] for name in SPLITS}


def _task_source(config: TaskConfig) -> tuple[object, Callable[[Path], None]]:
    """(cache key of the raw data, builder that writes the prepared splits into a folder)."""
    if config.files is not None:
        files = {"train": config.files} if isinstance(config.files, str) else dict(config.files)
        for split, file in files.items():
            if not Path(file).is_file():
                raise ConfigError(f"task.files.{split}: no such file {file}")
        digests = {split: hashlib.sha256(Path(file).read_bytes()).hexdigest() for split, file in files.items()}
        key = ("files", digests, config.columns.model_dump(), config.labels)
        return key, lambda folder: _save(folder, config, *_from_files(config, files))
    if config.hub is not None:
        key = ("hub", config.hub, config.hub_config, config.columns.model_dump(), config.labels)
        return key, lambda folder: _save(folder, config, *_from_hub(config))
    if config.columns is not None or config.labels is not None:
        raise ConfigError(f"task {config.name}: columns and labels apply only to task.files or task.hub")
    if config.name in BIGBENCH_TASKS:
        task = BIGBENCH_TASKS[config.name]
        return ("bigbench", BIGBENCH, task.path), lambda folder: _save(folder, config, *_from_bigbench(task))
    if config.name in HUB_TASKS:
        task = HUB_TASKS[config.name]
        return ("hub", task), lambda folder: _save(folder, config, *_from_known_hub(task))
    raise ConfigError(f"unknown task {config.name!r}; known tasks: {', '.join(KNOWN_TASKS)} "
                      "(or give task.files / task.hub with task.columns)")


def _from_bigbench(task: BigBenchTask):
    from datasets import Dataset

    examples = json.loads(bigbench_task_json(task.path).read_text())["examples"]
    rows = [row for row in map(task.convert, examples) if row is not None]
    return {"train": Dataset.from_list(rows)}, task.label_names


def _from_known_hub(task: HubTask):
    from datasets import load_dataset

    require_hub_asset(task.repo, repo_type="dataset", alternatives=DATA_ALTERNATIVES, config=task.config)
    splits = load_dataset(task.repo, task.config)

    def standard(split):
        return split.map(lambda row: {"text": row[task.text],
                                      "text_pair": row[task.text_pair] if task.text_pair else "",
                                      "label": int(row["label"])},
                         remove_columns=split.column_names)

    # the test labels of GLUE and SuperGLUE are hidden: their validation split is the test split
    return {"train": standard(splits["train"]), "test": standard(splits[task.validation_split])}, task.label_names


def _from_files(config: TaskConfig, files: dict[str, str]):
    from datasets import load_dataset

    kinds = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
    loaded = {}
    for split, file in files.items():
        kind = kinds.get(Path(file).suffix.lower())
        if kind is None:
            raise ConfigError(f"task.files.{split}: {file} is not .csv, .json, .jsonl or .parquet")
        try:
            loaded[split] = load_dataset(kind, data_files=str(file), split="train")
        except Exception as error:
            raise ConfigError(f"task.files.{split}: cannot read {file} ({type(error).__name__})") from None
    return _with_columns(config, loaded, source=files)


def _from_hub(config: TaskConfig):
    from datasets import load_dataset

    require_hub_asset(config.hub, repo_type="dataset", alternatives=DATA_ALTERNATIVES, config=config.hub_config)
    splits = load_dataset(config.hub, config.hub_config)
    loaded = {"train": splits["train"]}
    if "validation" in splits:  # hub test splits often hide their labels: validation is the test split
        loaded["test"] = splits["validation"]
    return _with_columns(config, loaded, source={split: config.hub for split in loaded})


def _with_columns(config: TaskConfig, loaded: dict, source: dict):
    """Rename the user's columns to text / text_pair / label and map label values to indices."""
    columns = config.columns
    wanted = [c for c in (columns.text, columns.text_pair, columns.label) if c]
    for split, dataset in loaded.items():
        missing = [c for c in wanted if c not in dataset.column_names]
        if missing:
            raise ConfigError(f"task.columns: {source[split]} has no column {missing[0]!r} "
                              f"(its columns: {', '.join(dataset.column_names)})")
        for column in wanted:
            _check_values(dataset[column], column, source[split])
    values = [v for dataset in loaded.values() for v in dataset.to_dict()[columns.label]]
    label_names, index = _label_index(config.labels, values, source["train"])

    def standard(dataset):
        return dataset.map(lambda row: {"text": str(row[columns.text]),
                                        "text_pair": str(row[columns.text_pair]) if columns.text_pair else "",
                                        "label": index(row[columns.label])},
                           remove_columns=dataset.column_names)

    return {name: standard(dataset) for name, dataset in loaded.items()}, label_names


def _check_values(values: list, column: str, source: str) -> None:
    """Every row has a value in ``column``, and a scalar one: a missing or empty value would otherwise train as the
    text "None" or "nan", or as a label of its own. Rows are counted from 1, a header not counted."""
    for row, value in enumerate(values, 1):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            problem = "no value"
        elif isinstance(value, str) and not value.strip():
            problem = "an empty value"
        elif isinstance(value, (list, dict)):
            problem = f"a {type(value).__name__}, where text or a label belongs"
        else:
            continue
        raise ConfigError(f"task data: {source} row {row}, column {column!r}: {problem}; fill it in or drop the row")


def _label_index(declared: list[str] | None, values: list, source: str):
    """(label names, value → index); raises ConfigError for values that fit no label."""
    if declared is None:
        distinct = sorted(set(values), key=str)
        if all(isinstance(v, int) and not isinstance(v, bool) for v in distinct):
            if distinct[0] < 0:
                raise ConfigError(f"task labels: {source} has the negative label {distinct[0]} (unlabelled rows?)")
            declared = [str(i) for i in range(distinct[-1] + 1)]
        else:
            declared = [str(v) for v in distinct]
    names = [str(n) for n in declared]
    if len(names) < 2:
        raise ConfigError(f"task labels: {source} has a single label value {names[0]!r}; classification needs two")

    def index(value) -> int:
        if isinstance(value, bool):
            value = str(value).lower() if str(value).lower() in names else int(value)
        if isinstance(value, int) and 0 <= value < len(names):
            return value
        if str(value) in names:
            return names.index(str(value))
        raise ConfigError(f"task labels: value {value!r} in {source} is not one of the labels {names}")

    for value in {repr(v): v for v in values}.values():  # every distinct value, checked before any work
        index(value)
    return tuple(names), index


def _save(folder: Path, config: TaskConfig, given: dict, label_names: tuple[str, ...]) -> None:
    from datasets import ClassLabel

    given = {name: split.cast_column("label", ClassLabel(names=list(label_names))) for name, split in given.items()}
    splits, made = carve_splits(config, given, stratify="label")
    columns = {name: split.to_dict() for name, split in splits.items()}
    digest = {name: content_hash(part["text"], part["text_pair"], part["label"]) for name, part in columns.items()}
    record = {
        "task": config.name,
        "label_names": list(label_names),
        "split": {"seed": config.split_seed, "validation_fraction": config.validation_fraction,
                  "test_fraction": config.test_fraction, "made": made},
        "sizes": {name: len(split) for name, split in splits.items()},
        "label_counts": {name: [part["label"].count(c) for c in range(len(label_names))]
                         for name, part in columns.items()},
        "content_hash": digest,
        "fingerprint": content_hash(digest),
    }
    for name, split in splits.items():
        split.save_to_disk(str(folder / name))
    (folder / "split.json").write_text(json.dumps(record, indent=2))


def tokenized_task(task: TaskData, tokenizer, tokenizer_id: str, max_length: int):
    """(train, validation, test) token ids for this tokenizer and length, tokenized once and cached on disk."""
    from datasets import load_from_disk

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # the tokenizer's definition, less the truncation state that calls change
        definition = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
        vocabulary = content_hash(definition)
    else:
        vocabulary = len(tokenizer)
    key = content_hash(task.fingerprint, tokenizer_id, type(tokenizer).__name__, vocabulary, max_length)

    def tokenize(folder: Path) -> None:
        for name, split in zip(SPLITS, (task.train, task.validation, task.test)):
            rows = split.to_dict()
            pair = rows["text_pair"] if any(rows["text_pair"]) else None
            encoded = tokenizer(rows["text"], pair, truncation=True, max_length=max_length)
            columns = {k: v for k, v in encoded.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
            type(split).from_dict({**columns, "labels": rows["label"]}).save_to_disk(str(folder / name))

    folder = cached_entry(f"tokenized/{task.name}-{key}", tokenize)
    return tuple(load_from_disk(str(folder / name)) for name in SPLITS)
