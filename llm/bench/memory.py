"""Peak memory a block of work adds on top of what the process already holds.

On CUDA: `torch.cuda.max_memory_allocated` minus what was allocated when the block began.
On a CPU (Linux): the peak resident set (VmHWM, reset through /proc/self/clear_refs) minus
the resident set when the block began; elsewhere the peak is None (not measured).
"""

from __future__ import annotations

import ctypes
import gc

import torch


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the system, so a later peak is not
    hidden by memory the allocator kept."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_cpu_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS
        return True
    except OSError:
        return False


class PeakMemory:
    """`with PeakMemory(device) as mem: ...` then `mem.peak` (bytes, or None where the
    platform cannot tell) and `mem.peak_mb`."""

    def __init__(self, device="cpu"):
        self.cuda = torch.device(device).type == "cuda"
        self.peak = None

    def __enter__(self):
        release_memory()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            rss = _status_kb("VmRSS")
            self.base = rss * 1024 if rss is not None and _reset_cpu_peak() else None
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        elif self.base is not None:
            hwm = _status_kb("VmHWM")
            self.peak = None if hwm is None else max(0, hwm * 1024 - self.base)
        return False

    @property
    def peak_mb(self) -> float | None:
        return None if self.peak is None else self.peak / 2**20
