"""What the native decoder's weight formats cost in quality: perplexity on held-out text of
a trained model, float32 / bfloat16 / int8 weights (int8: per-channel weights, every
linear layer's input rows quantized per row), and the logits' largest difference from the
float32 torch reference.

Held-out text: the last `--val-fraction` of the tokens of `--data` (what training held out
with the same fraction), cut into `--windows` windows of `--context` tokens. The native
decoder runs every window teacher-forced, one token per step for all windows at once
(batch = windows), so each position's logits are the decoder's own.

Usage: python benchmarks/bench_native_quality.py --model runs/demo [--data FILE] [--windows 16]
           [--context 128] [--val-fraction 0.05]
(--data defaults to the built-in corpus of `llm demo` / `llm train`.) Appends a record to
benchmarks/results/native_quality.jsonl and prints a table.
"""

from __future__ import annotations

import argparse
import math
import sys

import torch
import torch.nn.functional as F

from common import RESULTS, environment, markdown_table
from llm import GPT, native
from llm.bench import make_record, write_record
from llm.native.decoder import NativeDecoder
from llm.training import build_corpus, split_tokens
from llm.training.data import load_tokens

FORMATS = ("float32", "bfloat16", "int8")


def held_out_windows(data: str | None, val_fraction: float, windows: int, context: int) -> torch.Tensor:
    _, val = split_tokens(load_tokens(data or build_corpus()).ids, val_fraction)
    n = min(windows, (len(val) - 1) // context)
    if n < 1:
        raise ValueError(f"the held-out split has {len(val)} tokens, fewer than one window of {context} + 1")
    return torch.as_tensor(val[: n * context + 1].astype("int64"))


def native_logits(model, ids: torch.Tensor, fmt: str) -> torch.Tensor:
    """[B, T, V] logits of the native decoder run one token per step (teacher-forced)."""
    B, T = ids.shape
    dec = NativeDecoder(model, B, T, fmt)
    pos = torch.arange(T)[None].expand(B, -1)
    out = [dec.prefill(ids[:, :1], torch.arange(1), pos[:, :1])]
    for t in range(1, T):
        out.append(dec.decode_one_token(ids[:, t:t + 1], torch.tensor([t]), pos[:, t:t + 1]))
    return torch.stack(out, 1)


def perplexity(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return math.exp(F.cross_entropy(logits.reshape(-1, logits.shape[-1]).double(), targets.reshape(-1)).item())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a saved model folder (e.g. what `llm demo` writes)")
    ap.add_argument("--data", default=None)
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--val-fraction", type=float, default=0.05)
    args = ap.parse_args()
    model = GPT.from_pretrained(args.model, backend="torch").eval()
    flat = held_out_windows(args.data, args.val_fraction, args.windows, args.context)
    n = (len(flat) - 1) // args.context
    x = flat[: n * args.context].view(n, args.context)
    y = flat[1: n * args.context + 1].view(n, args.context)
    with torch.inference_mode():
        ref = model(x).float()
    rows = [dict(engine="torch float32 (reference)", perplexity=perplexity(ref, y), max_abs_err=0.0)]
    scale = ref.abs().max().item()
    for fmt in FORMATS:
        with torch.inference_mode():
            got = native_logits(model, x, fmt)
        err = (got - ref).abs().max().item()
        rows.append(dict(engine=f"native {fmt}", perplexity=perplexity(got, y), max_abs_err=err,
                         rel_err=err / scale, same_argmax=(got.argmax(-1) == ref.argmax(-1)).float().mean().item()))
    base = rows[0]["perplexity"]
    for r in rows:
        r["ppl_vs_fp32"] = r["perplexity"] / base - 1
    record = make_record("native_quality", environment("cpu", isa=native.cpu_isa()), rows,
                         settings=dict(model=args.model, windows=n, context=args.context, val_fraction=args.val_fraction,
                                       logits_max=scale, command=" ".join(["python benchmarks/bench_native_quality.py",
                                                                           *sys.argv[1:]])))
    path = write_record(RESULTS, record)
    print(f"{n} windows of {args.context} tokens, logits up to {scale:.2f} in magnitude, ISA {native.cpu_isa()}")
    print(markdown_table(rows, ["engine", "perplexity", "ppl_vs_fp32", "max_abs_err", "rel_err", "same_argmax"],
                         specs={"ppl_vs_fp32": "+.3%", "max_abs_err": ".4f", "rel_err": ".2e", "same_argmax": ".4f"}))
    print(f"\nrecord: {path}")


if __name__ == "__main__":
    main()
