"""Shared benchmark harness: CUDA-event timing (median), measured copy bandwidth, providers
(torch | triton | native where it loads), and results written with machine, versions and
commit. Every script runs on CUDA; without a GPU it says so and exits cleanly."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))


def require_cuda(name: str) -> bool:
    if torch.cuda.is_available():
        return True
    print(f"{name}: needs a CUDA GPU, and none is visible here; nothing was measured.")
    return False


def time_ms(fn, warmup: int = 5, rep: int = 25) -> float:
    """Median milliseconds of fn() over `rep` runs, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rep):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


_COPY_GBS = None


def copy_bandwidth_gbs(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth (read + write bytes per second), measured once."""
    global _COPY_GBS
    if _COPY_GBS is None:
        src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
        dst = torch.empty_like(src)
        ms = time_ms(lambda: dst.copy_(src), warmup=3, rep=10)
        _COPY_GBS = 2 * nbytes / ms / 1e6
        del src, dst
    return _COPY_GBS


def providers(wanted=("torch", "triton", "native")) -> dict:
    """name -> OpTable for each provider that can run here."""
    from llm.ops import BackendUnavailableError, get_ops

    out = {}
    for name in wanted:
        try:
            out[name] = get_ops(name)
        except BackendUnavailableError as e:
            print(f"[provider {name} skipped: {e}]")
    return out


def machine() -> dict:
    info = dict(python=platform.python_version(), torch=torch.__version__, host=platform.node())
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                        capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    return info


def save(name: str, rows: list[dict]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(dict(machine=machine(), rows=rows), indent=1))
    return path


def print_rows(rows: list[dict]) -> None:
    if not rows:
        return
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(_fmt(r.get(k))) for r in rows)) for k in keys}
    print("  ".join(k.rjust(widths[k]) for k in keys))
    for r in rows:
        print("  ".join(_fmt(r.get(k)).rjust(widths[k]) for k in keys))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def env_backend_note() -> None:
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("note: TRITON_INTERPRET=1 runs kernels on the CPU interpreter; timings would be meaningless")
