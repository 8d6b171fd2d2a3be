"""DLB batching: each optimizer step sees the samples it revisits from the previous step, plus fresh ones.

Step t trains on R_t ∪ F_t. F_t are the next samples of the epoch's shuffled order (every sample is fresh
exactly once an epoch); R_t are samples of step t-1, whose teacher is the logits they got in step t-1's own
forward pass — stored detached, so no extra forward pass is ever run. ``reuse="previous"`` revisits step
t-1's fresh samples (R_t = F_{t-1}); ``reuse="random"`` revisits a random half-batch of step t-1 ("Random
DLB"). Step 1 revisits nothing, and the teachers carry across epoch boundaries.

Grouped by length (``training.group_by_length``), the epoch's shuffled order is cut into groups of
``GROUP_BATCHES`` batches and each group is sorted longest first, as transformers' ``group_by_length``: a batch
holds samples of similar lengths, and so does the step after it, whose batch it shares on DLB batches.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor


GROUP_BATCHES = 50  # batches a length-sorted group holds (transformers' LengthGroupedSampler uses 50 too)


def fresh_batches(num_samples: int, size: int, generator: torch.Generator,
                  lengths: Tensor | None = None) -> list[Tensor]:
    """One epoch of sample indices in a seeded random order, cut into batches of ``size`` (``cut_batches``)."""
    return cut_batches(torch.randperm(num_samples, generator=generator), size, lengths)


def cut_batches(order: Tensor, size: int, lengths: Tensor | None = None) -> list[Tensor]:
    """``order`` cut into batches of ``size``; with the samples' ``lengths``, each group of ``GROUP_BATCHES``
    batches is sorted longest first before it is cut."""
    if lengths is None:
        return list(order.split(size))
    groups = order.split(GROUP_BATCHES * size)
    return [batch for group in groups
            for batch in group[torch.argsort(lengths[group], descending=True, stable=True)].split(size)]


def revisited(num_ids: int, num_fresh: int, size: int, reuse: Literal["previous", "random"],
              generator: torch.Generator) -> Tensor:
    """Positions in this step's batch (revisited first, then ``num_fresh`` fresh) that the next step revisits."""
    if reuse == "previous":
        return torch.arange(num_ids - num_fresh, num_ids)
    return torch.randperm(num_ids, generator=generator)[:size]

