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
from trainables.hf.from_recipe import trainer_like_recipe
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


def trainer_for(config, tmp_path, trainer_class=SelfDistillationTrainer, model_init=None, **arguments):
    torch.set_num_threads(TEST_CPUS)
    return trainer_like_recipe(config, str(tmp_path / "trainer"), trainer_class, model_init,
                               **{"logging_steps": 1, "use_cpu": True, **arguments})


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


def test_a_head_the_methods_are_not_written_for_is_refused_before_training(tmp_path):
    from transformers import AutoModelForTokenClassification

    config = run_config("classifier-static")
    path = load_data(config).model_path
    trainer = trainer_for(config, tmp_path, model_init=lambda: AutoModelForTokenClassification.from_pretrained(
        path, num_labels=2, num_hidden_layers=1))
    with pytest.raises(ValueError, match="BertForTokenClassification is neither: use selfd_method vanilla"):
        trainer.train()


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


def test_the_mixin_composes_with_trls_sft_trainer(tmp_path):
    """DynSDPB at the token level inside TRL's SFTTrainer (its own dataset preparation and collator: prompt tokens
    carry no label), SmolLM2's first 2 blocks."""
    from dataclasses import dataclass

    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from trainables.hf import SelfDistillationMixin
    from trainables.models import load_causal_lm, load_tokenizer, resolve_model

    @dataclass
    class SelfDistillationSFTConfig(SelfDistillationArguments, SFTConfig):
        pass

    class SelfDistillationSFTTrainer(SelfDistillationMixin, SFTTrainer):
        pass

    path = resolve_model("smollm2-135m")
    rows = [{"prompt": f"Is {i} an even number? Answer:", "completion": " yes" if i % 2 == 0 else " no"}
            for i in range(16)]
    args = SelfDistillationSFTConfig(
        str(tmp_path), selfd_method="dynamic", selfd_alpha=1.0, selfd_tau=2.0, selfd_teacher_storage="int8",
        per_device_train_batch_size=4, num_train_epochs=2, learning_rate=3e-4, logging_steps=1, report_to=[],
        use_cpu=True, save_strategy="no", max_length=32, disable_tqdm=True)
    torch.set_num_threads(TEST_CPUS)
    trainer = SelfDistillationSFTTrainer(model=load_causal_lm(path, 2), args=args, train_dataset=Dataset.from_list(rows),
                                         processing_class=load_tokenizer(path))
    trainer.train()
    steps = logged_steps(trainer)
    assert sorted(steps) == list(range(1, 17))  # 16 sequences, 2 fresh a step, 2 epochs
    assert "kd" not in steps[1] and all("kd" in steps[s] for s in range(2, 17))
    assert all(0 <= steps[s]["alpha_min"] <= steps[s]["alpha_max"] <= 1 <= steps[s]["tau_min"] <= steps[s]["tau_max"]
               <= 2 for s in range(2, 17))
    assert sum(steps[s]["loss"] for s in range(13, 17)) < 0.5 * sum(steps[s]["loss"] for s in range(1, 5))
