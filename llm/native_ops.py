"""The `native` backend: the C++/CUDA extension `llm._C` (sources in `csrc/`).

`load()` imports the extension (raising BackendUnavailableError saying why when it is not
built), registers the fake implementations torch.compile needs, and returns the op table:
layer_norm, linear, mlp, attention and cached_attention run the `torch.ops.llm` kernels
for inputs they cover (CPU fp32/bf16, or CUDA where the CUDA kernels were built, and no
gradient needed); anything else (training backward, dropout, other dtypes, the loss) runs
the torch reference. Generation on CPU goes through `make_decoder`: a C++ `llm.Decoder`
that owns a static KV cache and runs the whole model per call on weights packed once.

Weight format of the decoder: the model's dtype (float32 or bfloat16), or
$LLM_NATIVE_WEIGHTS = float32 | bfloat16 | int8 (int8: per-channel symmetric scales).
"""

from __future__ import annotations

import os
import weakref

import torch
import torch.nn.functional as F
from torch.utils.weak import WeakIdKeyDictionary

from . import ops as ref
from .ops import BackendUnavailableError, OpTable

WEIGHT_FORMATS = ("float32", "bfloat16", "int8")
_FLOAT_DTYPES = (torch.float32, torch.bfloat16)
_state = {"fakes": False}
# packed weights, cached per model / per weight tensor and rebuilt when the tensors change
_packed_models: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_packed_linears = WeakIdKeyDictionary()  # tensors compare by value, so key on identity


def extension():
    """The loaded `llm._C` module; BackendUnavailableError saying why when it cannot load."""
    try:
        from . import _C  # noqa: F401  (loading it registers torch.ops.llm)
    except (ImportError, OSError) as e:
        if os.environ.get("LLM_SKIP_NATIVE", "0") not in ("", "0"):
            why = "it was not built (LLM_SKIP_NATIVE is set)"
        else:
            why = "it is not built or cannot load"
        raise BackendUnavailableError(
            f"backend 'native' is not available: the C++ extension llm._C {why} ({e}). "
            f"Build it with `pip install --no-build-isolation -e .` (needs a C++ compiler and torch)."
        ) from e
    return _C


def has_cuda_kernels() -> bool:
    extension()
    return bool(torch.ops.llm.has_cuda_kernels())


def cpu_isa() -> str:
    """The instruction set the CPU kernels use now: 'avx512_bf16', 'avx512' or 'portable'."""
    extension()
    return torch.ops.llm.cpu_isa()


def set_cpu_isa(name: str) -> None:
    """Use a lower instruction set than the CPU's best (e.g. to test the portable code)."""
    extension()
    torch.ops.llm.set_cpu_isa(name)


# -- fake implementations (shapes only) for torch.compile ------------------------------------


def _register_fakes() -> None:
    if _state["fakes"]:
        return
    reg = torch.library.register_fake

    @reg("llm::pack_linear_weight")
    def _pack(weight, format):
        n, k = weight.shape
        tiles = (n + 63) // 64
        if format == "bfloat16":
            packed = weight.new_empty((tiles, (k + 1) // 2, 64, 2), dtype=torch.bfloat16)
        else:
            packed = weight.new_empty((tiles, k, 64), dtype=torch.int8 if format == "int8" else torch.float32)
        scales = weight.new_empty((tiles * 64 if format == "int8" else 0,), dtype=torch.float32)
        return packed, scales

    @reg("llm::packed_linear")
    def _packed_linear(x, packed, scales, n, bias=None, residual=None, activation="none"):
        return x.new_empty((*x.shape[:-1], n))

    @reg("llm::layer_norm")
    def _layer_norm(x, weight, bias, eps):
        return torch.empty_like(x)

    @reg("llm::add_layer_norm")
    def _add_layer_norm(x, residual, weight, bias, eps):
        return torch.empty_like(x), torch.empty_like(x)

    @reg("llm::bias_gelu")
    def _bias_gelu(x, bias):
        return torch.empty_like(x)

    @reg("llm::cached_attention")
    def _cached_attention(q, k_cache, v_cache, q_pos, key_valid):
        return torch.empty_like(q)

    @reg("llm::kv_append")
    def _kv_append(k_cache, v_cache, k, v, pos):
        return None

    @reg("llm::sample_top_k_top_p")
    def _sample(logits, uniform, temperature, top_k, top_p):
        return logits.new_empty((logits.shape[0],), dtype=torch.long)

    _state["fakes"] = True


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


def _stamp(t: torch.Tensor):
    """What identifies a tensor's current contents cheaply: storage, version counter (inference
    tensors have none: their in-place changes go unseen), dtype and shape."""
    return (t.data_ptr(), None if t.is_inference() else t._version, t.dtype, tuple(t.shape))


def packed_weight(weight: torch.Tensor):
    """(packed, scales) of a [N, K] CPU weight in its own dtype, packed once and reused
    until the tensor changes (in place or by replacement)."""
    key = _stamp(weight)
    hit = _packed_linears.get(weight)
    if hit is not None and hit[0] == key:
        return hit[1]
    fmt = "bfloat16" if weight.dtype == torch.bfloat16 else "float32"
    packed = torch.ops.llm.pack_linear_weight(weight.detach().contiguous(), fmt)
    _packed_linears[weight] = (key, packed)
    return packed


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
    if _covered(q, k_cache, v_cache):
        kv = None if key_valid is None else key_valid.to(torch.bool)
        return torch.ops.llm.cached_attention(q.contiguous(), k_cache.contiguous(), v_cache.contiguous(),
                                              q_pos.long(), kv)
    return ref.cached_attention(q, k_cache, v_cache, q_pos, key_valid)


def attention(q, k, v, key_padding_mask=None, dropout_p=0.0):
    # Causal self-attention is cached attention with the sequence as the cache.
    if dropout_p == 0.0 and _covered(q, k, v):
        pos = torch.arange(q.shape[-2], device=q.device)
        return cached_attention(q, k, v, pos, key_padding_mask)
    return ref.attention(q, k, v, key_padding_mask, dropout_p)


# -- whole-model decoding --------------------------------------------------------------------


def _weight_format(model, weight_format):
    if weight_format is None:
        weight_format = os.environ.get("LLM_NATIVE_WEIGHTS", "") or None
    if weight_format is None:
        weight_format = "bfloat16" if model.transformer.wte.weight.dtype == torch.bfloat16 else "float32"
    if weight_format not in WEIGHT_FORMATS:
        raise ValueError(f"unknown native weight format {weight_format!r}; choose one of {WEIGHT_FORMATS}")
    return weight_format


def pack_model(model, weight_format: str | None = None):
    """The model's weights packed for `llm.Decoder` (a `torch.classes.llm.GPTWeights`), built
    once per model and format and rebuilt when a parameter changes."""
    extension()
    fmt = _weight_format(model, weight_format)
    stamp = tuple(_stamp(p) for p in model.parameters())
    cache = _packed_models.setdefault(model, {})
    for f in [f for f, (s, _) in cache.items() if s != stamp]:
        del cache[f]  # weights changed: drop every stale packed copy
    if fmt in cache:
        return cache[fmt][1]
    empty = torch.empty(0)

    def t(p):
        return empty if p is None else p.detach()

    tensors = []
    for block in model.transformer.h:
        a, m = block.attn, block.mlp
        tensors += [t(block.ln_1.weight), t(block.ln_1.bias), t(a.c_attn.weight), t(a.c_attn.bias),
                    t(a.c_proj.weight), t(a.c_proj.bias), t(block.ln_2.weight), t(block.ln_2.bias),
                    t(m.c_fc.weight), t(m.c_fc.bias), t(m.c_proj.weight), t(m.c_proj.bias)]
    tr = model.transformer
    with torch.inference_mode():
        weights = torch.classes.llm.GPTWeights(
            model.config.n_head, float(model.config.layer_norm_epsilon), t(tr.wte.weight), t(tr.wpe.weight),
            tensors, t(tr.ln_f.weight), t(tr.ln_f.bias), fmt)
    cache[fmt] = (stamp, weights)
    return weights


class NativeDecoder:
    """GPT's `prefill` / `decode_one_token` on a C++ `llm.Decoder` (KV cache for
    `batch_size` rows and `max_seq_len` slots); logits come back as float32 [B, vocab]."""

    def __init__(self, model, batch_size: int, max_seq_len: int, weight_format: str | None = None):
        self.weights = pack_model(model, weight_format)
        self.decoder = torch.classes.llm.Decoder(self.weights, batch_size, max_seq_len)

    def prefill(self, input_ids, input_pos, position_ids, key_valid=None):
        return self.decoder.prefill(input_ids.long(), input_pos.long(), position_ids.long(), key_valid)

    def decode_one_token(self, token, input_pos, position_ids, key_valid=None):
        return self.decoder.decode_one_token(token.long(), input_pos.long(), position_ids.long(), key_valid)


class _ModuleDecoder:
    """Models the C++ decoder does not cover (on a GPU, float16): the op table's modules
    with a torch KV cache, as GPT runs without a decoder."""

    def __init__(self, model, batch_size, max_seq_len):
        from .model import KVCache

        self.model = model
        p, c = model.transformer.wte.weight, model.config
        for block in model.transformer.h:
            block.attn.kv_cache = KVCache(batch_size, c.n_head, max_seq_len, c.head_dim, p.dtype, p.device)

    def prefill(self, input_ids, input_pos, position_ids, key_valid=None):
        return self.model.forward_cached(input_ids, input_pos, position_ids, key_valid)

    decode_one_token = prefill


def make_decoder(model, batch_size, max_seq_len):
    p = model.transformer.wte.weight
    if p.device.type == "cpu" and p.dtype in _FLOAT_DTYPES:
        return NativeDecoder(model, batch_size, max_seq_len)
    return _ModuleDecoder(model, batch_size, max_seq_len)


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


def weight_bytes(weights) -> int:
    """Bytes of packed weights one decode step streams (linear layers and lm_head)."""
    return int(weights.streamed_bytes())


__all__ = ["load", "make_decoder", "NativeDecoder", "pack_model", "packed_weight", "cpu_isa", "set_cpu_isa",
           "has_cuda_kernels", "extension", "WEIGHT_FORMATS", "weight_bytes"]
