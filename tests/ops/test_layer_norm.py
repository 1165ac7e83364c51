"""layer_norm on every backend against the reference (output and gradients, fp32 tight,
fp16/bf16 within 2x of torch's own error); the Triton kernel's deterministic backward and
argument checks; the C++ kernel on each instruction-set path."""

import pytest
import torch
import torch.nn.functional as F

from llm.ops import get_ops
from llm.ops import reference as ref
from llm.testing import assert_ok, within_2x
from op_helpers import DEVICE, backend_dtypes, check_op, randn

EPS = 1e-5


@pytest.mark.parametrize("shape,bias", [((3, 37, 131), True), ((2, 5, 768), True), ((11, 97), False)])
@backend_dtypes()
def test_layer_norm(ops, dtype, shape, bias):
    C = shape[-1]
    x = randn(*shape, dtype=dtype)
    w = randn(C, dtype=dtype)
    b = randn(C, dtype=dtype) if bias else None
    inputs = [x, w, b] if bias else [x, w]

    def fast(x, w, b=None):
        return ops.layer_norm(x, w, b, EPS)

    def reference(x, w, b=None):
        return ref.layer_norm(x, w, b, EPS)

    check_op("layer_norm", fast, reference, inputs)


# -- triton ----------------------------------------------------------------------------------


def test_triton_backward_is_deterministic(kernels):
    layernorm = kernels.layernorm
    x, w, b = randn(70, 257), randn(257), randn(257)
    dy = torch.randn(70, 257, device=DEVICE)
    y, mean, rstd = layernorm.layer_norm_fwd(x.detach(), w.detach(), b.detach(), EPS)
    first = layernorm.layer_norm_bwd(dy, x.detach(), w.detach(), mean, rstd)
    second = layernorm.layer_norm_bwd(dy, x.detach(), w.detach(), mean, rstd)
    for a, c in zip(first, second):
        assert torch.equal(a, c)


def test_triton_rejects_bad_input(kernels):
    layernorm = kernels.layernorm
    with pytest.raises(ValueError, match="weight shape"):
        layernorm.layer_norm(randn(2, 8), randn(7), None)
    with pytest.raises(ValueError, match="exceeds"):
        layernorm.layer_norm(randn(1, 9000), randn(9000), None)
    with pytest.raises(ValueError, match="dtype"):
        layernorm.layer_norm(torch.ones(2, 8, dtype=torch.int32, device=DEVICE), randn(8), None)


# -- native ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (2, 5, 768), (4, 769)])
def test_native_layer_norm(native, isa, shape):
    L = native
    C = shape[-1]
    x, w, b = torch.randn(shape) * 3 + 1, torch.randn(C), torch.randn(C)
    torch.testing.assert_close(L.layer_norm(x, w, b, EPS), F.layer_norm(x, (C,), w, b, EPS), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(L.layer_norm(x, w, None, EPS), F.layer_norm(x, (C,), w, None, EPS),
                               rtol=1e-5, atol=1e-5)
    full = F.layer_norm(x.double(), (C,), w.double(), b.double(), EPS)
    xb, wb, bb = x.bfloat16(), w.bfloat16(), b.bfloat16()
    assert_ok(within_2x("layer_norm bf16", L.layer_norm(xb, wb, bb, EPS), full,
                        F.layer_norm(xb, (C,), wb, bb, EPS), scaled=False))


def test_native_table_layer_norm_matches_reference(native):
    table = get_ops("native")
    x = torch.randn(2, 9, 48)
    w, b = torch.randn(48), torch.randn(48)
    torch.testing.assert_close(table.layer_norm(x, w, b, EPS), ref.layer_norm(x, w, b, EPS), rtol=1e-5, atol=1e-5)
    # gradients: filled from the reference
    xg = x.clone().requires_grad_()
    table.layer_norm(xg, w, b, EPS).sum().backward()
    xr = x.clone().requires_grad_()
    ref.layer_norm(xr, w, b, EPS).sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad)


def test_native_bad_arguments_raise_clear_errors(native):
    L = native
    with pytest.raises(RuntimeError, match=r"weight must have shape \[8\]"):
        L.layer_norm(torch.randn(3, 8), torch.randn(7), None, EPS)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        L.layer_norm(torch.randn(3, 8), torch.randn(8), None, -1.0)
