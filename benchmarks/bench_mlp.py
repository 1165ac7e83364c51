"""GPT-2 MLP block proj(gelu(fc(x))): torch (eager) | triton | native, fwd / bwd / fwd+bwd.

    python benchmarks/bench_mlp.py [--quick]
FLOPs: fwd 4 * N * C * H (two matmuls), bwd 2x fwd; TFLOPS and speed-up over the first
provider (eager torch). bf16, N = 8192 rows, H = 4C.
"""

import torch

from common import kernel_benchmark_main, providers, time_ms

MODES = ("fwd", "bwd", "fwd+bwd")


def run(quick=False, dtype=torch.bfloat16):
    rows = []
    widths = (768, 1600) if quick else (768, 1024, 1280, 1600)
    N = 8192
    for C in widths:
        H = 4 * C
        x = torch.randn(N, C, device="cuda", dtype=dtype, requires_grad=True)
        params = [(torch.randn(H, C, device="cuda", dtype=dtype) * 0.02).requires_grad_(),
                  torch.zeros(H, device="cuda", dtype=dtype, requires_grad=True),
                  (torch.randn(C, H, device="cuda", dtype=dtype) * 0.02).requires_grad_(),
                  torch.zeros(C, device="cuda", dtype=dtype, requires_grad=True)]
        dy = torch.randn(N, C, device="cuda", dtype=dtype)
        fwd_flops = 4 * N * C * H
        base = {}
        for name, table in providers().items():
            y = table.mlp(x, *params)
            leaves = (x, *params)
            fns = {
                "fwd": (lambda: table.mlp(x, *params), 1.0),
                "bwd": (lambda: torch.autograd.grad(y, leaves, dy, retain_graph=True), 2.0),
                "fwd+bwd": (lambda: torch.autograd.grad(table.mlp(x, *params), leaves, dy), 3.0),
            }
            for mode in MODES:
                fn, mult = fns[mode]
                ms = time_ms(fn)
                base.setdefault(mode, ms)
                rows.append(dict(op="mlp", provider=name, mode=mode, N=N, C=C, ms=ms,
                                 TFLOPS=mult * fwd_flops / ms / 1e9, speedup=base[mode] / ms))
            del y
    return rows


def main():
    kernel_benchmark_main("mlp", __doc__, run)


if __name__ == "__main__":
    main()
