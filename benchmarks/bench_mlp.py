"""GPT-2 MLP block proj(gelu(fc(x))): torch (eager) | triton | native | compile, fwd / bwd /
fwd+bwd (`llm bench --op mlp`).

    python benchmarks/bench_mlp.py [--quick] [--device cuda] [--backend triton]

FLOPs: fwd 4 * N * C * H (two matmuls, H = 4C), bwd 2x fwd: TFLOPS against the matmul rate
measured in the run; with at most 16 rows (decoding) GB/s of the weights read against the
read bandwidth. Sizes and providers: llm/bench/ops.py.
"""

import sys

from common import op_benchmark_main


def main(argv=None):
    return op_benchmark_main("mlp", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
