"""lm_head_loss, the mean cross-entropy of h @ weight.T, on every backend against the
reference (loss and gradients, ignored targets); the Triton kernel's chunking, autocast and
argument checks."""

import pytest
import torch

from llm.ops import IGNORE_INDEX
from llm.ops import reference as ref
from llm.testing import assert_ok, max_error, within_tolerance
from op_helpers import DEVICE, backend_dtypes, check_op, randn, targets


@pytest.mark.parametrize("N,C,V", [(53, 24, 1031), (8, 40, 4099), (1, 16, 17)])
@backend_dtypes()
def test_lm_head_loss(ops, dtype, N, C, V):
    h, w = randn(N, C, dtype=dtype), randn(V, C, dtype=dtype, scale=0.3)
    t = targets(N, V) if N > 1 else torch.tensor([3], device=DEVICE)
    check_op("lm_head_loss", lambda h, w: ops.lm_head_loss(h, w, t, IGNORE_INDEX),
             lambda h, w: ref.lm_head_loss(h, w, t, IGNORE_INDEX), [h, w])


def test_lm_head_loss_scales_by_upstream_gradient(ops):
    h, w = randn(13, 16), randn(101, 16)
    t = targets(13, 101)
    grads = torch.autograd.grad(ops.lm_head_loss(h, w, t, IGNORE_INDEX) * -2.5, (h, w))
    hr, wr = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    expect = torch.autograd.grad(ref.lm_head_loss(hr, wr, t) * -2.5, (hr, wr))
    assert_ok(*(within_tolerance(f"grad {i}", g, r) for i, (g, r) in enumerate(zip(grads, expect))))


def test_lm_head_loss_all_ignored_is_nan_like_torch(ops):
    h, w = randn(4, 8), randn(11, 8)
    t = torch.full((4,), IGNORE_INDEX, device=DEVICE)
    assert torch.isnan(ops.lm_head_loss(h, w, t, IGNORE_INDEX))
    assert torch.isnan(ref.lm_head_loss(h, w, t))


# -- triton ----------------------------------------------------------------------------------


def test_triton_under_autocast_matches_reference(kernels):
    """Under autocast the logits matmul runs in the autocast dtype, as F.linear does there;
    fp32 h (the layernorm output) with fp16 autocast, gradients back in fp32."""
    h, w = randn(37, 24), randn(101, 24, scale=0.3)
    t = targets(37, 101)
    grads = []
    for fn in (kernels.lm_head_loss.lm_head_loss, ref.lm_head_loss):
        with torch.autocast(DEVICE, dtype=torch.float16):
            loss = fn(h, w, t)
        assert loss.dtype == torch.float32
        grads.append((loss, *torch.autograd.grad(loss, (h, w))))
    for got, expect in zip(*grads):
        assert got.dtype == expect.dtype
        torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-6)


def test_triton_chunks_agree(kernels):
    h, w = randn(29, 16, grad=False), randn(211, 16, grad=False)
    t = targets(29, 211)
    one = kernels.lm_head_loss.lm_head_loss_fwd(h, w, t, chunk=29)
    many = kernels.lm_head_loss.lm_head_loss_fwd(h, w, t, chunk=4)
    for a, b in zip(one, many):
        assert max_error(a, b) <= 1e-6


def test_triton_rejects_bad_targets(kernels):
    h, w = randn(3, 8), randn(11, 8)
    with pytest.raises(ValueError, match="outside"):
        kernels.lm_head_loss.lm_head_loss(h, w, torch.tensor([0, 11, 2], device=DEVICE))
    with pytest.raises(ValueError, match="targets shape"):
        kernels.lm_head_loss.lm_head_loss(h, w, torch.tensor([0, 1], device=DEVICE))
