"""Token-level teachers for decoder-only models (METHOD.md, "Language models").

Under teacher forcing a revisited sequence has the same target tokens at every visit, so the logits it got at
the previous step teach it token by token: the KD term is τ² · KL per target token, averaged over the valid
target tokens of a sample. Positions are *target positions*: ``logits[:, t]`` predicts ``targets[:, t]`` (the
caller shifts a causal LM's outputs); ``mask`` marks the target tokens (prompt and padding are False).

How the teachers are kept between steps (``storage``):
- ``full``: every logit in float32 (exact; N · T · V · 4 bytes);
- ``bf16``: every logit in bfloat16 (half of that);
- ``topk``: per token the k largest logits and their ids, plus one "rest" bucket with the log-mass of the other
  V − k tokens. The student is bucketed the same way (the teacher's k ids and its own rest), so the KL is taken
  exactly over k + 1 buckets; merging tokens never raises a KL, so it is at most the full one.
α and τ are per token and chosen when a teacher is kept, from its full distribution (DynSDPB's uncertainty
needs all V probabilities, which ``topk`` no longer has); the rest bucket is then taken at that τ.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

STORAGES = ("full", "bf16", "topk")


@dataclass(frozen=True)
class TokenTeachers:
    logits: Tensor  # (N, T, V) for full and bf16; (N, T, k) for topk
    ids: Tensor | None  # (N, T, k) token ids of the kept logits (topk)
    rest: Tensor | None  # (N, T) log Σ exp(z / τ) over the other tokens (topk)
    alpha: Tensor  # (N, T) per-token weight
    tau: Tensor  # (N, T) per-token temperature
    targets: Tensor  # (N, T) the target tokens they were computed for
    mask: Tensor  # (N, T) bool: target tokens

    def nbytes(self) -> int:
        parts = (self.logits, self.ids, self.rest, self.alpha, self.tau, self.targets, self.mask)
        return sum(p.numel() * p.element_size() for p in parts if p is not None)


def keep_teachers(logits: Tensor, targets: Tensor, mask: Tensor, alpha: Tensor, tau: Tensor,
                  storage: str = "full", k: int = 64) -> TokenTeachers:
    """Detach and store one step's logits (``(N, T, V)``) as next step's teachers."""
    logits = logits.detach()
    if storage == "full":
        return TokenTeachers(logits.float(), None, None, alpha, tau, targets, mask)
    if storage == "bf16":
        return TokenTeachers(logits.to(torch.bfloat16), None, None, alpha, tau, targets, mask)
    if storage != "topk":
        raise ValueError(f"teacher storage {storage!r}: choose one of {', '.join(STORAGES)}")
    scaled = logits.float() / tau.unsqueeze(-1)
    top, ids = scaled.topk(k, dim=-1)
    rest = _log_rest(scaled.logsumexp(-1), top.logsumexp(-1))
    return TokenTeachers(top.to(torch.bfloat16), ids.int(), rest, alpha, tau, targets, mask)


def token_kd(student_logits: Tensor, teachers: TokenTeachers, mask: Tensor | None = None) -> Tensor:
    """Per-sample mean over its target tokens of α_t · τ_t² · KL(teacher_t ‖ student_t); ``(N,)``.

    ``mask`` (default: the teachers') limits the tokens, e.g. to an aligned prefix. A sample without tokens
    gives 0.
    """
    mask = teachers.mask if mask is None else mask
    return per_sample(teachers.alpha * token_kl(student_logits, teachers, mask), mask)


def token_kl(student_logits: Tensor, teachers: TokenTeachers, mask: Tensor) -> Tensor:
    """τ_t² · KL(teacher_t ‖ student_t) per target token, 0 outside ``mask``; ``(N, T)``."""
    tau = teachers.tau.unsqueeze(-1)
    student = student_logits.float() / tau
    if teachers.ids is None:
        log_teacher = F.log_softmax(teachers.logits.float() / tau, dim=-1)
        log_student = F.log_softmax(student, dim=-1)
    else:  # k + 1 buckets on both sides; the teacher's kept logits are already divided by τ
        teacher_buckets = torch.cat([teachers.logits.float(), teachers.rest.unsqueeze(-1)], dim=-1)
        kept = student.gather(-1, teachers.ids.long())
        student_rest = _log_rest(student.logsumexp(-1), kept.logsumexp(-1))
        log_teacher = F.log_softmax(teacher_buckets, dim=-1)
        log_student = F.log_softmax(torch.cat([kept, student_rest.unsqueeze(-1)], dim=-1), dim=-1)
    kl = F.kl_div(log_student, log_teacher, reduction="none", log_target=True).sum(-1)
    return teachers.tau**2 * kl * mask


def per_sample(per_token: Tensor, mask: Tensor) -> Tensor:
    """Each sample's mean over its ``mask``ed tokens; 0 for a sample without any."""
    return per_token.sum(-1) / mask.sum(-1).clamp(min=1)


def aligned(teachers: TokenTeachers, targets: Tensor, mask: Tensor) -> tuple[TokenTeachers, Tensor]:
    """Teachers and the distillation mask for student targets that may differ from the teachers' (targets
    regenerated between visits, sequences of other lengths).

    The rule: distil only on the common prefix of the two target sequences, from the first target position
    up to (not including) the first position where the token ids differ or either sequence has ended.
    Positions are compared as they stand (the prompt is the same sample's, so targets start together).
    """
    length = min(teachers.targets.shape[1], targets.shape[1])
    teachers = _first_positions(teachers, length)
    targets, mask = targets[:, :length], mask[:, :length]
    neither = ~teachers.mask & ~mask  # prompt positions of both: no break in the prefix
    same = (teachers.targets == targets) & teachers.mask & mask
    prefix = torch.cumprod((same | neither).int(), dim=1).bool()
    return teachers, prefix & same


def _first_positions(teachers: TokenTeachers, length: int) -> TokenTeachers:
    def cut(tensor: Tensor | None) -> Tensor | None:
        return None if tensor is None else tensor[:, :length]

    return replace(teachers, logits=cut(teachers.logits), ids=cut(teachers.ids), rest=cut(teachers.rest),
                   alpha=cut(teachers.alpha), tau=cut(teachers.tau), targets=cut(teachers.targets),
                   mask=cut(teachers.mask))


def _log_rest(log_total: Tensor, log_kept: Tensor) -> Tensor:
    """log(Σ_all − Σ_kept) from the two log-sums, without cancellation to -inf when the kept tokens hold
    (nearly) all the mass."""
    gap = (log_kept - log_total).clamp(max=-1e-7)
    return log_total + torch.log(-torch.expm1(gap))
