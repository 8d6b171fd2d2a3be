"""The sequence-classification objective: what the recipe (``trainables/recipe.py``) needs from an encoder
classifier on a classification task.

- batches: the samples' token columns, right-padded; one label per sample;
- loss: mean CE over the batch + mean over revisited samples of α_i · τ_i² · KL(teacher_i ‖ student_i), with
  (α_i, τ_i) from the method's rule applied to the teacher logits when they are used;
- teachers: the logits each revisited sample got in the previous step's forward pass, detached;
- evaluation: loss, accuracy and macro-F1 on the validation split (accuracy, or
  ``training.metric_for_best_model``, chooses a run's best evaluation) and the same on the test split (read by
  no choice); with frozen blocks (``model.freeze_layers``) only the blocks above them run after the first
  evaluation (``trainables/frozen_prefix.py``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from trainables import losses
from trainables.errors import ConfigError
from trainables.frozen_prefix import FrozenPrefix
from trainables.metrics import Metric, on_test
from trainables.models import load_classifier, load_tokenizer, resolve_model
from trainables.objective import Step
from trainables.tasks import load_task, tokenized_task


@dataclass(frozen=True)
class LogitTeachers:
    """The logits the revisited samples got in the previous step (detached), one row per sample."""

    logits: Tensor


class ClassificationObjective:
    scores = (Metric.VAL_ACCURACY, Metric.VAL_MACRO_F1)
    teachers_type = LogitTeachers

    def __init__(self, config, device: torch.device, autocast, rule) -> None:
        """Load and tokenize the task (checked before the model is loaded: bad input fails in seconds)."""
        self.config, self.device, self.autocast, self.rule = config, device, autocast, rule
        self.task = load_task(config.task)
        if config.model.num_labels and config.model.num_labels != len(self.task.label_names):
            raise ConfigError(f"model.num_labels is {config.model.num_labels} but task {self.task.name} has "
                              f"{len(self.task.label_names)} labels ({', '.join(self.task.label_names)})")
        self.model_path = resolve_model(config.model.name)
        self.tokenizer = load_tokenizer(self.model_path)
        splits = tokenized_task(self.task, self.tokenizer, config.model.name, config.task.max_length)
        self.train_rows, self.validation_rows, self.test_rows = map(_as_tensors, splits)
        self.collate = functools.partial(_collate, pad_token_id=self.tokenizer.pad_token_id, device=device)
        self.train_size, self.validation_size = len(self.train_rows["labels"]), len(self.validation_rows["labels"])
        self.test_size = len(self.test_rows["labels"])
        self.train_lengths = torch.tensor([len(row) for row in self.train_rows["input_ids"]])  # tokens per sample
        self.frozen_prefix: FrozenPrefix | None = None  # the frozen blocks' outputs, from the first evaluation on

    def load_model(self):
        model = self.config.model
        return load_classifier(self.model_path, self.task.label_names, self.tokenizer.pad_token_id,
                               model.num_layers, model.attn_implementation)

    def forward(self, model, ids: Tensor, teachers: LogitTeachers | None, step: int, total_steps: int) -> Step:
        """The loss of the samples ``ids``; the first ``len(teachers.logits)`` of them are the revisited ones."""
        batch = self.collate(self.train_rows, ids)
        labels = batch.pop("labels")
        with self.autocast():
            logits = model(**batch).logits
        taught = None if teachers is None else slice(0, len(teachers.logits))
        loss, values = loss_terms(logits, labels, teachers, taught, self.rule, step, total_steps, self.config.distill)
        return Step(loss, values, logits)

    def keep(self, step: Step, positions: Tensor, step_number: int, total_steps: int) -> LogitTeachers:
        """The next step's teachers: the logits of the samples at ``positions`` of this step's batch."""
        return LogitTeachers(step.logits.detach()[positions.to(step.logits.device)])

    def score_validation(self, model) -> dict[str, float]:
        """Loss, accuracy and macro-F1 on validation (``val_…``). Evaluation never touches the teachers of
        training."""
        return self._scores(model, self.validation_rows, "validation")

    def score_test(self, model) -> dict[str, float]:
        """The same scores on test (``test_…``)."""
        return on_test(self._scores(model, self.test_rows, "test"))

    @torch.inference_mode()
    def _scores(self, model, rows: dict, split: str) -> dict[str, float]:
        from sklearn.metrics import f1_score

        if self.frozen_prefix is None or self.frozen_prefix.model is not model:
            self.frozen_prefix = FrozenPrefix(model, self.config.model.freeze_layers)
        model.eval()
        count = len(rows["labels"])
        # batches of similar lengths pad less: a third to a half fewer tokens on the packaged tasks
        order = torch.tensor(sorted(range(count), key=lambda i: len(rows["input_ids"][i])))
        predictions, loss_sum = [], 0.0
        for index, ids in enumerate(order.split(self.config.training.eval_batch_size)):
            batch = self.collate(rows, ids)
            labels = batch.pop("labels")
            with self.autocast():
                logits = self.frozen_prefix.logits(batch, (split, index)).float()
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
            predictions.append(logits.argmax(-1).cpu())
        model.train()
        predicted, truth = torch.cat(predictions), torch.stack(rows["labels"])[order]
        return {
            Metric.VAL_LOSS: loss_sum / count,
            Metric.VAL_ACCURACY: (predicted == truth).float().mean().item(),
            Metric.VAL_MACRO_F1: float(f1_score(truth, predicted, average="macro")),
        }

    def summary(self) -> dict:
        return {"task": self.task.name, "majority_accuracy": self.task.majority_accuracy,
                "test_majority_accuracy": self.task.test_majority_accuracy, "test_size": self.test_size}


def loss_terms(logits: Tensor, labels: Tensor, teachers: LogitTeachers | None, taught: slice | Tensor | None, rule,
               step: int, total_steps: int, distill, share: losses.StepShare | None = None
               ) -> tuple[Tensor, dict[str, Tensor]]:
    """The loss and the logged values of a batch of classifier ``logits`` (N, C): the mean CE over every sample
    plus, over the revisited samples (the rows ``taught``, whose teachers are ``teachers`` in that order),
    (1/|R|) Σ α_i · τ_i² · KL(teacher_i ‖ student_i) with (α_i, τ_i) from ``rule`` at ``step``, the step the
    teachers teach in. ``share`` (default: this batch is the whole optimizer step) gives the step's counts."""
    share = share or losses.StepShare(len(labels), 0 if teachers is None else len(teachers.logits))
    ce = F.cross_entropy(logits.float(), labels, reduction="sum") / share.items
    loss, values = ce, {"ce": ce}
    if teachers is not None:
        their_labels = labels[taught]
        alpha, tau = rule(teachers.logits, their_labels, step, total_steps, distill.alpha, distill.tau)
        kd = losses.kd_term(logits[taught], teachers.logits, tau)
        loss = ce + (alpha * kd).sum() / share.revisited
        _, discrimination = losses.teacher_signals(teachers.logits, their_labels)
        weight = share.of_revisited(len(kd))
        values |= {"kd": kd.mean() * weight, "wrong_teachers": (discrimination <= 0).float().mean() * weight,
                   **losses.extremes("alpha", alpha, weight), **losses.extremes("tau", tau, weight)}
    values["loss"] = loss
    return loss, values


def _as_tensors(dataset) -> dict[str, list[Tensor]]:
    """Token columns as one tensor per sample, so a batch is a list lookup plus padding."""
    columns = dataset.with_format("torch")[:]
    return {name: list(values) if isinstance(values, list) else list(values.unbind(0))
            for name, values in columns.items()}


def _collate(rows: dict, ids: Tensor, pad_token_id: int, device: torch.device) -> dict[str, Tensor]:
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
