"""Serving under load: `llm serve` batching continuously against the same server taking one
request at a time (--max-batch-size 1).

GPT-2 124M shape with random weights, native backend, 2 threads, loopback only. For each
concurrency level (default 1, 4, 16) a load generator (async httpx) keeps that many streamed
/v1/completions requests in flight until `--requests` (default: max(4, level)) are done (a
level is cut after `--max-seconds`); each has a prompt of 16-512 random tokens and asks
for 128 new tokens (min_tokens=128: none ends early). The two servers take turns, level by
level, on the same prompts, in one run.

  tok/s       output tokens / wall time of the level
  TTFT        request sent -> first token, client side (p50 / p99)
  ITL         between a stream's successive tokens, client side (p50 / p99)
  occupancy   mean rows per decode step (the server's llm_batch_occupancy)
  speedup     tok/s over the one-at-a-time server's at the same level

Usage: python benchmarks/bench_serve.py [--threads 2] [--levels 1 4 16] [--requests N]
Appends one record (llm.bench's format) to benchmarks/results/serve.jsonl and prints a
markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time

from pathlib import Path

import httpx
import torch

import llm
from llm.bench import environment, make_record, markdown_table, results_dir, write_record

ROOT = Path(__file__).resolve().parent.parent


def start_server(folder: str, threads: int, slots: int, prefill_chunk: int):
    """A `python -m llm serve` process on a free port; (process, base URL)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "llm", "serve", "--model", folder, "--port", "0", "--backend", "native",
           "--threads", str(threads), "--max-batch-size", str(slots), "--max-queue", "256",
           "--prefill-chunk", str(prefill_chunk), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    deadline, lines = time.monotonic() + 300, []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        m = re.search(r"running on (http://127\.0\.0\.1:\d+)", line)
        if m:
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep the pipe drained
            return proc, m.group(1)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"the server did not start: {' '.join(cmd)}\n{''.join(lines[-20:])}")


async def stream_one(client, url: str, prompt: list[int], new_tokens: int, times: list[float]) -> None:
    """Stream one completion, appending each token's arrival time to `times` (after the
    send time, its first entry)."""
    body = {"model": "gpt2", "prompt": prompt, "max_tokens": new_tokens, "min_tokens": new_tokens,
            "stream": True, "return_token_ids": True}
    times.append(time.perf_counter())
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                n = sum(len(c.get("token_ids", ())) for c in json.loads(line[6:])["choices"])
                times.extend([time.perf_counter()] * n)


async def run_level(url: str, prompts: list[list[int]], concurrency: int, new_tokens: int, max_seconds: float):
    """[(send time, token times)] of the requests sent, and the wall time: at most
    `concurrency` in flight; after `max_seconds` the requests still running are cancelled
    (their tokens so far count)."""
    gate, results = asyncio.Semaphore(concurrency), []
    start = time.perf_counter()

    async def worker(prompt):
        async with gate:
            times = []
            results.append(times)
            await stream_one(client, url, prompt, new_tokens, times)

    async with httpx.AsyncClient(timeout=None) as client:
        tasks = [asyncio.ensure_future(worker(p)) for p in prompts]
        done, pending = await asyncio.wait(tasks, timeout=max_seconds)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for t in done:
            t.result()  # a failed request fails the benchmark
    return [(times[0], times[1:]) for times in results], time.perf_counter() - start


def occupancy(url: str) -> tuple[float, float]:
    text = httpx.get(url + "/metrics").text
    get = lambda name: float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))  # noqa: E731
    return get("llm_batch_occupancy_sum"), get("llm_batch_occupancy_count")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def measure(url: str, prompts, concurrency: int, new_tokens: int, max_seconds: float) -> dict:
    before = occupancy(url)
    results, wall = asyncio.run(run_level(url, prompts, concurrency, new_tokens, max_seconds))
    after = occupancy(url)
    ttft = [times[0] - sent for sent, times in results if times]
    itl = [b - a for _, times in results for a, b in zip(times, times[1:])]
    tokens = sum(len(times) for _, times in results)
    steps = after[1] - before[1]
    return {"requests": len(results), "tokens": tokens, "tok_s": tokens / wall,
            "ttft_p50_s": pct(ttft, 0.5), "ttft_p99_s": pct(ttft, 0.99),
            "itl_p50_ms": 1e3 * pct(itl, 0.5), "itl_p99_ms": 1e3 * pct(itl, 0.99),
            "occupancy": (after[0] - before[0]) / steps if steps else float("nan"), "wall_s": wall}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--requests", type=int, default=None, help="requests per level (default max(4, level))")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--min-prompt", type=int, default=16)
    ap.add_argument("--max-prompt", type=int, default=512)
    ap.add_argument("--prefill-chunk", type=int, default=256)
    ap.add_argument("--max-seconds", type=float, default=300,
                    help="a level ends after this long (running requests are cancelled)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    env = environment("cpu")  # before the run: its load average is the machine's, not ours
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as d:
        torch.manual_seed(args.seed)
        llm.GPT(llm.GPTConfig.from_preset("gpt2")).save_pretrained(os.path.join(d, "gpt2"))
        servers = {"batched": start_server(os.path.join(d, "gpt2"), args.threads, max(args.levels), args.prefill_chunk),
                   "one at a time": start_server(os.path.join(d, "gpt2"), args.threads, 1, args.prefill_chunk)}
        rows = []
        try:
            for level in args.levels:
                n = args.requests or max(4, level)
                prompts = [[rng.randrange(50000) for _ in range(rng.randint(args.min_prompt, args.max_prompt))]
                           for _ in range(n)]
                for name, (_, url) in servers.items():
                    row = {"concurrency": level, "server": name,
                           **measure(url, prompts, level, args.new_tokens, args.max_seconds)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(60)
    for r in rows:
        base = next(b for b in rows if b["concurrency"] == r["concurrency"] and b["server"] == "one at a time")
        r["speedup"] = r["tok_s"] / base["tok_s"]
    single = next((r["itl_p50_ms"] for r in rows if r["concurrency"] == 1 and r["server"] == "batched"), None)
    notes = [f"single-request ITL p50 {single:.1f} ms" if single else "no concurrency-1 level"]
    settings = dict(vars(args), command=" ".join(["python benchmarks/bench_serve.py", *sys.argv[1:]]))
    print("appended to", write_record(results_dir(), make_record("serve", env, rows, settings=settings, notes=notes)))
    print(markdown_table(rows, ["concurrency", "server", "requests", "tok_s", "speedup", "ttft_p50_s", "ttft_p99_s",
                                "itl_p50_ms", "itl_p99_ms", "occupancy"],
                         titles={"tok_s": "tok/s", "ttft_p50_s": "TTFT p50 (s)", "ttft_p99_s": "TTFT p99 (s)",
                                 "itl_p50_ms": "ITL p50 (ms)", "itl_p99_ms": "ITL p99 (ms)"},
                         align="rlrrrrrrrr", specs={"tok_s": ".1f", "itl_p50_ms": ".0f", "itl_p99_ms": ".0f"}))


if __name__ == "__main__":
    main()
