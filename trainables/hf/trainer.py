"""Static SelfD (DLB) and DynSDPB inside a user's own ``transformers.Trainer`` (or TRL ``SFTTrainer``) script.

``SelfDistillationMixin`` goes first in the bases of any ``Trainer`` subclass (``SelfDistillationTrainer`` is it
on ``Trainer`` itself); its settings are ``SelfDistillationArguments``' ``selfd_`` fields, read from ``self.args``
at every step. It runs the recipe's methods with the recipe's functions (one implementation of each):
- batches: ``DLBBatchSampler`` (``trainables/hf/batches.py``): B/2 samples of each optimizer step revisited from
  the same device's previous step, B/2 fresh; across optimizer steps under gradient accumulation, per process
  under DDP, grouped by length with ``train_sampling_strategy="group_by_length"``;
- teachers: the logits each revisited sample got in the previous step's own forward pass (no extra forward pass),
  kept by the sample's visit (``Visit.keep`` → ``Visit.teacher``), so the collator may reorder nothing and lose
  nothing; classifiers keep logits rows, causal LMs token teachers at the target tokens
  (``selfd_teacher_storage``, int8 by default);
- loss: ``classification.loss_terms`` for sequence classifiers (logits ``(N, C)``) and ``causal_lm.loss_terms``
  for causal LMs (logits ``(N, L, V)``, labels shifted by one as transformers does), each micro-batch divided by
  its whole optimizer step's CE items and revisited samples (``StepShare``), so the accumulated gradient is the
  step's; the Trainer does not divide it again (``loss_is_scaled_for_ga``). Under DDP each process normalises by
  its own step and DDP averages the gradients;
- logging: ce, kd, α/τ mean/min/max and the fraction of wrong teachers, per optimizer step as the recipe logs
  them, averaged over each ``logging_steps`` window by the Trainer's own ``log`` (every ``report_to`` target
  gets them); under DDP the main process's values;
- evaluation: the model's own loss, never a distillation term (the Trainer's ``compute_loss``);
- resume from a checkpoint: the batches continue as the uninterrupted run's would; the teacher cache is not
  saved, so the first step after a resume trains on CE only, as step 1 does, and the next one distils again.
``selfd_method: vanilla`` is the plain Trainer (its batches, its loss).
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset
from transformers import Trainer

from trainables import causal_lm, classification
from trainables.classification import LogitTeachers
from trainables.hf.arguments import SelfDistillationArguments
from trainables.hf.batches import DLBBatchSampler, Visit
from trainables.losses import Extreme, StepShare
from trainables.methods import METHODS
from trainables.recipe import Window
from trainables.token_teachers import split_teachers, stack_teachers

VISITS = "selfd_visits"  # the batch entry that carries each row's ``Visit`` (index, teacher slot, keep slot)
TRAINER_LOSS = "loss"  # the Trainer logs the total loss itself


class SelfDistillationMixin:
    args: SelfDistillationArguments

    @property
    def loss_is_scaled_for_ga(self) -> bool | None:
        """DLB methods divide each micro-batch by its whole step's counts; the Trainer must not divide again."""
        return True if self._dlb_batches() else None

    def _dlb_batches(self) -> bool:
        return METHODS[self.args.method()].dlb_batches

    def get_train_dataloader(self) -> DataLoader:
        """DLB batches of ``Visit``s (``DLBBatchSampler``) for the DLB methods; the Trainer's own otherwise. Every
        call (each ``train``, each trial of a search) starts with no teachers."""
        self._teachers, self._kept = {}, {}
        self._share, self._step_values, self._window = None, {}, Window()
        if not self._dlb_batches():
            return super().get_train_dataloader()
        self._causal_lm = self._is_causal_lm()
        args, dataset, collator = self.args, self.train_dataset, self.data_collator
        try:
            import datasets
        except ImportError:  # datasets is optional to transformers
            datasets = None
        if datasets is not None and isinstance(dataset, datasets.Dataset):
            dataset = self._remove_unused_columns(dataset, description="training")
        else:
            collator = self._get_collator_with_removed_columns(collator, description="training")
        lengths = _lengths(dataset, args.length_column_name) if args.train_sampling_strategy == "group_by_length" \
            else None
        sampler = DLBBatchSampler(len(dataset), args.per_device_train_batch_size * args.gradient_accumulation_steps,
                                  args.distill_config().reuse, args.data_seed if args.data_seed is not None else
                                  args.seed, args.gradient_accumulation_steps, args.world_size, lengths)
        loader = DataLoader(_Visited(dataset), batch_sampler=sampler, collate_fn=_VisitCollator(collator),
                            num_workers=args.dataloader_num_workers, pin_memory=args.dataloader_pin_memory,
                            generator=torch.Generator())  # the loader draws its seed from here, not the global RNG
        return self.accelerator.prepare(loader)

    def _is_causal_lm(self) -> bool:
        """Sequence classifiers and causal LMs are what the methods are written for; another head is refused here,
        before training, with what to use instead."""
        model = self.accelerator.unwrap_model(self.model)
        model = getattr(model, "get_base_model", lambda: model)()  # a PEFT model's own class
        # transformers' own test (5.x): the model's loss is its causal-LM loss
        if getattr(self, "_loss_shifts_labels", False) or type(model).__name__.endswith("ForCausalLM"):
            return True
        if type(model).__name__.endswith("ForSequenceClassification"):
            return False
        raise ValueError(f"selfd_method {self.args.selfd_method} distils sequence classifiers "
                         f"(…ForSequenceClassification) and causal LMs (…ForCausalLM); {type(model).__name__} is "
                         "neither: use selfd_method vanilla for it")

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """One optimizer step's micro-batches. A new step begins: the teachers kept in the last one teach now, and
        the step's CE items and revisited samples (those whose teacher is held) divide its micro-batches."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self._dlb_batches():
            self._end_step()
            self._teachers, self._kept = self._kept, {}
            items = sum(int(_targets(batch["labels"], self._causal_lm).ne(-100).sum()) for batch in batch_samples)
            revisited = sum(teacher in self._teachers for batch in batch_samples
                            for _, teacher, _ in batch[VISITS].tolist() if teacher >= 0)
            self._share = StepShare(items, revisited)
        return batch_samples, num_items_in_batch

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        visits = inputs.pop(VISITS, None)
        if visits is None or not model.training:  # evaluation, or the plain Trainer's method
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        visits = [Visit(*visit) for visit in visits.tolist()]
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        args, distill = self.args, self.args.distill_config()
        rule = METHODS[args.method()].rule(distill)
        step, total_steps = self.state.global_step + 1, self.state.max_steps
        taught = [row for row, visit in enumerate(visits) if visit.teacher in self._teachers]
        teachers = [self._teacher(visits[row]) for row in taught]
        kept = [row for row, visit in enumerate(visits) if visit.keep >= 0]
        rows = _rows(taught)
        if not self._causal_lm:  # a sequence classifier
            logits = outputs.logits
            loss, values = classification.loss_terms(
                logits, labels, LogitTeachers(torch.stack(teachers)) if teachers else None, rows, rule, step,
                total_steps, distill, self._share)
            for row in kept:
                self._keep(visits[row], logits.detach()[row])
        else:  # a causal LM: position t predicts token t + 1
            logits, targets = outputs.logits[:, :-1], labels[:, 1:]
            loss, values = causal_lm.loss_terms(logits, targets, stack_teachers(teachers) if teachers else None,
                                                rows, self._share)
            if kept:
                parts = split_teachers(causal_lm.kept_teachers(logits, targets, torch.tensor(kept), rule, step + 1,
                                                               total_steps, distill))
                for row, part in zip(kept, parts):
                    self._keep(visits[row], part)
        self._add(values)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        """Training logs get the loss parts and α/τ statistics of the steps since the last one (recipe names)."""
        if TRAINER_LOSS in logs and self._dlb_batches():
            self._end_step()
            if self._window.values:
                logs = {**logs, **{k: v for k, v in self._window.flush().items() if k != TRAINER_LOSS}}
        super().log(logs, *args, **kwargs)

    def _teacher(self, visit: Visit):
        index, teacher = self._teachers[visit.teacher]
        assert index == visit.index, f"the teacher kept in slot {visit.teacher} is sample {index}'s, not {visit.index}'s"
        return teacher

    def _keep(self, visit: Visit, teacher) -> None:
        self._kept[visit.keep] = (visit.index, teacher)

    def _add(self, values: dict) -> None:
        """A micro-batch's values into its optimizer step's (``Extreme.combiner``)."""
        for name, value in values.items():
            value = value.detach().float()
            before = self._step_values.get(name)
            self._step_values[name] = value if before is None else Extreme.combiner(name)(before, value)

    def _end_step(self) -> None:
        if self._step_values:
            self._window.add(self._step_values)
            self._step_values = {}


class SelfDistillationTrainer(SelfDistillationMixin, Trainer):
    """``transformers.Trainer`` with the self-distillation methods; give it ``SelfDistillationArguments``."""


class _Visited(Dataset):
    """The training set indexed by ``Visit``: each item is (its visit, the sample)."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, visit: Visit):
        return visit, self.dataset[visit.index]


class _VisitCollator:
    """The user's collator on the samples, plus each row's visit (``VISITS``); collators keep the samples' order."""

    def __init__(self, collator) -> None:
        self.collator = collator

    def __call__(self, items):
        visits, samples = zip(*items)
        return {**self.collator(list(samples)), VISITS: torch.tensor(visits)}


def _rows(rows: list[int]) -> slice | torch.Tensor:
    """Row indices as a slice where they are the first rows (the sampler puts revisited samples first): logits
    are then viewed, not copied."""
    return slice(0, len(rows)) if rows == list(range(len(rows))) else torch.tensor(rows)


def _targets(labels: torch.Tensor, causal_lm: bool) -> torch.Tensor:
    """What the CE is taken over: a classifier's labels, a causal LM's labels from the second token on."""
    return labels[:, 1:] if causal_lm else labels


def _lengths(dataset, column: str) -> torch.Tensor:
    """Tokens per sample for grouping by length: the dataset's ``column`` where it has one, else its input ids."""
    names = getattr(dataset, "column_names", None) or []
    if column in names:
        return torch.tensor(dataset[column])
    return torch.tensor([len(dataset[i]["input_ids"]) for i in range(len(dataset))])
