"""selfd's methods in a transformers Trainer (trainables/hf): the same per-step losses and α/τ statistics as the
recipe on the same seeded runs (tests/recipe_runs.py, float32), the batches under gradient accumulation and DDP,
resume, evaluation, and the arguments' checks."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import TEST_CPUS
from recipe_runs import RUNS
from trainables.config import parse_config
from trainables.hf import SelfDistillationArguments, SelfDistillationTrainer
from trainables.hf.batches import DLBBatchSampler
from trainables.recipe import FineTuneRecipe, load_data

LOGGED = ("ce", "kd", "loss", "alpha_mean", "alpha_min", "alpha_max", "tau_mean", "tau_min", "tau_max",
          "wrong_teachers")


class Steps:
    def __init__(self) -> None:
        self.steps: dict[int, dict] = {}

    def log_step(self, step, metrics):
        if "loss" in metrics:
            self.steps[step] = metrics

    def log_evaluation(self, *args):
        pass


def run_config(name: str, **training):
    data = {**RUNS[name], "training": {**RUNS[name]["training"], "cpus": TEST_CPUS, **training}}
    return parse_config(data)


def recipe_steps(config) -> dict[int, dict]:
    recipe, steps = FineTuneRecipe(config), Steps()
    recipe.setup()
    recipe.train(steps)
    return steps.steps


def trainer_for(config, tmp_path, **arguments) -> SelfDistillationTrainer:
    """A Trainer on the recipe's own tokenized training split and model, with the recipe's optimizer settings."""
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding

    objective = load_data(config)
    training, distill = config.training, config.distill
    if isinstance(objective.train_rows, dict):  # a classifier's token columns
        rows = objective.train_rows
        features = [{name: (rows[name][i].item() if name == "labels" else rows[name][i].tolist()) for name in rows}
                    for i in range(objective.train_size)]
        collator = DataCollatorWithPadding(objective.tokenizer)
    else:  # a causal LM's (input ids, labels)
        features = [{"input_ids": ids.tolist(), "attention_mask": [1] * len(ids), "labels": labels.tolist()}
                    for ids, labels in zip(*objective.train_rows)]
        objective.tokenizer.padding_side = "right"  # as the recipe pads
        collator = DataCollatorForSeq2Seq(objective.tokenizer, label_pad_token_id=-100)
    total_steps = config.steps_per_epoch(objective.train_size) * training.epochs
    args = SelfDistillationArguments(
        str(tmp_path / "trainer"), per_device_train_batch_size=training.batch_size, num_train_epochs=training.epochs,
        learning_rate=training.learning_rate, weight_decay=training.weight_decay,
        warmup_steps=round(training.warmup_ratio * total_steps), max_grad_norm=training.max_grad_norm,
        optim="adamw_torch_fused", logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
        seed=training.seed, dataloader_pin_memory=False, disable_tqdm=True,
        selfd_method=str(config.method), selfd_alpha=distill.alpha, selfd_tau=distill.tau,
        selfd_reuse=distill.reuse, selfd_teacher_storage=distill.teacher_storage, selfd_topk=distill.topk,
        **arguments)
    torch.set_num_threads(TEST_CPUS)
    return SelfDistillationTrainer(model_init=objective.load_model, args=args, train_dataset=features,
                                   data_collator=collator)


def logged_steps(trainer) -> dict[int, dict]:
    return {entry["step"]: entry for entry in trainer.state.log_history if "loss" in entry}


@pytest.mark.parametrize("name", ["classifier-static", "classifier-dynamic", "causal-lm-dynamic-topk"])
def test_trainer_gives_the_recipes_losses_and_alpha_tau_step_by_step(name, tmp_path):
    config = run_config(name)
    want = recipe_steps(config)
    trainer = trainer_for(config, tmp_path)
    trainer.train()
    got = logged_steps(trainer)
    assert sorted(got) == sorted(want)
    largest = 0.0
    for step, theirs in want.items():
        assert {k for k in LOGGED if k in got[step]} == {k for k in LOGGED if k in theirs}, step
        for key in LOGGED:
            if key in theirs:
                largest = max(largest, abs(got[step][key] - theirs[key]))
                assert math.isclose(got[step][key], theirs[key], rel_tol=1e-4, abs_tol=1e-5), (step, key)
    assert "kd" not in got[1] and all("kd" in got[step] for step in got if step > 1)
    print(f"{name}: largest per-step difference {largest:.2e} over {len(want)} steps")


def test_gradient_accumulation_splits_each_step_and_revisits_across_steps():
    sampler = DLBBatchSampler(12, 8, "previous", seed=0, micro_batches=2)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 6  # 3 optimizer steps of 2 micro-batches
    steps = [batches[i] + batches[i + 1] for i in range(0, 6, 2)]
    assert [len(step) for step in steps] == [4, 8, 8]  # step 1: B/2 fresh only
    for before, after in zip(steps, steps[1:]):
        kept = {visit.keep: visit.index for visit in before if visit.keep >= 0}
        taught = {visit.teacher: visit.index for visit in after if visit.teacher >= 0}
        assert taught == kept and len(taught) == 4  # the revisit is the previous optimizer step's fresh half
    for micro in batches[2:]:  # each micro-batch holds its share of both halves
        assert sum(v.teacher >= 0 for v in micro) == 2 and sum(v.teacher < 0 for v in micro) == 2


def test_under_ddp_each_process_revisits_its_own_previous_step():
    from accelerate.data_loader import BatchSamplerShard

    sampler = DLBBatchSampler(20, 4, "random", seed=1, world_size=2)
    shards = [list(BatchSamplerShard(sampler, num_processes=2, process_index=rank)) for rank in range(2)]
    for batches in shards:  # what accelerate hands each process
        for before, after in zip(batches, batches[1:]):
            kept = {visit.keep: visit.index for visit in before if visit.keep >= 0}
            assert {visit.teacher: visit.index for visit in after if visit.teacher >= 0} == kept
    fresh = [{v.index for batch in batches for v in batch if v.teacher < 0} for batches in shards]
    assert not fresh[0] & fresh[1] and fresh[0] | fresh[1] == set(range(20))


def test_arguments_refuse_what_the_methods_cannot_do(tmp_path):
    with pytest.raises(ValueError, match="per_device_train_batch_size must be even"):
        SelfDistillationArguments(str(tmp_path), per_device_train_batch_size=3, selfd_method="static")
    with pytest.raises(ValueError, match="selfd_tau"):
        SelfDistillationArguments(str(tmp_path), selfd_tau=0.0)
    with pytest.raises(ValueError, match="selfd_method 'dlb'"):
        SelfDistillationArguments(str(tmp_path), selfd_method="dlb")
    with pytest.raises(ValueError, match="train_sampling_strategy 'sequential'"):
        SelfDistillationArguments(str(tmp_path), train_sampling_strategy="sequential")
    SelfDistillationArguments(str(tmp_path), per_device_train_batch_size=3, selfd_method="vanilla")
