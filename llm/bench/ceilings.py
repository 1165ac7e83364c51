"""What this machine can do at best, measured in the same run as the benchmarks: memory read
bandwidth and the matrix-multiply rate. Achieved GB/s and TFLOPS are reported as a fraction
of these, so a figure says how close a kernel comes to the hardware here and now.

  read bandwidth  torch.sum over a buffer well beyond the caches (a read-dominated stream),
                  best of a few passes; 512 MiB on a CPU, 1 GiB on a GPU. A working set
                  that fits in the caches can be read faster than this (> 100%).
  matmul rate     torch.matmul of square matrices in the benchmark's dtype, best of a few;
                  n = 1024 on a CPU, 8192 on a GPU
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .timing import interleaved


@dataclass(frozen=True)
class Ceilings:
    read_gbs: float  # GB/s (1e9 bytes)
    matmul_tflops: float  # 1e12 multiply-adds x 2 per second
    dtype: str  # the matmul's dtype

    def as_dict(self) -> dict:
        return asdict(self)


def read_bandwidth_gbs(device="cpu", nbytes: int | None = None, rounds: int = 3) -> float:
    """Best GB/s of torch.sum over a float32 buffer of `nbytes` (default by device)."""
    device = torch.device(device)
    if nbytes is None:
        nbytes = (1 << 30) if device.type == "cuda" else (512 << 20)
    buf = torch.ones(nbytes // 4, device=device)
    t = interleaved({"sum": buf.sum}, device, rounds=rounds, warmup=1, budget_s=0.2, max_reps=5)["sum"]
    return nbytes / (t.min_ms * 1e-3) / 1e9


def matmul_tflops(device="cpu", dtype=torch.float32, n: int | None = None, rounds: int = 3) -> float:
    """Best TFLOPS of an n x n x n torch.matmul in `dtype` (default n by device)."""
    device = torch.device(device)
    if n is None:
        n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    t = interleaved({"mm": lambda: a @ b}, device, rounds=rounds, warmup=1, budget_s=0.3, max_reps=10)["mm"]
    return 2 * n**3 / (t.min_ms * 1e-3) / 1e12


def measure_ceilings(device="cpu", dtype=torch.float32) -> Ceilings:
    """Both ceilings of `device`, the matmul in `dtype`."""
    return Ceilings(read_gbs=read_bandwidth_gbs(device), matmul_tflops=matmul_tflops(device, dtype),
                    dtype=str(dtype).removeprefix("torch."))
