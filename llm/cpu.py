"""The CPU this process runs on, as the engine needs to know it: how many threads its CPU
work uses, and whether the CPU does bf16 arithmetic in hardware.

Threads: torch's CPU ops and the native kernels (`llm._C`) share one OpenMP pool, so one
setting covers both: `set_threads(n)`, else `$LLM_NUM_THREADS`, else torch's default (one
per core). The CLI's `--threads` flags call `set_threads`.

bf16: where the CPU has no bf16 arithmetic (AVX512_BF16, AMX-BF16, ARM BF16), torch
emulates bf16 matmuls and runs them many times slower than fp32; `bf16_is_emulated()` says
so and `warn_if_bf16_emulated` warns once before bf16 training or a bf16 prefill on such a
CPU. bf16 *weights* in the native decoder still pay (half the bytes), since its kernels
widen them to fp32 themselves.
"""

from __future__ import annotations

import functools
import os
import warnings

import torch

from .native import extension
from .ops import BackendUnavailableError

THREADS_VARIABLE = "LLM_NUM_THREADS"


def requested_threads(n: int | None = None) -> int | None:
    """`n`, else $LLM_NUM_THREADS, else None (torch's default); ValueError for a count < 1
    or a variable that is not a whole number."""
    if n is None:
        raw = os.environ.get(THREADS_VARIABLE, "").strip()
        if not raw:
            return None
        try:
            n = int(raw)
        except ValueError:
            raise ValueError(f"${THREADS_VARIABLE} must be a whole number of threads, got {raw!r}") from None
        where = f"${THREADS_VARIABLE}"
    else:
        where = "threads"
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{where} must be >= 1, got {n!r}")
    return n


def set_threads(n: int | None = None) -> int:
    """Use `n` threads (else $LLM_NUM_THREADS, else leave torch's count) for torch's CPU ops
    and the native kernels; returns the count in use."""
    want = requested_threads(n)
    if want is not None and want != torch.get_num_threads():
        torch.set_num_threads(want)
    return torch.get_num_threads()


@functools.cache
def has_bf16_arithmetic() -> bool:
    """Whether this CPU multiplies bf16 in hardware: AVX512_BF16 or AMX-BF16 (x86-64), BF16
    (aarch64). Asks llm._C's CPUID / HWCAP detection where it is built, torch's otherwise."""
    try:
        extension()
        return bool(torch.ops.llm.cpu_has_bf16())
    except (BackendUnavailableError, ValueError):  # not built, or a bad $LLM_NATIVE_ISA (reported elsewhere)
        pass
    cpu = torch.cpu
    if cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported():
        return True
    try:
        with open("/proc/cpuinfo") as f:  # aarch64 Linux lists "bf16" among the Features
            return any(line.startswith("Features") and " bf16" in line for line in f)
    except OSError:
        return False


def bf16_is_emulated(device: str | torch.device = "cpu") -> bool:
    """True on a CPU without bf16 arithmetic (never for other devices)."""
    return torch.device(device).type == "cpu" and not has_bf16_arithmetic()


def warn_if_bf16_emulated(what: str, device: str | torch.device = "cpu", advice: str = "use float32") -> bool:
    """Warn (once per call site) that `what` runs bf16 matmuls this CPU emulates; True if it did."""
    if not bf16_is_emulated(device):
        return False
    warnings.warn(f"{what}: this CPU has no bf16 arithmetic (no AVX512_BF16, AMX or ARM BF16), so torch "
                  f"emulates bf16 matmuls here, typically 10-25x slower than float32; {advice}",
                  RuntimeWarning, stacklevel=3)
    return True


def auto_dtype(device: str | torch.device = "cpu") -> str:
    """The compute dtype `auto` picks: 'bfloat16' where the device does bf16 arithmetic (a CPU
    with AVX512_BF16 / AMX / ARM BF16, a CUDA GPU that supports it), else 'float32'."""
    device = torch.device(device)
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "float32" if bf16_is_emulated(device) else "bfloat16"
