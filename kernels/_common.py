"""What the kernel files share: launch configurations, device checks, tuning.

A launch configuration is a `LaunchConfig` (block sizes as Triton constexprs, warps,
pipeline stages). Each kernel file keeps a small table mapping a shape class (head size,
hidden size, device generation) to a list of candidate configurations. Under Triton's
interpreter, or where a table lists one candidate, the first is used; on a real GPU with
several candidates, each is timed once per shape class and the fastest is kept.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class LaunchConfig:
    meta: dict = field(default_factory=dict)  # constexpr block sizes, e.g. {"BLOCK_M": 64}
    num_warps: int = 4
    num_stages: int = 2

    def __hash__(self):
        return hash((tuple(sorted(self.meta.items())), self.num_warps, self.num_stages))

    def label(self) -> str:
        blocks = ",".join(f"{k}={v}" for k, v in self.meta.items())
        return f"{blocks},w{self.num_warps},s{self.num_stages}"

    def kwargs(self) -> dict:
        if interpreting():  # the interpreter ignores warps/stages
            return dict(self.meta)
        return dict(self.meta, num_warps=self.num_warps, num_stages=self.num_stages)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def device_class(t: torch.Tensor) -> str:
    """'interp' on the interpreter, 'sm90' for Hopper and newer, else 'sm80'."""
    if interpreting() or t.device.type != "cuda":
        return "interp"
    major, _ = torch.cuda.get_device_capability(t.device)
    return "sm90" if major >= 9 else "sm80"


def check_device(name: str, *tensors: torch.Tensor) -> None:
    """Kernels run on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1."""
    for t in tensors:
        if t is None:
            continue
        if t.device.type != "cuda" and not interpreting():
            raise ValueError(
                f"{name}: tensor on {t.device}; the Triton kernels need CUDA tensors "
                "(or TRITON_INTERPRET=1 for CPU tensors)")


def check_float(name: str, t: torch.Tensor) -> None:
    if t.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"{name}: dtype {t.dtype} is not supported (float32, float16, bfloat16)")


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


_CHOSEN: dict = {}


def pick_config(name: str, key, candidates: list[LaunchConfig], run) -> LaunchConfig:
    """The configuration to launch with: the only candidate, or the fastest one on a GPU.

    `run(cfg)` launches the kernel with `cfg`; it must be safe to repeat (kernels that
    only write their outputs). Timing happens once per (name, key).
    """
    if len(candidates) == 1 or interpreting():
        return candidates[0]
    k = (name, key)
    if k not in _CHOSEN:
        from triton.testing import do_bench

        times = []
        for cfg in candidates:
            try:
                times.append((do_bench(lambda: run(cfg), warmup=5, rep=20), cfg))
            except Exception:  # a config that does not fit this GPU (shared memory)
                continue
        if not times:
            raise RuntimeError(f"{name}: no launch configuration runs for {key}")
        _CHOSEN[k] = min(times, key=lambda tc: tc[0])[1]
    return _CHOSEN[k]
