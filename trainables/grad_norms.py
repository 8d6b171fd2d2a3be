"""Per-layer gradient norms, as in DynSDPB's Figures 2/4/5: one scalar per layer group, log10 scale.

Groups: ``embeddings``, ``block_00`` … (each transformer block), ``head`` (pooler, final norm, classifier).
A group's value is log10 of the mean |grad| over all its parameter entries.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def layer_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters by layer group, in model order: embeddings, blocks, head."""
    blocks = transformer_blocks(model)
    groups: dict[str, list[nn.Parameter]] = {"embeddings": []}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if blocks and name.startswith(blocks + "."):
            group = f"block_{int(name[len(blocks) + 1:].split('.')[0]):02d}"
        elif "embed" in name:
            group = "embeddings"
        else:
            group = "head"
        groups.setdefault(group, []).append(parameter)
    head = groups.pop("head", [])
    return {name: params for name, params in {**groups, "head": head}.items() if params}


def transformer_blocks(model: nn.Module) -> str | None:
    """Name of the ModuleList holding the transformer blocks (as many entries as config.num_hidden_layers)."""
    count = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return name
    return None


@torch.no_grad()
def log10_grad_norms(groups: dict[str, list[nn.Parameter]]) -> dict[str, float]:
    """``{"grad_norm/<group>": log10 mean |grad|}``, read after backward and before clipping."""
    sums, counts = [], []
    for params in groups.values():
        grads = [p.grad for p in params if p.grad is not None]
        sums.append(torch.stack([g.float().abs().sum() for g in grads]).sum() if grads else torch.zeros(()))
        counts.append(sum(g.numel() for g in grads))
    values = torch.stack([s.cpu() for s in sums]).tolist()  # one device sync for all groups
    return {f"grad_norm/{group}": math.log10(total / count) if count and total > 0 else float("-inf")
            for group, total, count in zip(groups, values, counts)}
