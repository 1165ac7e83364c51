"""Triton kernels against the torch reference (`llm.ops`): outputs and every gradient.

Runs on CUDA, or through Triton's interpreter on CPU (conftest sets TRITON_INTERPRET=1).
fp32 results must match an fp64 reference tightly; fp16 results may be at most ~2x as far
from the fp64 reference as the same torch op computed in fp16 (STYLE.md, rule 8).
bf16 is checked by the same rule on a GPU (benchmarks/gpu_suite.py), not here: Triton's CPU
interpreter truncates fp32 -> bf16 instead of rounding to nearest (twice the rounding error).
"""

import pytest
import torch

pytest.importorskip("triton")

from llm.ops import reference as ops  # noqa: E402
from llm.ops import IGNORE_INDEX, BackendUnavailableError, get_ops  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16]


def _kernels():
    from llm.kernels import attention, cross_entropy, layernorm, mlp

    return attention, cross_entropy, layernorm, mlp


def _err(a, b):
    return (a.double() - b.double()).abs().max().item()


def assert_matches(name, out, ref64, same_precision, dtype=None):
    """out: kernel result from inputs of `dtype` (default out's); ref64: fp64 reference;
    same_precision: the torch op on inputs of the same dtype."""
    scale = max(1.0, ref64.abs().max().item())
    err = _err(out, ref64)
    if (dtype or out.dtype) == torch.float32:
        assert err <= 2e-6 * scale, f"{name}: fp32 error {err:.3g} (scale {scale:.3g})"
    else:
        base = _err(same_precision, ref64)
        assert err <= 2 * base + 1e-6 * scale, (
            f"{name}: {dtype or out.dtype} error {err:.3g} exceeds 2x torch's {base:.3g}")


def run_and_grads(fn, inputs, grad_out_seed=1):
    """fn(*inputs) and the gradients of <fn, g> w.r.t. every input that requires grad."""
    out = fn(*inputs)
    gen = torch.Generator(device="cpu").manual_seed(grad_out_seed)
    g = torch.randn(out.shape, generator=gen).to(device=out.device, dtype=out.dtype)
    if out.dim() == 0:  # a scalar loss is differentiated with 1, as loss.backward() does
        g = torch.ones_like(out)
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    grads = torch.autograd.grad(out, leaves, g)
    return out, grads


def compare(name, kernel_fn, ref_fn, inputs):
    """Kernel vs fp64 reference vs same-precision reference: output and each gradient."""
    def leaves(dtype):
        return [t.detach().to(dtype).requires_grad_(t.requires_grad)
                if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in inputs]

    dtype = next(t.dtype for t in inputs if isinstance(t, torch.Tensor) and t.is_floating_point())
    out, grads = run_and_grads(kernel_fn, leaves(dtype))
    ref, ref_grads = run_and_grads(ref_fn, leaves(torch.float64))
    same, same_grads = run_and_grads(ref_fn, leaves(dtype))
    assert out.shape == ref.shape and out.dtype == same.dtype
    assert_matches(f"{name} output", out, ref, same, dtype)
    assert len(grads) == len(ref_grads) > 0
    for i, (g, r, s) in enumerate(zip(grads, ref_grads, same_grads)):
        assert g.shape == r.shape
        assert_matches(f"{name} grad {i}", g, r, s, dtype)


def randn(*shape, dtype=torch.float32, scale=1.0, grad=True):
    return (torch.randn(*shape) * scale).to(DEVICE, dtype).requires_grad_(grad)


# -- backend ---------------------------------------------------------------------------------


def test_load_gives_triton_table():
    table = get_ops("triton")
    assert table.name == "triton"
    from llm.kernels import layernorm

    assert table.layer_norm is layernorm.layer_norm


@pytest.mark.skipif(torch.cuda.is_available(), reason="the check is for machines without CUDA")
def test_load_without_device_or_interpreter_is_unavailable(monkeypatch):
    from llm.ops import triton as triton_ops

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(BackendUnavailableError, match="CUDA device"):
        triton_ops.load()


# -- layer norm ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,bias", [((3, 37, 131), True), ((2, 5, 768), True), ((11, 97), False)])
def test_layer_norm(shape, bias, dtype):
    _, _, layernorm, _ = _kernels()
    C = shape[-1]
    x = randn(*shape, dtype=dtype)
    w = randn(C, dtype=dtype)
    b = randn(C, dtype=dtype) if bias else None
    inputs = [x, w, b] if bias else [x, w]

    def kernel(x, w, b=None):
        return layernorm.layer_norm(x, w, b, 1e-5)

    def ref(x, w, b=None):
        return ops.layer_norm(x, w, b, 1e-5)

    compare("layer_norm", kernel, ref, inputs)


def test_layer_norm_backward_is_deterministic():
    _, _, layernorm, _ = _kernels()
    x, w, b = randn(70, 257), randn(257), randn(257)
    dy = torch.randn(70, 257, device=DEVICE)
    y, mean, rstd = layernorm.layer_norm_fwd(x.detach(), w.detach(), b.detach(), 1e-5)
    first = layernorm.layer_norm_bwd(dy, x.detach(), w.detach(), mean, rstd)
    second = layernorm.layer_norm_bwd(dy, x.detach(), w.detach(), mean, rstd)
    for a, c in zip(first, second):
        assert torch.equal(a, c)


def test_layer_norm_rejects_bad_input():
    _, _, layernorm, _ = _kernels()
    with pytest.raises(ValueError, match="weight shape"):
        layernorm.layer_norm(randn(2, 8), randn(7), None)
    with pytest.raises(ValueError, match="exceeds"):
        layernorm.layer_norm(randn(1, 9000), randn(9000), None)
    with pytest.raises(ValueError, match="dtype"):
        layernorm.layer_norm(torch.ones(2, 8, dtype=torch.int32, device=DEVICE), randn(8), None)


# -- attention -------------------------------------------------------------------------------


def _padding_mask(B, T, pads):
    mask = torch.ones(B, T, dtype=torch.bool, device=DEVICE)
    for row, pad in enumerate(pads):
        mask[row, :pad] = False  # left padding
    return mask


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,nh,T,hs,pads", [
    (2, 3, 37, 32, None),     # T not a multiple of any block
    (1, 2, 67, 48, None),     # head size padded to 64
    (2, 2, 45, 24, (5, 0)),   # key-padding mask, head size padded to 32
    (1, 1, 23, 128, (3,)),    # largest head size
    (3, 1, 1, 64, None),      # one token
])
def test_attention(B, nh, T, hs, pads, dtype):
    attention, _, _, _ = _kernels()
    q, k, v = (randn(B, nh, T, hs, dtype=dtype) for _ in range(3))
    mask = _padding_mask(B, T, pads) if pads else None
    compare("attention", lambda q, k, v: attention.attention(q, k, v, mask),
            lambda q, k, v: ops.attention(q, k, v, mask), [q, k, v])


def test_attention_strided_inputs_from_packed_qkv():
    # The model passes q, k, v as views of one [B, T, 3C] projection.
    attention, _, _, _ = _kernels()
    B, T, nh, hs = 2, 19, 3, 16
    qkv = torch.randn(B, T, 3 * nh * hs, device=DEVICE)
    q, k, v = (t.view(B, T, nh, hs).transpose(1, 2) for t in qkv.split(nh * hs, dim=2))
    out = attention.attention(q, k, v)
    ref = ops.attention(q.double(), k.double(), v.double())
    assert _err(out, ref) <= 2e-6


def test_attention_fully_padded_rows_stay_finite():
    attention, _, _, _ = _kernels()
    B, nh, T, hs = 2, 2, 21, 32
    q, k, v = (randn(B, nh, T, hs) for _ in range(3))
    mask = _padding_mask(B, T, (9, 20))
    out, grads = run_and_grads(lambda q, k, v: attention.attention(q, k, v, mask), [q, k, v])
    ref, ref_grads = run_and_grads(lambda q, k, v: ops.attention(q, k, v, mask),
                                   [t.detach().double().requires_grad_() for t in (q, k, v)])
    assert torch.isfinite(out).all()
    assert _err(out, ref) <= 2e-6
    for g, r in zip(grads, ref_grads):
        assert _err(g, r) <= 2e-6 * max(1.0, r.abs().max().item())


def test_attention_rejects_bad_input():
    attention, _, _, _ = _kernels()
    q = randn(1, 1, 8, 256)
    with pytest.raises(ValueError, match="head size 256"):
        attention.attention(q, q, q)
    q = randn(1, 1, 8, 16)
    with pytest.raises(ValueError, match="mask shape"):
        attention.attention(q, q, q, torch.ones(1, 7, dtype=torch.bool, device=DEVICE))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hs,padded", [(40, True), (64, False)])
def test_cached_attention_decode(hs, padded, dtype):
    attention, _, _, _ = _kernels()
    B, nh, S = 2, 3, 75
    kc = torch.randn(B, nh, S, hs, device=DEVICE).to(dtype)
    vc = torch.randn(B, nh, S, hs, device=DEVICE).to(dtype)
    valid = _padding_mask(B, S, (0, 7)) if padded else None
    for pos in (0, 6, 33, 74):
        q = torch.randn(B, nh, 1, hs, device=DEVICE).to(dtype)
        qp = torch.tensor([pos], device=DEVICE)
        out = attention.cached_attention(q, kc, vc, qp, valid)
        ref = ops.cached_attention(q.double(), kc.double(), vc.double(), qp, valid)
        same = ops.cached_attention(q, kc, vc, qp, valid)
        assert_matches(f"decode at {pos}", out, ref, same)


def test_cached_attention_decode_equals_full_attention_over_prefix():
    # Query at slot t over the cache == the last row of full causal attention over 0..t.
    attention, _, _, _ = _kernels()
    B, nh, S, hs, t = 2, 2, 50, 32, 41
    q_all, kc, vc = (torch.randn(B, nh, S, hs, device=DEVICE) for _ in range(3))
    valid = _padding_mask(B, S, (4, 0))
    full = ops.attention(q_all[:, :, :t + 1].double(), kc[:, :, :t + 1].double(),
                         vc[:, :, :t + 1].double(), valid[:, :t + 1])[:, :, -1:]
    out = attention.cached_attention(q_all[:, :, t:t + 1], kc, vc,
                                     torch.tensor([t], device=DEVICE), valid)
    assert _err(out, full) <= 2e-6


@pytest.mark.parametrize("padded", [False, True])
def test_cached_attention_prefill(padded):
    attention, _, _, _ = _kernels()
    B, nh, S, hs, Tq = 2, 3, 40, 24, 13
    kc, vc = (torch.randn(B, nh, S, hs, device=DEVICE) for _ in range(2))
    valid = _padding_mask(B, S, (3, 0)) if padded else None
    q = torch.randn(B, nh, Tq, hs, device=DEVICE)
    for qp in (torch.arange(Tq, device=DEVICE), torch.arange(20, 20 + Tq, device=DEVICE)):
        out = attention.cached_attention(q, kc, vc, qp, valid)
        ref = ops.cached_attention(q.double(), kc.double(), vc.double(), qp, valid)
        assert _err(out, ref) <= 2e-6


# -- MLP -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,H,bias", [((3, 37, 45), 97, True), ((2, 64), 256, True), ((1, 5, 33), 131, False)])
def test_mlp(shape, H, bias, dtype):
    _, _, _, mlp = _kernels()
    C = shape[-1]
    x = randn(*shape, dtype=dtype)
    fc_w, proj_w = randn(H, C, dtype=dtype, scale=0.3), randn(C, H, dtype=dtype, scale=0.3)
    if bias:
        inputs = [x, fc_w, randn(H, dtype=dtype), proj_w, randn(C, dtype=dtype)]
        compare("mlp", mlp.mlp, ops.mlp, inputs)
    else:
        compare("mlp", lambda x, a, b: mlp.mlp(x, a, None, b, None),
                lambda x, a, b: ops.mlp(x, a, None, b, None), [x, fc_w, proj_w])


def test_mlp_gelu_saturates_without_overflow():
    _, _, _, mlp = _kernels()
    x = torch.tensor([[-60.0, -12.0, -1.0, 0.0, 1.5, 12.0, 60.0]], device=DEVICE)
    eye = torch.eye(7, device=DEVICE)
    out = mlp.mlp(x, eye, torch.zeros(7, device=DEVICE), eye, torch.zeros(7, device=DEVICE))
    assert _err(out, ops.gelu_tanh(x.double())) <= 1e-6


def test_mlp_rejects_bad_input():
    _, _, _, mlp = _kernels()
    x = randn(4, 8)
    with pytest.raises(ValueError, match="do not fit"):
        mlp.mlp(x, randn(16, 9), None, randn(8, 16), None)
    with pytest.raises(ValueError, match="share a dtype"):
        mlp.mlp(x, randn(16, 8, dtype=torch.float16), None, randn(8, 16), None)


def test_mlp_inference_saves_nothing():
    _, _, _, mlp = _kernels()
    x, fc_w, proj_w = randn(4, 8, grad=False), randn(16, 8, grad=False), randn(8, 16, grad=False)
    y, h = mlp.mlp_fwd(x, fc_w, None, proj_w, None, save_pre=False)
    assert h.numel() == 0
    assert _err(y, ops.mlp(x.double(), fc_w.double(), None, proj_w.double(), None)) <= 2e-6


# -- fused lm_head + cross-entropy -----------------------------------------------------------


def _targets(N, V, ignore_every=7):
    t = torch.randint(0, V, (N,), device=DEVICE)
    t[::ignore_every] = IGNORE_INDEX
    return t


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,C,V", [(53, 24, 1031), (8, 40, 4099), (1, 16, 17)])
def test_lm_head_loss(N, C, V, dtype):
    _, cross_entropy, _, _ = _kernels()
    h, w = randn(N, C, dtype=dtype), randn(V, C, dtype=dtype, scale=0.3)
    targets = _targets(N, V) if N > 1 else torch.tensor([3], device=DEVICE)
    compare("lm_head_loss", lambda h, w: cross_entropy.lm_head_loss(h, w, targets),
            lambda h, w: ops.lm_head_loss(h, w, targets), [h, w])


def test_lm_head_loss_scales_by_upstream_gradient():
    _, cross_entropy, _, _ = _kernels()
    h, w = randn(13, 16), randn(101, 16)
    targets = _targets(13, 101)
    grads = torch.autograd.grad(cross_entropy.lm_head_loss(h, w, targets) * -2.5, (h, w))
    hr, wr = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref = torch.autograd.grad(ops.lm_head_loss(hr, wr, targets) * -2.5, (hr, wr))
    for g, r in zip(grads, ref):
        assert _err(g, r) <= 2e-6 * max(1.0, r.abs().max().item())


def test_lm_head_loss_under_autocast_matches_reference():
    """Under autocast the logits matmul runs in the autocast dtype, as F.linear does there;
    fp32 h (the layernorm output) with fp16 autocast, gradients back in fp32."""
    _, cross_entropy, _, _ = _kernels()
    h, w = randn(37, 24), randn(101, 24, scale=0.3)
    targets = _targets(37, 101)
    grads = []
    for fn in (cross_entropy.lm_head_loss, ops.lm_head_loss):
        with torch.autocast(DEVICE, dtype=torch.float16):
            loss = fn(h, w, targets)
        assert loss.dtype == torch.float32
        grads.append((loss, *torch.autograd.grad(loss, (h, w))))
    for got, ref in zip(*grads):
        assert got.dtype == ref.dtype
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_lm_head_loss_chunks_agree():
    _, cross_entropy, _, _ = _kernels()
    h, w = randn(29, 16, grad=False), randn(211, 16, grad=False)
    targets = _targets(29, 211)
    one = cross_entropy.lm_head_loss_fwd(h, w, targets, chunk=29)
    many = cross_entropy.lm_head_loss_fwd(h, w, targets, chunk=4)
    for a, b in zip(one, many):
        assert _err(a, b) <= 1e-6


def test_lm_head_loss_all_ignored_is_nan_like_torch():
    _, cross_entropy, _, _ = _kernels()
    h, w = randn(4, 8), randn(11, 8)
    targets = torch.full((4,), IGNORE_INDEX, device=DEVICE)
    assert torch.isnan(cross_entropy.lm_head_loss(h, w, targets))
    assert torch.isnan(ops.lm_head_loss(h, w, targets))


def test_lm_head_loss_rejects_bad_targets():
    _, cross_entropy, _, _ = _kernels()
    h, w = randn(3, 8), randn(11, 8)
    with pytest.raises(ValueError, match="outside"):
        cross_entropy.lm_head_loss(h, w, torch.tensor([0, 11, 2], device=DEVICE))
    with pytest.raises(ValueError, match="targets shape"):
        cross_entropy.lm_head_loss(h, w, torch.tensor([0, 1], device=DEVICE))


# -- torch.library contracts -----------------------------------------------------------------


def _opcheck_cases():
    attention, cross_entropy, layernorm, mlp = _kernels()
    x, w, b = randn(5, 33), randn(33), randn(33)
    y, mean, rstd = layernorm.layer_norm_fwd(x.detach(), w.detach(), b.detach(), 1e-5)
    q, k, v = (randn(2, 2, 19, 16) for _ in range(3))
    mask = _padding_mask(2, 19, (4, 0))
    o, lse = attention.attention_fwd(q.detach(), k.detach(), v.detach(), mask)
    xm, fw, fb, pw, pb = randn(7, 12), randn(20, 12), randn(20), randn(12, 20), randn(12)
    ym, hm = mlp.mlp_fwd(xm.detach(), fw.detach(), fb.detach(), pw.detach(), pb.detach())
    kc, vc = randn(2, 2, 30, 16, grad=False), randn(2, 2, 30, 16, grad=False)
    ops_ = torch.ops.llm_triton
    return [
        (ops_.layer_norm_fwd, (x, w, b, 1e-5)),
        (ops_.layer_norm_bwd, (torch.randn_like(y), x.detach(), w.detach(), mean, rstd)),
        (ops_.attention_fwd, (q, k, v, mask)),
        (ops_.attention_fwd, (q, k, v, None)),
        (ops_.attention_bwd, (torch.randn_like(o), q.detach(), k.detach(), v.detach(), o, lse, mask)),
        (ops_.cached_attention, (q.detach()[:, :, :1], kc, vc, torch.tensor([12]), mask.new_ones(2, 30))),
        (ops_.cached_attention, (q.detach()[:, :, :5], kc, vc, torch.arange(5), None)),
        (ops_.mlp_fwd, (xm, fw, fb, pw, pb, True)),
        (ops_.mlp_bwd, (torch.randn_like(ym), xm.detach(), hm, fw.detach(), pw.detach())),
        (ops_.lm_head_loss, (randn(9, 8), randn(23, 8), _targets(9, 23), -100, True)),
    ]


def test_opcheck_every_op():
    for op, args in _opcheck_cases():
        torch.library.opcheck(op, args)


def test_torch_compile_fullgraph():
    attention, cross_entropy, layernorm, mlp = _kernels()
    B, T, nh, hs, V = 2, 11, 2, 16, 37
    C = nh * hs
    x = randn(B, T, C)
    w, b = randn(C), randn(C)
    fw, fb, pw, pb = randn(4 * C, C, scale=0.2), randn(4 * C), randn(C, 4 * C, scale=0.2), randn(C)
    head = randn(V, C, scale=0.2)
    targets = _targets(B * T, V)

    def block(x, w, b, fw, fb, pw, pb, head, table):
        h = table.layer_norm(x, w, b, 1e-5)
        q = h.view(B, T, nh, hs).transpose(1, 2)
        a = table.attention(q, q, q, None, 0.0).transpose(1, 2).reshape(B, T, C)
        h = a + table.mlp(a, fw, fb, pw, pb)
        return table.lm_head_loss(h.reshape(-1, C), head, targets, IGNORE_INDEX)

    params = [x, w, b, fw, fb, pw, pb, head]
    table = get_ops("triton")
    compiled = torch.compile(lambda *p: block(*p, table), fullgraph=True)
    loss = compiled(*params)
    grads = torch.autograd.grad(loss, params)
    ref_params = [p.detach().double().requires_grad_() for p in params]
    ref = block(*ref_params, ops.TORCH_OPS)
    ref_grads = torch.autograd.grad(ref, ref_params)
    assert _err(loss, ref) <= 2e-6 * max(1.0, abs(ref.item()))
    for g, r in zip(grads, ref_grads):
        assert _err(g, r) <= 2e-6 * max(1.0, r.abs().max().item())
