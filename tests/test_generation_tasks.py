"""Generation tasks: packaged BIG-bench data as (prompt, target) pairs, seeded splits, prompt-masked tokens with
the SmolLM2 tokenizer, and scores of generated text."""

from __future__ import annotations

import pytest

from trainables.config import TaskConfig
from trainables.errors import ConfigError
from trainables.generation_tasks import load_generation_task, score_generations, tokenized_generation_task
from trainables.models import load_tokenizer, resolve_model


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(resolve_model("smollm2-135m"))


def test_strategyqa_gen_pairs_and_seeded_validation_and_test_splits():
    data = load_generation_task(TaskConfig(name="strategyqa_gen"))
    assert len(data.train) + len(data.validation) + len(data.test) == 2290
    assert len(data.validation) == len(data.test) == 458
    assert all(t.startswith(("Yes. ", "No. ")) for t in data.train["target"][:50])
    assert data.train[0]["source"].endswith("?")
    again = load_generation_task(TaskConfig(name="strategyqa_gen"))
    assert again.fingerprint == data.fingerprint and again.validation["source"] == data.validation["source"]
    other = load_generation_task(TaskConfig(name="strategyqa_gen", split_seed=1))
    assert other.fingerprint != data.fingerprint


def test_prompt_tokens_are_masked_and_targets_end_with_eos(tokenizer):
    data = load_generation_task(TaskConfig(name="strategyqa_gen", train_subset=16, validation_subset=8))
    train, *_ = tokenized_generation_task(data, tokenizer, "smollm2-135m", 96, 48)
    for row, target in zip(train, data.train["target"]):
        prompt = row["prompt_length"]
        assert row["labels"][:prompt] == [-100] * prompt
        assert row["labels"][prompt:] == row["input_ids"][prompt:] and row["input_ids"][-1] == tokenizer.eos_token_id
        assert tokenizer.decode(row["input_ids"][:prompt]).rstrip().endswith("Answer (Yes or No, then why):")
        learnt = tokenizer.decode(row["input_ids"][prompt:-1]).strip()
        assert target.startswith(learnt) and len(row["input_ids"]) <= 96


def test_long_xsum_articles_are_cut_inside_the_template(tokenizer):
    data = load_generation_task(TaskConfig(name="xsum", train_subset=8, validation_subset=4))
    train, validation, test = tokenized_generation_task(data, tokenizer, "smollm2-135m", 128, 32)
    assert len(validation) == len(test) == 4  # test_subset: as validation_subset
    for row in train:
        assert len(row["input_ids"]) <= 128
        prompt = tokenizer.decode(row["input_ids"][:row["prompt_length"]])
        assert "Article: " in prompt and prompt.rstrip().endswith("One-sentence summary:")
    with pytest.raises(ConfigError, match="raise it"):
        tokenized_generation_task(data, tokenizer, "smollm2-135m", 40, 32)


def test_scores_of_generated_text():
    references = ["Yes. Frost is common in December.", "No. Fish cannot fly far."]
    scores = score_generations("strategyqa_gen", ["yes, frost is common in december", "Yes. Fish cannot fly."],
                               references)
    assert scores["val_accuracy"] == 0.5
    assert scores["val_rougeL"] == pytest.approx((1.0 + 2 * 0.75 * 1.0 / 1.75) / 2)  # 3 of 4 words, in order
    assert score_generations("xsum", ["the cat sat"], ["the cat sat"]) == {"val_rougeL": 1.0}


def test_unknown_generation_task():
    with pytest.raises(ConfigError, match="known: strategyqa_gen, xsum"):
        load_generation_task(TaskConfig(name="gsm8k"))
