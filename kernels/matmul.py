# A general tiled matmul C = epilogue(A @ B) in Triton, with the fused epilogues of the MLP
# block and of the lm_head gradient.
#
# Algorithm. One program per (BLOCK_M x BLOCK_N) tile of C walks K in BLOCK_K steps,
# accumulating in fp32; programs are ordered in groups of GROUP_M tile rows so that
# neighbouring programs reuse the same B columns from L2. Any strides: a transposed operand
# is a stride swap, never a copy. Epilogues (constants EPI_*):
#   EPI_BIAS      0: + bias                      (c_proj forward, and the MLP backward's dx)
#   EPI_GELU      1: + bias, GELU (tanh)         (c_fc forward; optionally also stores the
#                                                 pre-activation in `aux`)
#   EPI_GELU_BWD  2: * GELU'(h), also writes GELU(h) to `aux2`   (MLP backward:
#                                                 dh = (dy @ W_proj) * GELU'(h), h in `aux`)
# Options: an optional row sum of A over K (`row_sum`; fuses a bias gradient into a
# weight-gradient matmul: db = column sums of dY = row sums of dY^T), and `accumulate`
# (C += A @ B into an existing, possibly fp32, output: the lm_head loss sums its chunks'
# weight gradients this way).
# GELU(x) = 0.5 x (1 + tanh(u)) with u = sqrt(2/pi) (x + 0.044715 x^3) is evaluated as
# x * sigmoid(2u), since tanh(u) = 2 sigmoid(2u) - 1: only exp is needed.
# References: Triton tutorial 03 (matrix multiplication, grouped ordering); Hendrycks &
# Gimpel 2016 (GELU).
# Limits: 2-D operands of any size (masked edges) and any strides; fp32 (IEEE dot
# products), fp16, bf16 inputs; fp32 accumulation; the output in any float dtype.

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import LaunchConfig, device_class, interpreting, pick_config

# Triton's CPU interpreter computes tl.dot on bf16 operands wrongly. There the operands are
# widened to fp32 first: bf16 x bf16 products are exact in fp32 and the GPU accumulates in
# fp32, so this is the GPU's arithmetic up to summation order. Compiled kernels (a GPU, or
# ahead-of-time compilation) never take this branch and keep the bf16 tensor-core MMA.
_INTERPRETED_BF16_DOT = tl.constexpr(interpreting())

# Launch table keyed by (device class, epilogue): tiles (BLOCK_M, BLOCK_N, BLOCK_K), warps,
# stages. The GELU-backward epilogue holds two more tiles (h and GELU(h)), so it gets
# smaller tiles where the large ones would spill registers.
def _cfg(m, n, k, warps, stages):
    return LaunchConfig({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8}, warps, stages)


_MATMUL = {
    "interp": [LaunchConfig({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4})],
    "sm80": [_cfg(128, 128, 32, 8, 3), _cfg(128, 64, 32, 4, 4), _cfg(64, 64, 32, 4, 3)],
    "sm90": [_cfg(128, 128, 64, 8, 3), _cfg(64, 128, 64, 4, 4)],
}
_MATMUL_GELU_BWD = {
    "sm80": [_cfg(128, 64, 32, 4, 4), _cfg(64, 64, 32, 4, 3)],
    "sm90": [_cfg(64, 128, 64, 4, 4)],
}

EPI_BIAS, EPI_GELU, EPI_GELU_BWD = 0, 1, 2


def matmul_configs(dev: str, epilogue: int = 0) -> list[LaunchConfig]:
    if epilogue == 2 and dev in _MATMUL_GELU_BWD:
        return _MATMUL_GELU_BWD[dev]
    return _MATMUL[dev]


# -- kernels ---------------------------------------------------------------------------------


@triton.jit
def _sigmoid_2u(x):
    # sigmoid(2u) = (1 + tanh(u)) / 2, u = sqrt(2/pi) (x + 0.044715 x^3); exp of a
    # non-positive argument only, so it never overflows.
    z = 1.5957691216057308 * (x + 0.044715 * x * x * x)
    e = tl.exp(-tl.abs(z))
    return tl.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def _gelu_tanh(x):
    return x * _sigmoid_2u(x)


@triton.jit
def _gelu_tanh_grad(x):
    s = _sigmoid_2u(x)
    du = 0.7978845608028654 * (1.0 + 0.134145 * x * x)
    return s + 2.0 * x * s * (1.0 - s) * du


@triton.jit
def _matmul_kernel(A, B, C, Bias, Aux, Aux2, RowSum, M, N, K,
                   sam, sak, sbk, sbn, scm, scn,
                   HAS_BIAS: tl.constexpr, EPILOGUE: tl.constexpr, STORE_AUX: tl.constexpr,
                   ROW_SUM: tl.constexpr, ACCUMULATE: tl.constexpr, IEEE: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   GROUP_M: tl.constexpr):
    # C[M, N] = epilogue(A[M, K] @ B[K, N]); Aux, Aux2 share C's strides.
    pid = tl.program_id(0)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * grid_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < N
    a_ptr = A + rm.to(tl.int64)[:, None] * sam + rk[None, :] * sak
    b_ptr = B + rk[:, None] * sbk + rn.to(tl.int64)[None, :] * sbn
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    rsum = tl.zeros([BLOCK_M], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = (k0 + rk) < K
        a = tl.load(a_ptr, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_ptr, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        if IEEE:
            acc = tl.dot(a, b, acc, input_precision="ieee")
        elif _INTERPRETED_BF16_DOT and a.dtype == tl.bfloat16:
            acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
        if ROW_SUM:
            rsum += tl.sum(a.to(tl.float32), axis=1)
        a_ptr += BLOCK_K * sak
        b_ptr += BLOCK_K * sbk
    if HAS_BIAS:
        acc += tl.load(Bias + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    c_off = rm.to(tl.int64)[:, None] * scm + rn[None, :] * scn
    c_mask = m_ok[:, None] & n_ok[None, :]
    if EPILOGUE == 1:
        if STORE_AUX:
            tl.store(Aux + c_off, acc.to(Aux.dtype.element_ty), mask=c_mask)
        acc = _gelu_tanh(acc)
    if EPILOGUE == 2:
        h = tl.load(Aux + c_off, mask=c_mask, other=0.0).to(tl.float32)
        tl.store(Aux2 + c_off, _gelu_tanh(h).to(Aux2.dtype.element_ty), mask=c_mask)
        acc = acc * _gelu_tanh_grad(h)
    if ACCUMULATE:
        acc += tl.load(C + c_off, mask=c_mask, other=0.0).to(tl.float32)
    tl.store(C + c_off, acc.to(C.dtype.element_ty), mask=c_mask)
    if ROW_SUM:
        if pid_n == 0:
            tl.store(RowSum + rm, rsum.to(RowSum.dtype.element_ty), mask=m_ok)


# -- host launchers --------------------------------------------------------------------------


def _bucket(n: int) -> int:
    return min(triton.next_power_of_2(max(n, 1)), 8192)


def matmul(a, b, bias=None, epilogue=EPI_BIAS, aux=None, aux2=None, row_sum=None, out_dtype=None,
           out=None, accumulate=False):
    """out[M, N] = epilogue(a[M, K] @ b[K, N] (+ bias[N])); see the epilogues above.

    epilogue 1 writes the pre-activation to `aux` when given; epilogue 2 reads h from
    `aux` and writes GELU(h) to `aux2`. `row_sum` [M] receives the row sums of a.
    `out` (any strides) is written in place; with `accumulate`, out += a @ b.
    """
    M, K = a.shape
    K2, N = b.shape
    if K != K2:
        raise ValueError(f"matmul: inner sizes differ ({M}x{K} @ {K2}x{N})")
    if out is None:
        out = torch.empty((M, N), dtype=out_dtype or a.dtype, device=a.device)
    elif out.shape != (M, N):
        raise ValueError(f"matmul: out shape {tuple(out.shape)} != ({M}, {N})")
    if M == 0 or N == 0:
        return out
    if K == 0:
        raise ValueError("matmul: empty inner dimension")
    dev = device_class(a)
    ieee = a.dtype == torch.float32

    def run(cfg):
        grid = (triton.cdiv(M, cfg.meta["BLOCK_M"]) * triton.cdiv(N, cfg.meta["BLOCK_N"]),)
        _matmul_kernel[grid](
            a, b, out, bias if bias is not None else out, aux if aux is not None else out,
            aux2 if aux2 is not None else out, row_sum if row_sum is not None else out,
            M, N, K, a.stride(0), a.stride(1), b.stride(0), b.stride(1),
            out.stride(0), out.stride(1),
            HAS_BIAS=bias is not None, EPILOGUE=epilogue, STORE_AUX=aux is not None,
            ROW_SUM=row_sum is not None, ACCUMULATE=accumulate, IEEE=ieee, **cfg.kwargs())

    key = (dev, a.dtype, out.dtype, epilogue, row_sum is not None, accumulate, _bucket(M), _bucket(N), _bucket(K))
    cfgs = matmul_configs(dev, epilogue)
    if accumulate:  # timing candidates would add a @ b into out several times
        cfgs = cfgs[:1]
    run(pick_config("matmul", key, cfgs, run))
    return out
