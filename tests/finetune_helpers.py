"""Builders shared by the fine-tuning tests: a small random GPT-2 folder (GPT-2's vocabulary,
so the tokenizer fits) and data files with a task such a model learns in a few steps."""

from __future__ import annotations

import json
import random

import torch

from llm import GPT, GPTConfig

SMALL = GPTConfig(n_positions=64, n_embd=32, n_layer=2, n_head=2)
WORDS = "apple river stone cloud green market window paper silver garden".split()


def base_model(folder, seed=0):
    """A random GPT (SMALL) saved as a model folder."""
    torch.manual_seed(seed)
    GPT(SMALL).save_pretrained(folder)
    return folder


def spam_rows(n, seed=0):
    """(text, label): 'spam' when the text holds the word 'offer', 'ham' otherwise (half each)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(2, 6))]
        if i % 2:
            words.insert(rng.randint(0, len(words)), "offer")
        rows.append((" ".join(words), "spam" if i % 2 else "ham"))
    return rows


def write_csv(path, rows, header=("text", "label")):
    path.write_text("\n".join([",".join(header)] + [f"{t},{lab}" for t, lab in rows]) + "\n")
    return path


def write_sms(path, rows):
    path.write_text("".join(f"{lab}\t{t}\n" for t, lab in rows))
    return path


def copy_task(n, seed=0):
    """Alpaca-format entries: repeat the input's words."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = " ".join(rng.choice(WORDS[:4]) for _ in range(rng.randint(1, 3)))
        out.append({"instruction": "Repeat.", "input": words, "output": words})
    return out


def write_json(path, entries):
    path.write_text(json.dumps(entries, indent=1))
    return path
