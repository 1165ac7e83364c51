"""linear on every backend against the reference (output and every gradient); the C++
packed-weight kernels: the packed formats (float32, bfloat16, int8 with per-channel
scales) on each instruction-set path, repacking after an in-place change, argument
checks."""

import pytest
import torch
import torch.nn.functional as F

from llm.ops import get_ops
from llm.ops import reference as ref
from llm.testing import assert_ok, max_error, within_2x
from op_helpers import backend_dtypes, check_op, randn


@pytest.mark.parametrize("shape,N,bias", [((3, 37, 45), 97, True), ((2, 64), 256, True), ((1, 5, 33), 131, False)])
@backend_dtypes()
def test_linear(ops, dtype, shape, N, bias):
    K = shape[-1]
    x, w = randn(*shape, dtype=dtype), randn(N, K, dtype=dtype, scale=0.3)
    if bias:
        check_op("linear", ops.linear, ref.linear, [x, w, randn(N, dtype=dtype)])
    else:
        check_op("linear", lambda x, w: ops.linear(x, w, None), lambda x, w: ref.linear(x, w, None), [x, w])


# -- native: packed weights ------------------------------------------------------------------


def unpack(packed, scales, n, k):
    """The [n, k] weight a packed tensor holds, in float64."""
    if packed.dtype == torch.bfloat16:  # [tiles, kp/2, 64, 2] -> [tiles*64, kp]
        w = packed.permute(0, 2, 1, 3).reshape(packed.shape[0] * 64, -1)
    elif packed.dtype == torch.int8:  # [tiles, kp/4 + 1, 64, 4]: quads of k, then column sums
        w = packed[:, :-1].permute(0, 2, 1, 3).reshape(packed.shape[0] * 64, -1)
    else:  # [tiles, k, 64] -> [tiles*64, k]
        w = packed.permute(0, 2, 1).reshape(packed.shape[0] * 64, -1)
    w = w.double()
    if packed.dtype == torch.int8:
        w = w * scales.double()[:, None]
    return w[:n, :k]


SHAPES = [(1, 1, 1), (1, 768, 2304), (3, 37, 131), (5, 65, 64), (17, 130, 63), (2, 7, 129)]


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_native_packed_linear_fp32(native, isa, m, k, n):
    L = native
    x, w, b = torch.randn(m, k), torch.randn(n, k), torch.randn(n)
    packed, scales = L.pack_linear_weight(w, "float32")
    assert torch.equal(unpack(packed, scales, n, k), w.double())
    # fp32: as close to the float64 result as torch's own fp32 linear (2x rule, fp32 scale)
    full = F.linear(x.double(), w.double(), b.double())
    y = L.packed_linear(x, packed, scales, n, b)
    assert_ok(within_2x("linear", y, full, F.linear(x, w, b), scaled=False))
    r = torch.randn(m, n)
    y = L.packed_linear(x, packed, scales, n, b, r, "gelu_tanh")
    torch_y = F.gelu(F.linear(x, w, b), approximate="tanh") + r
    full = F.gelu(full, approximate="tanh") + r.double()
    assert_ok(within_2x("linear + gelu + residual", y, full, torch_y, scaled=False))
    y3 = L.packed_linear(x.reshape(1, m, k), packed, scales, n)  # any leading dims
    assert y3.shape == (1, m, n)
    assert_ok(within_2x("linear, 3-d input", y3[0], x.double() @ w.double().T, F.linear(x, w), scaled=False))


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_native_packed_linear_bf16(native, isa, m, k, n):
    L = native
    x, w, b = torch.randn(m, k), torch.randn(n, k), torch.randn(n)
    packed, scales = L.pack_linear_weight(w, "bfloat16")
    wb = w.bfloat16()
    assert torch.equal(unpack(packed, scales, n, k), wb.double())  # packing is exact rounding
    # the kernel: bf16(x) @ bf16(w).T summed in fp32
    exact = x.bfloat16().double() @ wb.double().T + b.double()
    y = L.packed_linear(x, packed, scales, n, b)
    assert max_error(y, exact) <= 1e-5 * (1 + exact.abs().max().item())
    # against the fp32 reference: within bf16's error (at most 2x torch's bf16 linear)
    full = F.linear(x.double(), w.double(), b.double())
    torch_bf16 = F.linear(x.bfloat16(), wb, b.bfloat16())
    assert_ok(within_2x("linear, bf16 weights", y, full, torch_bf16, scaled=False))
    # bf16 activations in, bf16 out
    yb = L.packed_linear(x.bfloat16(), packed, scales, n, b.bfloat16())
    assert yb.dtype == torch.bfloat16
    assert_ok(within_2x("linear, bf16 in and out", yb, full, torch_bf16, scaled=False))


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_native_packed_linear_int8(native, isa, m, k, n):
    L = native
    x, w, b = torch.randn(m, k), torch.randn(n, k), torch.randn(n)
    packed, scales = L.pack_linear_weight(w, "int8")
    wq = unpack(packed, scales, n, k)
    step = w.abs().amax(1, keepdim=True).double() / 127
    assert ((wq - w.double()).abs() <= step / 2 + 1e-7).all()  # per-channel rounding
    q = wq / scales.double()[:n, None]  # the int8 values
    sums = packed[:, -1].reshape(-1, 4).view(torch.int32).reshape(-1)[:n]  # each column's sum
    assert torch.equal(sums.double(), q.sum(1))
    # x is quantized per row on the fly and the dot products are exact integer sums
    amax = x.abs().amax(1, keepdim=True)
    xq = torch.round(x * (torch.full_like(amax, 127) / amax)).clamp(-127, 127)
    exact = (xq.double() @ q.T) * (amax.double() / 127) * scales.double()[:n] + b.double()
    y = L.packed_linear(x, packed, scales, n, b)
    assert max_error(y, exact) <= 1e-6 * (1 + exact.abs().max().item())  # fp32 rounding only


def test_native_packed_linear_from_bf16_weight(native):
    L = native
    w = torch.randn(70, 33).bfloat16()
    p32, s = L.pack_linear_weight(w, "float32")
    assert torch.equal(unpack(p32, s, 70, 33), w.double())
    p16, s = L.pack_linear_weight(w, "bfloat16")
    assert torch.equal(unpack(p16, s, 70, 33), w.double())


def test_native_table_linear_repacks_after_an_in_place_change(native):
    table = get_ops("native")
    x = torch.randn(2, 9, 48)
    fw, fb = torch.randn(96, 48), torch.randn(96)
    torch.testing.assert_close(table.linear(x, fw, fb), ref.linear(x, fw, fb), rtol=1e-5, atol=1e-5)
    fw.mul_(2)  # an in-place change invalidates the packed copy
    torch.testing.assert_close(table.linear(x, fw, fb), ref.linear(x, fw, fb), rtol=1e-5, atol=1e-5)


def test_native_bad_arguments_raise_clear_errors(native):
    L = native
    w = torch.randn(10, 8)
    p, s = L.pack_linear_weight(w, "float32")
    with pytest.raises(ValueError, match="unknown format 'fp8'"):
        L.pack_linear_weight(w, "fp8")
    with pytest.raises(RuntimeError, match="weight must be float32 or bfloat16"):
        L.pack_linear_weight(w.long(), "float32")
    with pytest.raises(RuntimeError, match="weight must have 2 dimensions"):
        L.pack_linear_weight(torch.randn(8), "float32")
    with pytest.raises(RuntimeError, match="does not fit inputs with 9 features"):
        L.packed_linear(torch.randn(2, 9), p, s, 10)
    with pytest.raises(RuntimeError, match="n=70 does not match"):
        L.packed_linear(torch.randn(2, 8), p, s, 70)
    with pytest.raises(RuntimeError, match=r"bias must have shape \[10\]"):
        L.packed_linear(torch.randn(2, 8), p, s, 10, torch.randn(3))
    with pytest.raises(ValueError, match="unknown activation 'relu'"):
        L.packed_linear(torch.randn(2, 8), p, s, 10, None, None, "relu")
    with pytest.raises(RuntimeError, match="x must be float32 or bfloat16"):
        L.packed_linear(torch.ones(2, 8, dtype=torch.long), p, s, 10)
    pi, si = L.pack_linear_weight(w, "int8")
    with pytest.raises(RuntimeError, match="int8 weights need the float32 scales"):
        L.packed_linear(torch.randn(2, 8), pi, torch.empty(0), 10)
    with pytest.raises(RuntimeError, match="packed must be contiguous"):
        p2, s2 = L.pack_linear_weight(torch.randn(130, 8), "float32")
        L.packed_linear(torch.randn(2, 8), p2.transpose(0, 1), s2, 130)
