"""The main job of `make run`: pretrain the `small` preset on the built-in corpus for about
two minutes on the CPU, save it, evaluate it, and generate from it, with tokens/s for both.

Offline: the corpus is the local Python installation's documentation (`llm.training.corpus`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from ..config import GPTConfig
from ..model import GPT
from ..tokenizer import get_tokenizer
from ..training import (WindowDataset, build_corpus, evaluate, load_tokens, param_groups, split_tokens,
                        train)

PRESET = "small"
BATCH_SIZE = 8
CONTEXT_LENGTH = 128
LR = 2e-3  # a small model on a short run learns fastest with a high peak rate
VAL_FRACTION = 0.02
PROMPT = "Return the number of"
TRAIN_SECONDS = 120  # the training budget; a time limit of 1.25x that caps it
NEW_TOKENS = 48


def seconds_per_step(config: GPTConfig, batch_size: int, context_length: int, repeats: int = 3) -> float:
    """Wall time of one training step (forward, backward, AdamW) after a warm-up step."""
    model = GPT(config)
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-4)
    x = torch.randint(0, config.vocab_size, (batch_size, context_length))
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        model.loss(x, x).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def add_parser(sub):
    p = sub.add_parser("demo", help="the main job of `make run`")
    p.add_argument("--out", default="runs/demo", help="where the demo writes its model")
    return p


def run(args) -> int:
    budget = float(TRAIN_SECONDS)
    out = Path(args.out)
    t0 = time.perf_counter()
    corpus = build_corpus()
    tokens = load_tokens(corpus)
    print(f"corpus: {corpus} ({corpus.stat().st_size / 1e6:.1f} MB, {tokens.n_documents} documents, "
          f"{len(tokens):,} tokens; Python's own documentation) in {time.perf_counter() - t0:.1f}s")

    config = GPTConfig.from_preset(PRESET)
    torch.manual_seed(0)
    step_s = seconds_per_step(config, BATCH_SIZE, CONTEXT_LENGTH)
    steps = max(10, min(5000, int(budget / step_s)))
    print(f"model: preset {PRESET!r}; one step of {BATCH_SIZE}x{CONTEXT_LENGTH} tokens takes "
          f"{step_s:.2f}s here, so {steps} steps fit in about {budget:.0f}s")

    result = train(corpus, out, preset=PRESET, steps=steps, batch_size=BATCH_SIZE,
                   context_length=CONTEXT_LENGTH, lr=LR, warmup_steps=max(2, steps // 20),
                   val_fraction=VAL_FRACTION, eval_every=max(1, steps // 4), eval_batches=8,
                   checkpoint_every=steps, keep_checkpoints=1, overwrite=True, seed=0,
                   max_seconds=budget * 1.25)  # a machine that slows down still finishes
    first, last = result.train_losses[0][1], result.train_losses[-1][1]
    print(f"trained {result.step} of {steps} steps in {result.seconds:.0f}s: {result.tokens_per_s:,.0f} training "
          f"tokens/s; train loss {first:.2f} -> {last:.2f}; saved to {out} (loss curve: {out / 'loss.png'})")

    model = GPT.from_pretrained(out, backend="auto")  # the fastest backend that runs here
    _, val_ids = split_tokens(tokens.ids, VAL_FRACTION)
    val = evaluate(model, WindowDataset(val_ids, CONTEXT_LENGTH, name="validation split"), BATCH_SIZE)
    print(f"evaluation (reloaded model, validation split): loss {val:.3f}, perplexity {math.exp(val):.1f}")

    enc = get_tokenizer()
    ids = torch.tensor([enc.encode(PROMPT)])
    t0 = time.perf_counter()
    out = model.generate(ids, max_new_tokens=NEW_TOKENS, temperature=0.8, top_k=40,
                         generator=torch.Generator().manual_seed(0), return_dict=True, tokenizer=enc)
    dt = time.perf_counter() - t0
    n_new = len(out.new_tokens[0])  # fewer than NEW_TOKENS if it stopped at <|endoftext|>
    print("sample:\n" + PROMPT + out.texts[0])
    print(f"generation: {n_new} tokens in {dt:.2f}s ({n_new / dt:.1f} tokens/s, KV cache, "
          f"backend {model.backend})")
    return 0
