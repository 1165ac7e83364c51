"""Causal attention: torch (SDPA) | triton | native, fwd / bwd / fwd+bwd, TFLOPS.

    python benchmarks/bench_attention.py [--quick]
FLOPs: fwd 4 * B * nh * T^2 * hs, halved for causal; bwd 2.5x fwd; bf16; B * T = 16384
tokens, nh * hs = 2048.
"""

import torch

from common import kernel_benchmark_main, providers, time_ms

MODES = ("fwd", "bwd", "fwd+bwd")


def run(quick=False, dtype=torch.bfloat16):
    rows = []
    lengths = (1024, 4096) if quick else (1024, 2048, 4096, 8192)
    for hs in (64, 128):
        for T in lengths:
            B, nh = max(1, 16384 // T), 2048 // hs
            q, k, v = (torch.randn(B, nh, T, hs, device="cuda", dtype=dtype, requires_grad=True)
                       for _ in range(3))
            do = torch.randn_like(q)
            fwd_flops = 4 * B * nh * T * T * hs * 0.5
            base = {}
            for name, table in providers().items():
                o = table.attention(q, k, v, None, 0.0)
                fns = {
                    "fwd": (lambda: table.attention(q, k, v, None, 0.0), 1.0),
                    "bwd": (lambda: torch.autograd.grad(o, (q, k, v), do, retain_graph=True), 2.5),
                    "fwd+bwd": (lambda: torch.autograd.grad(table.attention(q, k, v, None, 0.0),
                                                            (q, k, v), do), 3.5),
                }
                for mode in MODES:
                    fn, mult = fns[mode]
                    ms = time_ms(fn)
                    tflops = mult * fwd_flops / ms / 1e9
                    base.setdefault(mode, tflops)
                    rows.append(dict(op="attention", provider=name, mode=mode, B=B, nh=nh, T=T,
                                     hs=hs, ms=ms, TFLOPS=tflops, vs_torch=tflops / base[mode]))
                del o
    return rows


def main():
    kernel_benchmark_main("attention", __doc__, run)


if __name__ == "__main__":
    main()
