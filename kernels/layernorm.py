# LayerNorm over the last dimension, forward and backward, in Triton.
#
# Algorithm. Forward: one program per row loads the whole row (masked to the next power of
# two), computes mean and variance in fp32, writes y = (x - mean) * rstd * w + b in the
# input dtype and saves mean and rstd (fp32, one each per row). Backward, stage 1: G
# programs each walk rows pid, pid + G, ...; per row
#   xhat = (x - mean) * rstd,  g = dy * w,
#   dx = rstd * (g - xhat * mean(g * xhat) - mean(g)),
# and each program accumulates its rows' dy * xhat and dy into fp32 partial sums, written to
# a [G, C] buffer. Stage 2 sums the G partial rows column by column in a fixed order, so
# dweight and dbias are deterministic (no atomics).
# References: Ba et al. 2016 (Layer Normalization); Triton tutorial 05 (layer norm); Apex's
# two-stage weight-gradient reduction.
# Limits: hidden size C <= 8192 (one row lives in registers); any C (masked tail);
# fp32/fp16/bf16 inputs, fp32 statistics and accumulation; weight required, bias optional.

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._common import LaunchConfig, check_device, check_float, device_class, next_pow2

MAX_HIDDEN = 8192

# Launch table: a row of BLOCK_C elements is spread over num_warps warps; wider rows get
# more warps so each thread holds at most ~32 values per array.
_WARPS_BY_BLOCK = ((1024, 4), (4096, 8), (MAX_HIDDEN, 16))
_REDUCE_CONFIG = LaunchConfig({"BLOCK_M": 32, "BLOCK_N": 128}, num_warps=4)


# -- kernels ---------------------------------------------------------------------------------


@triton.jit
def _layer_norm_fwd_kernel(X, W, B, Y, Mean, Rstd, stride_x, stride_y, C, eps,
                           HAS_BIAS: tl.constexpr, BLOCK_C: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_C)
    mask = cols < C
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / C
    xc = tl.where(mask, x - mean, 0.0)
    var = tl.sum(xc * xc, axis=0) / C
    rstd = 1.0 / tl.sqrt(var + eps)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    y = xc * rstd * w
    if HAS_BIAS:
        y += tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(Mean + row, mean)
    tl.store(Rstd + row, rstd)


@triton.jit
def _layer_norm_bwd_dx_kernel(DY, X, W, Mean, Rstd, DX, DW_part, DB_part, N, C, G,
                              stride_dy, stride_x, stride_dx, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_C)
    mask = cols < C
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_C], dtype=tl.float32)
    db = tl.zeros([BLOCK_C], dtype=tl.float32)
    for r in range(pid, N, G):
        row = tl.cast(r, tl.int64)
        x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(Mean + row)
        rstd = tl.load(Rstd + row)
        xhat = tl.where(mask, (x - mean) * rstd, 0.0)
        g = dy * w
        c1 = tl.sum(g * xhat, axis=0) / C
        c2 = tl.sum(g, axis=0) / C
        dx = (g - (xhat * c1 + c2)) * rstd
        tl.store(DX + row * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=mask)
        dw += dy * xhat
        db += dy
    tl.store(DW_part + pid * C + cols, dw, mask=mask)
    tl.store(DB_part + pid * C + cols, db, mask=mask)


@triton.jit
def _column_sum_kernel(P, Out, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # Out[n] = sum_m P[m, n], summed in a fixed order (deterministic).
    pid = tl.program_id(0)
    cols = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for start in range(0, M, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        mask = (rows[:, None] < M) & (cols[None, :] < N)
        acc += tl.load(P + rows[:, None] * N + cols[None, :], mask=mask, other=0.0)
    tl.store(Out + cols, tl.sum(acc, axis=0).to(Out.dtype.element_ty), mask=cols < N)


# -- host launchers --------------------------------------------------------------------------


def row_config(C: int) -> LaunchConfig:
    """Launch configuration of the row kernels for hidden size C."""
    block = next_pow2(C)
    warps = next(w for limit, w in _WARPS_BY_BLOCK if block <= limit)
    return LaunchConfig({"BLOCK_C": block}, num_warps=warps, num_stages=1)


def _check(x, weight, bias):
    check_float("layer_norm: x", x)
    check_device("layer_norm", x, weight, bias)
    C = x.shape[-1]
    if C > MAX_HIDDEN:
        raise ValueError(f"layer_norm: hidden size {C} exceeds the kernel's limit {MAX_HIDDEN}")
    if weight.shape != (C,):
        raise ValueError(f"layer_norm: weight shape {tuple(weight.shape)} != ({C},)")
    if bias is not None and bias.shape != (C,):
        raise ValueError(f"layer_norm: bias shape {tuple(bias.shape)} != ({C},)")


def layer_norm_fwd(x, weight, bias, eps):
    """x[..., C] -> (y[..., C], mean[rows] fp32, rstd[rows] fp32)."""
    _check(x, weight, bias)
    C = x.shape[-1]
    x2 = x.reshape(-1, C)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    N = x2.shape[0]
    y = torch.empty((N, C), dtype=x.dtype, device=x.device)
    mean = torch.empty(N, dtype=torch.float32, device=x.device)
    rstd = torch.empty(N, dtype=torch.float32, device=x.device)
    if N > 0:
        cfg = row_config(C)
        _layer_norm_fwd_kernel[(N,)](
            x2, weight, bias if bias is not None else weight, y, mean, rstd,
            x2.stride(0), y.stride(0), C, eps, HAS_BIAS=bias is not None, **cfg.kwargs())
    return y.view(x.shape), mean, rstd


def _num_partials(N: int, x: torch.Tensor) -> int:
    if device_class(x) == "interp":
        return max(1, min(N, 4))
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count
    return max(1, min(N, 4 * sms))


def layer_norm_bwd(dy, x, weight, mean, rstd):
    """Gradients (dx[..., C], dweight[C], dbias[C]) of layer_norm_fwd."""
    C = x.shape[-1]
    x2 = x.reshape(-1, C).contiguous()
    dy2 = dy.reshape(-1, C).contiguous()
    N = x2.shape[0]
    dx = torch.empty_like(x2)
    G = _num_partials(N, x)
    dw_part = torch.empty((G, C), dtype=torch.float32, device=x.device)
    db_part = torch.empty((G, C), dtype=torch.float32, device=x.device)
    dw = torch.empty(C, dtype=weight.dtype, device=x.device)
    db = torch.empty(C, dtype=weight.dtype, device=x.device)
    if N == 0:
        return dx.view(x.shape), dw.zero_(), db.zero_()
    cfg = row_config(C)
    _layer_norm_bwd_dx_kernel[(G,)](
        dy2, x2, weight, mean, rstd, dx, dw_part, db_part, N, C, G,
        dy2.stride(0), x2.stride(0), dx.stride(0), **cfg.kwargs())
    grid = (triton.cdiv(C, _REDUCE_CONFIG.meta["BLOCK_N"]),)
    _column_sum_kernel[grid](dw_part, dw, G, C, **_REDUCE_CONFIG.kwargs())
    _column_sum_kernel[grid](db_part, db, G, C, **_REDUCE_CONFIG.kwargs())
    return dx.view(x.shape), dw, db


# -- registered ops and autograd -------------------------------------------------------------


@torch.library.custom_op("llm_triton::layer_norm_fwd", mutates_args=())
def _layer_norm_fwd_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                       eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return layer_norm_fwd(x, weight, bias, eps)


@_layer_norm_fwd_op.register_fake
def _(x, weight, bias, eps):
    rows = x.numel() // x.shape[-1]
    stat = x.new_empty(rows, dtype=torch.float32)
    return torch.empty_like(x, memory_format=torch.contiguous_format), stat, stat.clone()


@torch.library.custom_op("llm_triton::layer_norm_bwd", mutates_args=())
def _layer_norm_bwd_op(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                       mean: torch.Tensor, rstd: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return layer_norm_bwd(dy, x, weight, mean, rstd)


@_layer_norm_bwd_op.register_fake
def _(dy, x, weight, mean, rstd):
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(weight), torch.empty_like(weight))


def _setup_context(ctx, inputs, output):
    x, weight, bias, _ = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, weight, mean, rstd)
    ctx.has_bias = bias is not None


def _backward(ctx, dy, _dmean, _drstd):
    x, weight, mean, rstd = ctx.saved_tensors
    dx, dw, db = _layer_norm_bwd_op(dy, x, weight, mean, rstd)
    return dx, dw, (db if ctx.has_bias else None), None


_layer_norm_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# -- public ----------------------------------------------------------------------------------


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
               eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm over the last dim: x[..., C], weight[C], bias[C] | None -> [..., C]."""
    return _layer_norm_fwd_op(x, weight, bias, float(eps))[0]
