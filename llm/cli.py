"""Command line: `python -m llm <command> ...` (also the `llm` console script)."""

from __future__ import annotations

import argparse
import sys
import time


class TextStreamer:
    """Turns token ids into text deltas that never split a UTF-8 character."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.pending = b""

    def push(self, token_id: int) -> str:
        self.pending += self.tokenizer.decode_single_token_bytes(token_id)
        try:
            text, self.pending = self.pending.decode("utf-8"), b""
            return text
        except UnicodeDecodeError as e:
            if e.reason == "unexpected end of data":  # an incomplete character at the end
                text, self.pending = self.pending[:e.start].decode("utf-8"), self.pending[e.start:]
                return text
            text, self.pending = self.pending.decode("utf-8", errors="replace"), b""
            return text

    def flush(self) -> str:
        text, self.pending = self.pending.decode("utf-8", errors="replace"), b""
        return text


def _add_generate(sub):
    p = sub.add_parser("generate", help="generate text from a prompt, streaming it as it is made")
    p.add_argument("--model", required=True, help="model folder (config.json + model.safetensors) or hub name")
    p.add_argument("--prompt", default="\n", help="prompt text (default: a newline)")
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.add_argument("--temperature", type=float, default=0.8, help="0 is greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None, help="seed for sampling (reproducible output)")
    p.add_argument("--backend", default=None, help="op backend: torch, triton, native or auto")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    p.set_defaults(func=cmd_generate)


def cmd_generate(args) -> int:
    import torch

    from .model import GPT
    from .tokenizer import EOT_TOKEN, get_tokenizer

    dtype = getattr(torch, args.dtype) if args.dtype else None
    model = GPT.from_pretrained(args.model, backend=args.backend, dtype=dtype, device=args.device)
    enc = get_tokenizer()
    ids = enc.encode(args.prompt, allowed_special={"<|endoftext|>"})
    if not ids:
        raise SystemExit("error: the prompt encodes to no tokens")
    generator = None
    if args.seed is not None:
        generator = torch.Generator(device=args.device).manual_seed(args.seed)
    max_new = min(args.max_new_tokens, model.config.n_positions - len(ids))
    eos = EOT_TOKEN if EOT_TOKEN < model.config.vocab_size else None
    from .generation import generate_steps

    steps = generate_steps(model, torch.tensor([ids]), max_new, args.temperature, args.top_k,
                           args.top_p, eos, None, True, generator)
    next(steps)
    streamer = TextStreamer(enc)
    sys.stdout.write(args.prompt)
    sys.stdout.flush()
    t0, n = time.perf_counter(), 0
    for token in steps:
        tok = int(token[0])
        n += 1
        if tok == eos:
            break
        if tok >= enc.n_vocab:
            continue
        sys.stdout.write(streamer.push(tok))
        sys.stdout.flush()
    sys.stdout.write(streamer.flush() + "\n")
    dt = time.perf_counter() - t0
    print(f"[{n} tokens in {dt:.2f}s, {n / max(dt, 1e-9):.1f} tokens/s, backend {model.backend}]",
          file=sys.stderr)
    return 0


def _add_demo(sub):
    p = sub.add_parser("demo", help="the main job of `make run`")
    p.add_argument("--out", default="runs/demo", help="where the demo writes its model")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args)


def _add_train(sub):
    from .train_cli import add_train_parser

    add_train_parser(sub)


def _add_eval(sub):
    from .train_cli import add_eval_parser

    add_eval_parser(sub)


COMMANDS = [_add_generate, _add_demo, _add_train, _add_eval]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm", description="GPT-2 engine: generate, train, evaluate.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
