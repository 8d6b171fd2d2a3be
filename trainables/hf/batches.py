"""DLB batches for a ``transformers.Trainer``: a batch sampler whose batches are lists of ``Visit``s.

Every optimizer step of every device sees B/2 samples revisited from *that device's* previous optimizer step and
B/2 fresh ones, exactly as the recipe's steps do (``trainables/batching.py``; one device and no accumulation give
the recipe's very batches for the same seed):
- **gradient accumulation**: a step's B samples are split into ``micro_batches`` micro-batches, each with its share
  of the revisited and of the fresh samples; the revisit is across optimizer steps, never between micro-batches;
- **several processes** (DDP through accelerate): accelerate hands batch i of a batch sampler to process
  i mod W. The sampler therefore interleaves W streams, one per process, so that each process's consecutive
  steps overlap. Each epoch's shuffled order is dealt out to the processes (sample i of the order to process
  i mod W; a process short of one sample repeats its first), so the processes share no fresh sample;
- **group_by_length**: each process's fresh samples are grouped by length as the recipe groups them;
- the epoch is set by the Trainer (``set_epoch``); the schedule is replayed from the seed, so the batches of a
  resumed run are those the uninterrupted run would have seen.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from trainables.batching import cut_batches, revisited


class Visit(NamedTuple):
    """One sample in one optimizer step's batch."""

    index: int  # the sample's row in the training data set
    teacher: int  # the slot of its teacher among the previous step's kept logits; -1 when it is fresh
    keep: int  # the slot its logits are kept under to teach it in the next step; -1 when it is not revisited


class DLBBatchSampler:
    def __init__(self, num_samples: int, batch_size: int, reuse: Literal["previous", "random"], seed: int,
                 micro_batches: int = 1, world_size: int = 1, lengths: Tensor | None = None) -> None:
        """``batch_size`` is B, the samples of one device's optimizer step; ``micro_batches`` the gradient
        accumulation steps it is split into; ``lengths`` (tokens per sample) groups batches by length."""
        self.num_samples, self.half, self.reuse, self.seed = num_samples, batch_size // 2, reuse, seed
        self.micro_batches, self.world_size, self.lengths = micro_batches, world_size, lengths
        self.samples_per_rank = math.ceil(num_samples / world_size)
        self.steps_per_epoch = math.ceil(self.samples_per_rank / self.half)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps_per_epoch * self.micro_batches * self.world_size

    def __iter__(self) -> Iterator[list[Visit]]:
        for epoch, steps in enumerate(self._epochs()):
            if epoch < self.epoch:
                for _ in steps:  # replayed: its draws and its last kept samples carry into the next epoch
                    pass
                continue
            for ranks in steps:  # one optimizer step: for each micro-batch, each process's share in turn
                split = [_micro_batches(visits, self.micro_batches) for visits in ranks]
                for micro in range(self.micro_batches):
                    yield from (batches[micro] for batches in split)

    def _epochs(self) -> Iterator[Iterator[list[list[Visit]]]]:
        """Epoch after epoch from the seed, each an iterator over its steps, each step a list (one per process) of
        that process's visits, revisited first. One generator draws everything in the recipe's order."""
        generator = torch.Generator().manual_seed(self.seed)
        kept: list[Tensor] = [torch.empty(0, dtype=torch.long)] * self.world_size  # per process, by slot

        def steps(fresh_by_rank: list[list[Tensor]]) -> Iterator[list[list[Visit]]]:
            for step in range(self.steps_per_epoch):
                ranks = []
                for rank, batches in enumerate(fresh_by_rank):
                    taught, fresh = kept[rank], batches[step]
                    ids = torch.cat([taught, fresh])
                    positions = revisited(len(ids), len(fresh), self.half, self.reuse, generator)
                    slot = dict(zip(positions.tolist(), range(len(positions))))
                    ranks.append([Visit(index, position if position < len(taught) else -1, slot.get(position, -1))
                                  for position, index in enumerate(ids.tolist())])
                    kept[rank] = ids[positions]
                yield ranks

        for _ in range(self.epoch + 1):
            order = torch.randperm(self.num_samples, generator=generator)
            parts = [order[rank::self.world_size] for rank in range(self.world_size)]
            parts = [torch.cat([part, part[:self.samples_per_rank - len(part)]]) for part in parts]
            fresh_by_rank = [cut_batches(part, self.half, self.lengths) for part in parts]
            yield steps(fresh_by_rank)


def _micro_batches(visits: list[Visit], count: int) -> list[list[Visit]]:
    """A step's visits in ``count`` micro-batches, each with its share of the revisited and of the fresh ones."""
    taught = [v for v in visits if v.teacher >= 0]
    fresh = [v for v in visits if v.teacher < 0]
    return [_part(taught, count, i) + _part(fresh, count, i) for i in range(count)]


def _part(items: list, count: int, i: int) -> list:
    """The ``i``-th of ``count`` nearly equal consecutive parts of ``items``."""
    size, extra = divmod(len(items), count)
    start = i * size + min(i, extra)
    return items[start:start + size + (i < extra)]
