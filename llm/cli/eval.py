"""`llm eval`: loss and perplexity of a saved model on a text."""

from __future__ import annotations

import math

from ..model import GPT
from ..training import WindowDataset, evaluate, load_tokens
from ..training.config import DTYPES
from .checks import check_at_least, check_device


def add_parser(sub):
    p = sub.add_parser("eval", help="loss and perplexity of a model on a text")
    p.add_argument("--model", required=True, help="model folder (config.json + model.safetensors)")
    p.add_argument("--data", required=True, help="a .txt file, a folder of .txt files, or a .jsonl")
    p.add_argument("--context-length", type=int, default=None,
                   help="window length, 1 to n_positions (default: n_positions, or the text's length if shorter)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per batch, >= 1 (default 8)")
    p.add_argument("--max-batches", type=int, default=None, help="evaluate only the first batches (>= 1)")
    p.add_argument("--backend", default=None)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:<index>")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES))
    return p


def run(args) -> int:
    check_at_least("--context-length", args.context_length, 1)
    check_at_least("--batch-size", args.batch_size, 1)
    check_at_least("--max-batches", args.max_batches, 1)
    check_device(args.device)
    model = GPT.from_pretrained(args.model, backend=args.backend, device=args.device)
    tokens = load_tokens(args.data)
    if len(tokens) < 2:
        raise ValueError(f"{args.data} has {len(tokens)} token(s); evaluation needs at least 2")
    T = args.context_length or min(model.config.n_positions, len(tokens) - 1)
    if T > model.config.n_positions:
        raise ValueError(f"--context-length {T} exceeds the model's n_positions={model.config.n_positions}")
    ds = WindowDataset(tokens.ids, T, T, name=str(args.data))
    loss = evaluate(model, ds, args.batch_size, args.max_batches, args.device, args.dtype)
    n_windows = len(ds) if args.max_batches is None else min(len(ds), args.max_batches * args.batch_size)
    print(f"loss {loss:.4f}  perplexity {math.exp(min(loss, 50)):.2f}  "
          f"({n_windows} windows of {T} tokens from {args.data})")
    return 0
