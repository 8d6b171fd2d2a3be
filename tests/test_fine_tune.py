"""Real fine-tunes of MiniLM-L6 on a BIG-bench task, and the loop's reporting, seeding and model support."""

import math
import warnings
from pathlib import Path

import pytest
import torch

from conftest import RecordingReporter, fast_config
from recipe_runs import RUNS
from trainables.config import parse_config
from trainables.devices import has_native_bf16, mixed_precision
from trainables.errors import ConfigError
from trainables.recipe import fine_tune


@pytest.mark.parametrize("method, precision, attention, frozen", [("vanilla", "fp32", None, False),
                                                                  ("dynamic", "auto", "eager", True)])
def test_fine_tune_beats_the_majority_class(method, precision, attention, frozen):
    # The full 6-block MiniLM on fever, the BoolQ-like task of fig3_boolq_cpu.yaml: its claims are short, so one
    # epoch of 960 examples is quick and learns (2 blocks, or epistemic_reasoning at this size, stay at the
    # majority class). float32 with transformers' attention and every weight trained, and the CPU Figure 3 specs'
    # settings (eager attention, token embeddings frozen, bf16 autocast where the CPU has native bf16: emulated,
    # this run would take many minutes).
    config = fast_config(method, model={"num_layers": None, "attn_implementation": attention,
                                        "freeze_embeddings": frozen},
                         task={"name": "fever", "max_length": 64, "train_subset": 960, "validation_subset": 400},
                         training={"epochs": 1, "batch_size": 16, "learning_rate": 1e-4, "log_every": 25,
                                   "grad_norm_every": 0, "precision": precision})
    summary = fine_tune(config)
    assert summary["best_val_accuracy"] > summary["majority_accuracy"] + 0.05, summary


def test_auto_precision_takes_bf16_only_where_the_cpu_has_it_and_forced_emulation_warns():
    cpu = torch.device("cpu")
    native = has_native_bf16(cpu)
    for precision, bf16 in (("auto", native), ("fp32", False)):
        with mixed_precision(precision, cpu)():
            assert ((torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16) == bf16, precision
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with mixed_precision("bf16", cpu)():
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    assert [str(w.message).startswith("training.precision is bf16 but") for w in caught] == ([] if native else [True])


def test_attention_kernels_agree_and_cpu_bf16_stays_close():
    import torch

    from trainables.config import TaskConfig
    from trainables.models import load_classifier, load_tokenizer, resolve_model
    from trainables.tasks import load_task

    path = resolve_model("minilm-l6")
    tokenizer = load_tokenizer(path)
    rows = load_task(TaskConfig(name="epistemic_reasoning")).validation[:8]
    batch = tokenizer(rows["text"], rows["text_pair"], padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()  # padded rows are part of the check
    logits = {}
    for attention in ("sdpa", "eager"):
        torch.manual_seed(0)  # the same fresh head
        model = load_classifier(path, ("a", "b"), tokenizer.pad_token_id, 2, attention).eval()
        assert model.config._attn_implementation == attention
        with torch.inference_mode():
            logits[attention] = model(**batch).logits
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits[f"{attention}_bf16"] = model(**batch).logits.float()
    assert torch.allclose(logits["sdpa"], logits["eager"], atol=1e-5)
    for attention in ("sdpa", "eager"):
        error = (logits[f"{attention}_bf16"] - logits[attention]).abs().max().item()
        assert 0 < error < 0.05, (attention, error)  # autocast was on, and bf16 keeps ~3 significant digits


def test_reporter_gets_loss_parts_alpha_tau_grad_norms_and_epochs():
    reporter = RecordingReporter()
    summary = fine_tune(fast_config("dynamic", training={"epochs": 2, "log_every": 2, "grad_norm_every": 3}), reporter)
    logged = dict(reporter.steps)
    loss_steps = [s for s, m in reporter.steps if "loss" in m]
    assert loss_steps == [s for s in range(1, summary["steps"] + 1) if s % 2 == 0 or s == summary["steps"]]
    later = logged[4]
    for key in ("ce", "kd", "loss", "alpha_mean", "alpha_min", "alpha_max", "tau_mean", "tau_min", "tau_max",
                "wrong_teachers", "lr", "epoch"):
        assert math.isfinite(later[key]), key
    assert later["alpha_min"] <= later["alpha_mean"] <= later["alpha_max"] <= 1.0
    assert 1.0 <= later["tau_min"] <= later["tau_mean"] <= later["tau_max"] <= 2.0
    norms = {s: {k: v for k, v in m.items() if k.startswith("grad_norm/")} for s, m in reporter.steps}
    norm_steps = [s for s, n in norms.items() if n]
    assert norm_steps == list(range(3, summary["steps"] + 1, 3))
    assert set(norms[3]) == {"grad_norm/embeddings", "grad_norm/block_00", "grad_norm/block_01", "grad_norm/head"}
    assert all(-12 < v < 2 for v in norms[3].values())
    assert [e for e, _ in reporter.epochs] == [1, 2]
    assert {"val_accuracy", "val_macro_f1", "val_loss", "best_val_accuracy"} <= set(reporter.epochs[-1][1])
    # where the time went: cumulative seconds per part, which the whole run's seconds hold
    first, last = reporter.epochs[0][1], reporter.epochs[-1][1]
    assert 0 < first["eval_seconds"] < last["eval_seconds"] and 0 < first["train_seconds"] < last["train_seconds"]
    assert first["setup_seconds"] == last["setup_seconds"] > 0
    assert round(last["setup_seconds"], 2) == summary["setup_seconds"]
    assert last["setup_seconds"] + last["train_seconds"] + last["eval_seconds"] <= last["seconds"]


def test_frozen_embeddings_stay_as_pretrained_and_get_no_optimizer_state():
    from trainables.recipe import FineTuneRecipe

    recipe = FineTuneRecipe(fast_config("static", model={"freeze_embeddings": True}))
    recipe.setup()
    embeddings = recipe.model.get_input_embeddings().weight
    before = {name: p.detach().clone() for name, p in recipe.model.named_parameters()}
    recipe.train()
    assert not embeddings.requires_grad and embeddings.grad is None
    assert all(p is not embeddings for group in recipe.optimizer.param_groups for p in group["params"])
    changed = {name for name, p in recipe.model.named_parameters() if not torch.equal(p, before[name])}
    assert "bert.embeddings.word_embeddings.weight" not in changed
    assert {"bert.embeddings.position_embeddings.weight", "classifier.weight"} <= changed  # the rest trains


def test_frozen_layers_stay_as_pretrained_and_the_blocks_above_train():
    from trainables.recipe import FineTuneRecipe

    recipe = FineTuneRecipe(fast_config("static", model={"freeze_layers": 1}))
    recipe.setup()
    before = {name: p.detach().clone() for name, p in recipe.model.named_parameters()}
    recipe.train()
    changed = {name for name, p in recipe.model.named_parameters() if not torch.equal(p, before[name])}
    frozen = {name for name in before if name.startswith(("bert.embeddings.", "bert.encoder.layer.0."))}
    assert frozen and not frozen & changed
    assert {name for name in before if name.startswith("bert.encoder.layer.1.")} <= changed
    assert "classifier.weight" in changed
    optimized = {id(p) for group in recipe.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for name, p in recipe.model.named_parameters() if name not in frozen}


def test_evaluation_feeds_the_frozen_blocks_outputs_back_with_the_same_scores():
    from trainables.frozen_prefix import FrozenPrefix
    from trainables.recipe import FineTuneRecipe

    recipe = FineTuneRecipe(fast_config("static", model={"freeze_layers": 1}))
    recipe.setup()
    recipe.train()  # one evaluation: block 0's outputs kept for every validation and test batch
    objective, model = recipe.objective, recipe.model
    prefix = objective.frozen_prefix
    batches = -(-objective.validation_size // objective.config.training.eval_batch_size)
    assert {key for key in prefix.kept if key[0] == "validation"} == {("validation", i) for i in range(batches)}
    replayed = objective.score_validation(model)  # block 1 and the head only, checked against a whole pass
    assert prefix.active and prefix.checked
    objective.frozen_prefix = FrozenPrefix(model, 0)
    assert objective.score_validation(model) == replayed  # the whole model: equal, bit for bit
    objective.frozen_prefix = FrozenPrefix(model, 1, budget_bytes=0)  # nothing fits: every batch runs whole
    assert objective.score_validation(model) == replayed and not objective.frozen_prefix.kept

    # a fault the contract excludes (a frozen block that changed): the check drops what was kept
    objective.frozen_prefix = FrozenPrefix(model, 1)
    objective.score_validation(model)
    with torch.no_grad():
        model.bert.encoder.layer[0].output.dense.weight.mul_(1.5)
    changed = objective.score_validation(model)
    assert not objective.frozen_prefix.active and not objective.frozen_prefix.kept
    objective.frozen_prefix = FrozenPrefix(model, 0)
    assert objective.score_validation(model) == changed != replayed


def test_freezing_more_layers_than_the_model_has_is_refused_with_the_count():
    from trainables.recipe import FineTuneRecipe

    with pytest.raises(ConfigError, match="freeze_layers is 3 but num_layers keeps 2 transformer blocks"):
        fast_config("static", model={"freeze_layers": 3})
    recipe = FineTuneRecipe(fast_config("static", model={"num_layers": None, "freeze_layers": 7}))
    with pytest.raises(ConfigError, match="freeze_layers is 7 but minilm-l6 has 6 transformer blocks"):
        recipe.setup()


def test_same_seed_same_run_other_seed_other_run():
    first = RecordingReporter()
    fine_tune(fast_config("static"), first)
    second = RecordingReporter()
    fine_tune(fast_config("static"), second)
    third = RecordingReporter()
    fine_tune(fast_config("static", training={"seed": 1}), third)
    losses = [[m["loss"] for _, m in r.steps if "loss" in m] for r in (first, second, third)]
    assert losses[0] == losses[1]
    assert losses[0] != losses[2]


def test_decoder_model_with_a_classification_head(tmp_path):
    """A LLaMA-architecture model from a local folder trains as a classifier (pad token set for its head)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from trainables.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("minilm-l6"))
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         pad_token_id=None))
    folder = tmp_path / "tiny-llama"
    llama.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    reporter = RecordingReporter()
    summary = fine_tune(fast_config("dynamic", model={"name": str(folder), "num_layers": None}), reporter)
    assert summary["steps"] > 0 and 0.0 <= summary["best_val_accuracy"] <= 1.0
    assert all(math.isfinite(m["loss"]) for _, m in reporter.steps if "loss" in m)
    grads = next(m for _, m in reporter.steps if "grad_norm/block_01" in m)
    assert {"grad_norm/embeddings", "grad_norm/block_00", "grad_norm/head"} <= set(grads)


class Crash(Exception):
    pass


@pytest.mark.parametrize("run, eval_every", [("classifier-dynamic", None), ("classifier-static", None),
                                             ("causal-lm-dynamic-topk", None), ("classifier-static", 0.5)])
def test_resume_from_a_checkpoint_continues_exactly(tmp_path, run, eval_every):
    # one checkpoint for both model kinds: per-sample logits and per-token top-k teachers, random reuse
    # (the data-order generator), dropout (the CPU random state); with eval_every 0.5 the checkpoint is taken
    # in the middle of the first epoch (the rest of that epoch's order is in it)
    config = parse_config(RUNS[run], values={"training.eval_every": eval_every})
    straight = RecordingReporter()
    fine_tune(config, straight)

    class CrashAfterFirstEpoch(RecordingReporter):
        def log_evaluation(self, evaluation, metrics, save_checkpoint=None):
            save_checkpoint(tmp_path / "checkpoint")
            raise Crash

    with pytest.raises(Crash):
        fine_tune(config, CrashAfterFirstEpoch())
    resumed = RecordingReporter()
    summary = fine_tune(config, resumed, resume_from=tmp_path / "checkpoint")

    first_epoch_steps = straight.epochs[0][1]["step"]
    assert [s for s, _ in resumed.steps][0] == first_epoch_steps + 1
    expected = [(s, m) for s, m in straight.steps if s > first_epoch_steps]
    assert [s for s, _ in resumed.steps] == [s for s, _ in expected]
    for (_, got), (_, want) in zip(resumed.steps, expected):
        assert got["loss"] == want["loss"] and got.get("alpha_mean") == want.get("alpha_mean")
    assert resumed.epochs[0][0] == 2
    assert resumed.epochs[0][1]["val_loss"] == straight.epochs[1][1]["val_loss"]
    assert [m["val_loss"] for _, m in resumed.epochs] == [m["val_loss"] for _, m in straight.epochs[1:]]
    assert summary["steps"] == straight.epochs[-1][1]["step"]
    if eval_every:
        assert straight.epochs[0][1]["trained_epochs"] == 0.5 and first_epoch_steps < summary["steps"] / 2


def test_eval_every_counts_steps_or_a_fraction_of_an_epoch():
    from trainables.config import TrainingConfig

    assert TrainingConfig().evaluation_steps(10) == {10}  # default: the end of each epoch
    assert TrainingConfig(eval_every=0.25).evaluation_steps(10) == {2, 5, 8, 10}
    assert TrainingConfig(eval_every=1.0).evaluation_steps(10) == {10}
    assert TrainingConfig(eval_every=4).evaluation_steps(10) == {4, 8, 10}
    assert TrainingConfig(eval_every=25).evaluation_steps(10) == {10}
    assert TrainingConfig(eval_every=0.01).evaluation_steps(3) == {1, 2, 3}  # at most one a step
    assert parse_config({"method": "static", "training": {"eval_every": 0.25}}).evaluations(100) == 3 * 4
    with pytest.raises(ConfigError, match="training.eval_every: 1.5 is neither a number of steps"):
        parse_config({"training": {"eval_every": 1.5}})


def test_a_run_evaluates_within_epochs_and_picks_its_best_evaluation():
    reporter = RecordingReporter()
    summary = fine_tune(fast_config("static", training={"epochs": 2, "eval_every": 0.5, "grad_norm_every": 0}),
                        reporter)
    evaluations = [m for _, m in reporter.epochs]
    assert [e for e, _ in reporter.epochs] == [1, 2, 3, 4] and summary["evaluations"] == 4
    assert [m["trained_epochs"] for m in evaluations] == [0.5, 1.0, 1.5, 2.0]
    assert [m["step"] for m in evaluations][-1] == summary["steps"] == evaluations[0]["total_steps"]
    best = max(evaluations, key=lambda m: m["val_accuracy"])  # the first of equal ones
    assert summary["best_val_accuracy"] == best["val_accuracy"] and summary["best_epoch"] == best["trained_epochs"]
    assert summary["test_accuracy"] == best["test_accuracy"]
    # test is scored at the evaluations that were the best so far when made, and at no other
    so_far = [max(m["val_accuracy"] for m in evaluations[:i + 1]) for i in range(len(evaluations))]
    chosen = [i == 0 or so_far[i] > so_far[i - 1] for i in range(len(evaluations))]
    assert ["test_accuracy" in m for m in evaluations] == chosen


def test_metric_for_best_model_chooses_the_evaluation_and_must_be_one_the_task_reports():
    reporter = RecordingReporter()
    summary = fine_tune(fast_config("static", training={"epochs": 2, "eval_every": 0.5, "grad_norm_every": 0,
                                                        "metric_for_best_model": "val_loss"}), reporter)
    evaluations = [m for _, m in reporter.epochs]
    best = min(evaluations, key=lambda m: m["val_loss"])  # lower is better, the first of equal ones
    assert summary["best_epoch"] == best["trained_epochs"] and summary["test_accuracy"] == best["test_accuracy"]
    assert all(m["best_val_loss"] == min(e["val_loss"] for e in evaluations[:i + 1])
               for i, m in enumerate(evaluations))
    with pytest.raises(ConfigError, match="training.metric_for_best_model: task .* never reports val_rougeL"):
        fine_tune(fast_config("static", training={"metric_for_best_model": "val_rougeL"}))


def test_a_run_never_reads_the_test_labels(tmp_path, nli_jsonl):
    """Train / validation / test files; the same run with the test labels permuted trains the same steps, scores
    validation the same and picks the same best epoch; only its test scores change."""
    import json
    import random

    rows = [json.loads(line) for line in nli_jsonl.read_text().splitlines()]
    files = {"train": rows[:24], "validation": rows[24:32], "test": rows[32:]}
    shuffled = [row["verdict"] for row in files["test"]]
    random.Random(0).shuffle(shuffled)
    shuffled = shuffled[1:] + shuffled[:1]  # a permutation that moves labels (the 8 test rows are 4 yes, 4 no)
    recorded = []
    for labels in ([row["verdict"] for row in files["test"]], shuffled):
        folder = tmp_path / f"run{len(recorded)}"
        folder.mkdir()
        paths = {}
        for split, split_rows in files.items():
            if split == "test":
                split_rows = [{**row, "verdict": label} for row, label in zip(split_rows, labels)]
            paths[split] = str(folder / f"{split}.jsonl")
            Path(paths[split]).write_text("".join(json.dumps(row) + "\n" for row in split_rows))
        task = {"name": "my_nli", "files": paths, "columns": {"text": "premise", "text_pair": "claim",
                                                              "label": "verdict"}, "train_subset": None,
                "validation_subset": None}
        reporter = RecordingReporter()
        summary = fine_tune(fast_config("dynamic", task=task, training={"epochs": 3, "grad_norm_every": 0}), reporter)
        recorded.append((reporter, summary))
    (same, first), (permuted, second) = recorded
    assert [m for _, m in same.steps] == [m for _, m in permuted.steps]  # every loss, α, τ of every step
    for (_, a), (_, b) in zip(same.epochs, permuted.epochs):
        assert {k: v for k, v in a.items() if k.startswith("val_")} == {k: v for k, v in b.items() if k.startswith("val_")}
    assert first["best_epoch"] == second["best_epoch"] and first["best_val_accuracy"] == second["best_val_accuracy"]
    assert [a.get("test_loss") for _, a in same.epochs] != [b.get("test_loss") for _, b in permuted.epochs]
