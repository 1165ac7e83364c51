"""`llm bench`: every path against the reference on this machine, in one run.

A run measures the machine's ceilings (read bandwidth, matmul rate), then the op
benchmarks (`ops`), end-to-end generation (`generation`) and a training step
(`training`), each filtered by op, provider and device; it prints one table per part and
saves a record (`results`), a PNG chart (`chart`) and the tables as markdown.

  quick  sized for about a minute on 2 quiet CPU cores: one or two sizes per op, GPT-2
         124M generating 32 tokens, a training step of the `small` preset; torch.compile
         left out (its compile time alone is minutes) unless asked for (--backend compile)
  full   the sizes of the GPU kernels' tables, batches 1 and 8, prompts 16 and 512, 128
         new tokens, and every provider
  smoke  tiny sizes: checks that everything runs (the test suite's size)
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..fileio import atomic_write_text
from . import generation, ops, training
from .ceilings import measure_ceilings
from .chart import write_chart
from .env import describe, environment
from .results import file_stamp, make_record, write_record
from .table import markdown_table, text_table

PARTS = ops.OPS + ("generate", "train")
PROVIDERS = ("torch", "triton", "native", "compile", "transformers")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# preset -> (rounds, timed seconds per candidate and case)
EFFORT = {"smoke": (1, 0.0), "quick": (3, 0.15), "full": (5, 0.5)}


@dataclass
class Plan:
    preset: str = "quick"
    device: str = "cpu"
    dtype: str = "float32"
    parts: list = field(default_factory=lambda: list(PARTS))
    providers: list = field(default_factory=lambda: [p for p in PROVIDERS if p != "compile"])
    threads: int | None = None


def _names(given, valid, what: str) -> list:
    """Names from repeated / comma-separated flags, each checked against `valid`."""
    names = [n.strip() for g in given for n in g.split(",") if n.strip()]
    bad = [n for n in names if n not in valid]
    if bad:
        raise ValueError(f"unknown {what} {', '.join(map(repr, bad))}; valid: {', '.join(valid)}")
    return list(dict.fromkeys(names))


def make_plan(quick: bool = False, parts=(), providers=(), device: str | None = None,
              dtype: str | None = None, threads: int | None = None, preset: str | None = None) -> Plan:
    """The run's plan from command-line values (ValueError naming a bad one). The reference
    (`torch`) is always measured: every other figure is a ratio to it."""
    preset = preset or ("quick" if quick else "full")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    chosen = _names(providers, PROVIDERS, "backend")
    if not chosen:
        chosen = [p for p in PROVIDERS if preset == "full" or p != "compile"]
    return Plan(preset=preset, device=device, dtype=dtype, parts=_names(parts, PARTS, "op") or list(PARTS),
                providers=list(dict.fromkeys(["torch", *chosen])), threads=threads)


def plan_command(plan: Plan) -> str:
    """The `llm bench` command line that makes `plan`."""
    default = make_plan(plan.preset == "quick", device=plan.device) if plan.preset != "smoke" else None
    words = ["python -m llm bench"] + (["--quick"] if plan.preset == "quick" else [])
    if default is None or plan.parts != default.parts:
        words.append("--op " + ",".join(plan.parts))
    if default is None or plan.providers != default.providers:
        words.append("--backend " + ",".join(p for p in plan.providers if p != "torch"))
    if default is None or plan.device != default.device:
        words.append(f"--device {plan.device}")
    if default is None or plan.dtype != default.dtype:
        words.append(f"--dtype {plan.dtype}")
    if plan.threads:
        words.append(f"--threads {plan.threads}")
    return " ".join(words)


def _progress_bar(plan: Plan):
    """(callback(text) called before each case, close()): a tqdm bar on stderr."""
    from tqdm import tqdm

    n = sum(len(ops.sizes(op, plan.preset, plan.device)) for op in plan.parts if op in ops.OPS)
    if "generate" in plan.parts:
        _, batches, prompts, _, _ = generation.SIZES[plan.preset]
        n += len(batches) * len(prompts)
    n += "train" in plan.parts
    bar = tqdm(total=n, unit="case", file=sys.stderr, dynamic_ncols=True, leave=False)
    state = {"started": False}

    def progress(text: str) -> None:
        if state["started"]:
            bar.update(1)
        state["started"] = True
        bar.set_description_str(text)

    def close() -> None:
        if state["started"]:
            bar.update(1)
        bar.close()

    return progress, close


def run(plan: Plan, show_progress: bool = True) -> dict:
    """Measure everything in `plan`; returns the run's record (not yet saved)."""
    if plan.threads:
        torch.set_num_threads(plan.threads)
    device, dtype = torch.device(plan.device), DTYPES[plan.dtype]
    env = environment(device)
    ceilings = measure_ceilings(device, dtype)
    rounds, budget = EFFORT[plan.preset]
    notes, checks, rows = [], [], []
    progress, close = _progress_bar(plan) if show_progress else (None, lambda: None)
    try:
        op_parts = [p for p in plan.parts if p in ops.OPS]
        if op_parts:
            rows += ops.run_ops(op_parts, plan.preset, device, dtype, plan.providers, ceilings, rounds,
                                budget, notes, checks, progress)
        if "generate" in plan.parts:
            rows += generation.run_generation(plan.preset, device, dtype if device.type == "cuda" else None,
                                              plan.providers, ceilings, notes, progress)
        if "train" in plan.parts:
            rows += training.run_training(plan.preset, device, plan.providers, ceilings, notes, progress,
                                          rounds=max(rounds, 2))
    finally:
        close()
    return make_record("bench", env, rows, settings=dict(asdict(plan), command=plan_command(plan)),
                       ceilings=ceilings.as_dict(),
                       ceilings_after=measure_ceilings(device, dtype).as_dict(), checks=checks,
                       notes=list(dict.fromkeys(notes)))


# -- the report ------------------------------------------------------------------------------

# part -> (columns, headings)
COLUMNS = {
    "op": ["op", "mode", "shape", "provider", "ms", "spread", "vs_ref", "GBps", "TFLOPS", "of_ceiling", "peak_MB"],
    "generate": ["mode", "shape", "provider", "ms", "spread", "vs_ref", "tokens_per_s", "GBps", "of_ceiling",
                 "peak_MB", "same_tokens"],
    "train": ["shape", "dtype", "provider", "ms", "spread", "vs_ref", "tokens_per_s", "TFLOPS", "of_ceiling",
              "peak_MB"],
}
TITLES = {"ms": "ms", "spread": "+-", "vs_ref": "vs ref", "GBps": "GB/s", "of_ceiling": "% ceiling",
          "peak_MB": "peak MB", "tokens_per_s": "tokens/s", "same_tokens": "same tokens"}
HEADINGS = {"op": "ops (ms per call; vs ref > 1: faster than the torch reference)",
            "generate": "generation (prefill: ms per call; decode: ms per token)",
            "train": "training step"}


def _display(row: dict) -> dict:
    """A row for printing: spread and of_ceiling as percentages, ratios with an x."""
    out = dict(row)
    if row.get("spread") is not None:
        out["spread"] = f"{100 * row['spread']:.0f}%"
    if row.get("of_ceiling") is not None:
        out["of_ceiling"] = f"{100 * row['of_ceiling']:.0f}%"
    if row.get("vs_ref") is not None:
        out["vs_ref"] = f"{row['vs_ref']:.2f}x"
    return out


def format_report(record: dict, markdown: bool = False) -> str:
    """The run's tables (text, or markdown), headed by the machine, ceilings and notes."""
    c = record["ceilings"]
    head = [describe(record["env"]),
            f"ceilings: read {c['read_gbs']:.1f} GB/s, matmul {c['matmul_tflops']:.3g} TFLOPS ({c['dtype']})"]
    lines = [head[0], "", head[1]] if markdown else head  # markdown: a paragraph each
    for part, cols in COLUMNS.items():
        rows = [_display(r) for r in record["rows"] if r.get("benchmark") == part]
        if not rows:
            continue
        if markdown:
            align = "l" * (cols.index("ms")) + "r" * (len(cols) - cols.index("ms"))
            table = markdown_table(rows, cols, TITLES, align=align, float_spec=".3g")
            lines += ["", f"**{HEADINGS[part]}**", "", table]
        else:
            lines += ["", f"== {HEADINGS[part]}", text_table(rows, cols, TITLES)]
    checks = record.get("checks", [])
    failed = [ch for ch in checks if ch["status"] != "ok"]
    bullet = "- " if markdown else "note: "
    lines += ["", f"checks against the reference: {len(checks) - len(failed)} ok, {len(failed)} failed"]
    if markdown and record.get("notes"):
        lines.append("")
    lines += [f"{bullet}{n}" for n in record.get("notes", [])]
    return "\n".join(lines) + "\n"


def save(record: dict, folder, chart: bool = True) -> list:
    """Append the record to <folder>/bench.jsonl; write bench-<device>-<time>.md (the tables)
    and, with `chart`, .png beside it. Returns the paths written."""
    folder = Path(folder)
    paths = [write_record(folder, record)]
    stem = folder / f"bench-{record['env']['device']}-{file_stamp(record['env'])}"
    atomic_write_text(stem.with_suffix(".md"), format_report(record, markdown=True))
    paths.append(stem.with_suffix(".md"))
    if chart:
        paths.append(write_chart(stem.with_suffix(".png"), record["rows"], describe(record["env"])))
    return paths
