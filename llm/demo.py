"""The main job of `make run`: build a model, save and reload it, generate and time it."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .config import GPTConfig
from .model import GPT
from .tokenizer import get_tokenizer


def run_demo(args) -> int:
    torch.manual_seed(0)
    out = Path(args.out)
    model = GPT(GPTConfig.from_preset("small"))
    model.save_pretrained(out)
    model = GPT.from_pretrained(out)
    print(f"model: preset 'small', {model.num_params() / 1e6:.1f}M parameters, saved to {out}")
    enc = get_tokenizer()
    prompt = "The meaning of life is"
    ids = torch.tensor([enc.encode(prompt)])
    t0 = time.perf_counter()
    out_ids = model.generate(ids, max_new_tokens=64, temperature=0.8, top_k=40,
                             generator=torch.Generator().manual_seed(0))
    dt = time.perf_counter() - t0
    print(enc.decode(out_ids[0].tolist()))
    print(f"generated 64 tokens in {dt:.2f}s ({64 / dt:.1f} tokens/s; untrained weights)")
    return 0
