"""`llm train`: pretrain a GPT on a text dataset.

The setting flags are made from `TrainConfig`'s fields: `--batch-size` for `batch_size`,
with the field's type and help text (a bool field gives `--compile` / `--no-compile`). A flag
left out is None, "not given": `train` then uses the dataclass default, or on `--resume` the
checkpoint's setting. The same command runs under torchrun (`llm.training.distributed`):

    torchrun --nproc_per_node 2 -m llm train --data corpus.txt --out runs/ddp --parallel ddp
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import typing

from .. import training
from ..training import CheckpointError, NonFiniteLossError, TrainingInterrupted
from ..training.config import ParallelSettings, TrainConfig
from ..training.distributed import DistributedError, launch_env

FLAG_TYPES = (int, float, str)


def flag_type(annotation) -> type:
    """int for `int` and for `int | None`; likewise float, str and bool."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    if len(args) != 1 or args[0] not in FLAG_TYPES + (bool,):
        raise TypeError(f"no command-line flag for a setting of type {annotation!r}")
    return args[0]


def add_setting_flags(parser, config_class=TrainConfig, skip=()) -> None:
    """One flag per field of `config_class` (but those named in `skip`), default None (not
    given); a bool field gives --name and --no-name."""
    hints = typing.get_type_hints(config_class)
    for f in dataclasses.fields(config_class):
        if f.name in skip:
            continue
        help_text = f.metadata["help"]
        if f.default is not None:
            help_text += f" (default {f.default})"
        kind = flag_type(hints[f.name])
        extra = {"choices": f.metadata["choices"]} if "choices" in f.metadata else {}
        if kind is bool:
            extra["action"] = argparse.BooleanOptionalAction  # --x / --no-x
        else:
            extra["type"] = kind
        # default None, not the field's: a resumed run must tell "not given" from "given";
        # help is %-formatted by argparse, so a literal % is doubled
        parser.add_argument("--" + f.name.replace("_", "-"), *f.metadata.get("aliases", ()),
                            dest=f.name, default=None, help=help_text.replace("%", "%%"), **extra)


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
    scale = [f.name for f in dataclasses.fields(ParallelSettings)]
    add_setting_flags(p.add_argument_group("training settings"), skip=scale)
    add_setting_flags(p.add_argument_group("compiled and distributed training (torchrun)"), ParallelSettings)
    p.add_argument("--backend", default=None,
                   help="op backend: torch, triton, native or auto (may change on --resume)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--overwrite", action="store_true", help="start over even if --out holds checkpoints")
    return p


def run_guarded(call):
    """(result, 0) of a training call, or (None, exit code) after printing its failure as one
    line: a non-finite loss or a lost process 1, a bad checkpoint 2, Ctrl-C 130."""
    try:
        return call(), 0
    except (NonFiniteLossError, DistributedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return None, 1
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return None, 2
    except TrainingInterrupted as e:
        where = f"checkpoint {e.checkpoint}" if e.checkpoint else "no checkpoint could be written"
        if launch_env().is_main:
            print(f"\ninterrupted at step {e.step}; {where}; continue with --resume", file=sys.stderr)
        return None, 130


def run(args) -> int:
    result, code = run_guarded(lambda: training.train(
        args.data, args.out, preset=args.preset, config=args.config, backend=args.backend,
        resume=args.resume, overwrite=args.overwrite, **given_settings(args)))
    if result is None:
        return code
    if result.final_val_loss is not None and launch_env().is_main:  # under torchrun: rank 0 alone
        val = result.final_val_loss
        print(f"final validation loss {val:.4f}, perplexity {math.exp(min(val, 50)):.2f} "
              f"(step {result.step})")
    return 0
