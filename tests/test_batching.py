"""DLB batching invariants, observed in the real training loop over real epochs.

Spies (not fakes) record what the loop does: which sample ids each step collates, the logits each training
forward pass returns, and the teacher logits handed to the KD term.
"""

import math

import pytest
import torch

from conftest import fast_config
from trainables import classification, losses
from trainables.batching import GROUP_BATCHES, fresh_batches
from trainables.recipe import fine_tune, load_data


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


@pytest.mark.parametrize("reuse, grouped", [("previous", False), ("random", False), ("random", True)])
def test_dlb_batches_and_teachers_over_real_epochs(monkeypatch, reuse, grouped):
    config = fast_config("static", training={"epochs": 2, "group_by_length": grouped}, distill={"reuse": reuse})
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
    if grouped:  # fresh samples come longest first within each group of GROUP_BATCHES batches
        lengths = load_data(config).train_lengths
        for fresh in fresh_by_epoch:
            for start in range(0, n, GROUP_BATCHES * half):
                group = lengths[fresh[start:start + GROUP_BATCHES * half]]
                assert torch.equal(group, group.sort(descending=True).values)
    # the cache crosses the epoch boundary (and evaluation in between leaves it alone)
    assert steps[per_epoch]["kd"] is not None


def test_vanilla_uses_plain_batches_without_teachers(monkeypatch):
    config = fast_config("vanilla")
    steps, summary = run_recorded(monkeypatch, config)
    assert all(step["kd"] is None for step in steps)
    assert len(steps) == math.ceil(summary["train_size"] / config.training.batch_size)
    assert sorted(torch.cat([s["ids"] for s in steps]).tolist()) == list(range(summary["train_size"]))


def test_length_grouped_batches_reorder_within_groups_and_pad_fewer_tokens():
    """On the RTE-like task's real token lengths (max_length 64, as fig3_rte_cpu.yaml): grouping only reorders
    samples within each group of GROUP_BATCHES batches of the epoch's shuffled order, and pads far fewer tokens."""
    config = fast_config("static", model={"num_layers": 1}, task={"max_length": 64, "train_subset": None})
    lengths = load_data(config).train_lengths
    size = 8
    plain = fresh_batches(len(lengths), size, torch.Generator().manual_seed(0))
    grouped = fresh_batches(len(lengths), size, torch.Generator().manual_seed(0), lengths)
    assert len(lengths) > 2 * GROUP_BATCHES * size  # several groups
    for start in range(0, len(plain), GROUP_BATCHES):
        assert sorted(torch.cat(plain[start:start + GROUP_BATCHES]).tolist()) == \
            sorted(torch.cat(grouped[start:start + GROUP_BATCHES]).tolist())
    assert [len(batch) for batch in plain] == [len(batch) for batch in grouped]

    def padded_tokens(batches):
        return sum(len(batch) * int(lengths[batch].max()) for batch in batches)

    assert padded_tokens(grouped) < 0.8 * padded_tokens(plain)
