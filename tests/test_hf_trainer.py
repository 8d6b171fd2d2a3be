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


def trainer_for(config, tmp_path, trainer_class=None, model_init=None, **arguments) -> SelfDistillationTrainer:
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
    args = SelfDistillationArguments(**{
        "output_dir": str(tmp_path / "trainer"), "per_device_train_batch_size": training.batch_size,
        "num_train_epochs": training.epochs, "learning_rate": training.learning_rate,
        "weight_decay": training.weight_decay, "warmup_steps": round(training.warmup_ratio * total_steps),
        "max_grad_norm": training.max_grad_norm, "optim": "adamw_torch_fused", "logging_steps": 1,
        "save_strategy": "no", "report_to": [], "use_cpu": True, "seed": training.seed,
        "dataloader_pin_memory": False, "disable_tqdm": True,
        "selfd_method": str(config.method), "selfd_alpha": distill.alpha, "selfd_tau": distill.tau,
        "selfd_reuse": distill.reuse, "selfd_teacher_storage": distill.teacher_storage, "selfd_topk": distill.topk,
        **arguments})
    torch.set_num_threads(TEST_CPUS)
    return (trainer_class or SelfDistillationTrainer)(model_init=model_init or objective.load_model, args=args,
                                                      train_dataset=features, data_collator=collator)


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


def without_dropout(load_model):
    def load():
        model = load_model()
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        return model
    return load


def test_gradient_accumulation_trains_and_logs_the_same_steps(tmp_path):
    """B = 8 as one batch or as 2 micro-batches of 4: the same optimizer steps, losses and α/τ statistics (dropout
    off, which draws its masks per forward pass)."""
    config = run_config("classifier-static", epochs=1)
    runs = []
    for micro, accumulation in ((8, 1), (4, 2)):
        trainer = trainer_for(config, tmp_path / str(micro), model_init=without_dropout(load_data(config).load_model),
                              per_device_train_batch_size=micro, gradient_accumulation_steps=accumulation)
        trainer.train()
        runs.append(logged_steps(trainer))
    whole, accumulated = runs
    assert sorted(whole) == sorted(accumulated) == list(range(1, 9))  # 32 samples, 4 fresh a step
    for step in whole:
        for key in LOGGED:
            if key in whole[step]:
                assert math.isclose(whole[step][key], accumulated[step][key], rel_tol=1e-4, abs_tol=1e-6), (step, key)


class VisitRecorder(SelfDistillationTrainer):
    """Records each training micro-batch's visits and whether it distilled (its logged kd)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.visits = getattr(self, "visits", [])
            self.visits.append((self.state.global_step + 1, [tuple(v) for v in inputs["selfd_visits"].tolist()]))
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def test_resume_continues_the_batches_and_starts_without_teachers(tmp_path):
    config = run_config("classifier-dynamic")
    whole = trainer_for(config, tmp_path, VisitRecorder, save_strategy="steps", save_steps=5)
    whole.train()
    resumed = trainer_for(config, tmp_path, VisitRecorder)
    resumed.train(resume_from_checkpoint=str(tmp_path / "trainer" / "checkpoint-5"))
    assert resumed.visits == [(step, visits) for step, visits in whole.visits if step > 5]
    logs = logged_steps(resumed)
    assert "kd" not in logs[6] and "ce" in logs[6] and all("kd" in logs[step] for step in logs if step > 6)


def test_group_by_length_gives_the_recipes_length_grouped_fresh_batches():
    from trainables.batching import fresh_batches

    lengths = torch.randint(5, 60, (40,), generator=torch.Generator().manual_seed(0))
    sampler = DLBBatchSampler(40, 8, "previous", seed=2, lengths=lengths)
    fresh = [[v.index for v in batch if v.teacher < 0] for batch in sampler]
    assert fresh == [b.tolist() for b in fresh_batches(40, 4, torch.Generator().manual_seed(2), lengths)]


def test_evaluation_has_no_distillation_term(tmp_path):
    import torch.nn.functional as F

    config = run_config("classifier-static", epochs=1)
    trainer = trainer_for(config, tmp_path)
    trainer.train()  # teachers are held when it ends
    features = trainer.train_dataset[:16]
    evaluated = trainer.evaluate(eval_dataset=features)["eval_loss"]
    batch = trainer.data_collator(features)
    trainer.model.eval()
    with torch.no_grad():
        logits = trainer.model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    assert math.isclose(evaluated, F.cross_entropy(logits, batch["labels"]).item(), rel_tol=1e-5)


def test_ddp_on_two_processes_each_revisits_its_own_previous_step(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from conftest import free_port

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), str(Path(__file__).parent / "ddp_trainer.py"), str(tmp_path)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(rank["world_size"] == 2 for rank in ranks)
    for rank in ranks:
        steps = rank["visits"]
        assert [step for step, _ in steps] == list(range(1, len(steps) + 1)) == rank["steps"]
        for (_, before), (_, after) in zip(steps, steps[1:]):
            kept = {keep: index for index, _, keep in before if keep >= 0}
            assert {teacher: index for index, teacher, _ in after if teacher >= 0} == kept
    fresh = [{index for _, visits in rank["visits"] for index, teacher, _ in visits if teacher < 0} for rank in ranks]
    assert not fresh[0] & fresh[1] and len(fresh[0] | fresh[1]) == 32  # the ranks share the epoch, no sample
    assert ranks[0]["weights"] == ranks[1]["weights"]  # DDP kept the two copies of the model in step


def test_the_method_settings_are_read_from_the_args_at_every_step(tmp_path):
    """A search sets α and τ on ``trainer.args`` after the trainer is built: the steps distil with those."""
    config = run_config("classifier-static", epochs=1)
    trainer = trainer_for(config, tmp_path)
    trainer.args.selfd_alpha, trainer.args.selfd_tau = 0.25, 4.0
    trainer.train()
    distilled = [entry for entry in logged_steps(trainer).values() if "kd" in entry]
    assert distilled and all(e["alpha_mean"] == 0.25 and e["tau_mean"] == 4.0 for e in distilled)


def test_the_example_searches_alpha_tau_and_learning_rate_with_ray_tune_and_asha(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "trainer_hp_search.py"
    command = [sys.executable, str(example), "--trials", "2", "--train", "32", "--layers", "1", "--epochs", "2",
               "--output-dir", str(tmp_path / "search"), "--json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    best = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("{")))
    assert 0.0 <= best["objective"] <= 1.0
    assert best["hyperparameters"]["selfd_alpha"] in (0.5, 1.0, 2.0)
    assert best["hyperparameters"]["selfd_tau"] in (1.0, 2.0, 4.0)
    assert 3e-5 <= best["hyperparameters"]["learning_rate"] <= 3e-4
