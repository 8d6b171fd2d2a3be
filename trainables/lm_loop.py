"""One fine-tuning run of a decoder-only language model on a generation task, token by token.

The methods are the classification loop's (``trainables/loop.py``), under teacher forcing: a revisited
sequence's target tokens are the same at every visit, so the logits it got at the previous step teach it per
target token (METHOD.md, "Language models"). Prompt tokens are never learnt nor distilled.
- loss = CE over the batch's target tokens + mean over revisited sequences of the per-token KD term
  (``token_teachers.token_kd``: α_t · τ_t² · KL, averaged over the sequence's target tokens);
- α_t, τ_t come from the method's rule applied per token (C = V, y = the target token) when the teacher is
  kept; teachers are kept as ``distill.teacher_storage`` says (full, bf16 or top-k with a rest bucket);
- revisited sequences are re-padded in a new batch, so teachers are aligned to the student by the
  common-prefix rule (``token_teachers.aligned``), which under teacher forcing keeps every target token.
Evaluation: the teacher-forced validation loss, then greedy generation from each validation prompt (at most
``task.max_target_length`` new tokens), scored by the task (answer accuracy, ROUGE-L). The reporter, the
checkpoints and resuming work as in the classification loop.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from trainables.batching import fresh_batches, revisited
from trainables.config import PLAIN_BATCH_METHODS, RunConfig
from trainables.generation_tasks import load_generation_task, score_generations, tokenized_generation_task
from trainables.grad_norms import layer_groups
from trainables.loop import (CHECKPOINT_FILE, Reporter, Window, decay_groups, distillation_rule, extremes,
                             mixed_precision, optimizer_step, pick_device, report_step, seed_everything)
from trainables.models import load_causal_lm, load_tokenizer, resolve_model
from trainables.token_teachers import TokenTeachers, aligned, keep_teachers, token_kd


def fine_tune_lm(config: RunConfig, reporter: Reporter | None = None, resume_from: str | Path | None = None) -> dict:
    reporter = reporter or Reporter()
    started = time.perf_counter()
    training, distill = config.training, config.distill
    device = pick_device(training.device, training.cpus)

    data = load_generation_task(config.task)
    model_path = resolve_model(config.model.name)
    tokenizer = load_tokenizer(model_path)
    train_set, validation_set = tokenized_generation_task(data, tokenizer, config.model.name, config.task.max_length,
                                                          config.task.max_target_length)
    train_rows = [torch.tensor(row) for row in train_set["input_ids"]], [torch.tensor(r) for r in train_set["labels"]]
    validation = validation_set.with_format("torch")
    pad = tokenizer.pad_token_id

    seed_everything(training.seed)
    model = load_causal_lm(model_path, config.model.num_layers, config.model.attn_implementation,
                           config.model.lora).to(device)
    autocast = mixed_precision(training.precision, device)

    distils = config.method not in PLAIN_BATCH_METHODS
    fresh_size = training.batch_size // 2 if distils else training.batch_size
    total_steps = math.ceil(len(train_rows[0]) / fresh_size) * training.epochs
    rule = distillation_rule(config)
    optimizer = torch.optim.AdamW(decay_groups(model, training.weight_decay), lr=training.learning_rate, fused=True)
    from transformers import get_linear_schedule_with_warmup

    scheduler = get_linear_schedule_with_warmup(optimizer, round(training.warmup_ratio * total_steps), total_steps)
    generator = torch.Generator().manual_seed(training.seed)
    groups = layer_groups(model)
    window = Window()
    score_name = data.task.scores[0]

    step, teacher_ids, teachers, best, first_epoch = 0, None, None, {score_name: -1.0}, 1
    if resume_from is not None:
        state = torch.load(Path(resume_from) / CHECKPOINT_FILE, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        step, best, first_epoch = state["step"], state["best"], state["epoch"] + 1
        if state["teachers"]:
            teacher_ids, teachers = state["teacher_ids"], TokenTeachers(**state["teachers"])

    def save_checkpoint(folder: str | Path) -> None:
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "generator": generator.get_state(),
                 "torch_rng": torch.get_rng_state(), "step": step, "epoch": epoch, "best": best,
                 "teacher_ids": teacher_ids, "teachers": vars(teachers) if teachers is not None else None}
        Path(folder).mkdir(parents=True, exist_ok=True)
        torch.save(state, Path(folder) / CHECKPOINT_FILE)

    metrics = {}
    for epoch in range(first_epoch, training.epochs + 1):
        model.train()
        for fresh in fresh_batches(len(train_rows[0]), fresh_size, generator):
            step += 1
            ids = fresh if teachers is None else torch.cat([teacher_ids, fresh])
            input_ids, attention, targets = _collate(train_rows, ids, pad, device)
            with autocast():
                logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1]
            mask = targets != -100
            ce = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
            loss, values = ce, {"ce": ce}
            if teachers is not None:  # the first len(teacher_ids) rows are the revisited sequences
                revisits = len(teacher_ids)
                cut, kd_mask = aligned(teachers, targets[:revisits], mask[:revisits])
                kd = token_kd(logits[:revisits, :cut.logits.shape[1]], cut, kd_mask)
                loss = ce + kd.mean()
                values |= {"kd": kd.mean(), "wrong_teachers": _wrong_teachers(cut, kd_mask),
                           **extremes("alpha", cut.alpha[kd_mask]), **extremes("tau", cut.tau[kd_mask])}
            values["loss"] = loss

            grad_norms = optimizer_step(loss, model, optimizer, scheduler, groups, training, step)
            if distils:
                keep = revisited(len(ids), len(fresh), fresh_size, distill.reuse, generator).to(device)
                teacher_ids = ids[keep.cpu()]
                teachers = _keep(logits.detach()[keep], targets[keep], mask[keep], rule, step + 1, total_steps,
                                 distill)

            window.add(values)
            report_step(reporter, window, step, total_steps, epoch, training.log_every, scheduler, grad_norms)

        metrics = {**evaluate_lm(model, validation, tokenizer, data.name, config, autocast, device),
                   "step": step, "seconds": time.perf_counter() - started}
        if metrics[score_name] > best[score_name]:
            best = {**metrics, "epoch": epoch}
        reporter.log_epoch(epoch, {**metrics, f"best_{score_name}": best[score_name]}, save_checkpoint)

    return {"method": config.method, "model": config.model.name, "task": data.name,
            f"best_{score_name}": best[score_name], "best_epoch": best.get("epoch"),
            **{f"final_{k}": v for k, v in metrics.items() if k.startswith("val_")},
            "epochs": training.epochs, "steps": step, "train_size": len(train_rows[0]),
            "validation_size": len(validation), "device": str(device), "threads": torch.get_num_threads(),
            "seconds": round(time.perf_counter() - started, 2)}


def _keep(logits, targets, mask, rule, step: int, total_steps: int, distill) -> TokenTeachers:
    """Next step's teachers: the rule's per-token α, τ (from the full distribution), then the chosen storage."""
    labels = targets.clamp(min=0)  # prompt and padding positions carry -100; they are masked out anyway
    alpha, tau = rule(logits, labels, step, total_steps, distill.alpha, distill.tau)
    return keep_teachers(logits, labels, mask, alpha * mask, tau, distill.teacher_storage, distill.topk)


def _wrong_teachers(teachers: TokenTeachers, valid: torch.Tensor) -> torch.Tensor:
    """Fraction of target tokens whose teacher's most likely token is another one (d ≤ 0 but for ties)."""
    top = teachers.ids[..., 0].long() if teachers.ids is not None else teachers.logits.argmax(-1)
    return (top != teachers.targets)[valid].float().mean()


def _collate(rows, ids: torch.Tensor, pad: int, device: torch.device):
    """(input ids, attention mask, targets), right-padded; targets[t] is the label of input token t + 1."""
    inputs = pad_sequence([rows[0][i] for i in ids.tolist()], batch_first=True, padding_value=pad)
    labels = pad_sequence([rows[1][i] for i in ids.tolist()], batch_first=True, padding_value=-100)
    lengths = torch.tensor([len(rows[0][i]) for i in ids.tolist()])
    attention = (torch.arange(inputs.shape[1]) < lengths.unsqueeze(1)).long()
    return inputs.to(device), attention.to(device), labels[:, 1:].to(device)


@torch.inference_mode()
def evaluate_lm(model, rows, tokenizer, task_name: str, config: RunConfig, autocast, device) -> dict[str, float]:
    """Teacher-forced validation loss, then greedy generations from the prompts, scored by the task."""
    model.eval()
    batch_size = config.training.eval_batch_size
    loss_sum, tokens, predictions, references = 0.0, 0, [], []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        input_ids, labels = list(chunk["input_ids"]), list(chunk["labels"])
        ids = torch.arange(len(input_ids))
        inputs, attention, targets = _collate((input_ids, labels), ids, tokenizer.pad_token_id, device)
        with autocast():
            logits = model(input_ids=inputs, attention_mask=attention).logits[:, :-1].float()
        loss_sum += F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum").item()
        tokens += int((targets != -100).sum())
        prompts = [row[:length] for row, length in zip(input_ids, chunk["prompt_length"].tolist())]
        longest = max(map(len, prompts))  # decoder-only generation continues from the right: pad on the left
        left = torch.stack([F.pad(p, (longest - len(p), 0), value=tokenizer.pad_token_id) for p in prompts])
        left_attention = torch.stack([F.pad(torch.ones_like(p), (longest - len(p), 0)) for p in prompts])
        with autocast():
            generated = model.generate(input_ids=left.to(device), attention_mask=left_attention.to(device),
                                       max_new_tokens=config.task.max_target_length, do_sample=False,
                                       pad_token_id=tokenizer.pad_token_id)
        predictions += tokenizer.batch_decode(generated[:, longest:], skip_special_tokens=True)
        references += [tokenizer.decode(row[length:], skip_special_tokens=True)
                       for row, length in zip(input_ids, chunk["prompt_length"].tolist())]
    model.train()
    return {"val_loss": loss_sum / max(tokens, 1),
            **score_generations(task_name, [p.strip() for p in predictions], [r.strip() for r in references])}
