"""Command line: `python -m llm <command> ...` (also the `llm` console script).

One module per command, each with `add_parser(subparsers)` and `run(args) -> exit code`.
"""

from __future__ import annotations

import argparse
import sys

from ..ops import BackendUnavailableError
from ..training.lock import FolderInUseError
from . import bench, chat, classify, convert, demo, eval, export, finetune, generate, serve, train

COMMANDS = (generate, demo, train, eval, finetune, classify, chat, convert, export, serve, bench)

# what a user can cause and fix: printed as one line, exit code 2
USER_ERRORS = (ValueError, OSError, BackendUnavailableError, FolderInUseError)


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
    except USER_ERRORS as e:
        print(f"error: {describe_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


def describe_error(e: Exception) -> str:
    """One line: an OSError as "<path>: <cause>", anything else as its message."""
    if isinstance(e, OSError) and e.strerror:
        paths = " -> ".join(str(p) for p in (e.filename, e.filename2) if p is not None)
        text = f"{paths}: {e.strerror}" if paths else e.strerror
    else:
        text = str(e) or type(e).__name__
    return " ".join(text.split())
