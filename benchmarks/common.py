"""The one benchmark harness every script in this folder imports (as the sibling module
`common`: running `python benchmarks/<script>.py` puts this folder first on sys.path).

  timing      time_ms (CUDA events, median of many runs), timed (wall clock, synced), sync
  bandwidth   copy_bandwidth_gbs (GPU device-to-device), read_bandwidth_gbs (CPU reads)
  providers   providers (torch | triton | native, those that load here), require_cuda
  weights     llm_from_hf (transformers' GPT2LMHeadModel -> llm.GPT, same weights)
  (correctness checks before timing: llm.testing, the rule the tests use)
  records     environment (for appended JSONL/CSV records), machine (for per-run JSON
              files), git_commit, set_threads
  output      save_json (a new file per run), append_jsonl, print_rows, markdown_table

Importing it runs nothing: no measurement, no device query, no change to sys.path.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


# -- what can run here -------------------------------------------------------------------------


def interpreter_refusal(name: str, action: str) -> str | None:
    """A message when TRITON_INTERPRET=1 (the CPU interpreter replaces the compiler, so there
    is nothing real to time or compile), else None."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return f"{name} {action}: unset TRITON_INTERPRET"
    return None


def require_cuda(name: str) -> bool:
    """True when a CUDA GPU is visible and Triton compiles for it; otherwise says why."""
    if not torch.cuda.is_available():
        print(f"{name}: needs a CUDA GPU, and none is visible here; nothing was measured.")
        return False
    refusal = interpreter_refusal(name, "times compiled kernels, not the CPU interpreter")
    if refusal:
        print(refusal)
        return False
    return True


def providers(wanted=("torch", "triton", "native")) -> dict:
    """name -> OpTable for each provider that can run here."""
    from llm.ops import BackendUnavailableError, get_ops

    out = {}
    for name in wanted:
        try:
            out[name] = get_ops(name)
        except BackendUnavailableError as e:
            print(f"[provider {name} skipped: {e}]")
    return out


def set_threads(n: int | None) -> None:
    """CPU threads for torch, and for any process started from this one."""
    if n:
        torch.set_num_threads(n)
        os.environ["OMP_NUM_THREADS"] = str(n)


# -- timing ------------------------------------------------------------------------------------


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device="cpu") -> tuple[float, object]:
    """(seconds, result) of one call of fn(), the device synchronized on both sides."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def time_ms(fn, warmup: int = 5, rep: int = 25) -> float:
    """Median milliseconds of fn() over `rep` runs, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rep):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


_COPY_GBS = None


def copy_bandwidth_gbs(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth (read + write bytes per second), measured once."""
    global _COPY_GBS
    if _COPY_GBS is None:
        src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
        dst = torch.empty_like(src)
        ms = time_ms(lambda: dst.copy_(src), warmup=3, rep=10)
        _COPY_GBS = 2 * nbytes / ms / 1e6
        del src, dst
    return _COPY_GBS


def read_bandwidth_gbs(buf: torch.Tensor, repeats: int = 5) -> float:
    """Best-of-N GB/s of torch.sum over `buf` (a read-dominated stream); pass a buffer well
    beyond the caches, allocated once, so the probe measures reads and not allocation."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        buf.sum()
        best = min(best, time.perf_counter() - t0)
    return buf.nbytes / best / 1e9


# -- weights -----------------------------------------------------------------------------------


def llm_from_hf(hf, backend: str = "torch"):
    """An llm.GPT holding the weights of transformers' GPT2LMHeadModel `hf`, mapped by the
    product's own loader (llm.weights), in float32; cast it afterwards if needed."""
    from llm import GPT, GPTConfig
    from llm.weights import hf_to_state_dict

    model = GPT(GPTConfig.from_hf_dict(hf.config.to_dict(), "transformers"), backend=backend)
    # strict=False: lm_head is tied to wte and loaded through it
    model.load_state_dict(hf_to_state_dict(hf.state_dict(), model, "transformers"), strict=False)
    return model


# -- records -----------------------------------------------------------------------------------


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=ROOT).stdout.strip()
    except OSError:
        return ""


def utc_time() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def environment(device: str | None = None, **extra) -> dict:
    """The record appended next to each run's rows (JSONL/CSV). The keys stay fixed per
    script, since CSV columns follow them: `device` only when given, `gpu` when the run is
    on CUDA (or, without a device named, when one is visible), then `extra` in order."""
    env = {"time": utc_time(), "commit": git_commit(), "machine": platform.machine(),
           "cpu": cpu_name(), "threads": torch.get_num_threads(),
           "python": platform.python_version(), "torch": torch.__version__}
    if device is not None:
        env["device"] = device
    on_cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    if on_cuda:
        env["gpu"] = torch.cuda.get_device_name()
    env.update(extra)
    return env


def machine() -> dict:
    """The short record at the head of each per-run JSON file (save_json)."""
    info = dict(python=platform.python_version(), torch=torch.__version__, host=platform.node())
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    commit = git_commit()
    if commit:
        info["commit"] = commit
    return info


# -- output ------------------------------------------------------------------------------------


def save_json(name: str, **fields) -> Path:
    """results/<name>-<time>.json holding {"machine": machine(), **fields}; returns the path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(dict(machine=machine(), **fields), indent=1))
    return path


def append_jsonl(name: str, record: dict) -> Path:
    """Append one record as a line of results/<name>.jsonl; returns the path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.jsonl"
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
    return path


def print_rows(rows: list[dict]) -> None:
    """Rows as right-aligned columns, numbers to 3 significant digits."""
    if not rows:
        return
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(_short(r.get(k))) for r in rows)) for k in keys}
    print("  ".join(k.rjust(widths[k]) for k in keys))
    for r in rows:
        print("  ".join(_short(r.get(k)).rjust(widths[k]) for k in keys))


def report(name: str, rows: list[dict]) -> None:
    """Print `rows` and save them as results/<name>_<time>.json."""
    print_rows(rows)
    print("saved", save_json(name, rows=rows))


def kernel_benchmark_main(name: str, doc: str, run, preamble=None) -> None:
    """Command line of a GPU kernel benchmark: `--quick`, refuse without CUDA, run, report."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes")
    args = parser.parse_args()
    if not require_cuda(f"bench_{name}"):
        return
    if preamble is not None:
        preamble()
    report(name, run(args.quick))


def markdown_table(rows: list[dict], cols: list[str], titles: dict | None = None,
                   align: str | None = None, float_spec: str = ".2f",
                   specs: dict | None = None) -> str:
    """A markdown table of `cols` (keys of `rows`). titles: key -> column title (default the
    key); align: one letter per column, l or r (default plain `---`); floats are formatted
    with specs[key], else `float_spec` ("" prints them as str does)."""
    titles, specs = titles or {}, specs or {}
    seps = ["---:" if a == "r" else "---" for a in align] if align else ["---"] * len(cols)
    lines = ["| " + " | ".join(titles.get(c, c) for c in cols) + " |", "|" + "".join(s + "|" for s in seps)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(format(v, specs.get(c, float_spec)) if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)
