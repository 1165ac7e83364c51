"""The `native` backend's op table: the `torch.ops.llm` kernels of the C++/CUDA extension
(`llm.native`, sources in `csrc/`) and the fake implementations torch.compile traces.

layer_norm, linear, mlp, attention and cached_attention run the kernels for inputs they
cover (CPU float32/bfloat16, or CUDA where the CUDA kernels were built, and no gradient
needed); anything else (training backward, dropout, other dtypes, the loss) runs the torch
reference. Generation on CPU goes through `make_decoder` (`llm/native/decoder.py`).
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F

from ..native import extension
from ..native.decoder import make_decoder
from ..native.packing import packed_weight
from . import OpTable
from . import reference as ref

_FLOAT_DTYPES = (torch.float32, torch.bfloat16)
_fakes_lock = threading.Lock()
_state = {"fakes": False}


# -- fake implementations (shapes only) for torch.compile ------------------------------------


def _register_fakes() -> None:
    with _fakes_lock:
        if not _state["fakes"]:
            _register_fakes_once()
            _state["fakes"] = True


def _register_fakes_once() -> None:
    reg = torch.library.register_fake

    @reg("llm::pack_linear_weight")
    def _pack(weight, format):
        n, k = weight.shape
        tiles = (n + 63) // 64
        if format == "bfloat16":
            packed = weight.new_empty((tiles, (k + 1) // 2, 64, 2), dtype=torch.bfloat16)
        elif format == "int8":  # quads of k, then one quad row holding the columns' int32 sums
            packed = weight.new_empty((tiles, (k + 3) // 4 + 1, 64, 4), dtype=torch.int8)
        else:
            packed = weight.new_empty((tiles, k, 64), dtype=torch.float32)
        scales = weight.new_empty((tiles * 64 if format == "int8" else 0,), dtype=torch.float32)
        return packed, scales

    @reg("llm::packed_linear")
    def _packed_linear(x, packed, scales, n, bias=None, residual=None, activation="none"):
        return x.new_empty((*x.shape[:-1], n))

    @reg("llm::layer_norm")
    def _layer_norm(x, weight, bias, eps):
        return torch.empty_like(x)

    @reg("llm::bias_gelu")
    def _bias_gelu(x, bias):
        return torch.empty_like(x)

    @reg("llm::cached_attention")
    def _cached_attention(q, k_cache, v_cache, q_pos, key_valid):
        return torch.empty_like(q)


# -- op table entries ------------------------------------------------------------------------


def _covered(*tensors) -> bool:
    """True when the native kernels take these inputs: one float dtype, one supported
    device, no gradient to compute."""
    ts = [t for t in tensors if t is not None]
    dtype, device = ts[0].dtype, ts[0].device
    if dtype not in _FLOAT_DTYPES or any(t.dtype != dtype or t.device != device for t in ts):
        return False
    if device.type == "cuda":
        if not torch.ops.llm.has_cuda_kernels():
            return False
    elif device.type != "cpu":
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in ts))


def layer_norm(x, weight, bias, eps):
    if _covered(x, weight, bias):
        return torch.ops.llm.layer_norm(x, weight, bias, eps)
    return ref.layer_norm(x, weight, bias, eps)


def linear(x, weight, bias=None):
    if x.device.type == "cpu" and _covered(x, weight, bias) and x.shape[-1] > 0:
        packed, scales = packed_weight(weight)
        return torch.ops.llm.packed_linear(x, packed, scales, weight.shape[0], bias)
    return ref.linear(x, weight, bias)


def mlp(x, fc_w, fc_b, proj_w, proj_b):
    if x.device.type == "cpu" and _covered(x, fc_w, fc_b, proj_w, proj_b):
        p, s = packed_weight(fc_w)
        h = torch.ops.llm.packed_linear(x, p, s, fc_w.shape[0], fc_b, None, "gelu_tanh")
        p, s = packed_weight(proj_w)
        return torch.ops.llm.packed_linear(h, p, s, proj_w.shape[0], proj_b)
    if x.device.type == "cuda" and _covered(x, fc_w, fc_b):
        return F.linear(torch.ops.llm.bias_gelu(F.linear(x, fc_w), fc_b), proj_w, proj_b)
    return ref.mlp(x, fc_w, fc_b, proj_w, proj_b)


def cached_attention(q, k_cache, v_cache, q_pos, key_valid=None):
    if q_pos.dim() == 1 and _covered(q, k_cache, v_cache):  # the kernel takes shared slots
        kv = None if key_valid is None else key_valid.to(torch.bool)
        return torch.ops.llm.cached_attention(q.contiguous(), k_cache.contiguous(), v_cache.contiguous(),
                                              q_pos.long(), kv)
    return ref.cached_attention(q, k_cache, v_cache, q_pos, key_valid)


def attention(q, k, v, key_valid=None, dropout_p=0.0):
    # Causal self-attention is cached attention with the sequence as the cache.
    if dropout_p == 0.0 and _covered(q, k, v):
        pos = torch.arange(q.shape[-2], device=q.device)
        return cached_attention(q, k, v, pos, key_valid)
    return ref.attention(q, k, v, key_valid, dropout_p)


def load() -> OpTable:
    extension()
    _register_fakes()
    return ref.TORCH_OPS.replace(
        name="native",
        layer_norm=layer_norm,
        linear=linear,
        mlp=mlp,
        attention=attention,
        cached_attention=cached_attention,
        make_decoder=make_decoder,
    )
