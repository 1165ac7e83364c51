"""The op table: every piece of layernorm, attention and MLP math the model does.

The model calls `ops.layer_norm`, `ops.attention`, ... on the `OpTable` it was built with;
backends fill the table. This file holds the registry and the `torch` backend, which is
the readable definition of every op: tests and benchmarks import it as the baseline.

Shapes (B batch, T tokens, C channels, nh heads, hs head size, S cache length):
  layer_norm(x[..., C], weight[C], bias[C] | None, eps) -> [..., C]
  linear(x[..., K], weight[N, K], bias[N] | None) -> [..., N]
  mlp(x[..., C], fc_w[H, C], fc_b[H], proj_w[C, H], proj_b[C]) -> [..., C]
      = proj(gelu_tanh(fc(x)))
  attention(q, k, v [B, nh, T, hs], key_padding_mask[B, T] bool | None, dropout_p) -> [B, nh, T, hs]
      causal; key_padding_mask is True for real tokens.
  cached_attention(q[B, nh, Tq, hs], k_cache, v_cache[B, nh, S, hs], q_pos[Tq] long,
                   key_valid[B, S] bool | None) -> [B, nh, Tq, hs]
      query i sits at cache slot q_pos[i] and sees slots <= q_pos[i] that are valid.
  lm_head_loss(h[N, C], weight[V, C], targets[N] long, ignore_index) -> scalar
      mean cross-entropy of h @ weight.T over targets != ignore_index.
A backend may also provide `make_decoder` (see OpTable) to run generation its own way.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


@dataclass(frozen=True)
class OpTable:
    name: str
    layer_norm: Callable
    linear: Callable
    mlp: Callable
    attention: Callable
    cached_attention: Callable
    lm_head_loss: Callable
    # Optional whole-model decoder for generation: make_decoder(model, batch_size,
    # max_seq_len) -> object with prefill(...) and decode_one_token(...) of the same
    # signatures as GPT's (e.g. the native backend's C++ object owning packed weights and
    # the KV cache). None: generation runs the modules above with a torch KV cache.
    make_decoder: Callable | None = None

    def replace(self, **ops) -> "OpTable":
        """A copy with some ops swapped: how a backend fills what it lacks from another."""
        return replace(self, **ops)


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run here (missing package, device, build)."""


# -- the torch reference ---------------------------------------------------------------------


def layer_norm(x, weight, bias, eps):
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def linear(x, weight, bias=None):
    return F.linear(x, weight, bias)


def gelu_tanh(x):
    """GPT-2's GELU: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return F.gelu(x, approximate="tanh")


def mlp(x, fc_w, fc_b, proj_w, proj_b):
    return F.linear(gelu_tanh(F.linear(x, fc_w, fc_b)), proj_w, proj_b)


def causal_mask(q_pos, S, key_valid=None):
    """Boolean mask [B or 1, 1, Tq, S]: True where query i may attend to cache slot j.

    A query always sees its own slot, so a padding query (which sees no valid key) gets a
    finite output instead of NaN; real queries are unaffected.
    """
    slots = torch.arange(S, device=q_pos.device)
    mask = slots[None, :] <= q_pos[:, None]  # (Tq, S)
    if key_valid is not None:
        own = slots[None, :] == q_pos[:, None]
        mask = (mask[None] & key_valid[:, None, :]) | own[None]  # (B, Tq, S)
    else:
        mask = mask[None]  # (1, Tq, S)
    return mask[:, None]  # (B or 1, 1, Tq, S)


def attention(q, k, v, key_padding_mask=None, dropout_p=0.0):
    if key_padding_mask is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
    T = q.shape[-2]
    pos = torch.arange(T, device=q.device)
    mask = causal_mask(pos, T, key_padding_mask.to(torch.bool))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


def cached_attention(q, k_cache, v_cache, q_pos, key_valid=None):
    mask = causal_mask(q_pos, k_cache.shape[-2], key_valid)
    return F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=mask)


def lm_head_loss(h, weight, targets, ignore_index=IGNORE_INDEX):
    logits = F.linear(h, weight)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # the softmax over the vocabulary in fp32
    return F.cross_entropy(logits, targets, ignore_index=ignore_index)


TORCH_OPS = OpTable(
    name="torch",
    layer_norm=layer_norm,
    linear=linear,
    mlp=mlp,
    attention=attention,
    cached_attention=cached_attention,
    lm_head_loss=lm_head_loss,
)


# -- registry --------------------------------------------------------------------------------

# name -> module that defines `load() -> OpTable` (raising BackendUnavailableError when it
# cannot run here). Modules import lazily: `import llm` never imports triton or llm._C.
_BACKEND_MODULES: dict[str, str] = {
    "triton": "llm.triton_ops",
    "native": "llm.native_ops",
}
_LOADERS: dict[str, Callable[[], OpTable]] = {"torch": lambda: TORCH_OPS}


def auto_order() -> tuple[str, ...]:
    """The backends `auto` tries, best first: Triton only where there is a CUDA device."""
    if torch.cuda.is_available():
        return ("triton", "native", "torch")
    return ("native", "torch")


def register_backend(name: str, loader: Callable[[], OpTable]) -> None:
    """Add a backend: `loader()` returns its OpTable or raises BackendUnavailableError."""
    _LOADERS[name] = loader


def available_backends() -> list[str]:
    """Every backend name `get_ops` accepts (whether or not it can run here)."""
    return sorted({"auto", *_LOADERS, *_BACKEND_MODULES})


def _load(name: str) -> OpTable:
    if name in _LOADERS:
        return _LOADERS[name]()
    module_name = _BACKEND_MODULES[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise BackendUnavailableError(f"backend {name!r} is not available: {e}") from e
    return module.load()


def get_ops(name: str | None = None) -> OpTable:
    """The op table of backend `name` (default: $LLM_BACKEND, else 'torch').

    'auto' takes the first of `auto_order()` that can run here. An explicit backend that
    cannot run raises BackendUnavailableError saying why.
    """
    if name is None:
        name = os.environ.get("LLM_BACKEND", "torch")
    if name not in available_backends():
        raise ValueError(f"unknown backend {name!r}; valid backends: {available_backends()}")
    if name != "auto":
        return _load(name)
    for candidate in auto_order():
        try:
            return _load(candidate)
        except BackendUnavailableError:
            continue
    return TORCH_OPS
