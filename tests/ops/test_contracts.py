"""What every backend promises beyond its numbers: the registry loads it (or says why not),
every registered op passes torch.library.opcheck, the reference's gradients are right
(fp64 gradcheck), each backend's ops compile with torch.compile(fullgraph=True); the C++
op library holds only used ops, and its instruction-set controls ($LLM_NATIVE_ISA,
set_cpu_isa) fail with ValueError, never an abort."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from llm.ops import IGNORE_INDEX, BackendUnavailableError, get_ops
from llm.ops import reference as ref
from llm.testing import assert_ok, within_tolerance
from op_helpers import padding_mask, randn, targets


def _registered(namespace):
    """Names of every op registered under torch.ops.<namespace>."""
    prefix = namespace + "::"
    return {n[len(prefix):] for n in torch._C._dispatch_get_all_op_names() if n.startswith(prefix)}


# -- loading ---------------------------------------------------------------------------------


def test_load_gives_triton_table(kernels):
    table = get_ops("triton")
    assert table.name == "triton"
    assert table.layer_norm is kernels.layernorm.layer_norm


@pytest.mark.skipif(torch.cuda.is_available(), reason="the check is for machines without CUDA")
def test_triton_load_without_device_or_interpreter_is_unavailable(monkeypatch):
    pytest.importorskip("triton")
    from llm.ops import triton as triton_ops

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(BackendUnavailableError, match="CUDA device"):
        triton_ops.load()


# -- opcheck ---------------------------------------------------------------------------------


def _triton_cases(kernels):
    attention, layernorm, lm_head_loss, mlp = kernels.attention, kernels.layernorm, kernels.lm_head_loss, kernels.mlp
    x, w, b = randn(5, 33), randn(33), randn(33)
    y, mean, rstd = layernorm.layer_norm_fwd(x.detach(), w.detach(), b.detach(), 1e-5)
    q, k, v = (randn(2, 2, 19, 16) for _ in range(3))
    mask = padding_mask(2, 19, (4, 0))
    o, lse = attention.attention_fwd(q.detach(), k.detach(), v.detach(), mask)
    xm, fw, fb, pw, pb = randn(7, 12), randn(20, 12), randn(20), randn(12, 20), randn(12)
    ym, hm = mlp.mlp_fwd(xm.detach(), fw.detach(), fb.detach(), pw.detach(), pb.detach())
    kc, vc = randn(2, 2, 30, 16, grad=False), randn(2, 2, 30, 16, grad=False)
    ops_ = torch.ops.llm_triton
    return "llm_triton", set(), [
        (ops_.layer_norm_fwd, (x, w, b, 1e-5)),
        (ops_.layer_norm_bwd, (torch.randn_like(y), x.detach(), w.detach(), mean, rstd)),
        (ops_.attention_fwd, (q, k, v, mask)),
        (ops_.attention_fwd, (q, k, v, None)),
        (ops_.attention_bwd, (torch.randn_like(o), q.detach(), k.detach(), v.detach(), o, lse, mask)),
        (ops_.cached_attention, (q.detach()[:, :, :1], kc, vc, torch.tensor([12]), mask.new_ones(2, 30))),
        (ops_.cached_attention, (q.detach()[:, :, :5], kc, vc, torch.arange(5), None)),
        (ops_.mlp_fwd, (xm, fw, fb, pw, pb, True)),
        (ops_.mlp_bwd, (torch.randn_like(ym), xm.detach(), hm, fw.detach(), pw.detach())),
        (ops_.lm_head_loss, (randn(9, 8), randn(23, 8), targets(9, 23), -100, True)),
    ]


def _native_cases(native):
    L = native
    controls = {"cpu_isa", "cpu_best_isa", "cpu_isas", "cpu_has_bf16", "set_cpu_isa", "has_cuda_kernels"}  # no tensors
    w, x = torch.randn(70, 33), torch.randn(3, 33)
    cases = []
    for fmt in ("float32", "bfloat16", "int8"):
        cases.append((L.pack_linear_weight, (w, fmt)))
        p, s = L.pack_linear_weight(w, fmt)
        cases.append((L.packed_linear, (x, p, s, 70, torch.randn(70), torch.randn(3, 70), "gelu_tanh")))
    kc, vc = torch.randn(2, 3, 7, 4), torch.randn(2, 3, 7, 4)
    cases += [
        (L.layer_norm, (torch.randn(4, 9), torch.randn(9), torch.randn(9), 1e-5)),
        (L.bias_gelu, (torch.randn(4, 9), torch.randn(9))),
        (L.cached_attention, (torch.randn(2, 3, 2, 4), kc, vc, torch.tensor([3, 4]), torch.rand(2, 7) > 0.5)),
    ]
    return "llm", controls, cases


@pytest.mark.parametrize("backend", ["triton", "native"])
def test_opcheck_every_registered_op(backend, request):
    namespace, controls, cases = (_triton_cases(request.getfixturevalue("kernels")) if backend == "triton"
                                  else _native_cases(request.getfixturevalue("native")))
    covered = {op._qualified_op_name.split("::")[1] for op, _ in cases}
    assert covered | controls == _registered(namespace)
    for op, args in cases:
        torch.library.opcheck(op, args)


# -- the reference's gradients -----------------------------------------------------------------


def _f64(*shape):
    return torch.randn(*shape, dtype=torch.float64, requires_grad=True)


def test_reference_gradcheck():
    gradcheck = torch.autograd.gradcheck
    assert gradcheck(lambda x, w, b: ref.layer_norm(x, w, b, 1e-5), (_f64(2, 3, 5), _f64(5), _f64(5)))
    assert gradcheck(ref.linear, (_f64(2, 3, 4), _f64(5, 4), _f64(5)))
    assert gradcheck(ref.mlp, (_f64(2, 3), _f64(6, 3), _f64(6), _f64(3, 6), _f64(3)))
    valid = torch.tensor([[False, True, True, True, True], [True, True, True, True, True]])
    qkv = (_f64(2, 2, 5, 3), _f64(2, 2, 5, 3), _f64(2, 2, 5, 3))
    assert gradcheck(lambda q, k, v: ref.attention(q, k, v, valid), qkv)
    assert gradcheck(lambda q, k, v: ref.cached_attention(q, k, v, torch.tensor([2, 3]), valid),
                     (_f64(2, 2, 2, 3), *qkv[1:]))
    t = torch.tensor([1, IGNORE_INDEX, 6, 0])
    assert gradcheck(lambda h, w: ref.lm_head_loss(h, w, t), (_f64(4, 3), _f64(7, 3)))


# -- torch.compile ---------------------------------------------------------------------------


def _compile_table(table, compile_backend):
    """A transformer block and the loss through the table, compiled whole: loss and every
    gradient against the eager reference in fp64."""
    B, T, nh, hs, V = 2, 11, 2, 16, 37
    C = nh * hs
    x = randn(B, T, C)
    w, b = randn(C), randn(C)
    fw, fb, pw, pb = randn(4 * C, C, scale=0.2), randn(4 * C), randn(C, 4 * C, scale=0.2), randn(C)
    head = randn(V, C, scale=0.2)
    t = targets(B * T, V)

    def block(x, w, b, fw, fb, pw, pb, head, table):
        h = table.layer_norm(x, w, b, 1e-5)
        q = h.view(B, T, nh, hs).transpose(1, 2)
        a = table.attention(q, q, q, None, 0.0).transpose(1, 2).reshape(B, T, C)
        h = a + table.mlp(a, fw, fb, pw, pb)
        return table.lm_head_loss(h.reshape(-1, C), head, t, IGNORE_INDEX)

    params = [x, w, b, fw, fb, pw, pb, head]
    compiled = torch.compile(lambda *p: block(*p, table), fullgraph=True, backend=compile_backend)
    loss = compiled(*params)
    grads = torch.autograd.grad(loss, params)
    ref_params = [p.detach().double().requires_grad_() for p in params]
    expect = block(*ref_params, ref.TORCH_OPS)
    expect_grads = torch.autograd.grad(expect, ref_params)
    assert_ok(within_tolerance("loss", loss, expect),
              *(within_tolerance(f"grad {i}", g, r) for i, (g, r) in enumerate(zip(grads, expect_grads))))


def _compile_native_ops():
    """The C++ ops (fakes registered by the backend) in a compiled block; the table's
    weight packing (a cache keyed on tensor identity) stays outside compiled code."""
    L = torch.ops.llm
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


def test_torch_compile_fullgraph(ops):
    torch._dynamo.reset()
    if ops.name == "native":
        _compile_native_ops()
    elif ops.name == "triton":
        _compile_table(ops, "inductor")
    else:  # the reference: what is checked is that it traces whole, not inductor's codegen
        _compile_table(ops, "aot_eager")


# -- native: the op library and its instruction-set controls ---------------------------------


def test_native_op_library_has_no_unused_ops(native):
    for name in ("add_layer_norm", "kv_append", "sample_top_k_top_p"):
        assert not hasattr(native, name), name


def test_native_unknown_isa_is_a_value_error(native):
    with pytest.raises(ValueError, match="unknown instruction set"):
        native.set_cpu_isa("sse9")


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
        assert "LLM_NATIVE_ISA" in str(e) and "'portable', 'avx2', " in str(e) and "'neon'" in str(e), str(e)
        print(name, "ValueError")
    else:
        print(name, "no error")
L.set_cpu_isa("portable")  # an explicit choice replaces the variable
y = L.packed_linear(torch.randn(5, 33), p, s, 70)
logits = dec.prefill(ids, pos, pos[None].expand(2, -1), None)
print("after set_cpu_isa", L.cpu_isa(), tuple(y.shape), tuple(logits.shape))
"""


def test_native_bad_isa_variable_raises_value_error_in_every_op(native):
    env = {**os.environ, "LLM_NATIVE_ISA": "bogus", "OMP_NUM_THREADS": "2"}
    r = subprocess.run([sys.executable, "-c", _BAD_ISA_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "terminate called" not in r.stderr
    assert r.stdout.splitlines() == ["packed_linear ValueError", "decoder ValueError", "cpu_isa ValueError",
                                     "packed_linear again ValueError",
                                     "after set_cpu_isa portable (5, 70) (2, 20)"]


def test_native_isa_variable_lowers_the_level(native):
    env = {**os.environ, "LLM_NATIVE_ISA": "portable"}
    r = subprocess.run([sys.executable, "-c", "import torch, llm._C; print(torch.ops.llm.cpu_isa())"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "portable"
