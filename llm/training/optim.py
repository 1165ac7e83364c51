"""The optimizer's parameter groups and the learning-rate schedule."""

from __future__ import annotations

import math

import torch.nn as nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on Linear weights; none on biases, norms and embeddings.

    A tied lm_head weight is the token embedding, so it is not decayed; an untied lm_head
    is a Linear like the others.
    """
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            if isinstance(module, nn.Linear) and name == "weight" and id(p) not in embeddings:
                decay.append(p)
            else:
                no_decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based): linear warmup, cosine."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
