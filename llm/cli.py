"""Command line: `python -m llm <command> ...` (also the `llm` console script)."""

from __future__ import annotations

import argparse
import sys


def _add_generate(sub):
    p = sub.add_parser("generate", help="generate text from a prompt (or a file of prompts), streaming it")
    p.add_argument("--model", required=True, help="model folder (config.json + model.safetensors) or hub name")
    p.add_argument("--prompt", default="\n", help="prompt text (default: a newline)")
    p.add_argument("--batch-file", default=None,
                   help="a text file with one prompt per line; generates for them in batches")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per batch with --batch-file (default 8)")
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.add_argument("--min-new-tokens", type=int, default=None, help="no EOS before this many tokens")
    p.add_argument("--temperature", type=float, default=0.8, help="0 is greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--min-p", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=None, help="CTRL's penalty, 1 is off")
    p.add_argument("--presence-penalty", type=float, default=None)
    p.add_argument("--frequency-penalty", type=float, default=None)
    p.add_argument("--stop", action="append", default=None, metavar="TEXT",
                   help="stop when the text contains TEXT (repeatable; cut from the output; \\n is a newline)")
    p.add_argument("--eos-token-id", type=int, action="append", default=None, metavar="ID",
                   help="end-of-sequence id (repeatable; default: the model's generation config)")
    p.add_argument("--seed", type=int, default=None, help="seed for sampling (reproducible output)")
    p.add_argument("--backend", default=None, help="op backend: torch, triton, native or auto")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    p.add_argument("--no-cuda-graph", action="store_true", help="on CUDA, do not capture the decode step")
    p.set_defaults(func=cmd_generate)


def cmd_generate(args) -> int:
    from .generate_cmd import run_generate

    return run_generate(args)


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
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        from .ops import BackendUnavailableError

        if isinstance(e, RuntimeError) and not isinstance(e, BackendUnavailableError):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
