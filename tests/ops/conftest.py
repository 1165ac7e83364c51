"""Fixtures of the op tests: the backend under test (`ops`), the Triton kernel modules
(`kernels`), the C++ ops (`native`) and their instruction-set paths (`isa`). A backend that
cannot run here is skipped with the reason BackendUnavailableError gives."""

from types import SimpleNamespace

import pytest
import torch

from llm.ops import BackendUnavailableError, get_ops
from op_helpers import BACKENDS

def _table(name):
    try:
        return get_ops(name)
    except BackendUnavailableError as e:  # its message names the backend and says why
        pytest.skip(str(e))


@pytest.fixture(params=BACKENDS)
def ops(request):
    """The OpTable of each backend (tests parametrize it indirectly to pick dtypes too)."""
    return _table(request.param)


@pytest.fixture
def kernels():
    """The Triton kernel modules (llm.kernels), where the triton backend loads."""
    _table("triton")
    from llm.kernels import attention, layernorm, lm_head_loss, matmul, mlp

    return SimpleNamespace(attention=attention, layernorm=layernorm, lm_head_loss=lm_head_loss,
                           matmul=matmul, mlp=mlp)


@pytest.fixture
def native():
    """torch.ops.llm, the C++ ops of llm._C, where the native backend loads."""
    _table("native")
    return torch.ops.llm


def _native_isas():
    """Every instruction-set path this CPU can run (just 'portable', then skipped with the
    reason, where llm._C does not load)."""
    from llm import native

    try:
        return native.cpu_isas()
    except BackendUnavailableError:
        return ["portable"]


@pytest.fixture(params=_native_isas())
def isa(request, native):
    """Runs the test with the CPU kernels on one instruction-set path, then restores it."""
    before = native.cpu_isa()
    native.set_cpu_isa(request.param)
    yield request.param
    native.set_cpu_isa(before)
