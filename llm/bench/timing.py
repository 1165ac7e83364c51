"""Timing: warm-up excluded, many runs, median and spread; CUDA events on a GPU.

Several candidates (providers, engines) are timed interleaved: round after round each runs
a few times, in alternating order, so a swing in the machine's speed (a shared CPU's read
bandwidth moves by tens of percent within minutes) hits all of them alike.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch


def sync(device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable, device="cpu") -> tuple[float, object]:
    """(seconds, result) of one call of fn(), the device synchronized on both sides."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default)."""
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass(frozen=True)
class Timing:
    """Milliseconds of the timed runs (warm-up excluded)."""

    times_ms: tuple[float, ...]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def min_ms(self) -> float:
        return min(self.times_ms)

    @property
    def runs(self) -> int:
        return len(self.times_ms)

    @property
    def spread(self) -> float:
        """Half the interquartile range over the median (0.05: the middle half of the runs
        lies within about +-5% of the median)."""
        s = sorted(self.times_ms)
        return (_quantile(s, 0.75) - _quantile(s, 0.25)) / 2 / self.median_ms if self.median_ms else 0.0

    def summary(self) -> dict:
        """The row fields every benchmark records: ms (median), ms_min, spread, runs."""
        return dict(ms=self.median_ms, ms_min=self.min_ms, spread=self.spread, runs=self.runs)


def _run_ms(fn: Callable, device, reps: int) -> list[float]:
    """Milliseconds of `reps` calls, each timed alone: CUDA events on a GPU, else the clock."""
    if torch.device(device).type == "cuda":
        out = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end))
        return out
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def interleaved(fns: dict[str, Callable], device="cpu", rounds: int = 3, warmup: int = 2,
                budget_s: float = 0.3, max_reps: int = 50) -> dict[str, Timing]:
    """Time each of `fns` (name -> fn()) in `rounds` rounds, the order reversed every other
    round. Each fn first runs `warmup` times untimed, which also sizes its runs per round:
    about `budget_s` of timed work per fn, between 1 and `max_reps` calls per round."""
    reps = {}
    for name, fn in fns.items():
        for _ in range(max(warmup - 1, 0)):
            fn()
        sync(device)
        one = _run_ms(fn, device, 1)[0] if warmup else 1.0
        reps[name] = max(1, min(max_reps, int(budget_s * 1e3 / max(one, 1e-3) / rounds)))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns)
    for r in range(rounds):
        for name in (order if r % 2 == 0 else order[::-1]):
            sync(device)
            samples[name] += _run_ms(fns[name], device, reps[name])
    return {name: Timing(tuple(s)) for name, s in samples.items()}


def measure(fn: Callable, device="cpu", **kwargs) -> Timing:
    """The Timing of one fn (`interleaved` with a single candidate)."""
    return interleaved({"fn": fn}, device, **kwargs)["fn"]
