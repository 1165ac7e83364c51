"""The C++/CUDA extension `llm._C` (sources in `csrc/`): loading it, its CPU instruction-set
controls, and (in `packing` and `decoder`) the whole-model CPU decoder it provides.

The op-table entries of the `native` backend live in `llm/ops/native.py`.
"""

from __future__ import annotations

import os

import torch

from ..ops import BackendUnavailableError

WEIGHT_FORMATS = ("float32", "bfloat16", "int8")


def extension():
    """The loaded `llm._C` module; BackendUnavailableError saying why when it cannot load,
    ValueError when $LLM_NATIVE_ISA names an instruction set that does not exist."""
    try:
        from .. import _C  # loading it registers torch.ops.llm
    except (ImportError, OSError) as e:
        if os.environ.get("LLM_SKIP_NATIVE", "0") not in ("", "0"):
            why = "it was not built (LLM_SKIP_NATIVE is set)"
        else:
            why = "it is not built or cannot load"
        raise BackendUnavailableError(
            f"backend 'native' is not available: the C++ extension llm._C {why} ({e}). "
            f"Build it with `pip install --no-build-isolation -e .` (needs a C++ compiler and torch)."
        ) from e
    # The kernels read $LLM_NATIVE_ISA on first use; reading it here makes a bad value a
    # ValueError at load time (naming the variable and the valid values).
    torch.ops.llm.cpu_isa()
    return _C


def has_cuda_kernels() -> bool:
    """True when the extension was built with its CUDA kernels."""
    extension()
    return bool(torch.ops.llm.has_cuda_kernels())


def cpu_isa() -> str:
    """The instruction set the CPU kernels use now (one of `cpu_isas()`): 'avx512_bf16',
    'avx512_vnni', 'avx512', 'avx2_vnni', 'avx2' (x86-64), 'neon_bf16', 'neon_dotprod',
    'neon' (aarch64) or 'portable'."""
    extension()
    return torch.ops.llm.cpu_isa()


def cpu_best_isa() -> str:
    """The fastest instruction set this CPU supports (what `cpu_isa()` is unless lowered)."""
    extension()
    return torch.ops.llm.cpu_best_isa()


def cpu_isas() -> list[str]:
    """Every instruction set this CPU runs the kernels with, slowest ('portable') first."""
    extension()
    return list(torch.ops.llm.cpu_isas())


def set_cpu_isa(name: str) -> None:
    """Run the CPU kernels with another instruction set this CPU supports (one of
    `cpu_isas()`, e.g. to test the portable code); ValueError for any other name.
    `$LLM_NATIVE_ISA` sets the starting one the same way."""
    extension()
    torch.ops.llm.set_cpu_isa(name)
