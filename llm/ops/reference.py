"""The `torch` backend: the readable definition of every op in the table (shapes in
`llm/ops/__init__.py`). Other backends fall back to these functions for what their kernels
do not cover, and tests and benchmarks compare against them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import IGNORE_INDEX, OpTable


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
    q_pos [Tq]: the slots of the queries, the same in every row; or [B, Tq], per row.

    A query always sees its own slot, so a padding query (which sees no valid key) gets a
    finite output instead of NaN; real queries are unaffected.
    """
    slots = torch.arange(S, device=q_pos.device)
    mask = slots <= q_pos[..., None]  # (Tq, S) or (B, Tq, S)
    if q_pos.dim() == 1:
        mask = mask[None]  # (1, Tq, S)
    if key_valid is not None:
        own = slots == q_pos[..., None]
        mask = (mask & key_valid[:, None, :]) | own  # (B, Tq, S)
    return mask[:, None]  # (B or 1, 1, Tq, S)


def attention(q, k, v, key_valid=None, dropout_p=0.0):
    if key_valid is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
    T = q.shape[-2]
    pos = torch.arange(T, device=q.device)
    mask = causal_mask(pos, T, key_valid.to(torch.bool))
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


def load() -> OpTable:
    return TORCH_OPS
