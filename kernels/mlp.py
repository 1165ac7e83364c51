# GPT-2's MLP block, proj(gelu_tanh(fc(x))), as Triton matmuls with fused epilogues.
#
# Algorithm. Four launches of the tiled matmul of matmul.py (fp32 accumulation, grouped
# program order, any strides so transposed operands cost nothing), each with the epilogue
# that saves a pass over memory:
#   forward   act = GELU(x @ W_fc^T + b_fc)      EPI_GELU (also stores the pre-activation h)
#             y   = act @ W_proj^T + b_proj      EPI_BIAS
#   backward  dh  = (dy @ W_proj) * GELU'(h)     EPI_GELU_BWD (also writes act = GELU(h))
#             dW_proj = dy^T @ act, db_proj      row sums of dy^T fused into the matmul
#             dW_fc   = dh^T @ x,   db_fc        likewise
#             dx      = dh @ W_fc                EPI_BIAS without bias
# Backward choice: the forward saves only the pre-activation h = x @ W_fc^T + b_fc (one
# [rows, 4C] tensor, the same size as the activation) and the backward recomputes GELU(h)
# and GELU'(h) inside the epilogue of the dY @ W_proj matmul. Saving both h and GELU(h)
# would double the largest activation of the block, and the recompute is a handful of
# flops per element in an epilogue that is memory-bound anyway. Without gradients the
# forward saves nothing.
# References: Hendrycks & Gimpel 2016 (GELU); Triton tutorial 03 (matrix multiplication,
# grouped ordering); Liger Kernel's fused MLP backward (recompute the activation).
# Limits: x[..., C] of any size (masked edges); x and weights in one dtype, fp32 (IEEE dot
# products), fp16 or bf16; fp32 accumulation; dropout is applied outside the block by the
# model.

from __future__ import annotations

from typing import Optional

import torch

from ._common import check_device, check_float
from .matmul import EPI_BIAS, EPI_GELU, EPI_GELU_BWD, matmul


def _check(x, fc_w, fc_b, proj_w, proj_b):
    C = x.shape[-1]
    H = fc_w.shape[0]
    for name, t in (("x", x), ("fc_w", fc_w), ("proj_w", proj_w)):
        check_float(f"mlp: {name}", t)
    check_device("mlp", x, fc_w, fc_b, proj_w, proj_b)
    if not (x.dtype == fc_w.dtype == proj_w.dtype):
        raise ValueError(f"mlp: x and weights must share a dtype, got {x.dtype}, {fc_w.dtype}, {proj_w.dtype}")
    if fc_w.shape != (H, C) or proj_w.shape != (C, H):
        raise ValueError(f"mlp: weights {tuple(fc_w.shape)}, {tuple(proj_w.shape)} do not fit x[..., {C}]"
                         f" (expected ({H}, {C}) and ({C}, {H}))")
    if fc_b is not None and fc_b.shape != (H,):
        raise ValueError(f"mlp: fc_b shape {tuple(fc_b.shape)} != ({H},)")
    if proj_b is not None and proj_b.shape != (C,):
        raise ValueError(f"mlp: proj_b shape {tuple(proj_b.shape)} != ({C},)")


def mlp_fwd(x, fc_w, fc_b, proj_w, proj_b, save_pre=True):
    """x[..., C] -> (y[..., C], h[rows, H] pre-activation, or an empty tensor unless save_pre)."""
    _check(x, fc_w, fc_b, proj_w, proj_b)
    C = x.shape[-1]
    x2 = x.reshape(-1, C)
    h = torch.empty((x2.shape[0], fc_w.shape[0]) if save_pre else (0,), dtype=x.dtype, device=x.device)
    act = matmul(x2, fc_w.t(), fc_b, EPI_GELU, aux=h if save_pre else None)
    y = matmul(act, proj_w.t(), proj_b, EPI_BIAS)
    return y.view(x.shape), h


def mlp_bwd(dy, x, h, fc_w, proj_w, has_fc_b=True, has_proj_b=True):
    """Gradients (dx, dfc_w, dfc_b, dproj_w, dproj_b) of mlp_fwd, from the saved h."""
    C = x.shape[-1]
    x2 = x.reshape(-1, C)
    dy2 = dy.reshape(-1, C)
    act = torch.empty_like(h)
    dh = matmul(dy2, proj_w, None, EPI_GELU_BWD, aux=h, aux2=act)  # (rows, H)
    dproj_b = torch.empty(C, dtype=proj_w.dtype, device=x.device)
    dproj_w = matmul(dy2.t(), act, row_sum=dproj_b, out_dtype=proj_w.dtype)  # (C, H)
    dfc_b = torch.empty(fc_w.shape[0], dtype=fc_w.dtype, device=x.device)
    dfc_w = matmul(dh.t(), x2, row_sum=dfc_b, out_dtype=fc_w.dtype)  # (H, C)
    dx = matmul(dh, fc_w)  # (rows, C)
    if x2.shape[0] == 0:
        dproj_b.zero_(), dfc_b.zero_(), dproj_w.zero_(), dfc_w.zero_()
    return dx.view(x.shape), dfc_w, dfc_b, dproj_w, dproj_b


# -- registered ops and autograd -------------------------------------------------------------


@torch.library.custom_op("llm_triton::mlp_fwd", mutates_args=())
def _mlp_fwd_op(x: torch.Tensor, fc_w: torch.Tensor, fc_b: Optional[torch.Tensor],
                proj_w: torch.Tensor, proj_b: Optional[torch.Tensor], save_pre: bool
                ) -> tuple[torch.Tensor, torch.Tensor]:
    return mlp_fwd(x, fc_w, fc_b, proj_w, proj_b, save_pre)


@_mlp_fwd_op.register_fake
def _(x, fc_w, fc_b, proj_w, proj_b, save_pre):
    rows = x.numel() // x.shape[-1]
    h_shape = (rows, fc_w.shape[0]) if save_pre else (0,)
    return torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty(h_shape)


@torch.library.custom_op("llm_triton::mlp_bwd", mutates_args=())
def _mlp_bwd_op(dy: torch.Tensor, x: torch.Tensor, h: torch.Tensor, fc_w: torch.Tensor,
                proj_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                               torch.Tensor, torch.Tensor]:
    return mlp_bwd(dy, x, h, fc_w, proj_w)


@_mlp_bwd_op.register_fake
def _(dy, x, h, fc_w, proj_w):
    return (torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(fc_w),
            fc_w.new_empty(fc_w.shape[0]), torch.empty_like(proj_w), proj_w.new_empty(proj_w.shape[0]))


def _setup_context(ctx, inputs, output):
    x, fc_w, fc_b, proj_w, proj_b, save_pre = inputs
    if not save_pre:
        raise RuntimeError("mlp: backward needs the forward to run with save_pre=True")
    ctx.save_for_backward(x, output[1], fc_w, proj_w)
    ctx.has_bias = (fc_b is not None, proj_b is not None)


def _backward(ctx, dy, _dh):
    x, h, fc_w, proj_w = ctx.saved_tensors
    dx, dfc_w, dfc_b, dproj_w, dproj_b = _mlp_bwd_op(dy, x, h, fc_w, proj_w)
    has_fc_b, has_proj_b = ctx.has_bias
    return (dx, dfc_w, dfc_b if has_fc_b else None, dproj_w,
            dproj_b if has_proj_b else None, None)


_mlp_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# -- public ----------------------------------------------------------------------------------


def mlp(x: torch.Tensor, fc_w: torch.Tensor, fc_b: Optional[torch.Tensor], proj_w: torch.Tensor,
        proj_b: Optional[torch.Tensor]) -> torch.Tensor:
    """proj(gelu_tanh(fc(x))): x[..., C], fc_w[H, C], fc_b[H], proj_w[C, H], proj_b[C] -> [..., C]."""
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, fc_w, fc_b, proj_w, proj_b))
    return _mlp_fwd_op(x, fc_w, fc_b, proj_w, proj_b, needs_grad)[0]
