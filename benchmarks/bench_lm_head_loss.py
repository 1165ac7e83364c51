"""lm_head + cross-entropy: torch (unfused logits) | triton (chunked, fused) | compile,
time and peak memory (`llm bench --op lm_head_loss`); `--memory-cpu` measures the peak
memory of both paths on the CPU.

    python benchmarks/bench_lm_head_loss.py [--quick] [--device cuda]
    python benchmarks/bench_lm_head_loss.py --memory-cpu [--rows 512]

Timed: FLOPs 2 N C V (fwd), bwd 2x, V = 50257 (GPT-2), bf16 on a GPU; peak memory is what
one call adds (CUDA allocator, or resident set). --memory-cpu: each path runs
loss.backward() in a fresh process (the triton path through TRITON_INTERPRET=1) and
reports the growth of the peak resident set (ru_maxrss) over the same process's peak
before the call; fp32. Results: results/bench.jsonl, or results/lm_head_loss_memory_cpu.jsonl.
"""

import argparse
import json
import os
import resource
import subprocess
import sys

import torch

from common import op_parser, report, run_op_benchmark

V, C = 50257, 768


def _cpu_child(provider: str, rows: int) -> None:
    """Runs in a fresh process: peak-RSS growth of one fwd+bwd of `provider`."""
    from llm.ops import get_ops

    table = get_ops(provider)
    torch.manual_seed(0)
    # filled in place, so no freed temporary inflates the peak measured before the call
    h = torch.empty(rows, C).normal_().requires_grad_()
    w = torch.empty(V, C).normal_(0.0, 0.02).requires_grad_()
    targets = torch.randint(0, V, (rows,))
    small = torch.randint(0, 7, (3,))  # warm up code paths on a tiny problem
    table.lm_head_loss(torch.randn(3, C, requires_grad=True), w[:7].detach().clone().requires_grad_(),
                       small, -100).backward()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    loss = table.lm_head_loss(h, w, targets, -100)
    loss.backward()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(dict(provider=provider, rows=rows, peak_growth_MiB=(after - before) / 1024,
                          loss=loss.item())))


def memory_cpu(rows: int) -> list[dict]:
    out = []
    for provider in ("torch", "triton"):
        env = dict(os.environ, TRITON_INTERPRET="1")
        proc = subprocess.run([sys.executable, __file__, "--cpu-child", provider, "--rows", str(rows)],
                              env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
        out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    logits_mib = rows * V * 4 / 2**20
    print(f"fp32 logits [{rows}, {V}] alone: {logits_mib:.0f} MiB; weight gradient [{V}, {C}]: "
          f"{V * C * 4 / 2**20:.0f} MiB")
    return out


def main(argv=None):
    parser = op_parser(__doc__)
    parser.add_argument("--memory-cpu", action="store_true", help="peak memory of both paths on the CPU")
    parser.add_argument("--rows", type=int, default=512, help="rows of h for --memory-cpu (default 512)")
    parser.add_argument("--cpu-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cpu_child:
        _cpu_child(args.cpu_child, args.rows)
        return 0
    if args.memory_cpu:
        report("lm_head_loss_memory_cpu", memory_cpu(args.rows), settings=dict(rows=args.rows, dtype="float32"))
        return 0
    return run_op_benchmark("lm_head_loss", args)


if __name__ == "__main__":
    sys.exit(main())
