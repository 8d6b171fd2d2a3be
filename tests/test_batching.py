"""DLB batching invariants, observed in the real training loop over real epochs.

Spies (not fakes) record what the loop does: which sample ids each step collates, the logits each training
forward pass returns, and the teacher logits handed to the KD term.
"""

import math

import pytest
import torch

from conftest import fast_config
from trainables import classification, losses
from trainables.recipe import fine_tune


def run_recorded(monkeypatch, config):
    steps = []  # per training forward: {"ids", "logits", "kd": (student, teacher) or None}
    last_ids = {}

    collate = classification._collate

    def spy_collate(rows, ids, **kwargs):
        last_ids["ids"] = ids.clone()
        return collate(rows, ids, **kwargs)

    load_classifier = classification.load_classifier

    def spy_load_classifier(*args, **kwargs):
        model = load_classifier(*args, **kwargs)

        def record_forward(module, args, output):
            if module.training:
                steps.append({"ids": last_ids["ids"], "logits": output.logits.detach().clone(), "kd": None})

        model.register_forward_hook(record_forward)
        return model

    kd_term = losses.kd_term

    def spy_kd_term(student, teacher, tau, mask=None):
        steps[-1]["kd"] = (student.detach().clone(), teacher)
        return kd_term(student, teacher, tau, mask)

    monkeypatch.setattr(classification, "_collate", spy_collate)
    monkeypatch.setattr(classification, "load_classifier", spy_load_classifier)
    monkeypatch.setattr(losses, "kd_term", spy_kd_term)
    summary = fine_tune(config)
    assert len(steps) == summary["steps"]
    return steps, summary


@pytest.mark.parametrize("reuse", ["previous", "random"])
def test_dlb_batches_and_teachers_over_real_epochs(monkeypatch, reuse):
    config = fast_config("static", training={"epochs": 2}, distill={"reuse": reuse})
    steps, summary = run_recorded(monkeypatch, config)
    n, half = summary["train_size"], config.training.batch_size // 2
    per_epoch = math.ceil(n / half)
    assert len(steps) == 2 * per_epoch

    # step 1 has no teacher: it trains on fresh samples only, with CE alone
    assert steps[0]["kd"] is None and len(steps[0]["ids"]) == half

    fresh_by_epoch = [[], []]
    for t, step in enumerate(steps):
        revisited = 0 if step["kd"] is None else len(step["kd"][1])
        fresh_by_epoch[t // per_epoch] += step["ids"][revisited:].tolist()
        if t == 0:
            continue
        previous = steps[t - 1]
        student, teacher = step["kd"]
        reused_ids = step["ids"][:revisited]
        if reuse == "previous":  # R_t = F_{t-1}
            prev_revisited = 0 if previous["kd"] is None else len(previous["kd"][1])
            assert torch.equal(reused_ids, previous["ids"][prev_revisited:])
        else:  # a random half-batch of step t-1
            assert len(reused_ids) == min(half, len(previous["ids"]))
            assert set(reused_ids.tolist()) <= set(previous["ids"].tolist())
        # the teacher is exactly what step t-1's own forward pass computed for those samples, detached
        rows = [previous["ids"].tolist().index(i) for i in reused_ids.tolist()]
        assert torch.equal(teacher, previous["logits"][rows])
        assert not teacher.requires_grad and teacher.grad_fn is None
        assert torch.equal(student, step["logits"][:revisited])

    # every sample is fresh exactly once an epoch
    for fresh in fresh_by_epoch:
        assert sorted(fresh) == list(range(n))
    # the cache crosses the epoch boundary (and evaluation in between leaves it alone)
    assert steps[per_epoch]["kd"] is not None


def test_vanilla_uses_plain_batches_without_teachers(monkeypatch):
    config = fast_config("vanilla")
    steps, summary = run_recorded(monkeypatch, config)
    assert all(step["kd"] is None for step in steps)
    assert len(steps) == math.ceil(summary["train_size"] / config.training.batch_size)
    assert sorted(torch.cat([s["ids"] for s in steps]).tolist()) == list(range(summary["train_size"]))
