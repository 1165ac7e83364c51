"""Write the README's measured tables from the results files, so every number there comes
from a recorded run.

    python benchmarks/readme_tables.py            # rewrite the tables in README.md
    python benchmarks/readme_tables.py --check    # exit 1 when README.md is not up to date

README.md marks each table with `<!-- results: VIEW -->` ... `<!-- /results -->`; the
script replaces what lies between with the latest record of results/ that VIEW selects,
headed by where and when it was measured and the command that measured it.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from pathlib import Path

from common import RESULTS, ROOT
from bench_cpu_isa import family_table
from bench_interop import table as interop_table
from llm.bench import markdown_table, read_records
from llm.bench.generation import per_engine
from llm.bench.suite import format_report
from llm.fileio import atomic_write_text

MARK = re.compile(r"(<!-- results: ([\w-]+) -->\n)(.*?)(<!-- /results -->)", re.S)


def _has(record: dict, **match) -> bool:
    return any(all(r.get(k) == v for k, v in match.items()) for r in record["rows"])


def _cpu(record: dict) -> bool:
    return record["env"].get("device", "cpu") == "cpu"


def _bench_quick(rec):
    return format_report(rec, markdown=True)


def _generation(rec):
    cols = {"shape": "case", "engine": "engine", "prefill_ms": "prefill ms", "decode_ms": "decode ms/token",
            "tokens_per_s": "decode tokens/s", "vs_ref": "decode vs reference"}
    return markdown_table(per_engine(rec["rows"]), list(cols), cols, align="llrrrr",
                          specs={"prefill_ms": ".1f", "tokens_per_s": ".1f"})


def _native_decode_run(rec) -> bool:
    """A batch-1 decode of 128 tokens with the native int8 engine and transformers."""
    return (_has(rec, provider="llm[native int8]", mode="decode", shape="B1 T16 +128")
            and _has(rec, provider="transformers", mode="decode", shape="B1 T16 +128"))


def _native_decode(rec):
    rows = [dict(r, engine=r["provider"]) for r in rec["rows"] if r["mode"] == "decode" and r["shape"] == "B1 T16 +128"]
    cols = {"engine": "engine", "ms": "ms/token", "tokens_per_s": "tokens/s", "weight_MB": "weights read/token (MB)",
            "GBps": "GB/s", "of_ceiling": "of read bandwidth", "vs_ref": "vs torch reference"}
    return markdown_table(rows, list(cols), cols, align="lrrrrrr",
                          specs={"tokens_per_s": ".1f", "weight_MB": ".0f", "GBps": ".1f", "of_ceiling": ".0%"})


def _train(rec):
    cols = {"shape": "shape", "dtype": "dtype", "impl": "impl", "tokens_per_s": "tokens/s", "step_ms": "step ms",
            "peak_mem_MB": "peak MB"}
    return markdown_table(rec["rows"], list(cols), cols, align="lllrrr", float_spec=".0f",
                          specs={"tokens_per_s": ".1f"})


def _interop(rec):
    return interop_table(rec["rows"])


def _cpu_isa(fam: str):
    def table(rec):
        s, rows = rec["settings"], rec["rows"]
        reads = {r["format"]: r["read_GBps"] for r in rows if r["case"] == "decode B1" and "read_GBps" in r}
        mm = statistics.median(r["matmul_GFLOPs"] for r in rows)
        held = ", ".join(f"{k}={v}" for k, v in s.get("held_to", {}).items()) or "none"
        return (f"{family_table(rows, fam)}\n\nIn the same rounds: reading the weights' bytes "
                + ", ".join(f"{f}: {v:.1f} GB/s" for f, v in reads.items())
                + f"; fp32 matmul {mm:.0f} GFLOP/s (libraries held to: {held}). Median of {s['rounds']} "
                f"interleaved rounds; 1-min load average {rec['env'].get('load_1min', '?')} at the start.")
    return table


def _native_quality(rec):
    cols = {"engine": "engine", "perplexity": "perplexity", "ppl_vs_fp32": "vs fp32", "max_abs_err": "max logit error",
            "same_argmax": "same top-1"}
    s = rec["settings"]
    return (markdown_table(rec["rows"], list(cols), cols, align="lrrrr",
                           specs={"ppl_vs_fp32": "+.3%", "max_abs_err": ".4f", "same_argmax": ".2%"})
            + f"\n\n{s['windows']} held-out windows of {s['context']} tokens; logits up to "
              f"{s['logits_max']:.1f} in magnitude.")


def _serve(rec):
    cols = {"concurrency": "concurrency", "server": "server", "requests": "requests", "tok_s": "tok/s",
            "speedup": "vs one at a time", "ttft_p50_s": "TTFT p50 s", "ttft_p99_s": "TTFT p99 s",
            "itl_p50_ms": "ITL p50 ms", "itl_p99_ms": "ITL p99 ms", "occupancy": "rows/step"}
    table = markdown_table(rec["rows"], list(cols), cols, align="rlrrrrrrrr",
                           specs={"tok_s": ".1f", "itl_p50_ms": ".0f", "itl_p99_ms": ".0f", "occupancy": ".1f"})
    s = rec["settings"]
    return (f"{table}\n\nPrompts of {s['min_prompt']}-{s['max_prompt']} tokens, {s['new_tokens']} new tokens, "
            f"prefill chunk {s['prefill_chunk']}; 1-min load average {rec['env'].get('load_1min', '?')} "
            f"when the run started.")


# view -> (results file, which records, renderer, the command that makes such a record)
VIEWS = {
    "bench-cpu-quick": ("bench.jsonl", lambda r: _cpu(r) and r["settings"]["preset"] == "quick",
                        _bench_quick, "python -m llm bench --quick"),
    "generate-cpu": ("generate.jsonl", lambda r: _cpu(r) and _has(r, mode="prefill", shape="B8 T512 +128"),
                     _generation, "python benchmarks/bench_generate.py"),
    "native-decode-cpu": ("generate.jsonl", lambda r: _cpu(r) and _native_decode_run(r), _native_decode,
                          "python benchmarks/bench_generate.py --batches 1 --prompts 16 --new 128"),
    "train-cpu": ("train.jsonl", lambda r: _cpu(r) and _has(r, shape="gpt2"), _train,
                  "python benchmarks/bench_train.py --rounds 3"),
    "interop-cpu": ("interop.jsonl", lambda r: _cpu(r) and not r["settings"]["quick"], _interop,
                    "python benchmarks/bench_interop.py"),
    "cpu-isa-avx2": ("cpu_isa.jsonl", lambda r: _has(r, isa="avx2"), _cpu_isa("avx2"),
                     "python benchmarks/bench_cpu_isa.py"),
    "cpu-isa-avx512": ("cpu_isa.jsonl", lambda r: _has(r, isa="avx512_bf16"), _cpu_isa("avx512"),
                       "python benchmarks/bench_cpu_isa.py"),
    "native-quality": ("native_quality.jsonl", lambda r: True, _native_quality,
                       "python benchmarks/bench_native_quality.py --model runs/demo"),
    "serve-cpu": ("serve.jsonl", lambda r: _cpu(r) and r["settings"]["prefill_chunk"] == 256, _serve,
                  "python benchmarks/bench_serve.py"),
    "serve-cpu-chunk32": ("serve.jsonl", lambda r: _cpu(r) and r["settings"]["prefill_chunk"] == 32, _serve,
                          "python benchmarks/bench_serve.py --levels 1 16 --prefill-chunk 32"),
}


def latest(view: str, results: Path = RESULTS) -> dict:
    """The newest record of the view's file that the view selects; ValueError when none does."""
    name, select, _, _ = VIEWS[view]
    records = [r for r in read_records(results / name) if select(r)]
    if not records:
        raise ValueError(f"no record in {results / name} for the README table {view!r}")
    return max(records, key=lambda r: r["env"]["time"])


MERGED = ("bench_decode.py", "bench_native_decode.py")  # scripts whose records bench_generate.py now makes


def command_of(rec: dict, default: str) -> str:
    """The command that made `rec`: recorded in its settings, else the view's own."""
    settings = rec.get("settings", {})
    if settings.get("command"):
        return settings["command"]
    script = settings.get("script")
    if script in MERGED:
        return f"python benchmarks/{script} (since merged into bench_generate.py)"
    return default


def render(view: str, results: Path = RESULTS) -> str:
    """The view's block: where and when it was measured, then its table."""
    rec = latest(view, results)
    _, _, table, default = VIEWS[view]
    command = command_of(rec, default)
    env = rec["env"]
    where = env.get("gpu") or f"{env.get('cpu', env.get('arch', 'CPU'))}, {env.get('threads', '?')} threads"
    commit = env.get("commit") or "no commit"
    source = f"`benchmarks/results/{VIEWS[view][0]}`, record of {env['time']}"
    head = f"_{where}, torch {env.get('torch', '?')}, commit {commit}; `{command}`; {source}._"
    if view == "bench-cpu-quick":  # format_report heads its own tables
        return f"_`{command}`; {source}._\n\n{table(rec)}"
    return f"{head}\n\n{table(rec)}\n"


def update(text: str, results: Path = RESULTS) -> str:
    """`text` with every marked table replaced by its view's latest rendering."""
    def block(m):
        if m.group(2) not in VIEWS:
            raise ValueError(f"README marks an unknown results view {m.group(2)!r}; known: {', '.join(VIEWS)}")
        return m.group(1) + render(m.group(2), results) + m.group(4)
    return MARK.sub(block, text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if README.md's tables differ from the results")
    p.add_argument("--readme", default=str(ROOT / "README.md"))
    args = p.parse_args(argv)
    path = Path(args.readme)
    text = path.read_text(encoding="utf-8")
    new = update(text)
    if args.check:
        stale = new != text
        print(f"{path}: tables {'differ from the results files' if stale else 'up to date'}")
        return 1 if stale else 0
    if new != text:
        atomic_write_text(path, new)
    print(f"{path}: {len(MARK.findall(text))} tables written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
