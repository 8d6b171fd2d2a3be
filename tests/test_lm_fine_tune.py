"""SmolLM2-135M (its first 2 blocks, short sequences) on strategyqa_gen: a real few-step fine-tune with
DynSDPB whose training loss falls and whose evaluation generates and scores (a 2-trial decoder study through Ray
Tune and MLflow is in test_study.py)."""

from __future__ import annotations

import statistics

import pytest

from conftest import TEST_CPUS, RecordingReporter
from trainables.config import parse_config
from trainables.recipe import fine_tune


@pytest.mark.parametrize("storage", ["topk", "full"])
def test_dynamic_token_level_fine_tune_learns_and_generates(storage):
    config = parse_config({
        "method": "dynamic", "model": {"name": "smollm2-135m", "num_layers": 2},
        "task": {"name": "strategyqa_gen", "max_length": 64, "max_target_length": 12, "train_subset": 16,
                 "validation_subset": 4},
        "training": {"epochs": 3, "batch_size": 4, "learning_rate": 3e-4, "log_every": 1, "grad_norm_every": 4,
                     "cpus": TEST_CPUS},
        "distill": {"teacher_storage": storage, "topk": 32}})
    reporter = RecordingReporter()
    summary = fine_tune(config, reporter)
    losses = [m["loss"] for _, m in reporter.steps if "loss" in m]
    assert len(losses) == 24  # 16 sequences, 2 fresh per step, 3 epochs
    assert statistics.mean(losses[-4:]) < 0.8 * statistics.mean(losses[:4]), losses
    distilled = [m for _, m in reporter.steps if "kd" in m]
    assert len(distilled) == 23 and all(0 <= m["alpha_min"] <= m["alpha_max"] <= 1.0 for m in distilled)
    assert all(1.0 <= m["tau_min"] <= m["tau_max"] <= 2.0 for m in distilled)  # DynSDPB: τ_t ∈ [1, τ]
    assert any(name.startswith("grad_norm/") for _, m in reporter.steps for name in m)
    for _, epoch in reporter.epochs:
        assert 0.0 <= epoch["val_accuracy"] <= 1.0 and 0.0 <= epoch["val_rougeL"] <= 1.0 and epoch["val_loss"] > 0
    assert summary["task"] == "strategyqa_gen" and summary["steps"] == 24 and "best_val_accuracy" in summary


def test_lora_trains_only_the_adapters():
    from trainables.models import load_causal_lm, resolve_model

    lora = {"r": 4, "alpha": 8}
    config = parse_config({
        "method": "static", "model": {"name": "smollm2-135m", "num_layers": 2, "lora": lora},
        "task": {"name": "strategyqa_gen", "max_length": 64, "max_target_length": 12, "train_subset": 16,
                 "validation_subset": 2},
        "training": {"epochs": 3, "batch_size": 4, "learning_rate": 3e-3, "log_every": 1, "grad_norm_every": 0,
                     "cpus": TEST_CPUS}})
    model = load_causal_lm(resolve_model("smollm2-135m"), 2, lora=config.model.lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0 < trainable < 0.01 * sum(p.numel() for p in model.parameters())
    reporter = RecordingReporter()
    fine_tune(config, reporter)
    losses = [m["loss"] for _, m in reporter.steps if "loss" in m]
    assert statistics.mean(losses[-4:]) < 0.8 * statistics.mean(losses[:4]), losses
