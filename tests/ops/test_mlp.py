"""mlp, proj(gelu_tanh(fc(x))), on every backend against the reference (output and every
gradient); GELU saturation; the Triton kernel's argument checks and inference path; the
C++ bias + GELU op."""

import pytest
import torch
import torch.nn.functional as F

from llm.ops import get_ops
from llm.ops import reference as ref
from llm.testing import assert_ok, within_2x, within_tolerance
from op_helpers import DEVICE, backend_dtypes, check_op, randn


@pytest.mark.parametrize("shape,H,bias", [((3, 37, 45), 97, True), ((2, 64), 256, True), ((1, 5, 33), 131, False)])
@backend_dtypes()
def test_mlp(ops, dtype, shape, H, bias):
    C = shape[-1]
    x = randn(*shape, dtype=dtype)
    fc_w, proj_w = randn(H, C, dtype=dtype, scale=0.3), randn(C, H, dtype=dtype, scale=0.3)
    if bias:
        inputs = [x, fc_w, randn(H, dtype=dtype), proj_w, randn(C, dtype=dtype)]
        check_op("mlp", ops.mlp, ref.mlp, inputs)
    else:
        check_op("mlp", lambda x, a, b: ops.mlp(x, a, None, b, None),
                 lambda x, a, b: ref.mlp(x, a, None, b, None), [x, fc_w, proj_w])


def test_mlp_gelu_saturates_without_overflow(ops):
    x = torch.tensor([[-60.0, -12.0, -1.0, 0.0, 1.5, 12.0, 60.0]], device=DEVICE)
    eye = torch.eye(7, device=DEVICE)
    out = ops.mlp(x, eye, torch.zeros(7, device=DEVICE), eye, torch.zeros(7, device=DEVICE))
    assert_ok(within_tolerance("gelu", out, ref.gelu_tanh(x.double()), 1e-6, scaled=False))


# -- triton ----------------------------------------------------------------------------------


def test_triton_rejects_bad_input(kernels):
    mlp = kernels.mlp
    x = randn(4, 8)
    with pytest.raises(ValueError, match="do not fit"):
        mlp.mlp(x, randn(16, 9), None, randn(8, 16), None)
    with pytest.raises(ValueError, match="share a dtype"):
        mlp.mlp(x, randn(16, 8, dtype=torch.float16), None, randn(8, 16), None)


def test_triton_inference_saves_nothing(kernels):
    x, fc_w, proj_w = randn(4, 8, grad=False), randn(16, 8, grad=False), randn(8, 16, grad=False)
    y, h = kernels.mlp.mlp_fwd(x, fc_w, None, proj_w, None, save_pre=False)
    assert h.numel() == 0
    expect = ref.mlp(x.double(), fc_w.double(), None, proj_w.double(), None)
    assert_ok(within_tolerance("mlp without gradients", y, expect, scaled=False))


# -- native ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1,), (3, 7), (2, 5, 3072)])
def test_native_bias_gelu(native, shape):
    L = native
    x, b = torch.randn(shape) * 3, torch.randn(shape[-1])
    torch.testing.assert_close(L.bias_gelu(x, b), F.gelu(x + b, approximate="tanh"), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(L.bias_gelu(x, None), F.gelu(x, approximate="tanh"), rtol=1e-5, atol=1e-6)
    full = F.gelu(x.double() + b.double(), approximate="tanh")
    torch_bf16 = F.gelu(x.bfloat16() + b.bfloat16(), approximate="tanh")
    assert_ok(within_2x("bias_gelu bf16", L.bias_gelu(x.bfloat16(), b.bfloat16()), full, torch_bf16, scaled=False))


def test_native_table_mlp_matches_reference(native):
    table = get_ops("native")
    x = torch.randn(2, 9, 48)
    fw, fb, pw, pb = torch.randn(96, 48), torch.randn(96), torch.randn(48, 96), torch.randn(48)
    torch.testing.assert_close(table.mlp(x, fw, fb, pw, pb), ref.mlp(x, fw, fb, pw, pb), rtol=1e-5, atol=1e-4)
