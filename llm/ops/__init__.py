"""The op table: every piece of layernorm, attention and MLP math the model does.

The model calls `ops.layer_norm`, `ops.attention`, ... on the `OpTable` it was built with;
backends fill the table: `torch` (`reference.py`, the readable definition of every op, and
the baseline of tests and benchmarks), `triton` (`triton.py`), `native` (`native.py`).
This file holds the table, the `Decoder` protocol and the registry.

Shapes (B batch, T tokens, C channels, nh heads, hs head size, S cache length):
  layer_norm(x[..., C], weight[C], bias[C] | None, eps) -> [..., C]
  linear(x[..., K], weight[N, K], bias[N] | None) -> [..., N]
  mlp(x[..., C], fc_w[H, C], fc_b[H], proj_w[C, H], proj_b[C]) -> [..., C]
      = proj(gelu_tanh(fc(x)))
  attention(q, k, v [B, nh, T, hs], key_valid[B, T] bool | None, dropout_p) -> [B, nh, T, hs]
      causal self-attention among the T tokens.
  cached_attention(q[B, nh, Tq, hs], k_cache, v_cache[B, nh, S, hs], q_pos[Tq] long,
                   key_valid[B, S] bool | None) -> [B, nh, Tq, hs]
      query i sits at cache slot q_pos[i] and sees slots <= q_pos[i] that are valid.
      q_pos may also be [B, Tq] (each row's queries at their own slots: rows at different
      depths, as a continuous batch has them); kernels that take only [Tq] hand that case
      to the reference.
  lm_head_loss(h[N, C], weight[V, C], targets[N] long, ignore_index) -> scalar
      mean cross-entropy of h @ weight.T over targets != ignore_index.

Padding has one name per side of the API. Users pass Hugging Face's `attention_mask`
[B, T] (1 = real token, 0 = padding). Inside the engine (ops, kernels, C++) the same fact
is `key_valid` [B, S] bool: True where a key position / cache slot holds a real token;
None means every position is real. A query always sees its own slot, so a padding query
gets a finite (ignored) output instead of NaN.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, replace
from typing import Callable, Protocol, runtime_checkable

import torch

IGNORE_INDEX = -100


@runtime_checkable
class Decoder(Protocol):
    """Runs generation for a fixed batch on a static KV cache it owns.

    Made by `GPT.make_decoder(batch_size, max_seq_len)`: the backend's own
    (`OpTable.make_decoder`) or the model's modules over a torch cache. Each call returns
    float logits [b, vocab] of every row's last token. Positions: `input_pos` are cache
    slots, [T] for every row or [b, T] per row; `position_ids` [b, T] the learned positions;
    `key_valid` [b, S] the slots holding real tokens (None: every slot up to the query's).

    Rows: a call computes the B rows of the cache in order (`rows=None`: `generate`'s
    batch), or only the cache rows `rows` [b] (distinct, any order), the i-th input row
    going to cache row rows[i]; other rows are neither read nor written. That is the slot
    API of a continuous batch (`llm.generation.slots`): each row a slot, filled by
    `prefill` at its own slots and stepped by `decode_one_token` at its own depth.
    """

    supports_cuda_graph: bool  # decode_one_token may be captured in a CUDA graph

    def prefill(self, input_ids: torch.Tensor, input_pos: torch.Tensor, position_ids: torch.Tensor,
                key_valid: torch.Tensor | None = None, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The tokens [b, T] into slots input_pos (0..T-1 of an empty cache, or after
        tokens already held: a prompt in chunks, or after a reused prefix)."""

    def decode_one_token(self, token: torch.Tensor, input_pos: torch.Tensor, position_ids: torch.Tensor,
                         key_valid: torch.Tensor | None = None, rows: torch.Tensor | None = None) -> torch.Tensor:
        """One token [b, 1] per row at slot input_pos ([1], or [b, 1] per row)."""

    def select_rows(self, index: torch.Tensor) -> None:
        """Keep only the batch rows `index` [b] (in that order); later calls have b rows."""


@dataclass(frozen=True)
class OpTable:
    name: str
    layer_norm: Callable
    linear: Callable
    mlp: Callable
    attention: Callable
    cached_attention: Callable
    lm_head_loss: Callable
    # make_decoder(model, batch_size, max_seq_len) -> Decoder | None: a backend's own way
    # to generate (e.g. native's C++ decoder owning packed weights and the KV cache). None,
    # or a None result, means the model's modules over a torch KV cache.
    make_decoder: Callable | None = None

    def replace(self, **ops) -> "OpTable":
        """A copy with some ops swapped: how a backend fills what it lacks from another."""
        return replace(self, **ops)


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run here (missing package, device, build)."""


# -- registry --------------------------------------------------------------------------------

# name -> module that defines `load() -> OpTable` (raising BackendUnavailableError when it
# cannot run here). Modules import on first use: `import llm` never imports triton or llm._C.
_BACKEND_MODULES: dict[str, str] = {
    "torch": "llm.ops.reference",
    "triton": "llm.ops.triton",
    "native": "llm.ops.native",
}
_LOADERS: dict[str, Callable[[], OpTable]] = {}


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
    try:
        module = importlib.import_module(_BACKEND_MODULES[name])
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
    return _load("torch")
