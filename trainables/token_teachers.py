"""Token-level teachers for decoder-only models (METHOD.md, "Language models").

Under teacher forcing a revisited sequence has the same target tokens at every visit, so the logits it got at
the previous step teach it token by token: the KD term is τ² · KL per target token, averaged over the valid
target tokens of a sample. Positions are *target positions*: ``logits[:, t]`` predicts ``targets[:, t]`` (the
caller shifts a causal LM's outputs); ``mask`` marks the target tokens (prompt and padding are False).

Only the target tokens are kept (one row per ``mask`` position, row-major): prompt and padding never teach.
How each is kept between steps (``storage``):
- ``full``: every logit in float32 (exact; M · V · 4 bytes for M target tokens);
- ``bf16``: every logit in bfloat16 (half of that);
- ``int8``: every logit as an 8-bit code on a per-token grid reaching ``INT8_SPAN`` · τ below the token's largest
  logit (a quarter of ``full``); lower logits are clamped to the bottom of the grid, where at temperature τ
  they hold less than V · e^-24 of the mass together;
- ``topk``: the k largest logits and their ids, plus one "rest" bucket with the log-mass of the other V − k
  tokens. The student is bucketed the same way (the teacher's k ids and its own rest), so the KL is taken
  exactly over k + 1 buckets; merging tokens never raises a KL, so it is at most the full one (and at τ = 2 far
  below it: the top tokens of a tempered distribution hold little of its mass).
α and τ are per token and chosen when a teacher is kept, from its full distribution (DynSDPB's uncertainty
needs all V probabilities, which ``topk`` no longer has); the rest bucket and the int8 grid are then set at
that τ.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

STORAGES = ("full", "bf16", "int8", "topk")
INT8_SPAN = 24.0  # the int8 grid reaches this many τ below a token's largest logit


@dataclass(frozen=True)
class TokenTeachers:
    logits: Tensor  # (M, V) for full, bf16 and int8 (uint8 codes); (M, k) for topk: one row per target token
    ids: Tensor | None  # (M, k) token ids of the kept logits (topk)
    rest: Tensor | None  # (M,) log Σ exp(z / τ) over the other tokens (topk)
    grid: Tensor | None  # (M, 2) the int8 grid's lowest logit and step: logit = low + code · step
    alpha: Tensor  # (N, T) per-token weight
    tau: Tensor  # (N, T) per-token temperature
    targets: Tensor  # (N, T) the target tokens they were computed for
    mask: Tensor  # (N, T) bool: target tokens, the positions of the rows of ``logits``

    def nbytes(self) -> int:
        parts = (self.logits, self.ids, self.rest, self.grid, self.alpha, self.tau, self.targets, self.mask)
        return sum(p.numel() * p.element_size() for p in parts if p is not None)

    def top_tokens(self) -> Tensor:
        """(M,) each kept token's most likely next token."""
        return self.ids[:, 0].long() if self.ids is not None else self.logits.argmax(-1)


def keep_teachers(logits: Tensor, targets: Tensor, mask: Tensor, alpha: Tensor, tau: Tensor,
                  storage: str = "full", k: int = 64) -> TokenTeachers:
    """Detach and store one step's logits (``(N, T, V)``) at the target tokens as next step's teachers."""
    rows = logits.detach()[mask]
    kept = {"ids": None, "rest": None, "grid": None}
    if storage == "full":
        kept["logits"] = rows.float()
    elif storage == "bf16":
        kept["logits"] = rows.to(torch.bfloat16)
    elif storage == "int8":
        rows = rows.float()
        top = rows.amax(-1, keepdim=True)
        low = torch.maximum(top - INT8_SPAN * tau[mask].unsqueeze(-1), rows.amin(-1, keepdim=True))
        step = ((top - low) / 255).clamp(min=1e-12)
        kept["logits"] = ((rows - low) / step).round_().clamp_(0, 255).to(torch.uint8)
        kept["grid"] = torch.cat([low, step], dim=-1)
    elif storage == "topk":
        scaled = rows.float() / tau[mask].unsqueeze(-1)
        top, ids = scaled.topk(min(k, scaled.shape[-1]), dim=-1)
        kept |= {"logits": top.to(torch.bfloat16), "ids": ids.int(),
                 "rest": _log_rest(scaled.logsumexp(-1), top.logsumexp(-1))}
    else:
        raise ValueError(f"teacher storage {storage!r}: choose one of {', '.join(STORAGES)}")
    return TokenTeachers(alpha=alpha, tau=tau, targets=targets, mask=mask, **kept)


def token_kd(student_logits: Tensor, teachers: TokenTeachers, mask: Tensor | None = None) -> Tensor:
    """Per-sample mean over its target tokens of α_t · τ_t² · KL(teacher_t ‖ student_t); ``(N,)``.

    ``mask`` (default: the teachers') limits the tokens, e.g. to an aligned prefix. A sample without tokens
    gives 0.
    """
    mask = teachers.mask if mask is None else mask
    return per_sample(teachers.alpha * token_kl(student_logits, teachers, mask), mask)


def token_kl(student_logits: Tensor, teachers: TokenTeachers, mask: Tensor) -> Tensor:
    """τ_t² · KL(teacher_t ‖ student_t) per target token, 0 outside ``mask`` (a subset of the teachers' mask);
    ``(N, T)`` for ``student_logits`` of ``(N, T, V)``."""
    tau = teachers.tau[teachers.mask].unsqueeze(-1)
    student = student_logits[teachers.mask].float() / tau
    if teachers.ids is None:
        log_teacher = F.log_softmax(_logits(teachers) / tau, dim=-1)
        log_student = F.log_softmax(student, dim=-1)
    else:  # k + 1 buckets on both sides; the teacher's kept logits are already divided by τ
        teacher_buckets = torch.cat([teachers.logits.float(), teachers.rest.unsqueeze(-1)], dim=-1)
        kept = student.gather(-1, teachers.ids.long())
        student_rest = _log_rest(student.logsumexp(-1), kept.logsumexp(-1))
        log_teacher = F.log_softmax(teacher_buckets, dim=-1)
        log_student = F.log_softmax(torch.cat([kept, student_rest.unsqueeze(-1)], dim=-1), dim=-1)
    kl = F.kl_div(log_student, log_teacher, reduction="none", log_target=True).sum(-1)
    per_token = torch.zeros(teachers.mask.shape, dtype=kl.dtype, device=kl.device).masked_scatter(teachers.mask, kl)
    return teachers.tau**2 * per_token * mask


def _logits(teachers: TokenTeachers) -> Tensor:
    """The stored logits (``full``, ``bf16``, ``int8``) as float32, ``(M, V)``."""
    if teachers.grid is None:
        return teachers.logits.float()
    low, step = teachers.grid.unbind(-1)
    return low.unsqueeze(-1) + teachers.logits.float() * step.unsqueeze(-1)


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


def split_teachers(teachers: TokenTeachers) -> list[TokenTeachers]:
    """One ``TokenTeachers`` per sequence (each ``(1, T)``), to be kept by sample and batched again
    (``stack_teachers``) in whatever order the sequences come back."""
    counts = teachers.mask.sum(-1).tolist()

    def rows(tensor: Tensor | None) -> list:
        return [None] * len(counts) if tensor is None else list(tensor.split(counts))

    per_token = [t.split(1) for t in (teachers.alpha, teachers.tau, teachers.targets, teachers.mask)]
    return [TokenTeachers(logits, ids, rest, grid, *positions) for logits, ids, rest, grid, *positions
            in zip(rows(teachers.logits), rows(teachers.ids), rows(teachers.rest), rows(teachers.grid), *per_token)]


def stack_teachers(parts: list[TokenTeachers]) -> TokenTeachers:
    """The teachers of several sequences as one batch, in the order of ``parts``, right-padded (padding positions
    are off the mask, so they hold no rows and never teach)."""
    length = max(part.mask.shape[1] for part in parts)

    def positions(name: str, value) -> Tensor:
        return torch.cat([F.pad(getattr(p, name), (0, length - p.mask.shape[1]), value=value) for p in parts])

    def rows(name: str) -> Tensor | None:
        return None if getattr(parts[0], name) is None else torch.cat([getattr(p, name) for p in parts])

    return TokenTeachers(rows("logits"), rows("ids"), rows("rest"), rows("grid"), alpha=positions("alpha", 0.0),
                         tau=positions("tau", 1.0), targets=positions("targets", 0), mask=positions("mask", False))


def _first_positions(teachers: TokenTeachers, length: int) -> TokenTeachers:
    if length >= teachers.mask.shape[1]:
        return teachers
    kept = teachers.mask.nonzero()[:, 1] < length  # the rows of target tokens before ``length``

    def rows(tensor: Tensor | None) -> Tensor | None:
        return None if tensor is None else tensor[kept]

    return replace(teachers, logits=rows(teachers.logits), ids=rows(teachers.ids), rest=rows(teachers.rest),
                   grid=rows(teachers.grid), alpha=teachers.alpha[:, :length], tau=teachers.tau[:, :length],
                   targets=teachers.targets[:, :length], mask=teachers.mask[:, :length])


def _log_rest(log_total: Tensor, log_kept: Tensor) -> Tensor:
    """log(Σ_all − Σ_kept) from the two log-sums, without cancellation to -inf when the kept tokens hold
    (nearly) all the mass."""
    gap = (log_kept - log_total).clamp(max=-1e-7)
    return log_total + torch.log(-torch.expm1(gap))
