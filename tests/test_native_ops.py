"""The CPU kernels of llm._C against the torch reference: every op, every instruction-set
path (AVX-512 + BF16, AVX-512, portable), odd sizes, bad arguments, opcheck, torch.compile,
and a bad $LLM_NATIVE_ISA raising instead of aborting."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from llm.ops import reference as ref

if os.environ.get("LLM_SKIP_NATIVE", "0") not in ("", "0"):
    pytest.skip("llm._C was not built (LLM_SKIP_NATIVE is set)", allow_module_level=True)

from llm.ops import native as native_ops  # noqa: E402

native_ops.load()
L = torch.ops.llm
LEVELS = ("portable", "avx512", "avx512_bf16")
ISAS = LEVELS[: LEVELS.index(L.cpu_best_isa()) + 1]  # every code path this CPU can run


@pytest.fixture(params=ISAS)
def isa(request):
    before = L.cpu_isa()
    L.set_cpu_isa(request.param)
    yield request.param
    L.set_cpu_isa(before)


def max_err(a, b):
    return (a.double() - b.double()).abs().max().item()


def unpack(packed, scales, n, k):
    """The [n, k] weight a packed tensor holds, in float64."""
    if packed.dtype == torch.bfloat16:  # [tiles, kp/2, 64, 2] -> [tiles*64, kp]
        w = packed.permute(0, 2, 1, 3).reshape(packed.shape[0] * 64, -1)
    else:  # [tiles, k, 64] -> [tiles*64, k]
        w = packed.permute(0, 2, 1).reshape(packed.shape[0] * 64, -1)
    w = w.double()
    if packed.dtype == torch.int8:
        w = w * scales.double()[:, None]
    return w[:n, :k]


SHAPES = [(1, 1, 1), (1, 768, 2304), (3, 37, 131), (5, 65, 64), (17, 130, 63), (2, 7, 129)]


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_packed_linear_fp32(isa, m, k, n):
    x, w, b = torch.randn(m, k), torch.randn(n, k), torch.randn(n)
    packed, scales = L.pack_linear_weight(w, "float32")
    assert torch.equal(unpack(packed, scales, n, k), w.double())
    # fp32: as close to the float64 result as torch's own fp32 linear (2x rule, fp32 scale)
    full = F.linear(x.double(), w.double(), b.double())
    y = L.packed_linear(x, packed, scales, n, b)
    assert max_err(y, full) <= 2 * max_err(F.linear(x, w, b), full) + 1e-6
    r = torch.randn(m, n)
    y = L.packed_linear(x, packed, scales, n, b, r, "gelu_tanh")
    torch_y = F.gelu(F.linear(x, w, b), approximate="tanh") + r
    full = F.gelu(full, approximate="tanh") + r.double()
    assert max_err(y, full) <= 2 * max_err(torch_y, full) + 1e-6
    y3 = L.packed_linear(x.reshape(1, m, k), packed, scales, n)  # any leading dims
    assert y3.shape == (1, m, n)
    assert max_err(y3[0], x.double() @ w.double().T) <= 2 * max_err(F.linear(x, w), x.double() @ w.double().T) + 1e-6


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_packed_linear_bf16(isa, m, k, n):
    x, w, b = torch.randn(m, k), torch.randn(n, k), torch.randn(n)
    packed, scales = L.pack_linear_weight(w, "bfloat16")
    wb = w.bfloat16()
    assert torch.equal(unpack(packed, scales, n, k), wb.double())  # packing is exact rounding
    # the kernel: bf16(x) @ bf16(w).T summed in fp32
    exact = x.bfloat16().double() @ wb.double().T + b.double()
    y = L.packed_linear(x, packed, scales, n, b)
    assert max_err(y, exact) <= 1e-5 * (1 + exact.abs().max().item())
    # against the fp32 reference: within bf16's error (at most 2x torch's bf16 linear)
    full = F.linear(x.double(), w.double(), b.double())
    torch_err = max_err(F.linear(x.bfloat16(), wb, b.bfloat16()), full)
    assert max_err(y, full) <= 2 * torch_err + 1e-6
    # bf16 activations in, bf16 out
    yb = L.packed_linear(x.bfloat16(), packed, scales, n, b.bfloat16())
    assert yb.dtype == torch.bfloat16
    assert max_err(yb, full) <= 2 * torch_err + 1e-6


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_packed_linear_int8(isa, m, k, n):
    x, w, b = torch.randn(m, k), torch.randn(n, k), torch.randn(n)
    packed, scales = L.pack_linear_weight(w, "int8")
    wq = unpack(packed, scales, n, k)
    step = w.abs().amax(1, keepdim=True).double() / 127
    assert ((wq - w.double()).abs() <= step / 2 + 1e-7).all()  # per-channel rounding
    y = L.packed_linear(x, packed, scales, n, b)
    exact = x.double() @ wq.T + b.double()
    assert max_err(y, exact) <= 1e-5 * (1 + exact.abs().max().item())


def test_packed_linear_from_bf16_weight():
    w = torch.randn(70, 33).bfloat16()
    p32, s = L.pack_linear_weight(w, "float32")
    assert torch.equal(unpack(p32, s, 70, 33), w.double())
    p16, s = L.pack_linear_weight(w, "bfloat16")
    assert torch.equal(unpack(p16, s, 70, 33), w.double())


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (2, 5, 768), (4, 769)])
def test_layer_norm(isa, shape):
    C = shape[-1]
    x, w, b = torch.randn(shape) * 3 + 1, torch.randn(C), torch.randn(C)
    torch.testing.assert_close(L.layer_norm(x, w, b, 1e-5), F.layer_norm(x, (C,), w, b, 1e-5), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(L.layer_norm(x, w, None, 1e-5), F.layer_norm(x, (C,), w, None, 1e-5),
                               rtol=1e-5, atol=1e-5)
    full = F.layer_norm(x.double(), (C,), w.double(), b.double(), 1e-5)
    xb, wb, bb = x.bfloat16(), w.bfloat16(), b.bfloat16()
    torch_err = max_err(F.layer_norm(xb, (C,), wb, bb, 1e-5), full)
    assert max_err(L.layer_norm(xb, wb, bb, 1e-5), full) <= 2 * torch_err + 1e-6


@pytest.mark.parametrize("shape", [(1,), (3, 7), (2, 5, 3072)])
def test_bias_gelu(shape):
    x, b = torch.randn(shape) * 3, torch.randn(shape[-1])
    torch.testing.assert_close(L.bias_gelu(x, b), F.gelu(x + b, approximate="tanh"), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(L.bias_gelu(x, None), F.gelu(x, approximate="tanh"), rtol=1e-5, atol=1e-6)
    full = F.gelu(x.double() + b.double(), approximate="tanh")
    torch_err = max_err(F.gelu(x.bfloat16() + b.bfloat16(), approximate="tanh"), full)
    assert max_err(L.bias_gelu(x.bfloat16(), b.bfloat16()), full) <= 2 * torch_err + 1e-6


@pytest.mark.parametrize("B,nh,S,hs,q_pos", [
    (1, 1, 1, 1, [0]),
    (2, 3, 13, 5, [12]),          # one query per row at the last slot
    (3, 2, 17, 64, [4, 5, 6]),    # a few queries mid-cache (prefill of a chunk)
    (2, 4, 31, 16, list(range(31))),
])
@pytest.mark.parametrize("with_valid", [False, True])
def test_cached_attention(B, nh, S, hs, q_pos, with_valid):
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
    torch_err = max_err(ref.cached_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), pos, valid), full)
    got = L.cached_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), pos, valid)
    assert max_err(got, full) <= 2 * torch_err + 1e-6


def test_native_table_ops_match_reference():
    table = native_ops.load()
    x = torch.randn(2, 9, 48)
    w, b = torch.randn(48), torch.randn(48)
    torch.testing.assert_close(table.layer_norm(x, w, b, 1e-5), ref.layer_norm(x, w, b, 1e-5), rtol=1e-5, atol=1e-5)
    fw, fb, pw, pb = torch.randn(96, 48), torch.randn(96), torch.randn(48, 96), torch.randn(48)
    torch.testing.assert_close(table.mlp(x, fw, fb, pw, pb), ref.mlp(x, fw, fb, pw, pb), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(table.linear(x, fw, fb), ref.linear(x, fw, fb), rtol=1e-5, atol=1e-5)
    fw.mul_(2)  # an in-place change invalidates the packed copy
    torch.testing.assert_close(table.linear(x, fw, fb), ref.linear(x, fw, fb), rtol=1e-5, atol=1e-5)
    q, k, v = (torch.randn(2, 3, 9, 16).transpose(1, 2).transpose(1, 2) for _ in range(3))
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, :4] = False
    torch.testing.assert_close(table.attention(q, k, v, mask), ref.attention(q, k, v, mask), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(table.attention(q, k, v), ref.attention(q, k, v), rtol=1e-5, atol=1e-5)
    # gradients: filled from the reference
    xg = x.clone().requires_grad_()
    table.layer_norm(xg, w, b, 1e-5).sum().backward()
    xr = x.clone().requires_grad_()
    ref.layer_norm(xr, w, b, 1e-5).sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad)


# -- bad arguments -------------------------------------------------------------------------


def test_bad_arguments_raise_clear_errors():
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
    with pytest.raises(RuntimeError, match=r"weight must have shape \[8\]"):
        L.layer_norm(torch.randn(3, 8), torch.randn(7), None, 1e-5)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        L.layer_norm(torch.randn(3, 8), torch.randn(8), None, -1.0)
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
    with pytest.raises(ValueError, match="unknown instruction set"):
        L.set_cpu_isa("sse9")


# -- contracts -----------------------------------------------------------------------------


def test_opcheck():
    from torch.library import opcheck

    w, x = torch.randn(70, 33), torch.randn(3, 33)
    for fmt in ("float32", "bfloat16", "int8"):
        opcheck(L.pack_linear_weight, (w, fmt))
        p, s = L.pack_linear_weight(w, fmt)
        opcheck(L.packed_linear, (x, p, s, 70, torch.randn(70), torch.randn(3, 70), "gelu_tanh"))
    opcheck(L.layer_norm, (torch.randn(4, 9), torch.randn(9), torch.randn(9), 1e-5))
    opcheck(L.bias_gelu, (torch.randn(4, 9), torch.randn(9)))
    kc, vc = torch.randn(2, 3, 7, 4), torch.randn(2, 3, 7, 4)
    opcheck(L.cached_attention, (torch.randn(2, 3, 2, 4), kc, vc, torch.tensor([3, 4]), torch.rand(2, 7) > 0.5))


def test_torch_compile_fullgraph():
    w, fb = torch.randn(40, 24), torch.randn(40)
    p, s = L.pack_linear_weight(w, "float32")
    lw, lb = torch.randn(24), torch.randn(24)

    def block(x):
        h = L.layer_norm(x, lw, lb, 1e-5)
        return L.packed_linear(h, p, s, 40, fb, None, "gelu_tanh")

    x = torch.randn(3, 24)
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), block(x))
    expect = F.gelu(F.linear(F.layer_norm(x, (24,), lw, lb, 1e-5), w, fb), approximate="tanh")
    torch.testing.assert_close(compiled(x), expect, rtol=1e-5, atol=1e-5)


def test_op_library_has_no_unused_ops():
    for name in ("add_layer_norm", "kv_append", "sample_top_k_top_p"):
        assert not hasattr(L, name), name


# -- $LLM_NATIVE_ISA -----------------------------------------------------------------------

_BAD_ISA_SCRIPT = """
import torch
import llm._C  # the extension alone, without the Python loader's check
L = torch.ops.llm
w = torch.randn(70, 33)
p, s = L.pack_linear_weight(w, "float32")
C, H, V = 8, 16, 20  # a one-layer model for the C++ decoder
r = torch.randn
layer = [r(C), r(C), r(3 * C, C), r(3 * C), r(C, C), r(C), r(C), r(C), r(H, C), r(H), r(C, H), r(C)]
weights = torch.classes.llm.GPTWeights(2, 1e-5, r(V, C), r(10, C), layer, r(C), r(C), "float32")
dec = torch.classes.llm.Decoder(weights, 2, 10)
ids, pos = torch.randint(0, V, (2, 4)), torch.arange(4)
calls = [
    ("packed_linear", lambda: L.packed_linear(torch.randn(5, 33), p, s, 70)),  # a parallel region
    ("decoder", lambda: dec.prefill(ids, pos, pos[None].expand(2, -1), None)),  # one region per call
    ("cpu_isa", L.cpu_isa),
    ("packed_linear again", lambda: L.packed_linear(torch.randn(5, 33), p, s, 70)),
]
for name, call in calls:
    try:
        call()
    except ValueError as e:
        assert "LLM_NATIVE_ISA" in str(e) and "'portable', 'avx512', 'avx512_bf16'" in str(e), str(e)
        print(name, "ValueError")
    else:
        print(name, "no error")
L.set_cpu_isa("portable")  # an explicit choice replaces the variable
y = L.packed_linear(torch.randn(5, 33), p, s, 70)
logits = dec.prefill(ids, pos, pos[None].expand(2, -1), None)
print("after set_cpu_isa", L.cpu_isa(), tuple(y.shape), tuple(logits.shape))
"""


def test_bad_isa_variable_raises_value_error_in_every_op():
    env = {**os.environ, "LLM_NATIVE_ISA": "bogus", "OMP_NUM_THREADS": "2"}
    r = subprocess.run([sys.executable, "-c", _BAD_ISA_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "terminate called" not in r.stderr
    assert r.stdout.splitlines() == ["packed_linear ValueError", "decoder ValueError", "cpu_isa ValueError",
                                     "packed_linear again ValueError",
                                     "after set_cpu_isa portable (5, 70) (2, 20)"]


def test_isa_variable_lowers_the_level():
    env = {**os.environ, "LLM_NATIVE_ISA": "portable"}
    r = subprocess.run([sys.executable, "-c", "import torch, llm._C; print(torch.ops.llm.cpu_isa())"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "portable"
