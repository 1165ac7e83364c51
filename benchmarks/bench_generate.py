"""End-to-end generation: this engine on each backend (the native decoder also with
bfloat16 and int8 weights; on CUDA with and without a CUDA graph) against transformers'
`generate`, same weights, greedy, no early stop (llm/bench/generation.py).

For each (batch, prompt length): time to first token (a 1-token call), decode ms/token
((n-token call - 1-token call) / (n - 1)), tokens/s, GB/s of weights read per decode step
against the read bandwidth measured in the run, speed against the torch reference, the
fraction of tokens equal to the reference's, and peak memory. Engines are interleaved,
round after round; medians are reported.

    python benchmarks/bench_generate.py                 # gpt2 124M shape, B 1/8, prompt 16/512, 128 new
    python benchmarks/bench_generate.py --quick         # B 1, prompt 16, 32 new, 2 rounds
    python benchmarks/bench_generate.py --batches 1 --prompts 16 --new 128 --rounds 3 --backends torch,native,transformers

Appends a record to benchmarks/results/generate.jsonl (or --out) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys

import torch

from common import RESULTS, markdown_table, set_threads
from llm.bench import environment, make_record, measure_ceilings, write_record
from llm.bench.env import describe
from llm.bench.generation import ENGINES, per_engine, run_generation

COLUMNS = {"shape": "case", "engine": "engine", "prefill_ms": "prefill ms", "decode_ms": "decode ms/token",
           "tokens_per_s": "tokens/s", "GBps": "GB/s", "of_ceiling": "of read bandwidth", "vs_ref": "vs reference",
           "same_tokens": "same tokens", "peak_MB": "peak MB"}


def _ints(text: str | None):
    return [int(x) for x in text.split(",")] if text else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one short case (default: the full set)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="default: float32 on CPU, bfloat16 on CUDA")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--batches", default=None, help="comma-separated batch sizes")
    p.add_argument("--prompts", default=None, help="comma-separated prompt lengths")
    p.add_argument("--new", type=int, default=None, help="new tokens per call")
    p.add_argument("--rounds", "--reps", type=int, default=None, help="interleaved rounds (default: 3, --quick 2)")
    p.add_argument("--backends", default=",".join(ENGINES), help=f"engines to run (default {','.join(ENGINES)})")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    set_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    env = environment(device)
    ceilings = measure_ceilings(device)
    notes = []
    rows = run_generation("quick" if args.quick else "full", device, dtype, args.backends.split(","), ceilings,
                          notes, lambda text: print(text, file=sys.stderr, flush=True), _ints(args.batches),
                          _ints(args.prompts), args.new, args.rounds)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    settings["command"] = " ".join(["python benchmarks/bench_generate.py", *(sys.argv[1:] if argv is None else argv)])
    path = write_record(args.out, make_record("generate", env, rows, settings=settings, ceilings=ceilings.as_dict(),
                                              notes=notes))
    print(describe(env))
    print(f"read bandwidth {ceilings.read_gbs:.1f} GB/s; model {rows[0]['model']}, {rows[0]['dtype']}")
    print(markdown_table(per_engine(rows), list(COLUMNS), COLUMNS, align="llrrrrrrrr",
                         specs={"of_ceiling": ".0%", "vs_ref": ".2f", "same_tokens": ".0%", "peak_MB": ".0f",
                                "prefill_ms": ".1f", "tokens_per_s": ".1f", "GBps": ".1f"}))
    for n in notes:
        print("note:", n)
    print(f"appended to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
