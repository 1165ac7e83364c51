"""Validation: the mean next-token loss of a model over a window dataset."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from ..cpu import auto_dtype, warn_if_bf16_emulated
from ..model import GPT
from .config import DTYPES
from .data import WindowDataset


def autocast_context(device: str, dtype: str):
    """The autocast a `dtype` setting asks for on `device` (none for float32; 'auto' is
    bfloat16 where the device does bf16 arithmetic, else float32). bfloat16 on a CPU that
    would emulate it warns first (llm.cpu)."""
    if dtype == "auto":
        dtype = auto_dtype(device)
    if DTYPES[dtype] is None:
        return nullcontext()
    device_type = torch.device(device).type
    if device_type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("bfloat16 autocast is not supported on this CUDA device; use dtype='float32'")
    warn_if_bf16_emulated("bfloat16 autocast", device, "use dtype='float32' (or 'auto')")
    return torch.autocast(device_type=device_type, dtype=getattr(torch, DTYPES[dtype]))


@torch.no_grad()
def evaluate(model: GPT, dataset: WindowDataset, batch_size: int = 8, max_batches: int | None = None,
             device: str | None = None, dtype: str = "float32") -> float:
    """Mean next-token loss over the dataset's windows in order (the first max_batches batches)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if max_batches is not None and (isinstance(max_batches, bool) or not isinstance(max_batches, int)
                                    or max_batches < 1):
        raise ValueError(f"max_batches must be a positive integer or None, got {max_batches!r}")
    device = device or str(model.transformer.wte.weight.device)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    n = len(dataset) if max_batches is None else min(len(dataset), max_batches * batch_size)
    for start in range(0, n, batch_size):
        items = [dataset[i] for i in range(start, min(n, start + batch_size))]
        x = torch.stack([a for a, _ in items]).to(device)
        y = torch.stack([b for _, b in items]).to(device)
        with autocast_context(device, dtype):
            loss = model.loss(x, y)
        total += float(loss) * len(items)  # weighted: the last batch may be shorter
        count += len(items)
    model.train(was_training)  # called mid-training: leave the mode as it was
    return total / count
