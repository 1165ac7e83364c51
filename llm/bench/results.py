"""The one results format: JSON lines, one record per benchmark run, appended to
`<folder>/<benchmark>.jsonl`.

    {"format": "llm-bench/1", "benchmark": "generate",
     "env": {"time": "2026-11-28T16:43:47Z", "commit": ..., "cpu": ..., "versions": {...},
             "native": {"cpu_isa": ...}, ...},            # llm.bench.env.environment()
     "settings": {...},                                   # what was asked: sizes, rounds, ...
     "ceilings": {"read_gbs": ..., "matmul_tflops": ...}, # when measured
     "rows": [{...}, ...],                                # one per measurement
     "notes": ["backend triton: skipped (...)", ...]}

A row holds its own keys (provider, mode, shape, ms, ...); `llm.bench.table` prints any.
Appending rewrites the file through a temporary file and a rename (llm.fileio), so a
crash leaves the old file or the new one, never half a line.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..fileio import atomic_write_text, writing
from .env import source_checkout

FORMAT = "llm-bench/1"
DEFAULT_OUT = "llm-bench-results"  # outside a source checkout, under the working directory


def results_dir(out: str | Path | None = None) -> Path:
    """Where results go: `out` when given, else benchmarks/results/ of the source checkout
    `llm` runs from, else ./llm-bench-results."""
    if out is not None:
        return Path(out)
    root = source_checkout()
    return root / "benchmarks" / "results" if root is not None else Path(DEFAULT_OUT)


def make_record(benchmark: str, env: dict, rows: list[dict], **fields) -> dict:
    """A record of one run: format, benchmark name, env, then `fields` (settings, ceilings,
    notes, ...), then the rows."""
    return {"format": FORMAT, "benchmark": benchmark, "env": env, **fields, "rows": rows}


def append_record(path: str | Path, record: dict) -> Path:
    """Append `record` as one line of the JSONL file `path` (created with its folder)."""
    path = Path(path)
    line = json.dumps(record, default=_plain) + "\n"
    with writing(path):
        old = path.read_text(encoding="utf-8") if path.exists() else ""
        if old and not old.endswith("\n"):
            old += "\n"
        atomic_write_text(path, old + line)
    return path


def write_record(folder: str | Path, record: dict) -> Path:
    """Append `record` to <folder>/<its benchmark>.jsonl; returns that path."""
    return append_record(Path(folder) / f"{record['benchmark']}.jsonl", record)


def read_records(path: str | Path) -> list[dict]:
    """Every record of a results file; ValueError naming the file and line of a line that is
    not a record of this format."""
    path = Path(path)
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
            if not isinstance(record, dict) or record.get("format") != FORMAT:
                raise ValueError(f"{path}:{n}: not a {FORMAT} record (no \"format\": \"{FORMAT}\")")
            records.append(record)
    return records


def file_stamp(env: dict) -> str:
    """The run's time for file names: '2026-11-28T16:43:47Z' -> '20261128T164347Z'."""
    return env["time"].replace("-", "").replace(":", "")


def _plain(value):
    """JSON for what json does not know: torch dtypes, devices, paths, as their text."""
    return str(value).removeprefix("torch.")
