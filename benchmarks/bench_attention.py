"""Causal attention: torch (SDPA) | triton | native | compile, fwd / bwd / fwd+bwd, TFLOPS
against the matmul rate measured in the run (`llm bench --op attention`).

    python benchmarks/bench_attention.py [--quick] [--device cuda] [--backend triton]

FLOPs: fwd 4 * B * nh * T^2 * hs, halved for causal; bwd 2.5x fwd. On a GPU, bf16 with
B * T = 16384 tokens and nh * hs = 2048. Sizes and providers: llm/bench/ops.py.
"""

import sys

from common import op_benchmark_main


def main(argv=None):
    return op_benchmark_main("attention", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
