"""One fine-tuning run: ``FineTuneRecipe(config).setup()`` then ``.train(reporter)`` (or ``fine_tune``).

The recipe is written once for both model kinds; an *objective* (``trainables/objective.py``) owns what differs
between them: batch assembly, the loss and its teachers, teacher storage and evaluation
(``classification.ClassificationObjective`` for encoder classifiers on classification tasks,
``causal_lm.CausalLMObjective`` for decoder-only models on generation tasks). The loop, the optimizer step, the
reporting and the checkpoints are here.

Supports:
- methods (``trainables/methods.py``): ``vanilla`` (plain batches of B fresh samples, CE only),
  ``vanilla_repeat`` (DLB batches, α = 0), ``static`` (DLB / static SelfD), ``warmup_static`` (α ramped from
  0), ``dynamic`` (DynSDPB, per-sample α_i, τ_i from ``distill.rule``). DLB batches hold the B/2 samples the
  previous step chose to revisit (``distill.reuse``) and B/2 fresh ones; a revisited sample's teacher is the
  logits it got in the previous step's own forward pass (no extra forward pass);
- CUDA when present (``training.device``), else the CPU with one thread per CPU the run holds;
  bf16 autocast where the device has native bf16 (``training.precision: auto``), fused AdamW, LoRA adapters
  for decoder-only models (``model.lora``);
- weights kept as pretrained: the input token embeddings (``model.freeze_embeddings``; MiniLM's are half its
  weights), or the embedding layer and the lowest transformer blocks (``model.freeze_layers``: no backward pass
  through them);
- batches of similar lengths (``training.group_by_length``: fewer padding tokens);
- reporting through a ``Reporter``: every ``log_every`` steps the window means of ce, kd (unweighted:
  τ² · KL), loss and min/mean/max of α and τ with the fraction of wrong teachers; every ``grad_norm_every``
  steps the per-layer log10 mean |grad|; at every evaluation (each epoch's end, and every
  ``training.eval_every`` steps or fraction of an epoch) the validation scores, the epochs, optimizer steps and
  samples so far, the seconds spent in training steps, evaluation and setup, and a function that saves a
  checkpoint. The run's best evaluation is chosen on validation (``training.metric_for_best_model``); test is
  scored at each evaluation that becomes the best so far, reported beside its validation scores, and chooses
  nothing;
- exact resumption from a checkpoint, also one taken within an epoch: weights, optimizer, schedule, data order
  (the rest of the epoch's batches), CPU and CUDA random states and the teachers.
Refused at setup, with what to change: ``model.lora`` on a classification task; an odd ``batch_size`` for a DLB
method (``RunConfig``); ``training.device: cuda`` without a visible GPU; ``model.num_labels`` that is not the
task's label count; ``model.freeze_layers`` above the model's transformer blocks. A loss that becomes NaN or
infinite stops the run (``TrainingDiverged``).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from pathlib import Path

import torch

from trainables.batching import fresh_batches, revisited
from trainables.causal_lm import CausalLMObjective
from trainables.classification import ClassificationObjective
from trainables.config import ModelConfig, RunConfig
from trainables.devices import mixed_precision, pick_device, use_cpu_threads
from trainables.errors import TrainingDiverged
from trainables.grad_norms import layer_groups, log10_grad_norms
from trainables.losses import Extreme
from trainables.methods import METHODS
from trainables.models import check_frozen_layers, check_model_settings
from trainables.objective import Objective
from trainables.task_kinds import TaskKind, check_combination, task_kind

OBJECTIVES: dict[TaskKind, type[Objective]] = {TaskKind.CLASSIFICATION: ClassificationObjective,
                                               TaskKind.GENERATION: CausalLMObjective}
CHECKPOINT_FILE = "training_state.pt"


class Reporter:
    """Receives a run's metrics; override what you need (the defaults drop them)."""

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def log_evaluation(self, evaluation: int, metrics: dict[str, float], save_checkpoint) -> None:
        """The ``evaluation``-th evaluation (1, 2, …; one an epoch unless ``training.eval_every``): scores,
        ``trained_epochs``, ``step`` of ``total_steps`` and seconds. ``save_checkpoint(folder)`` writes what
        ``setup(resume_from=folder)`` needs."""


class FineTuneRecipe:
    def __init__(self, config: RunConfig) -> None:
        self.config = config

    def setup(self, resume_from: str | Path | None = None) -> None:
        """Check the combination, load data (before the model: bad input fails in seconds), model, optimizer and
        schedule; with ``resume_from``, the state a ``save_checkpoint`` wrote there."""
        config, training = self.config, self.config.training
        self.started = time.perf_counter()
        check_combination(config)
        self.device = pick_device(training.device)
        if self.device.type == "cpu":
            use_cpu_threads(training.cpus)
        self.autocast = mixed_precision(training.precision, self.device)
        self.method = METHODS[config.method]
        self.objective = OBJECTIVES[task_kind(config.task)](config, self.device, self.autocast,
                                                            self.method.rule(config.distill))
        check_model_settings(config.model, self.objective.model_path, task_kind(config.task) is TaskKind.GENERATION)
        seed_everything(training.seed)
        self.model = self.objective.load_model().to(self.device)
        freeze_pretrained(self.model, config.model)

        self.fresh_size = self.method.fresh_size(training.batch_size)
        self.steps_per_epoch = config.steps_per_epoch(self.objective.train_size)
        self.total_steps = self.steps_per_epoch * training.epochs
        self.evaluation_steps = training.evaluation_steps(self.steps_per_epoch)
        # fused: one kernel over all parameters; on CPU the foreach AdamW step took 30 % of a MiniLM step
        self.optimizer = torch.optim.AdamW(decay_groups(self.model, training.weight_decay),
                                           lr=training.learning_rate, fused=True)
        from transformers import get_linear_schedule_with_warmup

        warmup_steps = round(training.warmup_ratio * self.total_steps)
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, warmup_steps, self.total_steps)
        self.generator = torch.Generator().manual_seed(training.seed)
        self.score = training.metric_for_best_model or self.objective.scores[0]  # chooses the best evaluation
        self.step, self.epoch, self.teacher_ids, self.teachers = 0, 0, None, None
        self.epoch_left: list[torch.Tensor] = []  # the fresh batches of this epoch not trained on yet
        self.evaluation = 0  # evaluations so far
        self.samples, self.train_seconds = 0, 0.0  # rows trained on (revisited ones count again), time in steps
        self.eval_seconds = 0.0
        self.best = {self.score: self.score.worst}
        if resume_from is not None:
            self._load_checkpoint(Path(resume_from) / CHECKPOINT_FILE)
        self.setup_seconds = time.perf_counter() - self.started  # data, model, optimizer, checkpoint: this process

    def train(self, reporter: Reporter | None = None) -> dict:
        """Train the remaining steps; returns a summary (best validation scores, steps, seconds, …)."""
        reporter = reporter or Reporter()
        training, objective, model = self.config.training, self.objective, self.model
        groups, window, metrics = layer_groups(model), Window(), {}
        model.train()
        steps_started = time.perf_counter()
        while self.step < self.total_steps:
            if not self.epoch_left:
                self.epoch += 1
                self.epoch_left = fresh_batches(objective.train_size, self.fresh_size, self.generator,
                                                objective.train_lengths if training.group_by_length else None)
            fresh = self.epoch_left.pop(0)
            self.step += 1
            ids = fresh if self.teachers is None else torch.cat([self.teacher_ids, fresh])
            step = objective.forward(model, ids, self.teachers, self.step, self.total_steps)
            grad_norms = optimizer_step(step.loss, model, self.optimizer, self.scheduler, groups, training, self.step)
            if self.method.dlb_batches:
                positions = revisited(len(ids), len(fresh), self.fresh_size, self.config.distill.reuse, self.generator)
                self.teacher_ids = ids[positions]
                self.teachers = objective.keep(step, positions, self.step, self.total_steps)
            self.samples += len(ids)
            window.add(step.values)
            report_step(reporter, window, self.step, self.total_steps, self.epoch, training.log_every,
                        self.scheduler, grad_norms)

            if self.steps_per_epoch - len(self.epoch_left) in self.evaluation_steps:
                self.train_seconds += time.perf_counter() - steps_started
                metrics = self._evaluate(reporter)
                steps_started = time.perf_counter()
        return self._summary(metrics)

    def _evaluate(self, reporter: Reporter) -> dict:
        """Score validation; where it makes this evaluation the best so far, score test too (the test scores a
        run reports are those of its best evaluation, so no other evaluation needs them). Report it with a
        checkpoint."""
        started = time.perf_counter()
        metrics = {str(name): value for name, value in self.objective.score_validation(self.model).items()}
        chosen = self.score.better(metrics[self.score], self.best[self.score])
        if chosen:
            metrics |= self.objective.score_test(self.model)
        self.eval_seconds += time.perf_counter() - started
        self.evaluation += 1
        trained_epochs = self.epoch - len(self.epoch_left) / self.steps_per_epoch
        metrics |= {"trained_epochs": round(trained_epochs, 4), "step": self.step, "total_steps": self.total_steps,
                    "samples": self.samples, "train_seconds": self.train_seconds, "eval_seconds": self.eval_seconds,
                    "setup_seconds": self.setup_seconds, "seconds": time.perf_counter() - self.started}
        if chosen:
            self.best = metrics
        reporter.log_evaluation(self.evaluation, {**metrics, self.score.best: self.best[self.score]},
                                self.save_checkpoint)
        return metrics

    def save_checkpoint(self, folder: str | Path) -> None:
        state = {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state() if self.device.type == "cuda" else None,
            "step": self.step, "epoch": self.epoch, "epoch_left": self.epoch_left, "evaluation": self.evaluation,
            "best": {str(k): v for k, v in self.best.items()},
            "samples": self.samples, "train_seconds": self.train_seconds, "eval_seconds": self.eval_seconds,
            "teacher_ids": self.teacher_ids, "teachers": vars(self.teachers) if self.teachers is not None else None,
        }
        Path(folder).mkdir(parents=True, exist_ok=True)
        torch.save(state, Path(folder) / CHECKPOINT_FILE)

    def _load_checkpoint(self, path: Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if self.device.type == "cuda" and state["cuda_rng"] is not None:
            torch.cuda.set_rng_state(state["cuda_rng"])
        self.step, self.epoch, self.best = state["step"], state["epoch"], state["best"]
        # checkpoints before eval_every were taken at epoch ends, one evaluation per epoch
        self.epoch_left, self.evaluation = state.get("epoch_left", []), state.get("evaluation", self.epoch)
        self.samples, self.train_seconds = state["samples"], state["train_seconds"]
        self.eval_seconds = state.get("eval_seconds", 0.0)
        if state["teachers"] is not None:
            self.teacher_ids, self.teachers = state["teacher_ids"], self.objective.teachers_type(**state["teachers"])

    def _summary(self, last: dict) -> dict:
        scores = self.objective.scores
        return {
            "method": str(self.config.method),
            "model": self.config.model.name,
            **self.objective.summary(),
            **{score.best: self.best.get(score) for score in scores},
            **{score.test: self.best.get(score.test) for score in scores},  # test scores at the best validation
            "best_epoch": self.best.get("trained_epochs"),  # epochs trained at the best evaluation (0.25, 1, …)
            "evaluations": self.evaluation,
            **{f"final_{name}": value for name, value in last.items() if name.startswith("val_")},
            "epochs": self.config.training.epochs,
            "steps": self.step,
            "samples": self.samples,
            "train_seconds": round(self.train_seconds, 2),
            "eval_seconds": round(self.eval_seconds, 2),
            "setup_seconds": round(self.setup_seconds, 2),
            "train_size": self.objective.train_size,
            "validation_size": self.objective.validation_size,
            "device": str(self.device),
            "threads": torch.get_num_threads(),
            "seconds": round(time.perf_counter() - self.started, 2),
        }


def fine_tune(config: RunConfig, reporter: Reporter | None = None, resume_from: str | Path | None = None) -> dict:
    """Set up and train one run (``FineTuneRecipe``); returns its summary."""
    recipe = FineTuneRecipe(config)
    recipe.setup(resume_from)
    return recipe.train(reporter)


def load_data(config: RunConfig):
    """The objective of ``config``'s task kind with its data loaded on the CPU (fetched, split and tokenized into
    the cache when no earlier run did it): what the driver runs once before a study's trials."""
    return OBJECTIVES[task_kind(config.task)](config, torch.device("cpu"), None, None)


def freeze_pretrained(model, settings: ModelConfig) -> None:
    """Keep weights as pretrained: the input token embedding matrix
    (``freeze_embeddings``), and with ``freeze_layers`` the whole embedding layer and the lowest transformer blocks.
    Frozen weights get no gradient and no optimizer state; below the lowest trained weight no backward pass runs."""
    if settings.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    if not settings.freeze_layers:
        return
    groups = layer_groups(model)
    blocks = [name for name in groups if name.startswith("block_")]
    check_frozen_layers(settings, len(blocks))
    for name in ("embeddings", *blocks[:settings.freeze_layers]):
        for parameter in groups.get(name, ()):
            parameter.requires_grad_(False)


def optimizer_step(loss, model, optimizer, scheduler, groups, training, step: int) -> dict[str, float]:
    """Backward, the per-layer gradient norms when due (before clipping), clipping, the optimizer and
    schedule steps; returns the gradient norms (empty when not due)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    due = training.grad_norm_every and step % training.grad_norm_every == 0
    grad_norms = log10_grad_norms(groups) if due else {}
    if training.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), training.max_grad_norm)
    optimizer.step()
    scheduler.step()
    return grad_norms


def report_step(reporter, window, step: int, total_steps: int, epoch: int, log_every: int, scheduler,
                grad_norms: dict) -> None:
    """Every ``log_every`` steps (and at the last): the window's means to the reporter, stopping a diverged
    run; between them, only gradient norms that were due."""
    if step % log_every == 0 or step == total_steps:
        logged = window.flush()
        if not math.isfinite(logged["loss"]):
            raise TrainingDiverged(f"loss became {logged['loss']} by step {step}; lower the learning rate or α")
        reporter.log_step(step, {**logged, "epoch": epoch, "lr": scheduler.get_last_lr()[0], **grad_norms})
    elif grad_norms:
        reporter.log_step(step, grad_norms)


def decay_groups(model, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on biases and normalisation weights (the usual transformer recipe)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def seed_everything(seed: int) -> None:
    from transformers import set_seed

    set_seed(seed)


class Window:
    """Per-step values since the last log line, kept on the device until then (no sync per step)."""

    def __init__(self) -> None:
        self.values: dict[str, list[torch.Tensor]] = defaultdict(list)

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for name, value in values.items():
            self.values[name].append(value.detach().float())

    def flush(self) -> dict[str, float]:
        names = list(self.values)
        stacked = [torch.stack(self.values[n]) for n in names]
        reduced = torch.stack([Extreme.reducer(n)(v) for n, v in zip(names, stacked)]).tolist()
        self.values.clear()
        return dict(zip(names, reduced))
