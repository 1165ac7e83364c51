# Causal flash attention (forward, backward) and KV-cache decoding, in Triton.
#
# Algorithm. Forward: one program per (query block of BLOCK_M rows, batch*head) walks the
# key blocks a causal query can see (those left of the diagonal without the causal mask),
# keeping the running max m, the running sum l and the unnormalised output in registers
# (online softmax, in base 2: scores are scaled by log2(e)/sqrt(hs) and exponentiated with
# exp2); the T x T score matrix never exists. It writes O and the per-row logsumexp
# (base 2). Backward recomputes P = exp2(S - lse) block by block: a pre-pass computes
# delta = rowsum(dO * O); one kernel per key block accumulates dK and dV over the query
# blocks below the diagonal; a second kernel per query block accumulates dQ over the key
# blocks. No atomics, so gradients are deterministic.
# Masking: query t sees key s when s <= t and (key_valid[b, s] or s == t); a query
# always sees its own slot, as in `llm.ops.causal_mask`, so padding rows stay finite.
# `cached_attention` runs the same forward kernel with explicit query slots over the KV
# cache for prompts (Tq > 1); for one query per row it runs a split-KV decode kernel: the
# cache is cut into splits, each program reduces one split to (m, l, acc) and a second
# kernel merges the splits (flash-decoding).
# References: Dao et al. 2022/2023 (FlashAttention 1 and 2); Triton tutorial 06 (fused
# attention); Dao et al. 2023 (Flash-Decoding).
# Limits: head size 1..128, padded to a power of two >= 16 (masked); any T (masked tail);
# fp32 (IEEE dot products), fp16, bf16; attention dropout is not implemented (the op table
# routes dropout_p > 0 to the torch reference); no autograd through cached_attention.

from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from ._common import (LaunchConfig, check_device, check_float, device_class, interpreting,
                      next_pow2, pick_config)

LOG2E = 1.4426950408889634
MAX_HEAD_DIM = 128

# Launch table keyed by (device class, padded head size); first entry is the default,
# the others are tried once per shape class on a GPU.
_FWD = {
    "interp": [LaunchConfig({"BLOCK_M": 32, "BLOCK_N": 16})],
    "sm80": [LaunchConfig({"BLOCK_M": 128, "BLOCK_N": 64}, 8, 3),
             LaunchConfig({"BLOCK_M": 64, "BLOCK_N": 64}, 4, 3)],
    "sm90": [LaunchConfig({"BLOCK_M": 128, "BLOCK_N": 64}, 8, 3),
             LaunchConfig({"BLOCK_M": 64, "BLOCK_N": 64}, 4, 3)],
}
_FWD_D128 = {
    "sm80": [LaunchConfig({"BLOCK_M": 128, "BLOCK_N": 32}, 8, 2)],
    "sm90": [LaunchConfig({"BLOCK_M": 128, "BLOCK_N": 64}, 8, 2)],
}
# Backward: BLOCK_M is the query block, BLOCK_N the key block (both kernels).
_BWD = {
    "interp": [LaunchConfig({"BLOCK_M": 16, "BLOCK_N": 32})],
    "sm80": [LaunchConfig({"BLOCK_M": 32, "BLOCK_N": 64}, 4, 2)],
    "sm90": [LaunchConfig({"BLOCK_M": 64, "BLOCK_N": 64}, 4, 2)],
}
_BWD_D128 = {
    "sm80": [LaunchConfig({"BLOCK_M": 32, "BLOCK_N": 64}, 8, 2)],
    "sm90": [LaunchConfig({"BLOCK_M": 64, "BLOCK_N": 64}, 8, 2)],
}
_DECODE = {
    "interp": LaunchConfig({"BLOCK_N": 16}),
    "sm80": LaunchConfig({"BLOCK_N": 64}, 4, 2),
    "sm90": LaunchConfig({"BLOCK_N": 64}, 4, 2),
}
_PRE = LaunchConfig({"BLOCK_M": 64}, 4, 1)


def fwd_configs(dev: str, block_d: int) -> list[LaunchConfig]:
    if block_d > 64 and dev in _FWD_D128:
        return _FWD_D128[dev]
    return _FWD[dev]


def bwd_configs(dev: str, block_d: int) -> list[LaunchConfig]:
    if block_d > 64 and dev in _BWD_D128:
        return _BWD_D128[dev]
    return _BWD[dev]


def decode_config(dev: str) -> LaunchConfig:
    return _DECODE[dev]


# -- kernels ---------------------------------------------------------------------------------


# See matmul.py: under Triton's CPU interpreter bf16 MMA operands are widened to fp32.
_INTERPRETED_BF16_DOT = tl.constexpr(interpreting())


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    elif _INTERPRETED_BF16_DOT and a.dtype == tl.bfloat16:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def _attn_fwd_step(q, acc, m_i, l_i, k_base, v_base, kvalid_row, start, qpos, S, hs, skt, svt,
                   qk_scale, offs_n, offs_d, CAUSAL: tl.constexpr, HAS_KVALID: tl.constexpr,
                   IEEE: tl.constexpr):
    # One key block of the online softmax; CAUSAL masks keys after each query (and past S).
    cols = start + offs_n
    col_ok = cols < S
    d_ok = offs_d < hs
    kt = tl.load(k_base + cols[None, :] * skt + offs_d[:, None],
                 mask=col_ok[None, :] & d_ok[:, None], other=0.0)  # (D, N)
    s = _dot(q, kt, IEEE) * qk_scale
    if CAUSAL:
        visible = (cols[None, :] <= qpos[:, None]) & col_ok[None, :]
        if HAS_KVALID:
            kv = tl.load(kvalid_row + cols, mask=col_ok, other=0) != 0
            visible = visible & (kv[None, :] | (cols[None, :] == qpos[:, None]))
        s = tl.where(visible, s, float("-inf"))
    elif HAS_KVALID:  # strictly below the diagonal: a key is never the query's own slot
        kv = tl.load(kvalid_row + cols, mask=col_ok, other=0) != 0
        s = tl.where(kv[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    p = tl.exp2(s - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    v = tl.load(v_base + cols[:, None] * svt + offs_d[None, :],
                mask=col_ok[:, None] & d_ok[None, :], other=0.0)  # (N, D)
    acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)
    return acc, m_new, l_i


@triton.jit
def _attn_fwd_kernel(Q, K, V, O, LSE, KVALID, QPOS,
                     sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sob, soh, sot,
                     n_head, T, S, hs, qk_scale,
                     HAS_KVALID: tl.constexpr, HAS_QPOS: tl.constexpr, IEEE: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    # T queries, S keys (S == T for self-attention; the cache length with QPOS).
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // n_head).to(tl.int64)
    h = (bh % n_head).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < T
    d_ok = offs_d < hs
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqt + offs_d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    if HAS_QPOS:
        qpos = tl.load(QPOS + offs_m, mask=row_ok, other=0)
        hi = tl.minimum(tl.max(qpos, axis=0) + 1, S)
    else:
        qpos = offs_m
        hi = tl.minimum((pid_m + 1) * BLOCK_M, S)
    k_base = K + b * skb + h * skh
    v_base = V + b * svb + h * svh
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    # Key blocks that end at or before this query block's first row are fully visible
    # (causal-wise): no causal mask there. Only the blocks on the diagonal need it.
    if HAS_QPOS:
        unmasked = 0
    else:
        unmasked = (pid_m * BLOCK_M // BLOCK_N) * BLOCK_N
    for start in range(0, unmasked, BLOCK_N):
        acc, m_i, l_i = _attn_fwd_step(q, acc, m_i, l_i, k_base, v_base, KVALID + b * S,
                                       start, qpos, S, hs, skt, svt, qk_scale, offs_n, offs_d,
                                       False, HAS_KVALID, IEEE)
    for start in range(unmasked, hi, BLOCK_N):
        acc, m_i, l_i = _attn_fwd_step(q, acc, m_i, l_i, k_base, v_base, KVALID + b * S,
                                       start, qpos, S, hs, skt, svt, qk_scale, offs_n, offs_d,
                                       True, HAS_KVALID, IEEE)
    acc = acc / l_i[:, None]
    tl.store(O + b * sob + h * soh + offs_m[:, None] * sot + offs_d[None, :],
             acc.to(O.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    tl.store(LSE + bh.to(tl.int64) * T + offs_m, m_i + tl.log2(l_i), mask=row_ok)


@triton.jit
def _attn_bwd_preprocess_kernel(O, DO, Delta, T, hs, BLOCK_M: tl.constexpr,
                                BLOCK_D: tl.constexpr):
    # delta[bh, t] = sum_d O * dO (O, dO contiguous [B*nh, T, hs]).
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m[:, None] < T) & (offs_d[None, :] < hs)
    off = bh * T * hs + offs_m[:, None] * hs + offs_d[None, :]
    o = tl.load(O + off, mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + off, mask=mask, other=0.0).to(tl.float32)
    tl.store(Delta + bh * T + offs_m, tl.sum(o * do, axis=1), mask=offs_m < T)


@triton.jit
def _visible(rows, cols, T, kv, HAS_KVALID: tl.constexpr):
    # [rows, cols] mask: query rows[i] sees key cols[j]
    vis = (cols[None, :] <= rows[:, None]) & (rows[:, None] < T) & (cols[None, :] < T)
    if HAS_KVALID:
        vis = vis & (kv[None, :] | (cols[None, :] == rows[:, None]))
    return vis


@triton.jit
def _visible_t(keys, queries, T, kv, HAS_KVALID: tl.constexpr):
    # the same mask transposed, [keys, queries], built in that layout (no register shuffle)
    vis = (keys[:, None] <= queries[None, :]) & (queries[None, :] < T) & (keys[:, None] < T)
    if HAS_KVALID:
        vis = vis & (kv[:, None] | (keys[:, None] == queries[None, :]))
    return vis


@triton.jit
def _attn_bwd_dkdv_kernel(Q, K, V, DO, LSE, Delta, DK, DV, KVALID, n_head, T, hs,
                          qk_scale, sm_scale,
                          HAS_KVALID: tl.constexpr, IEEE: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          BLOCK_D: tl.constexpr):
    # One key block; all tensors contiguous [B*nh, T, hs]. Works in the transposed
    # orientation (keys as rows) so no transpose of P is needed.
    pid_n = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // n_head
    base = bh * T * hs
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    n_ok = offs_n < T
    d_ok = offs_d < hs
    kv_mask = n_ok[:, None] & d_ok[None, :]
    k = tl.load(K + base + offs_n[:, None] * hs + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(V + base + offs_n[:, None] * hs + offs_d[None, :], mask=kv_mask, other=0.0)
    kvalid = n_ok
    if HAS_KVALID:
        kvalid = tl.load(KVALID + b * T + offs_n, mask=n_ok, other=0) != 0
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    start_m = (pid_n * BLOCK_N // BLOCK_M) * BLOCK_M
    for start in range(start_m, T, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        m_ok = offs_m < T
        qt = tl.load(Q + base + offs_m[None, :] * hs + offs_d[:, None],
                     mask=m_ok[None, :] & d_ok[:, None], other=0.0)  # (D, M)
        do = tl.load(DO + base + offs_m[:, None] * hs + offs_d[None, :],
                     mask=m_ok[:, None] & d_ok[None, :], other=0.0)  # (M, D)
        lse = tl.load(LSE + bh * T + offs_m, mask=m_ok, other=0.0)
        delta = tl.load(Delta + bh * T + offs_m, mask=m_ok, other=0.0)
        st = _dot(k, qt, IEEE) * qk_scale  # (N, M)
        vis = _visible_t(offs_n, offs_m, T, kvalid, HAS_KVALID)
        pt = tl.where(vis, tl.exp2(st - lse[None, :]), 0.0)
        dv += _dot(pt.to(do.dtype), do, IEEE)
        dpt = _dot(v, tl.trans(do), IEEE)  # (N, M)
        dst = pt * (dpt - delta[None, :])
        dk += _dot(dst.to(qt.dtype), tl.trans(qt), IEEE)
    tl.store(DK + base + offs_n[:, None] * hs + offs_d[None, :],
             (dk * sm_scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + base + offs_n[:, None] * hs + offs_d[None, :],
             dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _attn_bwd_dq_kernel(Q, K, V, DO, LSE, Delta, DQ, KVALID, n_head, T, hs,
                        qk_scale, sm_scale,
                        HAS_KVALID: tl.constexpr, IEEE: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_D: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // n_head
    base = bh * T * hs
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < T
    d_ok = offs_d < hs
    q_mask = m_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + base + offs_m[:, None] * hs + offs_d[None, :], mask=q_mask, other=0.0)
    do = tl.load(DO + base + offs_m[:, None] * hs + offs_d[None, :], mask=q_mask, other=0.0)
    lse = tl.load(LSE + bh * T + offs_m, mask=m_ok, other=0.0)
    delta = tl.load(Delta + bh * T + offs_m, mask=m_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    hi = tl.minimum((pid_m + 1) * BLOCK_M, T)
    for start in range(0, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        n_ok = offs_n < T
        kt = tl.load(K + base + offs_n[None, :] * hs + offs_d[:, None],
                     mask=n_ok[None, :] & d_ok[:, None], other=0.0)  # (D, N)
        vt = tl.load(V + base + offs_n[None, :] * hs + offs_d[:, None],
                     mask=n_ok[None, :] & d_ok[:, None], other=0.0)  # (D, N)
        kvalid = n_ok
        if HAS_KVALID:
            kvalid = tl.load(KVALID + b * T + offs_n, mask=n_ok, other=0) != 0
        s = _dot(q, kt, IEEE) * qk_scale
        vis = _visible(offs_m, offs_n, T, kvalid, HAS_KVALID)
        p = tl.where(vis, tl.exp2(s - lse[:, None]), 0.0)
        dp = _dot(do, vt, IEEE)
        ds = p * (dp - delta[:, None])
        dq += _dot(ds.to(kt.dtype), tl.trans(kt), IEEE)
    tl.store(DQ + base + offs_m[:, None] * hs + offs_d[None, :],
             (dq * sm_scale).to(DQ.dtype.element_ty), mask=q_mask)


@triton.jit
def _attn_decode_kernel(Q, K, V, QPOS, KVALID, PACC, PML,
                        sqb, sqh, skb, skh, skt, svb, svh, svt,
                        n_head, S, hs, split_len, n_split, qk_scale,
                        HAS_KVALID: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_D: tl.constexpr):
    # One query (row bh) over one split of the cache -> unnormalised partial (acc, m, l).
    bh = tl.program_id(0)
    split = tl.program_id(1)
    b = (bh // n_head).to(tl.int64)
    h = (bh % n_head).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < hs
    q = tl.load(Q + b * sqb + h * sqh + offs_d, mask=d_ok, other=0.0).to(tl.float32)
    qpos = tl.load(QPOS)
    lo = split * split_len
    hi = tl.minimum(tl.minimum(lo + split_len, qpos + 1), S)
    m_i = -1.0e30
    l_i = 0.0
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for start in range(lo, hi, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < hi
        kv_mask = col_ok[:, None] & d_ok[None, :]
        k = tl.load(K + b * skb + h * skh + cols[:, None] * skt + offs_d[None, :],
                    mask=kv_mask, other=0.0).to(tl.float32)
        s = tl.sum(k * q[None, :], axis=1) * qk_scale
        visible = col_ok
        if HAS_KVALID:
            kv = tl.load(KVALID + b * S + cols, mask=col_ok, other=0) != 0
            visible = visible & (kv | (cols == qpos))
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=0))
        p = tl.exp2(s - m_new)
        alpha = tl.exp2(m_i - m_new)
        v = tl.load(V + b * svb + h * svh + cols[:, None] * svt + offs_d[None, :],
                    mask=kv_mask, other=0.0).to(tl.float32)
        l_i = l_i * alpha + tl.sum(p, axis=0)
        acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
        m_i = m_new
    part = bh.to(tl.int64) * n_split + split
    tl.store(PACC + part * BLOCK_D + offs_d, acc)
    tl.store(PML + part * 2, m_i)
    tl.store(PML + part * 2 + 1, l_i)


@triton.jit
def _attn_decode_combine_kernel(PACC, PML, O, n_split, hs, BLOCK_S: tl.constexpr,
                                BLOCK_D: tl.constexpr):
    bh = tl.program_id(0).to(tl.int64)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_ok = offs_s < n_split
    m = tl.load(PML + (bh * n_split + offs_s) * 2, mask=s_ok, other=-1.0e30)
    l = tl.load(PML + (bh * n_split + offs_s) * 2 + 1, mask=s_ok, other=0.0)
    acc = tl.load(PACC + (bh * n_split + offs_s)[:, None] * BLOCK_D + offs_d[None, :],
                  mask=s_ok[:, None], other=0.0)
    w = tl.exp2(m - tl.max(m, axis=0))
    out = tl.sum(acc * w[:, None], axis=0) / tl.sum(l * w, axis=0)
    tl.store(O + bh * hs + offs_d, out.to(O.dtype.element_ty), mask=offs_d < hs)


# -- host launchers --------------------------------------------------------------------------


def _block_d(hs: int) -> int:
    return max(16, next_pow2(hs))


def _check_qkv(name, q, k, v):
    for t in (q, k, v):
        check_float(name, t)
        if t.dim() != 4:
            raise ValueError(f"{name}: expected [B, nh, T, hs] tensors, got shape {tuple(t.shape)}")
    check_device(name, q, k, v)
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"{name}: q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype})")
    hs = q.shape[-1]
    if hs > MAX_HEAD_DIM:
        raise ValueError(f"{name}: head size {hs} exceeds the kernel's limit {MAX_HEAD_DIM}")


def _last_contiguous(t):
    return t if t.stride(-1) == 1 else t.contiguous()


def _check_mask(name, mask, B, S, device):
    if mask is None:
        return None
    if mask.shape != (B, S):
        raise ValueError(f"{name}: mask shape {tuple(mask.shape)} != (B, S) = ({B}, {S})")
    return mask.to(device=device, dtype=torch.int8).contiguous()


def attention_fwd(q, k, v, key_valid=None, q_pos=None):
    """Causal attention forward: q[B, nh, Tq, hs], k, v[B, nh, S, hs] -> (o, lse).

    Without q_pos, Tq == S and query t sits at slot t. With q_pos[Tq] (cache slots of the
    queries), query i sees slots <= q_pos[i]. key_valid[B, S]: True for real keys.
    lse [B*nh, Tq] fp32 in base 2 (log2 of the softmax denominator, scores pre-scaled).
    """
    _check_qkv("attention", q, k, v)
    q, k, v = _last_contiguous(q), _last_contiguous(k), _last_contiguous(v)
    B, nh, T, hs = q.shape
    S = k.shape[2]
    if q_pos is None and S != T:
        raise ValueError(f"attention: q has {T} positions but k has {S}")
    if k.shape != (B, nh, S, hs) or v.shape != k.shape:
        raise ValueError(f"attention: shapes q {tuple(q.shape)} k {tuple(k.shape)} v {tuple(v.shape)} do not match")
    kvalid = _check_mask("attention: key_valid", key_valid, B, S, q.device)
    o = torch.empty((B, nh, T, hs), dtype=q.dtype, device=q.device)
    lse = torch.empty((B * nh, T), dtype=torch.float32, device=q.device)
    if B * nh * T == 0:
        return o, lse
    block_d = _block_d(hs)
    dev = device_class(q)
    sm_scale = 1.0 / math.sqrt(hs)
    qpos = q_pos.to(device=q.device, dtype=torch.int32).contiguous() if q_pos is not None else q

    def run(cfg):
        grid = (triton.cdiv(T, cfg.meta["BLOCK_M"]), B * nh)
        _attn_fwd_kernel[grid](
            q, k, v, o, lse, kvalid if kvalid is not None else q, qpos,
            *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3],
            nh, T, S, hs, sm_scale * LOG2E,
            HAS_KVALID=kvalid is not None, HAS_QPOS=q_pos is not None,
            IEEE=q.dtype == torch.float32, BLOCK_D=block_d, **cfg.kwargs())

    key = (dev, block_d, q.dtype, T > 1024, q_pos is not None)
    cfg = pick_config("attention_fwd", key, fwd_configs(dev, block_d), run)
    run(cfg)
    return o, lse


def attention_bwd(do, q, k, v, o, lse, key_valid=None):
    """Gradients (dq, dk, dv) of causal attention_fwd (self-attention, no q_pos)."""
    B, nh, T, hs = q.shape
    q, k, v, o, do = (t.contiguous() for t in (q, k, v, o, do))
    kvalid = _check_mask("attention: key_valid", key_valid, B, T, q.device)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if B * nh * T == 0:
        return dq, dk, dv
    block_d = _block_d(hs)
    dev = device_class(q)
    delta = torch.empty((B * nh, T), dtype=torch.float32, device=q.device)
    _attn_bwd_preprocess_kernel[(triton.cdiv(T, _PRE.meta["BLOCK_M"]), B * nh)](
        o, do, delta, T, hs, BLOCK_D=block_d, **_PRE.kwargs())
    sm_scale = 1.0 / math.sqrt(hs)
    args = dict(HAS_KVALID=kvalid is not None, IEEE=q.dtype == torch.float32, BLOCK_D=block_d)
    km = kvalid if kvalid is not None else q
    cfgs = bwd_configs(dev, block_d)

    def run_dkdv(cfg):
        _attn_bwd_dkdv_kernel[(triton.cdiv(T, cfg.meta["BLOCK_N"]), B * nh)](
            q, k, v, do, lse, delta, dk, dv, km, nh, T, hs, sm_scale * LOG2E, sm_scale,
            **args, **cfg.kwargs())

    def run_dq(cfg):
        _attn_bwd_dq_kernel[(triton.cdiv(T, cfg.meta["BLOCK_M"]), B * nh)](
            q, k, v, do, lse, delta, dq, km, nh, T, hs, sm_scale * LOG2E, sm_scale,
            **args, **cfg.kwargs())

    key = (dev, block_d, q.dtype, T > 1024)
    run_dkdv(pick_config("attention_bwd_dkdv", key, cfgs, run_dkdv))
    run_dq(pick_config("attention_bwd_dq", key, cfgs, run_dq))
    return dq, dk, dv


def _num_splits(S, rows, dev, device, block_n):
    if dev == "interp":
        return triton.cdiv(S, 2 * block_n)  # several splits, so merging is exercised
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    want = triton.cdiv(2 * sms, max(rows, 1))
    return max(1, min(want, triton.cdiv(S, 4 * block_n), 64))


def attention_decode(q, k_cache, v_cache, q_pos, key_valid=None):
    """One query per row over the KV cache: q[B, nh, 1, hs], caches [B, nh, S, hs],
    q_pos[1] (the query's slot), key_valid[B, S] | None -> [B, nh, 1, hs]."""
    _check_qkv("cached_attention", q, k_cache, v_cache)
    q, k_cache, v_cache = (_last_contiguous(t) for t in (q, k_cache, v_cache))
    B, nh, Tq, hs = q.shape
    S = k_cache.shape[2]
    if Tq != 1:
        raise ValueError(f"attention_decode: expected one query per row, got {Tq}")
    kvalid = _check_mask("cached_attention: key_valid", key_valid, B, S, q.device)
    dev = device_class(q)
    cfg = decode_config(dev)
    block_n = cfg.meta["BLOCK_N"]
    block_d = _block_d(hs)
    n_split = _num_splits(S, B * nh, dev, q.device, block_n)
    split_len = triton.cdiv(triton.cdiv(S, n_split), block_n) * block_n
    n_split = triton.cdiv(S, split_len)
    pacc = torch.empty((B * nh, n_split, block_d), dtype=torch.float32, device=q.device)
    pml = torch.empty((B * nh, n_split, 2), dtype=torch.float32, device=q.device)
    o = torch.empty((B, nh, 1, hs), dtype=q.dtype, device=q.device)
    qpos = q_pos.to(device=q.device, dtype=torch.int32).reshape(1).contiguous()
    _attn_decode_kernel[(B * nh, n_split)](
        q, k_cache, v_cache, qpos, kvalid if kvalid is not None else q, pacc, pml,
        q.stride(0), q.stride(1), *k_cache.stride()[:3], *v_cache.stride()[:3],
        nh, S, hs, split_len, n_split, LOG2E / math.sqrt(hs),
        HAS_KVALID=kvalid is not None, BLOCK_D=block_d, **cfg.kwargs())
    _attn_decode_combine_kernel[(B * nh,)](
        pacc, pml, o, n_split, hs, BLOCK_S=max(2, next_pow2(n_split)), BLOCK_D=block_d,
        **LaunchConfig({}, 4, 1).kwargs())
    return o


# -- registered ops and autograd -------------------------------------------------------------


@torch.library.custom_op("llm_triton::attention_fwd", mutates_args=())
def _attention_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      key_valid: Optional[torch.Tensor]
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    return attention_fwd(q, k, v, key_valid)


@_attention_fwd_op.register_fake
def _(q, k, v, key_valid):
    B, nh, T, hs = q.shape
    return q.new_empty((B, nh, T, hs)), q.new_empty((B * nh, T), dtype=torch.float32)


@torch.library.custom_op("llm_triton::attention_bwd", mutates_args=())
def _attention_bwd_op(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      o: torch.Tensor, lse: torch.Tensor,
                      key_valid: Optional[torch.Tensor]
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return attention_bwd(do, q, k, v, o, lse, key_valid)


@_attention_bwd_op.register_fake
def _(do, q, k, v, o, lse, key_valid):
    shape = q.shape
    return q.new_empty(shape), k.new_empty(shape), v.new_empty(shape)


def _setup_context(ctx, inputs, output):
    q, k, v, mask = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse, mask)


def _backward(ctx, do, _dlse):
    q, k, v, o, lse, mask = ctx.saved_tensors
    dq, dk, dv = _attention_bwd_op(do, q, k, v, o, lse, mask)
    return dq, dk, dv, None


_attention_fwd_op.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("llm_triton::cached_attention", mutates_args=())
def _cached_attention_op(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                         q_pos: torch.Tensor, key_valid: Optional[torch.Tensor]) -> torch.Tensor:
    if q.shape[2] == 1:
        return attention_decode(q, k_cache, v_cache, q_pos, key_valid)
    return attention_fwd(q, k_cache, v_cache, key_valid, q_pos=q_pos)[0]


@_cached_attention_op.register_fake
def _(q, k_cache, v_cache, q_pos, key_valid):
    return q.new_empty(q.shape)


# -- public ----------------------------------------------------------------------------------


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              key_valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Causal self-attention, softmax scale 1/sqrt(hs): q, k, v [B, nh, T, hs] ->
    [B, nh, T, hs]. key_valid [B, T] bool, True for real tokens."""
    if key_valid is not None:
        key_valid = key_valid.to(torch.bool)
    return _attention_fwd_op(q, k, v, key_valid)[0]


def cached_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     q_pos: torch.Tensor, key_valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Attention of q[B, nh, Tq, hs] at cache slots q_pos[Tq] over k/v caches [B, nh, S, hs]:
    query i sees slots <= q_pos[i] that are valid (key_valid[B, S]) plus its own.
    Tq == 1 runs the split-KV decode kernel; Tq > 1 the flash forward kernel."""
    if key_valid is not None:
        key_valid = key_valid.to(torch.bool)
    return _cached_attention_op(q, k_cache, v_cache, q_pos, key_valid)
