"""Tasks from the bigbench sdist, local files with a column mapping, the split record, the token cache, and
hub requests that cannot be served offline."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import RecordingReporter, fast_config
from trainables.cache import cache_root
from trainables.config import TaskConfig
from trainables.errors import AssetError, ConfigError
from trainables.recipe import fine_tune
from trainables.models import load_tokenizer, resolve_model
from trainables.tasks import load_task, tokenized_task


def split_record(task_name):
    records = [json.loads(p.read_text()) for p in (cache_root() / "tasks").glob(f"{task_name}-*/split.json")]
    return records


def test_strategyqa_is_boolq_like_with_stratified_recorded_train_validation_test_splits():
    task = load_task(TaskConfig(name="strategyqa"))
    assert task.label_names == ("no", "yes")
    rows = task.train.to_dict()
    assert not any(p.startswith(("Yes.", "No.")) for p in rows["text_pair"])  # the answer word is not in the passage
    assert all(q.endswith("?") or len(q) > 10 for q in rows["text"][:50])
    train_yes = sum(rows["label"]) / len(rows["label"])
    validation_yes = sum(task.validation["label"]) / len(task.validation)
    test_yes = sum(task.test["label"]) / len(task.test)
    assert abs(train_yes - validation_yes) < 0.01 and abs(train_yes - test_yes) < 0.01  # stratified
    assert len(task.train) + len(task.validation) + len(task.test) == 2290 and len(task.test) == 458
    record = next(r for r in split_record("strategyqa") if r["split"].get("seed") == 0 and "made" in r["split"])
    assert record["sizes"] == {"train": len(task.train), "validation": len(task.validation), "test": len(task.test)}
    assert record["split"] == {"seed": 0, "validation_fraction": 0.2, "test_fraction": 0.2, "made": {
        "train": "the source's own split", "test": "carved from train: 0.2 of it, seed 0",
        "validation": "carved from train: 0.2 of it, seed 0"}}
    assert set(record["content_hash"]) == set(record["label_counts"]) == {"train", "validation", "test"}
    assert load_task(TaskConfig(name="strategyqa")).fingerprint == task.fingerprint  # every trial: same split
    other = load_task(TaskConfig(name="strategyqa", split_seed=1))
    assert other.fingerprint != task.fingerprint


def test_epistemic_reasoning_and_multiemo_are_rte_and_sst2_like():
    rte = load_task(TaskConfig(name="epistemic_reasoning"))
    assert rte.label_names == ("entailment", "non-entailment")
    first = rte.train[0]
    assert first["text"] and first["text_pair"] and "Hypothesis" not in first["text"]
    sst = load_task(TaskConfig(name="multiemo"))
    assert sst.label_names == ("negative", "positive")
    assert len(sst.train) + len(sst.validation) + len(sst.test) == 5398
    assert not any(sst.train.to_dict()["text_pair"])


def test_fever_is_a_closed_book_boolq_like_task_of_claims():
    task = load_task(TaskConfig(name="fever"))
    assert task.label_names == ("false", "true")
    assert len(task.train) + len(task.validation) + len(task.test) == 6612
    rows = task.train.to_dict()
    assert not any(rows["text_pair"])  # no passage: the claim alone
    assert not any("claim was made" in t or "Q:" in t for t in rows["text"])  # the template is stripped
    assert 0.45 < sum(rows["label"]) / len(rows["label"]) < 0.55


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_local_files_with_a_column_mapping(tmp_path, nli_jsonl, suffix):
    from datasets import Dataset

    path = nli_jsonl
    if suffix != ".jsonl":
        path = tmp_path / f"nli{suffix}"
        rows = Dataset.from_json(str(nli_jsonl))
        rows.to_csv(str(path), index=False) if suffix == ".csv" else rows.to_parquet(str(path))
    config = TaskConfig(name="my_nli", files=str(path), labels=["no", "yes"],
                        columns={"text": "premise", "text_pair": "claim", "label": "verdict"})
    task = load_task(config)
    assert task.label_names == ("no", "yes")
    assert (len(task.train), len(task.validation), len(task.test)) == (24, 8, 8)
    for row in [*task.train, *task.validation, *task.test]:
        assert row["label"] == int("blue" in row["text"]) and row["text_pair"] == "The sky is blue."


def test_a_run_on_local_files(nli_jsonl):
    task = {"name": "my_nli", "files": str(nli_jsonl), "train_subset": None, "validation_subset": None,
            "columns": {"text": "premise", "text_pair": "claim", "label": "verdict"}}
    summary = fine_tune(fast_config("static", task=task), RecordingReporter())
    assert summary["train_size"] == 24 and summary["steps"] == 6  # 4 fresh samples a step


def test_tokenization_happens_once_per_model_task_and_length(monkeypatch, tmp_path):
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    task = load_task(TaskConfig(name="epistemic_reasoning", train_subset=24, validation_subset=8))
    tokenizer = load_tokenizer(resolve_model("minilm-l6"))
    monkeypatch.setenv("SELFD_CACHE", str(tmp_path))  # an empty token cache
    calls = []
    original = PreTrainedTokenizerBase.__call__
    monkeypatch.setattr(PreTrainedTokenizerBase, "__call__", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    train, *_ = tokenized_task(task, tokenizer, "minilm-l6", 40)
    first = len(calls)
    again, *_ = tokenized_task(task, tokenizer, "minilm-l6", 40)
    assert len(calls) == first  # second call reads the cache
    assert again["input_ids"] == train["input_ids"] and max(map(len, train["input_ids"])) <= 40
    tokenized_task(task, tokenizer, "minilm-l6", 32)
    assert len(calls) > first  # another max_length is another entry


def run_offline(code: str):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    return result, time.perf_counter() - started


def test_offline_hub_requests_fail_at_once_naming_the_asset_and_alternatives():
    code = ("from trainables.tasks import load_task; from trainables.config import TaskConfig\n"
            "try:\n    load_task(TaskConfig(name='boolq'))\nexcept Exception as e:\n    print(type(e).__name__, e)")
    result, seconds = run_offline(code)
    assert result.stdout.startswith("AssetError hub dataset 'aps/super_glue'"), result.stdout + result.stderr
    assert "strategyqa" in result.stdout and "task.files" in result.stdout and seconds < 30
    code = ("from trainables.models import resolve_model\n"
            "try:\n    resolve_model('microsoft/deberta-v3-large')\nexcept Exception as e:\n    print(type(e).__name__, e)")
    result, _ = run_offline(code)
    assert result.stdout.startswith("AssetError hub model 'microsoft/deberta-v3-large'"), result.stdout + result.stderr
    assert "minilm-l6" in result.stdout and "local model folder" in result.stdout


def test_unknown_names_and_missing_folders():
    with pytest.raises(ConfigError, match="unknown task 'boolqq'"):
        load_task(TaskConfig(name="boolqq"))
    with pytest.raises(AssetError, match="does not exist"):
        resolve_model("./no/such/folder")


def test_the_majority_class_score_for_each_study_metric():
    """Accuracy and macro-F1 of always answering the most frequent validation label (what a failed run scores);
    no score for a metric that is neither."""
    from trainables.metrics import Metric
    from trainables.tasks import TaskData

    validation = {"label": [0, 0, 0, 1]}
    data = TaskData("t", ("a", "b"), None, validation, None, "", Path("."))
    assert data.majority_score(Metric.VAL_ACCURACY) == 0.75
    assert data.majority_score(Metric.VAL_MACRO_F1) == pytest.approx((6 / 7 + 0) / 2)  # F1 0.857 and 0
    assert data.majority_score(Metric.VAL_LOSS) is None
