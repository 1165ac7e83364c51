"""The `triton` backend: the op table filled with the Triton kernels of `llm.kernels`.

  layer_norm        kernels/layernorm.py      forward + backward
  linear            torch (cuBLAS)            the attention projections and logits
  mlp               kernels/mlp.py            c_fc + bias + GELU epilogue, c_proj + bias
                                              (the matmul of kernels/matmul.py)
  attention         kernels/attention.py      causal flash attention, key_valid mask;
                                              dropout_p > 0 runs the torch reference
  cached_attention  kernels/attention.py      split-KV decode kernel for one query per
                                              row; the flash kernel (explicit query slots)
                                              for prompts (Tq > 1); inference only; per-row
                                              query slots [B, Tq] run the torch reference
  lm_head_loss      kernels/lm_head_loss.py   chunked lm_head + cross-entropy

The kernels run on CUDA tensors, or on CPU tensors through Triton's interpreter when
TRITON_INTERPRET=1 was set before triton was imported.
"""

from __future__ import annotations

import os

import torch

from . import BackendUnavailableError, OpTable, reference


def _attention(kernel):
    def attention(q, k, v, key_valid=None, dropout_p=0.0):
        if dropout_p > 0.0:  # no dropout in the kernel: use the reference for this call
            return reference.attention(q, k, v, key_valid, dropout_p)
        return kernel(q, k, v, key_valid)

    return attention


def _cached_attention(kernel):
    def cached_attention(q, k_cache, v_cache, q_pos, key_valid=None):
        if q_pos.dim() == 2:  # per-row query slots (a continuous batch): the kernels take [Tq]
            return reference.cached_attention(q, k_cache, v_cache, q_pos, key_valid)
        return kernel(q, k_cache, v_cache, q_pos, key_valid)

    return cached_attention


def load() -> OpTable:
    """The Triton op table; BackendUnavailableError when triton or a device is missing."""
    try:
        import triton  # noqa: F401
    except ImportError as e:
        raise BackendUnavailableError(f"backend 'triton' needs the triton package: {e}") from e
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        raise BackendUnavailableError(
            "backend 'triton' needs a CUDA device (or TRITON_INTERPRET=1, set before triton is "
            "imported, to run the kernels on CPU through Triton's interpreter)")
    from ..kernels import attention, layernorm, lm_head_loss, mlp

    return OpTable(
        name="triton",
        layer_norm=layernorm.layer_norm,
        linear=reference.linear,
        mlp=mlp.mlp,
        attention=_attention(attention.attention),
        cached_attention=_cached_attention(attention.cached_attention),
        lm_head_loss=lm_head_loss.lm_head_loss,
    )
