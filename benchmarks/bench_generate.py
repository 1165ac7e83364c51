"""End-to-end generation speed: this engine (each backend that runs here) against
transformers' `generate`, same weights, same settings, greedy, no early stop.

For each (batch, prompt length) it measures a 1-token call (prefill, i.e. time to first
token) and a `--new`-token call; decode ms/token = (full - prefill) / (new - 1), tokens/s
= batch * new / full. Engines are interleaved inside each repetition; the table shows the
best repetition (on a shared machine the least disturbed one), the JSON also every
repetition's times. On CUDA this engine runs twice: with the decode step captured in a CUDA graph
and without.

    python benchmarks/bench_generate.py                 # gpt2 124M shape, random weights
    python benchmarks/bench_generate.py --quick         # tiny shapes, a smoke test
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from common import RESULTS, git_commit, markdown_table, set_threads, timed
import llm
from llm.ops import BackendUnavailableError, get_ops

# result key -> column title of the printed table
TABLE = {"batch": "batch", "prompt": "prompt", "engine": "engine", "prefill_ms": "prefill ms",
         "decode_ms_per_token": "decode ms/token", "ms_per_token": "ms/token (all)",
         "tokens_per_s": "tokens/s", "median_ms_per_token": "median ms/token"}


def _engines(model, hf, device):
    """name -> fn(ids, mask, new) for every engine that can run here, plus skip notes."""
    engines, notes, seen = {}, [], set()
    names = sorted(llm.available_backends(), key=lambda b: (b == "auto", b))  # auto last
    for backend in names:
        try:
            ops = get_ops(backend)
        except BackendUnavailableError as e:
            notes.append(f"backend {backend}: skipped ({e})")
            continue
        except Exception as e:  # a backend that breaks on load is reported, not fatal
            notes.append(f"backend {backend}: skipped ({type(e).__name__}: {e})")
            continue
        if ops.name in seen:
            notes.append(f"backend {backend}: resolves to {ops.name!r}, measured under that name")
            continue
        seen.add(ops.name)
        graphs = [True, False] if device.type == "cuda" else [False]
        for graph in graphs:
            name = f"llm[{ops.name}]" + ("+cudagraph" if graph else "" if device.type != "cuda" else " no graph")

            def run(ids, mask, new, backend=ops.name, graph=graph):
                model.set_backend(backend)
                return model.generate(ids, new, attention_mask=mask, cuda_graph=graph if device.type == "cuda" else None)

            engines[name] = run

    def run_hf(ids, mask, new):
        with torch.inference_mode():
            return hf.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                               do_sample=False, pad_token_id=50256)

    engines["transformers"] = run_hf
    return engines, notes


def _time(fn, ids, mask, new, device):
    dt_s, out = timed(lambda: fn(ids, mask, new), device)
    assert out.shape == (ids.shape[0], ids.shape[1] + new), out.shape
    return dt_s, out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="default: float32 on CPU, bfloat16 on CUDA")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--prompts", default="16,512")
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="tiny model and sizes: checks the script runs")
    p.add_argument("--out", default=None, help="result JSON (default: benchmarks/results/generate_<device>_<time>.json)")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    set_threads(args.threads)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    if args.quick:
        config = llm.GPTConfig.from_preset("tiny")
        args.batches, args.prompts, args.new, args.reps = "1,2", "4,16", 8, 1
    else:
        config = llm.GPTConfig.from_preset("gpt2")
    batches = [int(x) for x in args.batches.split(",")]
    prompts = [int(x) for x in args.prompts.split(",")]

    import transformers

    torch.manual_seed(0)
    model = llm.GPT(config, backend="torch").to(device=device, dtype=dtype).eval()
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        hf = transformers.GPT2LMHeadModel.from_pretrained(tmp, dtype=dtype).to(device).eval()
    engines, notes = _engines(model, hf, device)
    for n in notes:
        print(n, file=sys.stderr)

    g = torch.Generator().manual_seed(0)
    cases = []
    for B in batches:
        for T in prompts:
            ids = torch.randint(0, 50256, (B, T), generator=g).to(device)
            mask = torch.ones_like(ids)
            cases.append((B, T, ids, mask))
    # warm-up: every engine once on the smallest case
    B0, T0, ids0, mask0 = cases[0]
    for fn in engines.values():
        fn(ids0, mask0, 2)

    times: dict[tuple, list] = {}
    for rep in range(args.reps):
        for B, T, ids, mask in cases:
            for name, fn in engines.items():
                t1, _ = _time(fn, ids, mask, 1, device)
                tn, out = _time(fn, ids, mask, args.new, device)
                times.setdefault((name, B, T), []).append((t1, tn))
                print(f"rep {rep} {name:28s} B={B} T={T}: prefill {t1 * 1e3:8.1f} ms, "
                      f"{args.new} tokens {tn:7.2f} s", file=sys.stderr, flush=True)

    rows = []
    for (name, B, T), ts in times.items():
        t1 = min(t for t, _ in ts)
        tn = min(t for _, t in ts)
        rows.append({
            "engine": name, "batch": B, "prompt": T, "new_tokens": args.new,
            "prefill_ms": t1 * 1e3,
            "decode_ms_per_token": (tn - t1) / max(args.new - 1, 1) * 1e3,
            "ms_per_token": tn / args.new * 1e3,
            "tokens_per_s": B * args.new / tn,
            "runs": len(ts),
            "median_ms_per_token": statistics.median(t for _, t in ts) / args.new * 1e3,
            "times_s": [[round(a, 4), round(b, 4)] for a, b in ts],
        })
    rows.sort(key=lambda r: (r["batch"], r["prompt"], r["engine"]))
    result = {
        "benchmark": "generate",
        "time_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu, {args.threads} threads",
        "dtype": str(dtype).removeprefix("torch."),
        "model": "tiny" if args.quick else "gpt2 (124M shape, random weights)",
        "torch": torch.__version__, "transformers": transformers.__version__, "commit": git_commit(),
        "notes": notes, "command": " ".join(["python", "benchmarks/bench_generate.py", *(argv or sys.argv[1:])]),
        "rows": rows,
    }
    print(markdown_table(rows, list(TABLE), TABLE, align="rrlrrrrr",
                         specs={"prefill_ms": ".1f", "tokens_per_s": ".1f"}))
    if not args.quick or args.out:
        out = Path(args.out) if args.out else RESULTS / (
            f"generate_{device.type}_{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"saved {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
