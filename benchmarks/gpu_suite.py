"""The GPU suite: one command, under 8 minutes on a CUDA machine with torch and triton.

    python benchmarks/gpu_suite.py OUT_DIR [--skip-build]

1. build   the extension llm._C with its CUDA kernels (`setup.py build_ext --inplace`, in
           a child process, before anything here loads it), then check it has them
2. check   every kernel against the reference in bf16, at GPT-2 widths with odd lengths:
           the triton ops and the native CUDA ops (layer_norm, mlp's bias+GELU, attention,
           cached_attention), each output and gradient within 2x the error of torch's own
           bf16 op against fp32 (llm.testing); the benchmarks run only when all pass
3. time    `llm bench` on the GPU, CUDA events: the ops (torch / SDPA, triton, native) at
           quick sizes, generation with and without CUDA graphs, a training step; then,
           while the budget lasts, torch.compile and the full op sizes
4. write   OUT_DIR/gpu_suite.md (checks, goals and every table), OUT_DIR/bench.jsonl and
           OUT_DIR/gpu_checks.jsonl (the one results format), the PNG charts

--check-only stops after step 2. Without a GPU, the checks run on the CPU through Triton's
interpreter (TRITON_INTERPRET=1, --device cpu --check-size small --dtype float16; bf16 is
not exact there): the test suite does that.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from llm.bench import environment, make_record, write_record
from llm.bench import ops as op_bench
from llm.bench import suite
from llm.bench.env import describe
from llm.bench.table import markdown_table
from llm.ops import BackendUnavailableError, get_ops

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = 7 * 60  # the whole suite, build included, with headroom under 8 minutes
GOALS = [  # (op, mode, metric, threshold, description), judged on the triton provider
    ("layer_norm", "fwd+bwd", "of_ceiling", 0.8, "layer_norm fwd+bwd >= 80% of read bandwidth"),
    ("attention", "fwd", "vs_ref", 0.9, "attention fwd >= 0.9x torch SDPA"),
    ("attention", "fwd+bwd", "vs_ref", 0.8, "attention fwd+bwd >= 0.8x torch SDPA"),
    ("mlp", "fwd+bwd", "vs_ref", 1.1, "MLP fwd+bwd >= 1.1x eager torch"),
]


def build() -> str:
    """Build llm._C in place (a child process); returns what the child reports about it."""
    env = dict(os.environ, MAX_JOBS=str(os.cpu_count() or 4))
    subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=ROOT, env=env, check=True)
    probe = "import llm.native as n; n.extension(); print('cuda kernels:', n.has_cuda_kernels())"
    return subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


def correctness(device="cuda", dtype=torch.bfloat16, size: str = "gpt2",
                providers=("triton", "native")) -> tuple[bool, list[dict], list[str]]:
    """(all passed, a row per check, notes): every op of each provider that loads, at the
    CHECK_SIZES[size] shapes, against the reference (fp32 on a GPU, fp64 on a CPU)."""
    rows, notes = [], []
    for name in providers:
        try:
            table = get_ops(name)
        except BackendUnavailableError as e:
            notes.append(f"{name}: not checked ({e})")
            continue
        for op in op_bench.OPS:
            if not op_bench.provider_modes(name, table, op):
                continue
            for i, shape in enumerate(op_bench.CHECK_SIZES[size][op]):
                case = op_bench.make_case(op, shape, dtype, device, seed=i + 1)
                checks = op_bench.check_case(name, table, case, op_bench.LOW_PRECISION_SLACK)
                rows += [dict(provider=name, op=op, **c.row()) for c in checks]
    return all(r["status"] == "ok" for r in rows), rows, notes


def goals(rows: list[dict]) -> list[dict]:
    """Each goal's worst measured value on the triton provider, and whether it is met."""
    out = []
    for op, mode, metric, threshold, text in GOALS:
        vals = [r[metric] for r in rows if r.get("op") == op and r["provider"] == "triton"
                and r["mode"] == mode and r.get(metric) is not None]
        if vals:
            out.append(dict(goal=text, worst=min(vals), met="yes" if min(vals) >= threshold else "no"))
    return out


def timing(device: str, deadline: float) -> list[dict]:
    """`llm bench` records: quick sizes of everything, then compile and full op sizes while
    time remains (each step is skipped when less than its rough cost is left)."""
    steps = [(60, suite.make_plan(preset="quick", device=device, providers=("triton", "native", "transformers"))),
             (150, suite.make_plan(preset="quick", device=device, parts=op_bench.OPS, providers=("compile",))),
             (120, suite.make_plan(preset="full", device=device, parts=op_bench.OPS, providers=("triton", "native")))]
    records = []
    for cost, plan in steps:
        if time.time() + cost > deadline:
            print(f"[{plan.preset} {','.join(plan.providers)}: skipped, the time budget is spent]")
            continue
        records.append(suite.run(plan))
        print(suite.format_report(records[-1]))
    return records


def write_report(out: Path, env: dict, build_info: str, checks: list, notes: list, records: list) -> Path:
    """OUT/gpu_suite.md: where it ran, the checks, the goals, every table."""
    lines = [f"# GPU suite {env['time']}", "", describe(env), "", f"build: {build_info}", "",
             "## bf16 checks against the reference", "",
             markdown_table(checks, ["provider", "name", "err", "torch_err", "bound", "status"], float_spec=".3g")]
    lines += [f"- {n}" for n in notes]
    rows = [r for rec in records for r in rec["rows"]]
    if rows:
        lines += ["", "## goals (triton)", "", markdown_table(goals(rows), ["goal", "worst", "met"], float_spec=".3g")]
    for rec in records:
        lines += ["", f"## {rec['settings']['preset']}: {', '.join(rec['settings']['providers'])}", "",
                  suite.format_report(rec, markdown=True)]
    path = out / "gpu_suite.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv=None) -> int:
    start = time.time()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("out", help="folder for the tables, JSON and charts (created)")
    p.add_argument("--skip-build", action="store_true", help="use the llm._C already built")
    p.add_argument("--check-only", action="store_true", help="build and check, no timing")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=list(suite.DTYPES))
    p.add_argument("--check-size", default="gpt2", choices=list(op_bench.CHECK_SIZES))
    p.add_argument("--budget-s", type=float, default=BUDGET_S, help="seconds for the whole suite")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_suite: needs a CUDA GPU, and none is visible here; nothing was run.", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    build_info = "skipped (--skip-build)" if args.skip_build else build()
    print(f"== build: {build_info}\n== checks ({args.dtype}, {args.check_size} sizes)")
    env = environment(args.device)
    ok, checks, notes = correctness(args.device, suite.DTYPES[args.dtype], args.check_size)
    print(markdown_table(checks, ["provider", "name", "err", "torch_err", "bound", "status"], float_spec=".3g"))
    for n in notes:
        print("note:", n)
    write_record(out, make_record("gpu_checks", env, checks, settings=vars(args), notes=notes))
    records = []
    if ok and not args.check_only:
        records = timing(args.device, start + args.budget_s)
        for rec in records:
            suite.save(rec, out)
    report = write_report(out, env, build_info, checks, notes, records)
    status = "checks passed" if ok else "checks FAILED: nothing was timed"
    print(f"{status}; {time.time() - start:.0f} s; results in {report} and {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
