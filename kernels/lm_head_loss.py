# The lm_head projection fused with cross-entropy, computed in chunks of rows, in Triton.
#
# Algorithm. The rows of h [N, C] are cut into chunks of R rows. Per chunk: the logits
# [R, V] = h_chunk @ W^T are computed by a cuBLAS matmul (torch), then one Triton program
# per row streams over the vocabulary twice: pass 1 keeps a running max and a running sum
# of exponentials per lane (online softmax) and gives logsumexp, hence the row's loss
# lse - logit[target]; pass 2 (when gradients are wanted) overwrites the logits in place
# with d loss / d logits = (softmax - onehot(target)) / n_valid (zero for ignored rows).
# The chunk's contribution to dh (= dlogits @ W) and dW (+= dlogits^T @ h_chunk) is taken
# at once into fp32 buffers (for fp16/bf16 by the Triton matmul of matmul.py, which writes
# and accumulates fp32), and the chunk's logits are dropped. Since the loss is a
# scalar, the backward only scales the stored dh and dW by the incoming gradient. Peak
# extra memory is one [R, V] chunk instead of the [N, V] logits (and their fp32 copy and
# gradient in the unfused path); R is chosen so a chunk is about the size of h (>= 32 rows).
# References: Liger Kernel's fused linear cross-entropy (chunking, in-place gradient);
# Milakov & Gimelshein 2018 (online softmax normaliser).
# Limits: targets in [0, V) or ignore_index; mean over targets != ignore_index (NaN when
# every target is ignored, as torch); no label smoothing, no z-loss; fp32/fp16/bf16, with
# fp32 softmax statistics.

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import LaunchConfig, check_device, check_float, device_class, next_pow2
from .matmul import matmul

_CE = {
    "interp": LaunchConfig({"BLOCK_V": 1024}),
    "sm80": LaunchConfig({"BLOCK_V": 4096}, 8, 1),
    "sm90": LaunchConfig({"BLOCK_V": 4096}, 8, 1),
}


def ce_config(dev: str) -> LaunchConfig:
    return _CE[dev]


# -- kernels ---------------------------------------------------------------------------------


@triton.jit
def _cross_entropy_kernel(Logits, Targets, Loss, NValid, stride_row, V, ignore_index,
                          COMPUTE_GRAD: tl.constexpr, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = Logits + row * stride_row
    cols = tl.arange(0, BLOCK_V)
    m = tl.full([BLOCK_V], -1.0e30, dtype=tl.float32)
    l = tl.zeros([BLOCK_V], dtype=tl.float32)
    for start in range(0, V, BLOCK_V):
        x = tl.load(base + start + cols, mask=start + cols < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, x)
        l = l * tl.exp(m - m_new) + tl.exp(x - m_new)
        m = m_new
    m_row = tl.max(m, axis=0)
    lse = m_row + tl.log(tl.sum(l * tl.exp(m - m_row), axis=0))
    target = tl.load(Targets + row)
    valid = target != ignore_index
    safe_target = tl.where(valid, target, 0)
    x_t = tl.load(base + safe_target).to(tl.float32)
    tl.store(Loss + row, tl.where(valid, lse - x_t, 0.0))
    if COMPUTE_GRAD:
        scale = tl.where(valid, 1.0 / tl.maximum(tl.load(NValid).to(tl.float32), 1.0), 0.0)
        for start in range(0, V, BLOCK_V):
            idx = start + cols
            mask = idx < V
            x = tl.load(base + idx, mask=mask, other=0.0).to(tl.float32)
            p = tl.exp(x - lse)
            p = tl.where(idx == target, p - 1.0, p) * scale
            tl.store(base + idx, p.to(Logits.dtype.element_ty), mask=mask)


# -- host launchers --------------------------------------------------------------------------


def cross_entropy_rows(logits, targets, n_valid, ignore_index, compute_grad):
    """Per-row loss [R] fp32 of logits [R, V]; with compute_grad the logits are replaced in
    place by their gradient of the mean loss (divided by the count n_valid, a tensor)."""
    R, V = logits.shape
    loss = torch.empty(R, dtype=torch.float32, device=logits.device)
    if R == 0:
        return loss
    cfg = ce_config(device_class(logits))
    block_v = min(cfg.meta["BLOCK_V"], next_pow2(V))
    _cross_entropy_kernel[(R,)](
        logits, targets, loss, n_valid, logits.stride(0), V, ignore_index,
        COMPUTE_GRAD=compute_grad, **dict(cfg.kwargs(), BLOCK_V=block_v))
    return loss


def chunk_rows(N: int, V: int, C: int) -> int:
    """Rows per chunk: about N / (V / C), so a chunk of logits is the size of h, and at
    least 32 (thinner chunks make thin, inefficient matmuls)."""
    return max(1, min(N, max(32, next_pow2(triton.cdiv(N, triton.cdiv(V, C))))))


def lm_head_loss_fwd(h, weight, targets, ignore_index=-100, compute_grad=True, chunk=None):
    """(loss, dh, dweight) of mean cross-entropy of h[N, C] @ weight[V, C]^T against
    targets[N]; dh and dweight are the fp32 gradients of the loss (empty without
    compute_grad)."""
    check_float("lm_head_loss: h", h)
    check_device("lm_head_loss", h, weight, targets)
    if h.dim() != 2 or weight.dim() != 2 or h.shape[1] != weight.shape[1]:
        raise ValueError(f"lm_head_loss: shapes h {tuple(h.shape)} and weight {tuple(weight.shape)} "
                         "must be [N, C] and [V, C]")
    N, C = h.shape
    V = weight.shape[0]
    if targets.shape != (N,):
        raise ValueError(f"lm_head_loss: targets shape {tuple(targets.shape)} != ({N},)")
    if targets.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"lm_head_loss: targets must be integers, got {targets.dtype}")
    real = targets != ignore_index
    if bool(((targets < 0) | (targets >= V))[real].any()):
        raise ValueError(f"lm_head_loss: a target is outside [0, {V}) and is not ignore_index={ignore_index}")
    n_valid = real.sum()
    targets = targets.contiguous()
    h = h.contiguous()
    loss_rows = torch.empty(N, dtype=torch.float32, device=h.device)
    dh = torch.empty((N, C), dtype=torch.float32, device=h.device) if compute_grad else h.new_empty(0)
    dw = torch.zeros((V, C), dtype=torch.float32, device=h.device) if compute_grad else h.new_empty(0)
    R = chunk or chunk_rows(N, V, C)
    for s in range(0, N, R):
        h_c = h[s:s + R]
        logits = h_c @ weight.t()  # (R, V), h's dtype, as F.linear
        loss_rows[s:s + R] = cross_entropy_rows(logits, targets[s:s + R], n_valid,
                                                ignore_index, compute_grad)
        if compute_grad:  # logits now hold d loss / d logits
            if h.dtype == torch.float32:
                torch.mm(logits, weight, out=dh[s:s + R])
                dw.addmm_(logits.t(), h_c)
            else:
                matmul(logits, weight, out=dh[s:s + R])
                matmul(logits.t(), h_c, out=dw, accumulate=True)
    loss = loss_rows.sum() / n_valid
    return loss, dh, dw


# -- registered op and autograd --------------------------------------------------------------


@torch.library.custom_op("llm_triton::lm_head_loss", mutates_args=())
def _lm_head_loss_op(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                     ignore_index: int, compute_grad: bool
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return lm_head_loss_fwd(h, weight, targets, ignore_index, compute_grad)


@_lm_head_loss_op.register_fake
def _(h, weight, targets, ignore_index, compute_grad):
    loss = h.new_empty((), dtype=torch.float32)
    if compute_grad:
        return loss, h.new_empty(h.shape, dtype=torch.float32), weight.new_empty(weight.shape, dtype=torch.float32)
    return loss, h.new_empty(0), weight.new_empty(0)


def _setup_context(ctx, inputs, output):
    *_, compute_grad = inputs
    if not compute_grad:
        raise RuntimeError("lm_head_loss: backward needs the forward to run with compute_grad=True")
    ctx.save_for_backward(output[1], output[2])
    ctx.dtypes = (inputs[0].dtype, inputs[1].dtype)


def _backward(ctx, dloss, _ddh, _ddw):
    dh, dw = ctx.saved_tensors
    h_dtype, w_dtype = ctx.dtypes
    return (dh * dloss).to(h_dtype), (dw * dloss).to(w_dtype), None, None, None


_lm_head_loss_op.register_autograd(_backward, setup_context=_setup_context)


# -- public ----------------------------------------------------------------------------------


def lm_head_loss(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                 ignore_index: int = -100) -> torch.Tensor:
    """Mean cross-entropy of h[N, C] @ weight[V, C]^T over targets[N] != ignore_index, as a
    scalar fp32 tensor, without materialising the [N, V] logits."""
    device_type = h.device.type
    if torch.is_autocast_enabled(device_type):
        # As autocast runs F.linear: the logits matmul in the autocast dtype. The op then
        # runs with autocast off, on exactly the dtypes it is given.
        dtype = torch.get_autocast_dtype(device_type)
        h, weight = h.to(dtype), weight.to(dtype)
    needs_grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    with torch.autocast(device_type, enabled=False):
        return _lm_head_loss_op(h, weight, targets, int(ignore_index), needs_grad)[0]
