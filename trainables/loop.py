"""One fine-tuning run of a sequence classifier with vanilla training, static SelfD (DLB) or DynSDPB.

Methods (``RunConfig.method``):
- ``vanilla``: plain batches of B fresh samples, cross-entropy only.
- ``vanilla_repeat``: DLB batches (B/2 revisited + B/2 fresh), α = 0, so a study can tell the effect of
  revisiting samples from the effect of distillation.
- ``static``: DLB batches, loss = CE + α · mean_i τ² · KL(teacher_i ‖ student_i) with fixed α, τ.
- ``warmup_static``: ``static`` with α ramped linearly from 0 over ``distill.warmup_fraction`` of the steps.
- ``dynamic``: DynSDPB, per-sample α_i, τ_i from the teacher's uncertainty and discrimination
  (``distill.rule``, default ``dynsdpb``).
The teacher of a revisited sample is the logits it got in the previous step's forward pass.

The loop reports through a ``Reporter``: every ``log_every`` steps the window means of ce, kd, loss and
min/mean/max of α and τ (plus the fraction of wrong teachers), every ``grad_norm_every`` steps the per-layer
log10 mean |grad|, and every epoch the validation metrics with a function that saves a checkpoint. The command
line prints them; the Ray trainable sends them to Tune and MLflow. A run resumed from a checkpoint continues
exactly where it stopped (weights, optimizer, schedule, batch order, teachers and RNG states).
"""

from __future__ import annotations

import functools
import math
import os
import time
import warnings
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from trainables import losses
from trainables.batching import Teachers, fresh_batches, next_teachers
from trainables.config import PLAIN_BATCH_METHODS, ConfigError, RunConfig
from trainables.grad_norms import layer_groups, log10_grad_norms
from trainables.models import load_classifier, load_tokenizer, resolve_model
from trainables.tasks import load_task, tokenized_task


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class Reporter:
    """Receives a run's metrics; override what you need (the defaults drop them)."""

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def log_epoch(self, epoch: int, metrics: dict[str, float], save_checkpoint) -> None:
        """``save_checkpoint(folder)`` writes what ``fine_tune(..., resume_from=folder)`` needs."""


CHECKPOINT_FILE = "training_state.pt"


def fine_tune(config: RunConfig, reporter: Reporter | None = None, resume_from: str | Path | None = None) -> dict:
    """Train as ``config`` says and return a summary (best validation accuracy, steps, seconds, …).

    ``resume_from`` is a folder written by the ``save_checkpoint`` a reporter received at an epoch's end.
    """
    from trainables.generation_tasks import GENERATION_TASKS

    if config.task.name in GENERATION_TASKS:  # a decoder-only model, trained token by token
        from trainables.lm_loop import fine_tune_lm

        return fine_tune_lm(config, reporter, resume_from)
    if config.model.lora is not None:
        raise ConfigError("model.lora applies to decoder-only models on generation tasks (e.g. strategyqa_gen)")
    reporter = reporter or Reporter()
    started = time.perf_counter()
    training, distill = config.training, config.distill
    device = pick_device(training.device, training.cpus)

    # Data and model references are checked before the model is loaded: bad input fails in seconds.
    task = load_task(config.task)
    if config.model.num_labels and config.model.num_labels != len(task.label_names):
        raise ConfigError(f"model.num_labels is {config.model.num_labels} but task {task.name} has "
                          f"{len(task.label_names)} labels ({', '.join(task.label_names)})")
    model_path = resolve_model(config.model.name)
    tokenizer = load_tokenizer(model_path)
    train_set, validation_set = tokenized_task(task, tokenizer, config.model.name, config.task.max_length)
    train_rows, validation_rows = _as_tensors(train_set), _as_tensors(validation_set)
    collate = functools.partial(_collate, pad_token_id=tokenizer.pad_token_id, device=device)

    seed_everything(training.seed)
    model = load_classifier(model_path, task.label_names, tokenizer.pad_token_id, config.model.num_layers,
                            config.model.attn_implementation).to(device)
    autocast = mixed_precision(training.precision, device)

    distils = config.method not in PLAIN_BATCH_METHODS
    fresh_size = training.batch_size // 2 if distils else training.batch_size
    total_steps = math.ceil(len(train_rows["labels"]) / fresh_size) * training.epochs
    rule = distillation_rule(config)
    # fused: one kernel over all parameters; on CPU the foreach AdamW step took 30 % of a MiniLM step
    optimizer = torch.optim.AdamW(decay_groups(model, training.weight_decay), lr=training.learning_rate, fused=True)
    from transformers import get_linear_schedule_with_warmup

    scheduler = get_linear_schedule_with_warmup(optimizer, round(training.warmup_ratio * total_steps), total_steps)
    generator = torch.Generator().manual_seed(training.seed)
    groups = layer_groups(model)
    window = Window()

    step, teachers, best, first_epoch = 0, None, {"val_accuracy": -1.0}, 1
    if resume_from is not None:
        state = torch.load(Path(resume_from) / CHECKPOINT_FILE, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"])
        step, best, first_epoch = state["step"], state["best"], state["epoch"] + 1
        teachers = Teachers(state["teachers"]["ids"], state["teachers"]["logits"]) if state["teachers"] else None

    def save_checkpoint(folder: str | Path) -> None:
        state = {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state() if device.type == "cuda" else None,
            "step": step, "epoch": epoch, "best": best,
            "teachers": {"ids": teachers.ids, "logits": teachers.logits} if teachers is not None else None,
        }
        Path(folder).mkdir(parents=True, exist_ok=True)
        torch.save(state, Path(folder) / CHECKPOINT_FILE)

    metrics = {}
    for epoch in range(first_epoch, training.epochs + 1):
        model.train()
        for fresh in fresh_batches(len(train_rows["labels"]), fresh_size, generator):
            step += 1
            ids = fresh if teachers is None else torch.cat([teachers.ids, fresh])
            batch = collate(train_rows, ids)
            labels = batch.pop("labels")
            with autocast():
                logits = model(**batch).logits
            ce = F.cross_entropy(logits.float(), labels)
            loss = ce
            values = {"ce": ce}
            if teachers is not None:  # the first len(teachers.ids) rows are the revisited samples
                revisited = len(teachers.ids)
                alpha, tau = rule(teachers.logits, labels[:revisited], step, total_steps, distill.alpha, distill.tau)
                kd = losses.kd_term(logits[:revisited], teachers.logits, tau)
                loss = ce + (alpha * kd).mean()
                _, discrimination = losses.teacher_signals(teachers.logits, labels[:revisited])
                values |= {"kd": kd.mean(), "wrong_teachers": (discrimination <= 0).float().mean(),
                           **extremes("alpha", alpha), **extremes("tau", tau)}
            values["loss"] = loss

            grad_norms = optimizer_step(loss, model, optimizer, scheduler, groups, training, step)
            if distils:
                teachers = next_teachers(ids, logits, len(fresh), fresh_size, distill.reuse, generator)

            window.add(values)
            report_step(reporter, window, step, total_steps, epoch, training.log_every, scheduler, grad_norms)

        metrics = {**evaluate(model, validation_rows, collate, training.eval_batch_size, autocast),
                   "step": step, "seconds": time.perf_counter() - started}
        if metrics["val_accuracy"] > best["val_accuracy"]:
            best = {**metrics, "epoch": epoch}
        reporter.log_epoch(epoch, {**metrics, "best_val_accuracy": best["val_accuracy"]}, save_checkpoint)

    return {
        "method": config.method,
        "model": config.model.name,
        "task": task.name,
        "best_val_accuracy": best["val_accuracy"],
        "best_val_macro_f1": best["val_macro_f1"],
        "best_epoch": best["epoch"],
        "final_val_accuracy": metrics.get("val_accuracy", best["val_accuracy"]),
        "majority_accuracy": task.majority_accuracy,
        "epochs": training.epochs,
        "steps": step,
        "train_size": len(train_rows["labels"]),
        "validation_size": len(validation_rows["labels"]),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "seconds": round(time.perf_counter() - started, 2),
    }


@torch.inference_mode()
def evaluate(model, rows: dict, collate, batch_size: int, autocast) -> dict[str, float]:
    """Validation loss, accuracy and macro-F1. Evaluation never touches the teachers of training."""
    from sklearn.metrics import f1_score

    model.eval()
    count = len(rows["labels"])
    predictions, loss_sum = [], 0.0
    for ids in torch.arange(count).split(batch_size):
        batch = collate(rows, ids)
        labels = batch.pop("labels")
        with autocast():
            logits = model(**batch).logits.float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        predictions.append(logits.argmax(-1).cpu())
    model.train()
    predicted, truth = torch.cat(predictions), torch.stack(rows["labels"])
    return {
        "val_loss": loss_sum / count,
        "val_accuracy": (predicted == truth).float().mean().item(),
        "val_macro_f1": float(f1_score(truth, predicted, average="macro")),
    }


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


def pick_device(requested: str, cpus: int | None) -> torch.device:
    """CUDA when asked for or available (``auto``); otherwise the CPU with one thread per CPU the run holds."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("training.device is cuda but no GPU is visible to this process")
    if requested != "cpu" and torch.cuda.is_available():
        return torch.device("cuda")
    torch.set_num_threads(cpus or len(os.sched_getaffinity(0)))
    return torch.device("cpu")


def has_native_bf16(device: torch.device) -> bool:
    """bf16 in hardware: a CUDA GPU from Ampere on, a CPU with AMX or AVX512-BF16. Elsewhere autocast emulates
    it: a MiniLM-L6 step took 15 × as long as in float32 on an AVX2-only EPYC (benchmarks/cpu_attention.py)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()


def mixed_precision(precision: str, device: torch.device):
    """The run's ``torch.autocast``: bf16 when asked, or under ``auto`` where the hardware has it; else float32."""
    native = has_native_bf16(device)
    bf16 = precision == "bf16" or (precision == "auto" and native)
    if bf16 and not native:
        warnings.warn(f"training.precision is bf16 but this {device.type} has no native bf16: autocast emulates "
                      "it and a step can take many times longer than in float32; use precision auto or fp32",
                      stacklevel=2)
    return functools.partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16, enabled=bf16)


def distillation_rule(config: RunConfig):
    """The per-sample (α, τ) rule the method trains with; ``vanilla`` has none."""
    if config.method == "static":
        return losses.static
    if config.method == "vanilla_repeat":
        return losses.no_distillation
    if config.method == "warmup_static":
        return functools.partial(losses.warmup_static, warmup_fraction=config.distill.warmup_fraction)
    if config.method == "dynamic":
        return losses.RULES[config.distill.rule]
    return None


def decay_groups(model, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on biases and normalisation weights (the usual transformer recipe)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def seed_everything(seed: int) -> None:
    from transformers import set_seed

    set_seed(seed)


def _as_tensors(dataset) -> dict[str, list[torch.Tensor]]:
    """Token columns as one tensor per sample, so a batch is a list lookup plus padding."""
    columns = dataset.with_format("torch")[:]
    return {name: list(values) if isinstance(values, list) else list(values.unbind(0))
            for name, values in columns.items()}


def _collate(rows: dict, ids: torch.Tensor, pad_token_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """The samples ``ids``, right-padded to the longest of them, on ``device``."""
    batch = {}
    for name, column in rows.items():
        picked = [column[i] for i in ids.tolist()]
        if name == "labels":
            batch[name] = torch.stack(picked)
        else:
            pad = pad_token_id if name == "input_ids" else 0
            batch[name] = pad_sequence(picked, batch_first=True, padding_value=pad)
    return {name: value.to(device, non_blocking=True) for name, value in batch.items()}


def extremes(name: str, values: torch.Tensor) -> dict[str, torch.Tensor]:
    return {f"{name}_mean": values.mean(), f"{name}_min": values.min(), f"{name}_max": values.max()}


class Window:
    """Per-step values since the last log line, kept on the device until then (no sync per step)."""

    def __init__(self) -> None:
        self.values: dict[str, list[torch.Tensor]] = defaultdict(list)

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for name, value in values.items():
            self.values[name].append(value.detach().float())

    def flush(self) -> dict[str, float]:
        reduce = {"_min": torch.min, "_max": torch.max}
        names = list(self.values)
        stacked = [torch.stack(self.values[n]) for n in names]
        reduced = torch.stack([reduce.get(n[-4:], torch.mean)(v) for n, v in zip(names, stacked)]).tolist()
        self.values.clear()
        return dict(zip(names, reduced))
