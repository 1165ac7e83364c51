"""Command line: `python -m llm <command> ...` (also the `llm` console script).

One module per command, each with `add_parser(subparsers)` and `run(args) -> exit code`.
"""

from __future__ import annotations

import argparse
import sys

from ..ops import BackendUnavailableError
from . import demo, eval, generate, train

COMMANDS = (generate, demo, train, eval)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm", description="GPT-2 engine: generate, train, evaluate.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub).set_defaults(func=command.run)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and not isinstance(e, BackendUnavailableError):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
