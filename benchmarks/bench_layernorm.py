"""LayerNorm: torch | triton | native, fwd / bwd / fwd+bwd, GB/s against copy bandwidth.

    python benchmarks/bench_layernorm.py [--quick]
Bytes counted: fwd reads x and writes y; bwd reads x, dy and writes dx (weights and the
per-row statistics are negligible); bf16.
"""

import torch

from common import copy_bandwidth_gbs, kernel_benchmark_main, providers, time_ms

MODES = ("fwd", "bwd", "fwd+bwd")


def run(quick=False, dtype=torch.bfloat16):
    rows = []
    copy = copy_bandwidth_gbs()
    shapes = [(16384, 768), (16384, 1600)] if quick else [(16384, c) for c in (768, 1024, 1600, 2048, 4096, 8192)]
    for N, C in shapes:
        x = torch.randn(N, C, device="cuda", dtype=dtype, requires_grad=True)
        w = torch.randn(C, device="cuda", dtype=dtype, requires_grad=True)
        b = torch.randn(C, device="cuda", dtype=dtype, requires_grad=True)
        dy = torch.randn(N, C, device="cuda", dtype=dtype)
        elem = x.element_size()
        for name, table in providers().items():
            y = table.layer_norm(x, w, b, 1e-5)
            fns = {
                "fwd": (lambda: table.layer_norm(x, w, b, 1e-5), 2),
                "bwd": (lambda: torch.autograd.grad(y, (x, w, b), dy, retain_graph=True), 3),
                "fwd+bwd": (lambda: torch.autograd.grad(table.layer_norm(x, w, b, 1e-5), (x, w, b), dy), 5),
            }
            for mode in MODES:
                fn, passes = fns[mode]
                ms = time_ms(fn)
                gbs = passes * N * C * elem / ms / 1e6
                rows.append(dict(op="layernorm", provider=name, mode=mode, N=N, C=C, ms=ms,
                                 GBps=gbs, of_copy=gbs / copy))
    return rows


def main():
    kernel_benchmark_main("layernorm", __doc__, run, preamble=lambda: print(f"copy bandwidth: {copy_bandwidth_gbs():.0f} GB/s"))


if __name__ == "__main__":
    main()
