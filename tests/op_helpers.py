"""Inputs and checks shared by the op tests in tests/ops/ (the fixtures are in
tests/ops/conftest.py).

Every op test runs on each backend that loads here (the backend id leads the test id):
`torch` always, `triton` on CUDA or through Triton's interpreter on CPU (tests/conftest.py
sets TRITON_INTERPRET=1), `native` where llm._C is built. Dtypes per backend: fp32 and fp16
for torch and triton (bf16 is wrong under Triton's interpreter; benchmarks/gpu_suite.py
checks it on a GPU), fp32 and bf16 for native (the dtypes its kernels take).
"""

from __future__ import annotations

import pytest
import torch

from llm.ops import IGNORE_INDEX
from llm.testing import assert_ok, compare

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ("torch", "triton", "native")
DTYPES = {
    "torch": (torch.float32, torch.float16),
    "triton": (torch.float32, torch.float16),
    "native": (torch.float32, torch.bfloat16),
}


def backend_dtypes():
    """Parametrizes `ops` (indirect: the backend's OpTable) and `dtype` over every backend
    and its dtypes, ids like `triton-float16`."""
    params = [pytest.param(b, dt, id=f"{b}-{str(dt).removeprefix('torch.')}")
              for b in BACKENDS for dt in DTYPES[b]]
    return pytest.mark.parametrize("ops,dtype", params, indirect=["ops"])


def randn(*shape, dtype=torch.float32, scale=1.0, grad=True):
    return (torch.randn(*shape) * scale).to(DEVICE, dtype).requires_grad_(grad)


def padding_mask(B, T, pads):
    """key_valid [B, T]: row r has its first pads[r] positions padded (left padding)."""
    mask = torch.ones(B, T, dtype=torch.bool, device=DEVICE)
    for row, pad in enumerate(pads):
        mask[row, :pad] = False
    return mask


def targets(N, V, ignore_every=7):
    t = torch.randint(0, V, (N,), device=DEVICE)
    t[::ignore_every] = IGNORE_INDEX
    return t


def check_op(name, fn, ref_fn, inputs):
    """fn (a backend's op) against ref_fn (the reference), by llm.testing's rule: with the
    gradients of every input that requires one, then once more without gradients (the
    inference path: native's kernels run only there, triton's MLP saves nothing there)."""
    n_grads = sum(isinstance(t, torch.Tensor) and t.requires_grad for t in inputs)
    checks = compare(name, fn, ref_fn, inputs)
    assert n_grads > 0 and len(checks) == 1 + n_grads
    assert_ok(*checks)
    detached = [t.detach() if isinstance(t, torch.Tensor) else t for t in inputs]
    with torch.no_grad():
        assert_ok(*compare(f"{name} (no grad)", fn, ref_fn, detached))
