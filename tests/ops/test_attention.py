"""attention (causal self-attention, training) and cached_attention (over a KV cache,
inference) on every backend against the reference: odd sizes, padding (key_valid), strided
views, decode and prefill; the Triton kernels' and the C++ op's argument checks."""

import pytest
import torch

from llm.ops import get_ops
from llm.ops import reference as ref
from llm.testing import assert_ok, check, run_and_grads, within_2x, within_tolerance
from op_helpers import DEVICE, backend_dtypes, check_op, padding_mask, randn


@pytest.mark.parametrize("B,nh,T,hs,pads", [
    (2, 3, 37, 32, None),     # T not a multiple of any block
    (1, 2, 67, 48, None),     # head size padded to 64
    (2, 2, 45, 24, (5, 0)),   # key_valid mask, head size padded to 32
    (1, 1, 23, 128, (3,)),    # largest head size
    (3, 1, 1, 64, None),      # one token
])
@backend_dtypes()
def test_attention(ops, dtype, B, nh, T, hs, pads):
    q, k, v = (randn(B, nh, T, hs, dtype=dtype) for _ in range(3))
    mask = padding_mask(B, T, pads) if pads else None
    check_op("attention", lambda q, k, v: ops.attention(q, k, v, mask),
             lambda q, k, v: ref.attention(q, k, v, mask), [q, k, v])


def test_attention_strided_inputs_from_packed_qkv(ops):
    # The model passes q, k, v as views of one [B, T, 3C] projection.
    B, T, nh, hs = 2, 19, 3, 16
    qkv = torch.randn(B, T, 3 * nh * hs, device=DEVICE)
    q, k, v = (t.view(B, T, nh, hs).transpose(1, 2) for t in qkv.split(nh * hs, dim=2))
    out = ops.attention(q, k, v)
    expect = ref.attention(q.double(), k.double(), v.double())
    assert_ok(within_tolerance("attention of strided views", out, expect, scaled=False))


def test_attention_fully_padded_rows_stay_finite(ops):
    B, nh, T, hs = 2, 2, 21, 32
    q, k, v = (randn(B, nh, T, hs) for _ in range(3))
    mask = padding_mask(B, T, (9, 20))
    out, grads = run_and_grads(lambda q, k, v: ops.attention(q, k, v, mask), [q, k, v])
    expect, expect_grads = run_and_grads(lambda q, k, v: ref.attention(q, k, v, mask),
                                         [t.detach().double().requires_grad_() for t in (q, k, v)])
    assert torch.isfinite(out).all()
    assert_ok(within_tolerance("output", out, expect, scaled=False),
              *(within_tolerance(f"grad {i}", g, r) for i, (g, r) in enumerate(zip(grads, expect_grads))))


@pytest.mark.parametrize("hs,padded", [(40, True), (64, False)])
@backend_dtypes()
def test_cached_attention_decode(ops, dtype, hs, padded):
    B, nh, S = 2, 3, 75
    kc = torch.randn(B, nh, S, hs, device=DEVICE).to(dtype)
    vc = torch.randn(B, nh, S, hs, device=DEVICE).to(dtype)
    valid = padding_mask(B, S, (0, 7)) if padded else None
    for pos in (0, 6, 33, 74):
        q = torch.randn(B, nh, 1, hs, device=DEVICE).to(dtype)
        qp = torch.tensor([pos], device=DEVICE)
        out = ops.cached_attention(q, kc, vc, qp, valid)
        expect = ref.cached_attention(q.double(), kc.double(), vc.double(), qp, valid)
        same = ref.cached_attention(q, kc, vc, qp, valid)
        assert_ok(check(f"decode at {pos}", out, expect, same))


def test_cached_attention_decode_equals_full_attention_over_prefix(ops):
    # Query at slot t over the cache == the last row of full causal attention over 0..t.
    B, nh, S, hs, t = 2, 2, 50, 32, 41
    q_all, kc, vc = (torch.randn(B, nh, S, hs, device=DEVICE) for _ in range(3))
    valid = padding_mask(B, S, (4, 0))
    full = ref.attention(q_all[:, :, :t + 1].double(), kc[:, :, :t + 1].double(),
                         vc[:, :, :t + 1].double(), valid[:, :t + 1])[:, :, -1:]
    out = ops.cached_attention(q_all[:, :, t:t + 1], kc, vc, torch.tensor([t], device=DEVICE), valid)
    assert_ok(within_tolerance("decode vs full attention", out, full, scaled=False))


@pytest.mark.parametrize("padded", [False, True])
def test_cached_attention_prefill(ops, padded):
    B, nh, S, hs, Tq = 2, 3, 40, 24, 13
    kc, vc = (torch.randn(B, nh, S, hs, device=DEVICE) for _ in range(2))
    valid = padding_mask(B, S, (3, 0)) if padded else None
    q = torch.randn(B, nh, Tq, hs, device=DEVICE)
    for qp in (torch.arange(Tq, device=DEVICE), torch.arange(20, 20 + Tq, device=DEVICE)):
        out = ops.cached_attention(q, kc, vc, qp, valid)
        expect = ref.cached_attention(q.double(), kc.double(), vc.double(), qp, valid)
        assert_ok(within_tolerance(f"prefill at {qp[0].item()}", out, expect, scaled=False))


# -- triton ----------------------------------------------------------------------------------


def test_triton_rejects_bad_input(kernels):
    attention = kernels.attention
    q = randn(1, 1, 8, 256)
    with pytest.raises(ValueError, match="head size 256"):
        attention.attention(q, q, q)
    q = randn(1, 1, 8, 16)
    with pytest.raises(ValueError, match="mask shape"):
        attention.attention(q, q, q, torch.ones(1, 7, dtype=torch.bool, device=DEVICE))


# -- native ----------------------------------------------------------------------------------


@pytest.mark.parametrize("B,nh,S,hs,q_pos", [
    (1, 1, 1, 1, [0]),
    (2, 3, 13, 5, [12]),          # one query per row at the last slot
    (3, 2, 17, 64, [4, 5, 6]),    # a few queries mid-cache (prefill of a chunk)
    (2, 4, 31, 16, list(range(31))),
])
@pytest.mark.parametrize("with_valid", [False, True])
def test_native_cached_attention(native, B, nh, S, hs, q_pos, with_valid):
    L = native
    q = torch.randn(B, nh, len(q_pos), hs)
    k, v = torch.randn(B, nh, S, hs), torch.randn(B, nh, S, hs)
    pos = torch.tensor(q_pos)
    valid = None
    if with_valid:
        valid = torch.rand(B, S) > 0.3
        valid[0] = False  # a row with no real key: each query sees its own slot only
    expect = ref.cached_attention(q, k, v, pos, valid)
    torch.testing.assert_close(L.cached_attention(q, k, v, pos, valid), expect, rtol=1e-5, atol=1e-5)
    full = ref.cached_attention(q.double(), k.double(), v.double(), pos, valid)
    torch_bf16 = ref.cached_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), pos, valid)
    got = L.cached_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), pos, valid)
    assert_ok(within_2x("cached_attention bf16", got, full, torch_bf16, scaled=False))


def test_native_table_attention_matches_reference(native):
    table = get_ops("native")
    q, k, v = (torch.randn(2, 3, 9, 16).transpose(1, 2).transpose(1, 2) for _ in range(3))
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, :4] = False
    torch.testing.assert_close(table.attention(q, k, v, mask), ref.attention(q, k, v, mask), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(table.attention(q, k, v), ref.attention(q, k, v), rtol=1e-5, atol=1e-5)


def test_native_bad_arguments_raise_clear_errors(native):
    L = native
    kc = torch.randn(1, 2, 5, 4)
    with pytest.raises(RuntimeError, match=r"q_pos\[0\] = 5 is outside the cache \[0, 5\)"):
        L.cached_attention(torch.randn(1, 2, 1, 4), kc, kc, torch.tensor([5]), None)
    with pytest.raises(RuntimeError, match="key_valid must be bool"):
        L.cached_attention(torch.randn(1, 2, 1, 4), kc, kc, torch.tensor([1]), torch.ones(1, 5))
    with pytest.raises(RuntimeError, match="q shape .* does not fit the cache"):
        L.cached_attention(torch.randn(1, 3, 1, 4), kc, kc, torch.tensor([1]), None)
    with pytest.raises(RuntimeError, match="k_cache must be contiguous"):
        L.cached_attention(torch.randn(1, 2, 1, 4), kc.transpose(2, 3), kc, torch.tensor([1]), None)
    with pytest.raises(RuntimeError, match="q_pos must be int64"):
        L.cached_attention(torch.randn(1, 2, 1, 4), kc, kc, torch.tensor([1.0]), None)
