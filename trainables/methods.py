"""The training methods and the one table that says how each trains: its batches and its (α, τ) rule.

A rule is a pure function of (teacher logits, labels, step, total steps, α₀, τ₀) → per-sample (α_i, τ_i)
(``trainables/losses.py``); ``vanilla`` has none: it trains on plain batches, without teachers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


class Method(StrEnum):
    VANILLA = "vanilla"  # plain batches of B fresh samples, cross-entropy only
    VANILLA_REPEAT = "vanilla_repeat"  # DLB batches, α = 0: repetition without distillation
    STATIC = "static"  # DLB / static SelfD: fixed α, τ
    WARMUP_STATIC = "warmup_static"  # static with α ramped from 0 over distill.warmup_fraction of the steps
    DYNAMIC = "dynamic"  # DynSDPB: per-sample α_i, τ_i from the teacher (distill.rule)


class Rule(StrEnum):
    """The per-sample (α_i, τ_i) rules of the ``dynamic`` method (``distill.rule``); each has its function in
    ``trainables/losses.py`` (``RULES``)."""

    DYNSDPB = "dynsdpb"  # docs/method.md


@dataclass(frozen=True)
class Training:
    """How a method trains: on DLB batches (B/2 revisited + B/2 fresh) or plain ones, and its rule."""

    dlb_batches: bool
    distils: bool  # reads distill.alpha / distill.tau (a study searches them only for such methods)
    rule: Callable[[object], Callable | None]  # DistillConfig → rule (None: no teachers)

    def fresh_size(self, batch_size: int) -> int:
        """Fresh samples per step: half the batch on DLB batches, all of it otherwise."""
        return batch_size // 2 if self.dlb_batches else batch_size


def _losses():
    """``trainables/losses.py``, imported (with torch) when a run builds its rule: reading a spec or a run config
    needs no torch, so ``selfd validate`` answers in well under a second."""
    from trainables import losses

    return losses


METHODS: dict[Method, Training] = {
    Method.VANILLA: Training(False, False, lambda distill: None),
    Method.VANILLA_REPEAT: Training(True, False, lambda distill: _losses().no_distillation),
    Method.STATIC: Training(True, True, lambda distill: _losses().static),
    Method.WARMUP_STATIC: Training(True, True, lambda distill: functools.partial(
        _losses().warmup_static, warmup_fraction=distill.warmup_fraction)),
    Method.DYNAMIC: Training(True, True, lambda distill: _losses().RULES[distill.rule]),
}
