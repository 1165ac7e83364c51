"""LayerNorm: torch | triton | native | compile, fwd / bwd / fwd+bwd, GB/s against the read
bandwidth measured in the run (`llm bench --op layer_norm`).

    python benchmarks/bench_layernorm.py [--quick] [--device cuda] [--backend triton]

Bytes counted: fwd reads x and writes y; bwd reads x, dy and writes dx (weights and the
per-row statistics are negligible). bf16 on a GPU, fp32 on a CPU. Sizes and providers:
llm/bench/ops.py.
"""

import sys

from common import op_benchmark_main


def main(argv=None):
    return op_benchmark_main("layer_norm", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
