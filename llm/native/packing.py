"""Weights packed for the C++ kernels, built once and reused until the tensors change.

`packed_weight` packs one linear weight for `torch.ops.llm.packed_linear` (the op table's
linear and mlp on CPU); `pack_model` packs a whole GPT into a `torch.classes.llm.GPTWeights`
for the C++ decoder. Both key their cache on what identifies a tensor's contents cheaply
(storage, version counter, dtype, shape), so an in-place update or a replaced parameter
triggers a repack.
"""

from __future__ import annotations

import os
import threading
import weakref

import torch
from torch.utils.weak import WeakIdKeyDictionary

from . import WEIGHT_FORMATS, extension

_packed_models: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_packed_linears = WeakIdKeyDictionary()  # tensors compare by value, so key on identity
_lock = threading.Lock()  # generation may run in several threads on one model


def _stamp(t: torch.Tensor):
    """What identifies a tensor's current contents cheaply: storage, version counter, dtype,
    shape, and a checksum of a strided sample of its values. The version counter sees
    in-place ops on the tensor itself; the sample sees writes that bypass it (`p.data`,
    inference tensors, which have no counter) whenever they change a sampled value, as
    loading other weights or an optimizer step does. A write that changes only values
    between the samples, through `.data`, is the one change this does not see."""
    version = None if t.is_inference() else t._version
    return (t.data_ptr(), version, t.dtype, tuple(t.shape), _sample_checksum(t))


def _sample_checksum(t: torch.Tensor, n: int = 61) -> float:
    t = t.detach()
    # dims in memory order: a transposed weight (a view, as transformers' Conv1D gives) is
    # then flattened as a view too, not copied on every call
    t = t.permute(*sorted(range(t.dim()), key=lambda d: -t.stride(d)))
    flat = t.reshape(-1)
    if flat.numel() == 0:
        return 0.0
    step = max(1, flat.numel() // n)
    sample = flat[::step].double()
    weights = torch.arange(1, sample.numel() + 1, dtype=torch.float64)
    return float((sample * weights).sum())


def _model_stamp(model):
    return tuple(_stamp(p) for p in model.parameters())


def packed_weight(weight: torch.Tensor):
    """(packed, scales) of a [N, K] CPU weight in its own dtype, packed once and reused
    until the tensor changes (in place or by replacement)."""
    key = _stamp(weight)
    with _lock:
        hit = _packed_linears.get(weight)
    if hit is not None and hit[0] == key:
        return hit[1]
    fmt = "bfloat16" if weight.dtype == torch.bfloat16 else "float32"
    packed = torch.ops.llm.pack_linear_weight(weight.detach().contiguous(), fmt)
    with _lock:
        _packed_linears[weight] = (key, packed)
    return packed


def resolve_weight_format(model, requested: str | None = None) -> str:
    """The decoder's weight format: `requested`, else $LLM_NATIVE_WEIGHTS, else the model's
    dtype (bfloat16 or float32)."""
    fmt = requested or os.environ.get("LLM_NATIVE_WEIGHTS", "") or None
    if fmt is None:
        fmt = "bfloat16" if model.transformer.wte.weight.dtype == torch.bfloat16 else "float32"
    if fmt not in WEIGHT_FORMATS:
        raise ValueError(f"unknown native weight format {fmt!r}; choose one of {WEIGHT_FORMATS}")
    return fmt


def _model_tensors(model) -> list[torch.Tensor]:
    """Every block's 12 tensors in the order `GPTWeights` reads them (empty: no bias)."""
    empty = torch.empty(0)

    def t(p):
        return empty if p is None else p.detach()

    tensors = []
    for block in model.transformer.h:
        a, m = block.attn, block.mlp
        tensors += [t(block.ln_1.weight), t(block.ln_1.bias), t(a.c_attn.weight), t(a.c_attn.bias),
                    t(a.c_proj.weight), t(a.c_proj.bias), t(block.ln_2.weight), t(block.ln_2.bias),
                    t(m.c_fc.weight), t(m.c_fc.bias), t(m.c_proj.weight), t(m.c_proj.bias)]
    return tensors


def pack_model(model, weight_format: str | None = None):
    """The model's weights packed for `llm.Decoder` (a `torch.classes.llm.GPTWeights`), built
    once per model and format and rebuilt when a parameter changes."""
    extension()
    fmt = resolve_weight_format(model, weight_format)
    stamp = _model_stamp(model)
    with _lock:
        cache = _packed_models.setdefault(model, {})
        for f in [f for f, (s, _) in cache.items() if s != stamp]:
            del cache[f]  # weights changed: drop every stale packed copy
        if fmt in cache:
            return cache[fmt][1]
    tr, c = model.transformer, model.config
    with torch.inference_mode():
        weights = torch.classes.llm.GPTWeights(
            c.n_head, float(c.layer_norm_epsilon), tr.wte.weight.detach(), tr.wpe.weight.detach(),
            _model_tensors(model), tr.ln_f.weight.detach(),
            torch.empty(0) if tr.ln_f.bias is None else tr.ln_f.bias.detach(), fmt,
            None if c.tie_word_embeddings else model.lm_head.weight.detach())
    with _lock:
        _packed_models.setdefault(model, {})[fmt] = (stamp, weights)
    return weights


def weight_bytes(weights) -> int:
    """Bytes of packed weights one decode step streams (linear layers and lm_head)."""
    return int(weights.streamed_bytes())
