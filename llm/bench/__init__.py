"""Benchmarking: one harness for `llm bench`, the scripts in benchmarks/ and the
pytest-benchmark suites.

  timing      Timing (median, spread), interleaved (candidates in alternating rounds;
              CUDA events on a GPU), measure, timed, sync
  ceilings    what the machine can do, measured in the same run: read bandwidth, matmul rate
  memory      PeakMemory: what a block adds at its peak (CUDA allocator, or resident set)
  env         environment(): time, machine, versions, commit, native ISA / GPU path
  results     the one results format: JSON lines, a record per run (make_record,
              write_record, read_records), results_dir
  table       text_table, print_rows, markdown_table
  chart       write_chart: the PNG of a run (speed vs the reference, % of ceiling)
  ops         op benchmarks: cases, providers (torch | triton | native | compile), modes
              fwd | bwd | fwd+bwd, correctness against the reference (llm.testing) first
  generation  end-to-end generation: engines (each backend, native weight formats,
              transformers, CTranslate2 when installed), prefill and decode
  training    training step tokens/s and peak memory, each backend and transformers
  suite       `llm bench`: sizes, filters, the run, its table, JSON and chart

Importing it runs nothing and imports neither triton nor the C++ extension.
"""

from .ceilings import Ceilings, matmul_tflops, measure_ceilings, read_bandwidth_gbs
from .env import environment, git_commit, source_checkout, utc_now
from .memory import PeakMemory, release_memory
from .results import FORMAT, append_record, make_record, read_records, results_dir, write_record
from .table import markdown_table, print_rows, text_table
from .timing import Timing, interleaved, measure, sync, timed

__all__ = [
    "Ceilings", "matmul_tflops", "measure_ceilings", "read_bandwidth_gbs",
    "environment", "git_commit", "source_checkout", "utc_now",
    "PeakMemory", "release_memory",
    "FORMAT", "append_record", "make_record", "read_records", "results_dir", "write_record",
    "markdown_table", "print_rows", "text_table",
    "Timing", "interleaved", "measure", "sync", "timed",
]
