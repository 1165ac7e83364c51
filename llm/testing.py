"""Comparing a fast path (a Triton kernel, a C++ op, a backend's op table) against the torch
reference, with the one rule tests and benchmarks share.

The rule (as flash-attention's tests): a result computed in precision p is compared with a
reference computed in higher precision (fp64 in tests, fp32 on a GPU), and
  - in fp32 it must be tight: error <= tol * scale (`within_tolerance`, tol = 2e-6);
  - in fp16/bf16 its error may be at most twice the error of the same torch op run in p,
    plus a small slack: error <= 2 * torch_error + slack * scale (`within_2x`).
scale = max(1, max |reference|), so large outputs are judged relatively; `scaled=False`
makes the bound absolute. `check` picks the rule from the dtype; `compare` runs a function
and the reference on the same inputs (cast to each precision) and checks the output and
the gradient of every input that requires one.

Each check returns a `Check` (error, bound, pass/fail, a message, a report row);
`assert_ok` raises AssertionError with the message when it fails.

    from llm.testing import compare, assert_ok, within_2x
    for c in compare("mlp", table.mlp, reference.mlp, [x, fc_w, fc_b, proj_w, proj_b]):
        assert_ok(c)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

FP32_TOL = 2e-6  # fp32 results: error <= FP32_TOL * scale
SLACK = 1e-6  # fp16/bf16 results: error <= 2 * torch's error + SLACK * scale

__all__ = [
    "FP32_TOL", "SLACK", "Check", "max_error", "reference_scale", "within_tolerance",
    "within_2x", "check", "assert_ok", "run_and_grads", "compare", "assert_matches_reference",
]


@dataclass(frozen=True)
class Check:
    """One comparison: `err` of the fast path against the reference, the `bound` it must
    stay within, and for the 2x rule `base`, the same-precision torch op's error."""

    name: str
    err: float
    bound: float
    base: float | None = None

    @property
    def ok(self) -> bool:
        return self.err <= self.bound  # False for a NaN error

    @property
    def rule(self) -> str:
        return "tolerance" if self.base is None else "2x"

    def message(self) -> str:
        status = "ok" if self.ok else "FAIL"
        if self.base is None:
            return f"{self.name}: error {self.err:.3g}, bound {self.bound:.3g} [{status}]"
        return (f"{self.name}: error {self.err:.3g} vs torch's {self.base:.3g} in the same "
                f"precision, bound 2x + slack = {self.bound:.3g} [{status}]")

    def row(self) -> dict:
        """A report row: name, err, torch_err (None for the tolerance rule), bound, status."""
        return dict(name=self.name, err=self.err, torch_err=self.base, bound=self.bound,
                    status="ok" if self.ok else "FAIL")


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b|, computed in fp64."""
    return (a.double() - b.double()).abs().max().item()


def reference_scale(ref: torch.Tensor) -> float:
    """max(1, max |ref|): bounds are relative for large outputs, absolute for small ones."""
    return max(1.0, ref.abs().max().item()) if ref.numel() else 1.0


def _scale(ref, scaled: bool) -> float:
    return reference_scale(ref) if scaled else 1.0


def within_tolerance(name: str, out: torch.Tensor, ref: torch.Tensor, tol: float = FP32_TOL, *,
                     scaled: bool = True) -> Check:
    """The tight check: max |out - ref| <= tol * scale (scale 1 when not `scaled`)."""
    return Check(name, max_error(out, ref), tol * _scale(ref, scaled))


def within_2x(name: str, out: torch.Tensor, ref: torch.Tensor, same: torch.Tensor, *,
              slack: float = SLACK, scaled: bool = True) -> Check:
    """The low-precision check: out's error against `ref` at most twice that of `same` (the
    torch op on inputs of out's precision) plus slack * scale (scale 1 when not `scaled`)."""
    base = max_error(same, ref)
    return Check(name, max_error(out, ref), 2 * base + slack * _scale(ref, scaled), base)


def check(name: str, out: torch.Tensor, ref: torch.Tensor, same: torch.Tensor | None = None,
          dtype: torch.dtype | None = None, *, tol: float = FP32_TOL, slack: float = SLACK,
          scaled: bool = True) -> Check:
    """The rule for a result computed from inputs of `dtype` (default: out's dtype):
    `within_tolerance` in fp32 (and fp64), `within_2x` against `same` otherwise."""
    if (dtype or out.dtype) in (torch.float32, torch.float64):
        return within_tolerance(name, out, ref, tol, scaled=scaled)
    if same is None:
        raise ValueError(f"{name}: a {dtype or out.dtype} result needs the same-precision torch result")
    return within_2x(name, out, ref, same, slack=slack, scaled=scaled)


def assert_ok(*checks: Check) -> None:
    """Raise AssertionError listing every failed check."""
    failed = [c.message() for c in checks if not c.ok]
    assert not failed, "\n".join(failed)


def run_and_grads(fn: Callable, inputs: Sequence, grad_out_seed: int = 1):
    """fn(*inputs) and the gradients of <fn(*inputs), g> w.r.t. every input that requires
    grad; g is seeded random (the same for every precision), or 1 for a scalar output (as
    loss.backward() does). No gradients (an empty tuple) when no input requires one."""
    out = fn(*inputs)
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    if not leaves:
        return out, ()
    gen = torch.Generator(device="cpu").manual_seed(grad_out_seed)
    g = torch.randn(out.shape, generator=gen).to(device=out.device, dtype=out.dtype)
    if out.dim() == 0:
        g = torch.ones_like(out)
    return out, torch.autograd.grad(out, leaves, g)


def _cast(inputs: Sequence, dtype: torch.dtype) -> list:
    return [t.detach().to(dtype).requires_grad_(t.requires_grad)
            if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in inputs]


def compare(name: str, fast_fn: Callable, ref_fn: Callable, inputs: Sequence, *,
            dtype: torch.dtype | None = None, ref_dtype: torch.dtype = torch.float64,
            tol: float = FP32_TOL, slack: float = SLACK, scaled: bool = True) -> list[Check]:
    """fast_fn on `inputs` in `dtype` (default: the first float input's) against ref_fn in
    `ref_dtype`, and ref_fn in `dtype` (the same-precision torch result): one `Check` for
    the output, then one per gradient of an input with requires_grad, by `check`'s rule.
    Integer inputs pass through unchanged."""
    if dtype is None:
        dtype = next(t.dtype for t in inputs if isinstance(t, torch.Tensor) and t.is_floating_point())
    out, grads = run_and_grads(fast_fn, _cast(inputs, dtype))
    ref, ref_grads = run_and_grads(ref_fn, _cast(inputs, ref_dtype))
    same, same_grads = run_and_grads(ref_fn, _cast(inputs, dtype))
    if out.shape != ref.shape:
        raise AssertionError(f"{name}: output shape {tuple(out.shape)} != reference {tuple(ref.shape)}")
    if out.dtype != same.dtype:
        raise AssertionError(f"{name}: output dtype {out.dtype} != reference {same.dtype}")
    if len(grads) != len(ref_grads):
        raise AssertionError(f"{name}: {len(grads)} gradients, the reference has {len(ref_grads)}")
    checks = [check(f"{name} output", out, ref, same, dtype, tol=tol, slack=slack, scaled=scaled)]
    for i, (g, r, s) in enumerate(zip(grads, ref_grads, same_grads)):
        if g.shape != r.shape:
            raise AssertionError(f"{name} grad {i}: shape {tuple(g.shape)} != reference {tuple(r.shape)}")
        checks.append(check(f"{name} grad {i}", g, r, s, dtype, tol=tol, slack=slack, scaled=scaled))
    return checks


def assert_matches_reference(name: str, fast_fn: Callable, ref_fn: Callable, inputs: Sequence,
                             **kwargs) -> list[Check]:
    """`compare`, raising AssertionError when any check fails; returns the checks."""
    checks = compare(name, fast_fn, ref_fn, inputs, **kwargs)
    assert_ok(*checks)
    return checks
