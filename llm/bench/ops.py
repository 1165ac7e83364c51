"""Op benchmarks: every op of the table, on every provider that runs here, against the torch
reference, in modes fwd | bwd | fwd+bwd.

Providers: `torch` (the reference, always measured: the other rows are ratios to it; on a
GPU its attention is torch's SDPA, so that row is the SDPA baseline), `triton`, `native`,
and `compile` (torch.compile of the reference ops). Before a provider is timed on a case,
its output and gradients are checked against the reference by llm.testing's rule on a
small odd-sized case (`check_case`); a provider that fails is reported, not timed.

Modes: `fwd` is the inference forward (no autograd graph), `bwd` the backward of a forward
done outside the timing, `fwd+bwd` both. The native kernels are inference kernels (their
backward is the reference's), so native runs `fwd` only; so does every provider of
`cached_attention` (decoding). A compiled backward frees its saved buffers as it runs, so
`compile` has no `bwd` row (its `fwd+bwd` row has it). A provider whose op is the reference's own function
(triton's linear, native's lm_head_loss) is not measured twice.

Work counted per call (elem = bytes per element; bwd of attention 2.5x fwd, of the rest 2x):
  layer_norm        bytes: fwd reads x, writes y (2 N C elem); bwd x, dy, dx (3); both 5
  linear, mlp       FLOPs 2 M N K per matmul; with M <= 16 rows they read their weights
                    once per call and are judged by bytes
  attention         FLOPs 4 B nh T^2 hs, halved for causal
  cached_attention  bytes: the K and V caches read once (2 B nh S hs elem)
  lm_head_loss      FLOPs 2 N C V
Memory-bound cases report GB/s against the measured read bandwidth, compute-bound ones
TFLOPS against the measured matmul rate (`of_ceiling`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..ops import BackendUnavailableError, OpTable, get_ops
from ..ops import reference
from ..testing import compare
from .ceilings import Ceilings
from .memory import PeakMemory
from .timing import interleaved

OPS = ("layer_norm", "linear", "mlp", "attention", "cached_attention", "lm_head_loss")
PROVIDERS = ("torch", "triton", "native", "compile")
MODES = ("fwd", "bwd", "fwd+bwd")
BWD_FACTOR = {"attention": 2.5}  # backward FLOPs / forward FLOPs (others: 2)
MEMORY_BOUND_ROWS = 16  # linear / mlp with at most this many rows are judged by bytes
# bf16 / fp16 checks: llm.testing's 2x rule with this slack (x the output's scale), which
# GPT-2-sized reductions in bf16 need beyond twice torch's own error
LOW_PRECISION_SLACK = 1e-5
V_GPT2 = 50257

# Benchmark sizes per op: (sizes on a CPU, sizes on a GPU) for each preset.
# layer_norm (N, C); linear (M, K, N); mlp (N, C); attention (B, nh, T, hs);
# cached_attention (B, nh, S, hs); lm_head_loss (N, C, V)
SIZES = {
    "smoke": {"layer_norm": [(37, 100)], "linear": [(3, 100, 67)], "mlp": [(13, 96)],
              "attention": [(2, 3, 37, 32)], "cached_attention": [(2, 3, 75, 40)],
              "lm_head_loss": [(37, 96, 1003)]},
    "quick": {"layer_norm": ([(4096, 768)], [(16384, 768), (16384, 1600)]),
              "linear": ([(1, 768, 3072), (64, 768, 3072)], [(1, 768, 3072), (8192, 768, 3072)]),
              "mlp": ([(1, 768), (64, 768)], [(8192, 768)]),
              "attention": ([(1, 12, 256, 64)], [(16, 16, 1024, 64), (4, 32, 4096, 64)]),
              "cached_attention": ([(1, 12, 1024, 64)], [(8, 12, 4096, 64)]),
              "lm_head_loss": ([(64, 768, V_GPT2)], [(4096, 768, V_GPT2)])},
    "full": {"layer_norm": ([(4096, 768), (4096, 1600), (16384, 768)],
                            [(16384, c) for c in (768, 1024, 1600, 2048, 4096, 8192)]),
             "linear": ([(1, 768, 3072), (1, 3072, 768), (64, 768, 3072), (256, 768, 2304)],
                        [(1, 768, 3072), (8192, 768, 3072), (8192, 3072, 768)]),
             "mlp": ([(1, 768), (64, 768), (512, 768)], [(8192, c) for c in (768, 1024, 1280, 1600)]),
             "attention": ([(1, 12, 256, 64), (4, 12, 512, 64)],
                           [(16384 // t, 2048 // hs, t, hs) for hs in (64, 128) for t in (1024, 2048, 4096, 8192)]),
             "cached_attention": ([(1, 12, 1024, 64), (8, 12, 1024, 64)],
                                  [(8, 12, 4096, 64), (32, 12, 1024, 64), (1, 32, 8192, 128)]),
             "lm_head_loss": ([(64, 768, V_GPT2), (256, 768, V_GPT2)],
                              [(n, 768, V_GPT2) for n in (2048, 8192, 16384)])},
}
# Correctness sizes: odd, not multiples of any block. "small" also runs under Triton's CPU
# interpreter; "gpt2" is GPT-2's widths (the GPU suite).
# Attention adds a padded batch (a 5th size: left padding of row 0), cached_attention a
# prompt of several queries (a 5th size: Tq).
CHECK_SIZES = {
    "small": {**SIZES["smoke"], "attention": [(2, 3, 37, 32), (2, 3, 37, 32, 5)],
              "cached_attention": [(2, 3, 75, 40), (2, 3, 75, 40, 9)]},
    "gpt2": {"layer_norm": [(4097, 768)], "linear": [(257, 768, 3072)], "mlp": [(2047, 768)],
             "attention": [(2, 4, 1000, 64), (2, 4, 777, 128, 100)],
             "cached_attention": [(3, 12, 1000, 64), (2, 12, 1000, 64, 77)],
             "lm_head_loss": [(1023, 768, V_GPT2)]},
}


@dataclass
class Case:
    """One op at one size: inputs (float tensors that get gradients in training have
    requires_grad), the call on an op table, and the work of each mode."""

    op: str
    shape: str
    inputs: list
    call: Callable  # call(table, *inputs) -> tensor
    flops: dict = field(default_factory=dict)  # mode -> FLOPs (compute-bound cases)
    bytes: dict = field(default_factory=dict)  # mode -> bytes (memory-bound cases)

    @property
    def modes(self) -> tuple:
        return op_modes(self.op)

    @property
    def dtype(self) -> torch.dtype:
        return next(t.dtype for t in self.inputs if isinstance(t, torch.Tensor) and t.is_floating_point())


def op_modes(op: str) -> tuple:
    """The modes `op` has: cached_attention (decoding) only runs forward."""
    return ("fwd",) if op == "cached_attention" else MODES


def sizes(op: str, preset: str, device) -> list[tuple]:
    """The sizes of `op` in `preset` (smoke | quick | full) on `device`."""
    entry = SIZES[preset][op]
    if isinstance(entry, tuple):
        return entry[1] if torch.device(device).type == "cuda" else entry[0]
    return entry


def _leaf(*shape, device, dtype, scale=1.0, grad=True, gen=None):
    t = (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype)
    return t.requires_grad_(grad)


def _work(fwd: float, op: str) -> dict:
    bwd = BWD_FACTOR.get(op, 2.0) * fwd
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}


def make_case(op: str, size: tuple, dtype=torch.float32, device="cpu", seed: int = 0) -> Case:
    """The Case of `op` at `size` (see SIZES for each op's size tuple)."""
    gen = torch.Generator().manual_seed(seed)
    leaf = lambda *s, **kw: _leaf(*s, device=device, dtype=dtype, gen=gen, **kw)  # noqa: E731
    elem = torch.empty((), dtype=dtype).element_size()
    if op == "layer_norm":
        N, C = size
        inputs = [leaf(N, C), leaf(C), leaf(C)]
        return Case(op, f"{N}x{C}", inputs, lambda t, x, w, b: t.layer_norm(x, w, b, 1e-5),
                    bytes={"fwd": 2 * N * C * elem, "bwd": 3 * N * C * elem, "fwd+bwd": 5 * N * C * elem})
    if op == "linear":
        M, K, N = size
        inputs = [leaf(M, K), leaf(N, K, scale=K ** -0.5), leaf(N)]
        return _matmul_case(op, f"{M}x{K}->{N}", inputs, lambda t, x, w, b: t.linear(x, w, b),
                            M, 2 * M * N * K, (M * K + N * K + M * N) * elem)
    if op == "mlp":
        N, C = size
        H = 4 * C
        inputs = [leaf(N, C), leaf(H, C, scale=0.02), leaf(H), leaf(C, H, scale=0.02), leaf(C)]
        return _matmul_case(op, f"{N}x{C}", inputs, lambda t, *a: t.mlp(*a), N, 4 * N * C * H,
                            (2 * N * C + 2 * C * H) * elem)
    if op == "attention":  # (B, nh, T, hs[, pad]): row 0 left-padded by `pad` (key_valid)
        B, nh, T, hs, pad = (*size, 0)[:5]
        valid = None
        if pad:
            valid = torch.ones(B, T, dtype=torch.bool, device=device)
            valid[0, :pad] = False
        inputs = [leaf(B, nh, T, hs) for _ in range(3)]
        return Case(op, f"B{B} nh{nh} T{T} hs{hs}" + (f" pad{pad}" if pad else ""), inputs,
                    lambda t, q, k, v: t.attention(q, k, v, valid, 0.0), flops=_work(4 * B * nh * T * T * hs * 0.5, op))
    if op == "cached_attention":  # (B, nh, S, hs[, Tq]): Tq queries (default 1) at the last slots
        B, nh, S, hs, Tq = (*size, 1)[:5]
        valid = torch.ones(B, S, dtype=torch.bool, device=device)
        valid[0, : S // 10] = False  # a left-padded row
        pos = torch.arange(S - Tq, S, device=device)
        inputs = [leaf(B, nh, Tq, hs, grad=False), leaf(B, nh, S, hs, grad=False), leaf(B, nh, S, hs, grad=False)]
        return Case(op, f"B{B} nh{nh} S{S} hs{hs}" + (f" Tq{Tq}" if Tq > 1 else ""), inputs,
                    lambda t, q, k, v: t.cached_attention(q, k, v, pos, valid),
                    bytes={"fwd": 2 * B * nh * S * hs * elem})
    if op == "lm_head_loss":
        N, C, V = size
        targets = torch.randint(0, V, (N,), generator=gen).to(device)
        targets[::9] = -100
        inputs = [leaf(N, C), leaf(V, C, scale=0.02)]
        return Case(op, f"{N}x{C} V{V}", inputs, lambda t, h, w: t.lm_head_loss(h, w, targets, -100),
                    flops=_work(2 * N * C * V, op))
    raise ValueError(f"unknown op {op!r}; valid ops: {', '.join(OPS)}")


def _matmul_case(op, shape, inputs, call, rows, fwd_flops, fwd_bytes) -> Case:
    if rows <= MEMORY_BOUND_ROWS:
        return Case(op, shape, inputs, call, bytes=_work(fwd_bytes, op))
    return Case(op, shape, inputs, call, flops=_work(fwd_flops, op))


# -- providers -------------------------------------------------------------------------------


def compiled_reference() -> OpTable:
    """The reference ops, each through torch.compile (a new graph per shape)."""
    ops = {name: torch.compile(getattr(reference.TORCH_OPS, name), dynamic=False)
           for name in ("layer_norm", "linear", "mlp", "attention", "cached_attention", "lm_head_loss")}
    return reference.TORCH_OPS.replace(name="compile", **ops)


def load_providers(names=PROVIDERS, notes: list | None = None) -> dict[str, OpTable]:
    """name -> OpTable of each provider in `names` that can run here (the reference first);
    why each other one cannot goes to `notes`."""
    out = {"torch": get_ops("torch")}
    for name in names:
        if name in out or name not in PROVIDERS:  # e.g. transformers: an end-to-end engine
            continue
        if name == "compile":
            out[name] = compiled_reference()
            continue
        try:
            out[name] = get_ops(name)
        except BackendUnavailableError as e:
            if notes is not None:
                notes.append(f"{name}: skipped ({e})")
    return out


def provider_modes(name: str, table: OpTable, op: str) -> tuple:
    """The modes provider `name` is measured in on `op` (empty: not measured)."""
    if name != "torch" and getattr(table, op) is getattr(reference.TORCH_OPS, op):
        return ()  # the reference's own function: nothing of its own to measure
    if name == "native":
        return tuple(m for m in op_modes(op) if m == "fwd")
    if name == "compile":  # its backward frees saved buffers: it cannot run twice on one graph
        return tuple(m for m in op_modes(op) if m != "bwd")
    return op_modes(op)


def timeable(name: str, device) -> str | None:
    """Why provider `name` is not timed on `device`, or None. Triton runs on a CPU only
    through its interpreter, whose speed says nothing about the kernels."""
    if name == "triton" and torch.device(device).type != "cuda":
        return "triton: not timed on a CPU (it runs there only through Triton's interpreter)"
    return None


# -- correctness, then timing -----------------------------------------------------------------


def check_case(name: str, table: OpTable, case: Case, slack: float | None = None) -> list:
    """llm.testing checks of provider `name` on `case` against the reference: the output,
    and the gradients when the provider is measured with a backward. Reference in fp64 on a
    CPU, fp32 on a GPU; low precision by the 2x rule (`slack` relative to the output's scale)."""
    modes = provider_modes(name, table, case.op)
    grads = any(m != "fwd" for m in modes)
    inputs = case.inputs if grads else [t.detach() if isinstance(t, torch.Tensor) else t for t in case.inputs]
    on_cuda = inputs[0].device.type == "cuda"
    kwargs = {} if slack is None else {"slack": slack}
    return compare(f"{case.op} {case.shape} [{name}]", lambda *a: case.call(table, *a),
                   lambda *a: case.call(reference.TORCH_OPS, *a), inputs,
                   ref_dtype=torch.float32 if on_cuda else torch.float64, **kwargs)


def mode_fn(case: Case, table: OpTable, mode: str) -> Callable:
    """fn() running `mode` of `case` on `table` (bwd: the backward of one forward made now)."""
    def call():
        return case.call(table, *case.inputs)

    if mode == "fwd":
        def fwd():
            with torch.no_grad():
                return call()
        return fwd
    leaves = [t for t in case.inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    out = call()
    g = torch.randn_like(out) if out.dim() else torch.ones_like(out)
    if mode == "bwd":
        return lambda: torch.autograd.grad(out, leaves, g, retain_graph=True)
    return lambda: torch.autograd.grad(call(), leaves, g)


def rates(case: Case, mode: str, ms: float, ceilings: Ceilings | None) -> dict:
    """GBps or TFLOPS of `mode` at `ms` per call, and `of_ceiling` (a fraction)."""
    out = {}
    if mode in case.bytes:
        out["GBps"] = case.bytes[mode] / ms / 1e6
        if ceilings:
            out["of_ceiling"] = out["GBps"] / ceilings.read_gbs
    if mode in case.flops:
        out["TFLOPS"] = case.flops[mode] / ms / 1e9
        if ceilings:
            out["of_ceiling"] = out["TFLOPS"] / ceilings.matmul_tflops
    return out


def time_case(case: Case, tables: dict[str, OpTable], device, ceilings: Ceilings | None = None,
              rounds: int = 3, budget_s: float = 0.3) -> list[dict]:
    """Rows of every (mode, provider) of `case`, the providers of a mode interleaved; vs_ref
    is the reference's median time over the provider's (> 1: faster)."""
    rows = []
    dtype = str(case.dtype).removeprefix("torch.")
    for mode in case.modes:
        fns = {name: mode_fn(case, t, mode) for name, t in tables.items() if mode in provider_modes(name, t, case.op)}
        if not fns:
            continue
        timings = interleaved(fns, device, rounds=rounds, budget_s=budget_s)
        ref = timings.get("torch")
        for name, t in timings.items():
            with PeakMemory(device) as mem:
                fns[name]()
            rows.append(dict(benchmark="op", op=case.op, mode=mode, shape=case.shape, dtype=dtype,
                             provider=name, **t.summary(),
                             vs_ref=ref.median_ms / t.median_ms if ref else None,
                             **rates(case, mode, t.median_ms, ceilings), peak_MB=mem.peak_mb))
        del fns
    return rows


def checked_providers(op: str, tables: dict[str, OpTable], device, dtype, checks: list,
                      notes: list) -> dict[str, OpTable]:
    """The providers of `tables` that pass their check on `op`'s small case (the reference
    always stays); every check's row goes to `checks`, a failure also to `notes`."""
    out = {}
    case = make_case(op, CHECK_SIZES["small"][op][0], dtype, device, seed=1)
    for name, table in tables.items():
        if name != "torch" and not provider_modes(name, table, op):
            continue
        if name == "torch":
            out[name] = table
            continue
        try:
            results = check_case(name, table, case, None if dtype == torch.float32 else LOW_PRECISION_SLACK)
        except (RuntimeError, ValueError, AssertionError) as e:
            notes.append(f"{op} [{name}]: not timed, the check raised {type(e).__name__}: {e}")
            continue
        checks.extend(dict(op=op, provider=name, **c.row()) for c in results)
        if all(c.ok for c in results):
            out[name] = table
        else:
            notes.append(f"{op} [{name}]: not timed, wrong against the reference: "
                         + "; ".join(c.message() for c in results if not c.ok))
    return out


def run_ops(ops=OPS, preset: str = "quick", device="cpu", dtype=torch.float32, providers=PROVIDERS,
            ceilings: Ceilings | None = None, rounds: int = 3, budget_s: float = 0.3,
            notes: list | None = None, checks: list | None = None, progress=None) -> list[dict]:
    """Rows of every op in `ops` at `preset`'s sizes on `device`, each provider checked first.
    `progress(text)` is called before each case."""
    notes = [] if notes is None else notes
    checks = [] if checks is None else checks
    tables = load_providers(providers, notes)
    for name in list(tables):
        why = timeable(name, device)
        if why:
            notes.append(why)
            del tables[name]
    rows = []
    for op in ops:
        usable = checked_providers(op, tables, device, dtype, checks, notes)
        for size in sizes(op, preset, device):
            case = make_case(op, size, dtype, device)
            if progress:
                progress(f"{op} {case.shape}")
            rows += time_case(case, usable, device, ceilings, rounds, budget_s)
            del case
    return rows

