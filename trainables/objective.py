"""What the recipe (``trainables/recipe.py``) needs from an objective, the part of a run that differs between model
kinds: ``classification.ClassificationObjective`` (an encoder classifier) and ``causal_lm.CausalLMObjective`` (a
decoder-only model on a generation task). The Trainer integration (``trainables/hf``) calls the same objectives'
``loss_terms`` and teacher functions on the batches a ``transformers.Trainer`` collates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

from trainables.metrics import Metric


@dataclass(frozen=True)
class Step:
    """One step's forward pass: the loss, what is logged, and what the next step's teachers are cut from."""

    loss: Tensor
    values: dict[str, Tensor]
    logits: Tensor  # (N, C) for a classifier; (N, T, V) at target positions for a causal LM
    targets: Tensor | None = None  # a causal LM's (N, T) target tokens, -100 off them


class Objective(Protocol):
    scores: tuple[Metric, ...]  # the validation scores it reports; the first chooses a run's best evaluation
    teachers_type: type  # what ``keep`` returns; a checkpoint stores its fields
    model_path: str  # what ``from_pretrained`` loads
    train_size: int
    validation_size: int
    train_lengths: Tensor  # tokens per training sample (``training.group_by_length``)

    def load_model(self): ...

    def forward(self, model, ids: Tensor, teachers, step: int, total_steps: int) -> Step:
        """The loss of the training samples ``ids``; the first ``len(teachers)`` of them are the revisited ones,
        taught by ``teachers`` (None at step 1 and for methods without DLB batches)."""

    def keep(self, step: Step, positions: Tensor, step_number: int, total_steps: int):
        """The next step's teachers: what the samples at ``positions`` of this step's batch got."""

    def score_validation(self, model) -> dict[str, float]:
        """``val_…`` scores; evaluation never touches the training teachers."""

    def score_test(self, model) -> dict[str, float]:
        """The same scores on the test split (``test_…``), read by no choice."""

    def summary(self) -> dict:
        """Facts about the task for the run's summary (its name, the test split's size, …)."""
