"""What the scripts in this folder share, as the sibling module `common` (running `python
benchmarks/<script>.py` puts this folder first on sys.path). The harness itself is the
package's `llm.bench` (it ships, so `llm bench` works from a wheel); this module names its
parts for the scripts and adds the few helpers only scripts need.

  timing      timed, sync (llm.bench.timing; `interleaved` for candidates in rounds)
  set-up      set_threads, interpreter_refusal
  records     environment, RESULTS, append_jsonl / report (the one results format,
              llm.bench.results: a JSON line per run in results/<name>.jsonl)
  output      print_rows, markdown_table
  op scripts  op_parser, run_op_benchmark, op_benchmark_main: `llm bench --op <op>`

Importing it runs nothing: no measurement, no device query, no change to sys.path.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from llm.bench import environment as _environment
from llm.bench import make_record, markdown_table, print_rows, suite, sync, timed, write_record

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

__all__ = ["ROOT", "RESULTS", "append_jsonl", "environment", "interpreter_refusal", "markdown_table",
           "op_benchmark_main", "op_parser", "print_rows", "report", "run_op_benchmark", "set_threads", "sync",
           "timed"]


# -- what can run here -------------------------------------------------------------------------


def interpreter_refusal(name: str, action: str) -> str | None:
    """A message when TRITON_INTERPRET=1 (the CPU interpreter replaces the compiler, so there
    is nothing real to time or compile), else None."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return f"{name} {action}: unset TRITON_INTERPRET"
    return None


def set_threads(n: int | None) -> None:
    """CPU threads for torch, and for any process started from this one."""
    if n:
        torch.set_num_threads(n)
        os.environ["OMP_NUM_THREADS"] = str(n)


# -- records -----------------------------------------------------------------------------------


def environment(device: str | None = None, **extra) -> dict:
    """llm.bench.environment on `device` (default: cuda when visible, else cpu)."""
    return _environment(device or ("cuda" if torch.cuda.is_available() else "cpu"), **extra)


def append_jsonl(name: str, record: dict) -> Path:
    """Append a run to results/<name>.jsonl in the one results format. `record` holds
    "rows" and, under "env" or as top-level keys of environment(), where it ran; any other
    keys are kept as the record's own fields."""
    record = dict(record)
    rows = record.pop("rows", [])
    env = record.pop("env", None)
    if env is None:
        keys = set(environment())
        env = {k: record.pop(k) for k in list(record) if k in keys} or environment()
    return write_record(RESULTS, make_record(name, env, rows, **record))


def report(name: str, rows: list[dict], **fields) -> Path:
    """Print `rows` and append them, with environment() and `fields`, to results/<name>.jsonl."""
    print_rows(rows)
    path = write_record(RESULTS, make_record(name, environment(), rows, **fields))
    print("saved", path)
    return path


# -- op scripts --------------------------------------------------------------------------------


def op_parser(doc: str):
    """The flags of benchmarks/bench_<op>.py: those of `llm bench` but --op."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc)
    parser.add_argument("--quick", action="store_true", help="a size or two (default: every size)")
    parser.add_argument("--backend", action="append", default=[], help=f"providers: {', '.join(suite.PROVIDERS)}")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when visible)")
    parser.add_argument("--dtype", default=None, choices=list(suite.DTYPES))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=str(RESULTS), help="results folder (default benchmarks/results)")
    return parser


def run_op_benchmark(op: str, args) -> int:
    """`llm bench --op <op>` with the flags of `op_parser`: the table, then the record, the
    markdown tables and the chart in args.out."""
    plan = suite.make_plan(args.quick, [op], args.backend, args.device, args.dtype, args.threads)
    record = suite.run(plan)
    print(suite.format_report(record), end="")
    for path in suite.save(record, args.out):
        print("wrote", path)
    return 0


def op_benchmark_main(op: str, doc: str, argv=None) -> int:
    """The whole command line of a benchmarks/bench_<op>.py."""
    return run_op_benchmark(op, op_parser(doc).parse_args(argv))
