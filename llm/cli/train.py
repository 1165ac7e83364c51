"""`llm train`: pretrain a GPT on a text dataset.

The setting flags are made from `TrainConfig`'s fields: `--batch-size` for `batch_size`,
with the field's type and help text. A flag left out is None, "not given": `train` then
uses the dataclass default, or on `--resume` the checkpoint's setting.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import typing

from .. import training
from ..training import CheckpointError, NonFiniteLossError, TrainingInterrupted
from ..training.config import TrainConfig

FLAG_TYPES = (int, float, str)


def flag_type(annotation) -> type:
    """int for `int` and for `int | None`; likewise float and str."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    if len(args) != 1 or args[0] not in FLAG_TYPES:
        raise TypeError(f"no command-line flag for a setting of type {annotation!r}")
    return args[0]


def add_setting_flags(parser, config_class=TrainConfig) -> None:
    """One flag per field of `config_class`, default None (not given)."""
    hints = typing.get_type_hints(config_class)
    for f in dataclasses.fields(config_class):
        help_text = f.metadata["help"]
        if f.default is not None:
            help_text += f" (default {f.default})"
        extra = {"choices": f.metadata["choices"]} if "choices" in f.metadata else {}
        # default None, not the field's: a resumed run must tell "not given" from "given";
        # help is %-formatted by argparse, so a literal % is doubled
        parser.add_argument("--" + f.name.replace("_", "-"), *f.metadata.get("aliases", ()),
                            dest=f.name, type=flag_type(hints[f.name]), default=None,
                            help=help_text.replace("%", "%%"), **extra)


def given_settings(args, config_class=TrainConfig) -> dict:
    """The settings whose flags were given: {field name: value}."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_class)}
    return {k: v for k, v in values.items() if v is not None}


def add_parser(sub):
    p = sub.add_parser("train", help="pretrain a GPT on a text dataset, with resumable checkpoints")
    p.add_argument("--data", required=True, help="a .txt file, a folder of .txt files, or a .jsonl with a 'text' field")
    p.add_argument("--out", required=True,
                   help="output folder: checkpoints/, loss.png, the final model; one run at a time "
                        "(a second run into a folder in use fails at once)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--preset", default=None, help="model preset (default 'small'): small, tiny, gpt2, ...")
    g.add_argument("--config", default=None, help="model config.json (Hugging Face GPT-2 format)")
    add_setting_flags(p.add_argument_group("training settings"))
    p.add_argument("--backend", default=None,
                   help="op backend: torch, triton, native or auto (may change on --resume)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--overwrite", action="store_true", help="start over even if --out holds checkpoints")
    return p


def run(args) -> int:
    try:
        result = training.train(args.data, args.out, preset=args.preset, config=args.config,
                       backend=args.backend, resume=args.resume, overwrite=args.overwrite,
                       **given_settings(args))
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingInterrupted as e:
        where = f"checkpoint {e.checkpoint}" if e.checkpoint else "no checkpoint could be written"
        print(f"\ninterrupted at step {e.step}; {where}; continue with --resume", file=sys.stderr)
        return 130
    if result.final_val_loss is not None:
        val = result.final_val_loss
        print(f"final validation loss {val:.4f}, perplexity {math.exp(min(val, 50)):.2f} "
              f"(step {result.step})")
    return 0
