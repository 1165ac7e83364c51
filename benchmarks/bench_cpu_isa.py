"""Native CPU speed per instruction set: every path this CPU runs (`llm.native.cpu_isas()`)
x weight format (float32, bfloat16, int8), next to the machine's measured read bandwidth and
fp32 matmul rate, and CTranslate2 (int8, float32, its own converter on the same weights)
where it is installed.

GPT-2 124M shape, random weights (seed 0), the C++ decoder (`NativeDecoder`) called
directly; every engine of a case is timed in the same rounds, interleaved (llm.bench):

  decode B     ms per decode step of B rows after a 16-token prompt (`--steps` steps per
               call): GB/s = packed weight bytes / ms (a step reads every weight once), and
               GFLOP/s = 2 x weights x B / ms
  prefill T    ms of a T-token prompt (batch 1): GFLOP/s = 2 x (layer weights x T + lm_head
               weights) / ms; attention's own work is left out (small at T <= 512)

The machine's limits are timed in the same rounds as the engines, with the same threads:
reading as many bytes as each format's decode step reads (torch.sum over a buffer that
size, read again and again as the decoder reads its weights: where a big L3 holds them,
that is what both see), and torch's fp32 matmul (1024^3). `of bandwidth` and `of matmul`
are the medians over rounds of the per-round ratios; the usual ceilings (256 MiB read,
1024^3 matmul) are also recorded before and after. `err` is the max |logits - fp32
reference| of a 16-token prompt, relative to max |reference|. CTranslate2's decode is
(generate steps + 1) - (generate 1), per step.

Usage: python benchmarks/bench_cpu_isa.py [--rounds 3] [--threads 2] [--steps 32]
           [--isas avx2,avx512_bf16] [--no-ct2] [--full]   (--full adds batch 8 x 512 tokens)
A CPU without AVX-512, on one that has it: the AVX2 paths, with torch's BLAS and
CTranslate2 held to AVX2 too (the variables are recorded with the run):
  MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 CT2_FORCE_CPU_ISA=AVX2 \
      python benchmarks/bench_cpu_isa.py --isas portable,avx2,avx2_vnni
Appends a record to benchmarks/results/cpu_isa.jsonl and prints a table per ISA family.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import RESULTS, environment, markdown_table
from llm import GPT, GPTConfig, native
from llm.bench import interleaved, make_record, measure_ceilings, write_record
from llm.cpu import set_threads
from llm.native.decoder import NativeDecoder
from llm.native.packing import pack_model
from llm.tokenizer import bpe_vocab_and_merges

FORMATS = ("float32", "bfloat16", "int8")
SHORT = {"float32": "fp32", "bfloat16": "bf16", "int8": "int8"}
PROMPT = 16


# where set, these hold the libraries of the baselines to one instruction set (torch's BLAS
# for the matmul rate, CTranslate2), so a run can stand for a CPU without AVX-512
ISA_VARIABLES = ("MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "CT2_FORCE_CPU_ISA")


def held_to() -> dict:
    return {k: os.environ[k] for k in ISA_VARIABLES if os.environ.get(k)}


def command_line() -> str:
    env = " ".join(f"{k}={v}" for k, v in held_to().items())
    return " ".join(filter(None, [env, "python benchmarks/bench_cpu_isa.py", *sys.argv[1:]]))


def family(isa: str) -> str:
    return isa.split("_")[0] if isa != "portable" else "portable"


def native_engines(model, isas):
    """name -> dict(isa, fmt, bytes: packed weights one decode step reads) for every ISA x format."""
    out = {}
    for isa in isas:
        for fmt in FORMATS:
            out[f"{isa} {SHORT[fmt]}"] = dict(isa=isa, fmt=fmt, bytes=int(pack_model(model, fmt).streamed_bytes()))
    return out


def native_call(model, isa, fmt, case, steps, gen):
    """A function timing one call of `case` on the native decoder (prepared here)."""
    kind, B, T = case
    V = model.config.vocab_size
    native.set_cpu_isa(isa)
    if kind == "decode":
        dec = NativeDecoder(model, B, PROMPT + steps, fmt)
        pos = torch.arange(PROMPT + steps)[None].expand(B, -1)
        dec.prefill(torch.randint(0, V, (B, PROMPT), generator=gen), torch.arange(PROMPT), pos[:, :PROMPT])
        toks = torch.randint(0, V, (B, steps), generator=gen)

        def run():  # the same slots each call: identical work, the cache overwritten
            native.set_cpu_isa(isa)
            for s in range(steps):
                t = PROMPT + s
                dec.decode_one_token(toks[:, s:s + 1], torch.tensor([t]), pos[:, t:t + 1])
        return run
    dec = NativeDecoder(model, B, T, fmt)
    ids = torch.randint(0, V, (B, T), generator=gen)
    pos = torch.arange(T)[None].expand(B, -1)

    def run():
        native.set_cpu_isa(isa)
        dec.prefill(ids, torch.arange(T), pos)
    return run


def ct2_models(model, threads, notes):
    """compute type -> ctranslate2.Generator of `model` (converted from its HF folder)."""
    try:
        import ctranslate2
    except ImportError as e:
        notes.append(f"CTranslate2: skipped ({e}; pip install ctranslate2)")
        return {}, None
    d = Path(tempfile.mkdtemp(prefix="llm-ct2-"))
    model.save_pretrained(d)
    tokens, merges = bpe_vocab_and_merges()  # the converter reads the tokenizer too
    (d / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    gens = {}
    for ctype in ("int8", "float32"):
        out = d / f"ct2-{ctype}"
        ctranslate2.converters.TransformersConverter(str(d)).convert(str(out), quantization=ctype, force=True)
        gens[ctype] = ctranslate2.Generator(str(out), device="cpu", compute_type=ctype, intra_threads=threads)
    vocab = json.loads((d / "ct2-int8" / "vocabulary.json").read_text())
    return gens, vocab


def ct2_call(gen, vocab, case, steps, rng, length):
    kind, B, T = case
    T = PROMPT if kind == "decode" else T
    prompts = [[vocab[i] for i in row] for row in torch.randint(0, len(vocab) - 1, (B, T), generator=rng).tolist()]

    def run():
        gen.generate_batch(prompts, max_length=length, min_length=length, include_prompt_in_result=False,
                           sampling_topk=1, end_token=[])
    return run


def logits_error(model, ids16, isa, fmt) -> float:
    native.set_cpu_isa(isa)
    got = NativeDecoder(model, 1, PROMPT, fmt).prefill(ids16, torch.arange(PROMPT), torch.arange(PROMPT)[None])
    with torch.inference_mode():
        ref = model.last_token_logits(ids16, torch.arange(PROMPT)[None], torch.ones_like(ids16, dtype=torch.bool))
    return ((got - ref).abs().max() / ref.abs().max()).item()


MATMUL_N = 1024


def ceiling_calls(case, engines) -> dict:
    """The machine's limits timed in the same rounds as the engines: reading as many bytes as
    each weight format's decode step reads (decode), a fp32 matmul (every case)."""
    fns = {}
    if case[0] == "decode":
        for fmt in FORMATS:
            nbytes = next(e["bytes"] for e in engines.values() if e["fmt"] == fmt)
            buf = torch.ones(nbytes // 4)
            fns[f"read {fmt}"] = buf.sum
    a, b = torch.randn(MATMUL_N, MATMUL_N), torch.randn(MATMUL_N, MATMUL_N)
    fns["matmul"] = lambda: a @ b
    return fns


def time_case(case, model, engines, cts, vocab, args, gen) -> dict:
    """name -> per-round ms of one unit of `case` (a decode step, or a prefill) for every
    engine, and the ceilings' per-round ms ("read <format>", "matmul")."""
    steps = args.steps
    fns = {name: native_call(model, e["isa"], e["fmt"], case, steps, gen) for name, e in engines.items()
           if e["isa"] != "portable" or case == ("decode", 1, PROMPT) or case == ("prefill", 1, PROMPT)}
    for ctype, g in cts.items():
        fns[f"ct2 {SHORT[ctype]}"] = ct2_call(g, vocab, case, steps, gen, 1)
        if case[0] == "decode":
            fns[f"ct2 {SHORT[ctype]} +steps"] = ct2_call(g, vocab, case, steps, gen, steps + 1)
    fns.update(ceiling_calls(case, engines))
    t = {name: timing.times_ms for name, timing in
         interleaved(fns, "cpu", rounds=args.rounds, warmup=1, budget_s=0.0, max_reps=1).items()}
    out = {}
    for name, times in t.items():
        if name.endswith("+steps"):
            continue
        if name.startswith("ct2") and case[0] == "decode":
            out[name] = [(p - o) / steps for p, o in zip(t[name + " +steps"], times)]
        elif name in engines and case[0] == "decode":
            out[name] = [x / steps for x in times]
        else:
            out[name] = list(times)
    return out


def rows_for(case, times, engines, model) -> list[dict]:
    """A row per engine: median ms, and its share of each ceiling as the median over rounds
    of the per-round ratio (so a machine whose speed drifts during the run compares like
    with like)."""
    kind, B, T = case
    layer = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and ".h." in n)
    head = model.lm_head.weight.numel()
    flops = 2 * (layer + head) * B if kind == "decode" else 2 * (layer * T * B + head * B)
    mm_flops = 2 * MATMUL_N ** 3
    rows = []
    for name, ts in times.items():
        if name.startswith("read ") or name == "matmul":
            continue
        e = engines.get(name)
        fmt = e["fmt"] if e else {"fp32": "float32", "int8": "int8"}[name.split()[1]]
        ms = statistics.median(ts)
        row = dict(engine=name, isa=e["isa"] if e else "ct2", format=fmt,
                   case=f"{kind} B{B}" + (f" T{T}" if kind == "prefill" else ""), ms=ms, GFLOPs=flops / ms / 1e6,
                   matmul_GFLOPs=mm_flops / statistics.median(times["matmul"]) / 1e6,
                   pct_mm=statistics.median((flops / t) / (mm_flops / m) for t, m in zip(ts, times["matmul"])))
        if kind == "decode":
            reads = times[f"read {fmt}"]
            nbytes = next(x["bytes"] for x in engines.values() if x["fmt"] == fmt)
            row.update(GBps=nbytes / ms / 1e6, read_GBps=nbytes / statistics.median(reads) / 1e6,
                       pct_bw=statistics.median(r / t for t, r in zip(ts, reads)))
        rows.append(row)
    return rows


def family_table(rows: list[dict], fam: str) -> str:
    """The markdown table of one ISA family (and CTranslate2): one line per engine, the cases
    side by side; `vs fp32` is batch-1 decode speed over native fp32 on the same ISA (for
    CTranslate2, over its own fp32)."""
    by = {}
    for r in rows:
        if family(r["isa"]) == fam or r["isa"] == "ct2":
            by.setdefault(r["engine"], {})[r["case"]] = r
    lines = []
    for name, cases in by.items():
        fp32 = by.get(f"{name.split()[0]} fp32", {}).get("decode B1")
        d1, d8 = cases.get("decode B1"), cases.get("decode B8")
        p512 = cases.get("prefill B1 T512")
        lines.append({"engine": name, "B1 ms/token": d1 and d1["ms"], "GB/s": d1 and d1.get("GBps"),
                      "of bandwidth": d1 and d1.get("pct_bw"), "vs fp32": fp32 and d1 and fp32["ms"] / d1["ms"],
                      "B8 ms/step": d8 and d8["ms"], "B8 of matmul": d8 and d8["pct_mm"],
                      "512-token prefill ms": p512 and p512["ms"], "prefill of matmul": p512 and p512["pct_mm"],
                      "logits err": d1 and d1.get("err")})
    cols = list(lines[0]) if lines else []
    specs = {"B1 ms/token": ".1f", "GB/s": ".1f", "of bandwidth": ".0%", "B8 ms/step": ".1f",
             "B8 of matmul": ".0%", "512-token prefill ms": ".0f", "prefill of matmul": ".0%", "logits err": ".1e"}
    return markdown_table(lines, cols, specs=specs, align="l" + "r" * (len(cols) - 1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--isas", default=None, help="comma-separated (default: every one this CPU runs)")
    ap.add_argument("--no-ct2", action="store_true")
    ap.add_argument("--full", action="store_true", help="also prefill 512 tokens at batch 8")
    args = ap.parse_args()
    threads = set_threads(args.threads)
    isas = args.isas.split(",") if args.isas else native.cpu_isas()
    notes = []
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("gpt2"), backend="torch").eval()
    gen = torch.Generator().manual_seed(1)
    ids16 = torch.randint(0, model.config.vocab_size, (1, PROMPT), generator=gen)
    engines = native_engines(model, isas)
    cts, vocab = ({}, None) if args.no_ct2 else ct2_models(model, threads, notes)
    before = measure_ceilings("cpu").as_dict()
    cases = [("decode", 1, PROMPT), ("decode", 8, PROMPT), ("prefill", 1, PROMPT), ("prefill", 1, 512)]
    cases += [("prefill", 8, 512)] if args.full else []
    t0, times = time.time(), {}
    for case in cases:
        print(f"[{time.time() - t0:6.0f}s] {case}", flush=True)
        times[case] = time_case(case, model, engines, cts, vocab, args, gen)
    after = measure_ceilings("cpu").as_dict()
    rows = [r for case in cases for r in rows_for(case, times[case], engines, model)]
    errs = {name: logits_error(model, ids16, e["isa"], e["fmt"]) for name, e in engines.items()}
    for r in rows:
        r["err"] = errs.get(r["engine"])
    native.set_cpu_isa(native.cpu_best_isa())
    record = make_record("cpu_isa", environment("cpu", threads=threads), rows, ceilings=dict(before=before, after=after),
                         settings=dict(rounds=args.rounds, steps=args.steps, prompt=PROMPT, threads=threads,
                                       command=command_line(), held_to=held_to()),
                         notes=notes)
    path = write_record(RESULTS, record)
    print(f"\nread bandwidth {before['read_gbs']:.1f} -> {after['read_gbs']:.1f} GB/s, fp32 matmul "
          f"{before['matmul_tflops'] * 1e3:.0f} -> {after['matmul_tflops'] * 1e3:.0f} GFLOP/s, {threads} threads")
    for fam in dict.fromkeys(family(i) for i in isas):
        print(f"\n{fam}\n{family_table(rows, fam)}")
    for n in notes:
        print(n)
    print(f"\nrecord: {path}")


if __name__ == "__main__":
    main()
