"""The self-distillation loss term and the rules that choose each sample's weight α and temperature τ.

Shapes: logits are ``(..., C)`` and every per-sample quantity is ``(...)``, so the same functions serve
sequence classification (one position per sample) and token-level language modelling.

A rule is a pure function ``(teacher_logits, labels, step, total_steps, alpha, tau, **options)`` returning
per-sample ``(alpha_i, tau_i)``; ``step`` counts optimizer steps from 1. Adding one to ``RULES`` (and its name to
``methods.Rule``) makes it selectable as ``distill.rule`` for the ``dynamic`` method without touching the training
loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import torch
import torch.nn.functional as F
from torch import Tensor

from trainables.methods import Rule


def kd_term(student_logits: Tensor, teacher_logits: Tensor, tau: Tensor | float, mask: Tensor | None = None) -> Tensor:
    """Per-sample τ² · KL(softmax(z_teacher/τ) ‖ softmax(z_student/τ)); masked-out samples give 0.

    ``tau`` is a scalar or one temperature per sample. Computed in float32 whatever the autocast dtype.
    """
    tau = torch.as_tensor(tau, dtype=torch.float32, device=student_logits.device)
    tau = tau.expand(student_logits.shape[:-1]).unsqueeze(-1)
    log_student = F.log_softmax(student_logits.float() / tau, dim=-1)
    log_teacher = F.log_softmax(teacher_logits.float() / tau, dim=-1)
    kl = F.kl_div(log_student, log_teacher, reduction="none", log_target=True).sum(-1)
    kd = tau.squeeze(-1) ** 2 * kl
    return kd if mask is None else kd * mask


def teacher_signals(teacher_logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(uncertainty u ∈ [0, 1], discrimination d ∈ [-1, 1]) of each teacher prediction.

    u = H(q) / log C with q = softmax(z_teacher); d = q[y] − max_{c≠y} q[c], negative when the teacher
    was wrong.
    """
    log_q = F.log_softmax(teacher_logits.float(), dim=-1)
    q = log_q.exp()
    uncertainty = -(q * log_q).sum(-1) / math.log(q.shape[-1])
    true_prob = q.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    rival_prob = q.scatter(-1, labels.unsqueeze(-1), float("-inf")).amax(-1)
    return uncertainty.clamp(0.0, 1.0), true_prob - rival_prob


def static(teacher_logits, labels, step, total_steps, alpha, tau):
    """DLB / static SelfD: the same α and τ for every sample."""
    shape = labels.shape
    return torch.full(shape, float(alpha), device=labels.device), torch.full(shape, float(tau), device=labels.device)


def no_distillation(teacher_logits, labels, step, total_steps, alpha, tau):
    """α = 0 (vanilla_repeat): DLB batches without the distillation term; τ kept so kd is still logged."""
    return static(teacher_logits, labels, step, total_steps, 0.0, tau)


def warmup_static(teacher_logits, labels, step, total_steps, alpha, tau, *, warmup_fraction=0.1):
    """Static SelfD whose α ramps linearly from 0 to ``alpha`` over the first ``warmup_fraction`` of steps."""
    ramp = min(1.0, step / max(1.0, warmup_fraction * total_steps))
    return static(teacher_logits, labels, step, total_steps, alpha * ramp, tau)


def dynsdpb(teacher_logits, labels, step, total_steps, alpha, tau):
    """DynSDPB as reconstructed in docs/method.md: trust confident, correct teachers more.

    α_i = α · (1 − u_i) · 1[d_i > 0];  τ_i = 1 + (τ − 1) · (1 − u_i).
    Near-uniform teachers (early training) give almost plain CE; confident correct teachers tend to static
    SelfD with (α, τ); wrong teachers never distil.
    """
    uncertainty, discrimination = teacher_signals(teacher_logits, labels)
    confidence = 1.0 - uncertainty
    alpha_i = alpha * confidence * (discrimination > 0).float()
    tau_i = 1.0 + (tau - 1.0) * confidence
    return alpha_i, tau_i


RULES = {Rule.DYNSDPB: dynsdpb}
"""Dynamic rules, selectable with ``distill.rule`` for the ``dynamic`` method."""


class Extreme(StrEnum):
    """The statistics of per-sample values a step logs (α and τ): ``alpha_mean``, ``alpha_min``, ``alpha_max``;
    over a logging window the mean of means, the least minimum and the largest maximum."""

    MEAN = "mean"
    MIN = "min"
    MAX = "max"

    def of(self, name: str) -> str:
        """The logged metric's name: ``Extreme.MIN.of("tau")`` is ``tau_min``."""
        return f"{name}_{self.value}"

    @classmethod
    def reducer(cls, metric: str):
        """How a logging window reduces ``metric``'s per-step values."""
        return {f"_{cls.MIN}": torch.min, f"_{cls.MAX}": torch.max}.get(metric[-4:], torch.mean)

    @classmethod
    def combiner(cls, metric: str):
        """How the micro-batches of one optimizer step combine ``metric``: each batch's value of a mean is its share
        of the step's (``StepShare``), so shares add up; minima and maxima are taken over the batches."""
        return {f"_{cls.MIN}": torch.minimum, f"_{cls.MAX}": torch.maximum}.get(metric[-4:], torch.add)


def extremes(name: str, values: Tensor, weight: float = 1.0) -> dict[str, Tensor]:
    """The logged statistics (``Extreme``) of per-sample values; the mean counts as ``weight`` of its step's
    (``StepShare.of_revisited``)."""
    return {Extreme.MEAN.of(name): values.mean() * weight, Extreme.MIN.of(name): values.min(),
            Extreme.MAX.of(name): values.max()}


@dataclass(frozen=True)
class StepShare:
    """What a batch's loss terms are divided by: the CE items (samples, or target tokens) and the revisited samples
    of the optimizer step the batch belongs to. The recipe trains an optimizer step as one batch, whose own counts
    these are; a ``transformers.Trainer`` with gradient accumulation splits a step into micro-batches, each
    normalised by the whole step's counts so that their gradients add up to the step's."""

    items: int | Tensor
    revisited: int

    def of_revisited(self, revisited: int) -> float:
        """The weight of a batch with ``revisited`` of the step's revisited samples (1.0 for the whole step)."""
        return revisited / self.revisited
