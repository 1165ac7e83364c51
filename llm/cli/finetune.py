"""`llm finetune classify|instruct`: fine-tune a GPT-2 folder into `--out`, resumably.

The setting flags are made from `ClassifyConfig` / `InstructConfig` fields (`--batch-size` for
`batch_size`, ...), as `llm train` makes its own from `TrainConfig`; a flag left out is
"not given": the default, or on `--resume` the checkpoint's setting.
"""

from __future__ import annotations

import math

from ..finetune.config import ClassifyConfig, InstructConfig
from .train import add_setting_flags, given_settings, run_guarded

TASKS = {"classify": ClassifyConfig, "instruct": InstructConfig}


def add_parser(sub):
    p = sub.add_parser("finetune", help="fine-tune a GPT-2: classify (texts and labels) or instruct "
                                        "(Alpaca-format instructions), with LoRA if asked")
    tasks = p.add_subparsers(dest="task", required=True, metavar="TASK")
    c = tasks.add_parser("classify", help="train a classifier head (and the last blocks, all, or LoRA adapters)")
    _common_flags(c, "CSV or TSV (header row), JSONL, or the SMS Spam Collection file (label<TAB>text lines)")
    add_setting_flags(c.add_argument_group("settings"), ClassifyConfig)
    i = tasks.add_parser("instruct", help="instruction-tune on Alpaca-format data, then answer the test split")
    _common_flags(i, "Alpaca-format JSON array or JSONL: instruction, optional input, output")
    add_setting_flags(i.add_argument_group("settings"), InstructConfig)
    return p


def _common_flags(p, data_help: str) -> None:
    p.add_argument("--model", required=True, help="the GPT-2 to start from: a model folder or hub name")
    p.add_argument("--data", required=True, help=data_help)
    p.add_argument("--out", required=True, help="output folder: checkpoints/, loss.png, metrics, the model")
    p.add_argument("--val-data", default=None, help="a validation file (with --test-data; default: split --data)")
    p.add_argument("--test-data", default=None, help="a test file (with --val-data)")
    p.add_argument("--backend", default=None, help="op backend: torch, triton, native or auto")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--overwrite", action="store_true", help="start over even if --out holds checkpoints")


def run(args) -> int:
    from ..finetune import finetune_classifier, finetune_instruct

    fn = finetune_classifier if args.task == "classify" else finetune_instruct
    result, code = run_guarded(lambda: fn(
        args.model, args.data, args.out, val_data=args.val_data, test_data=args.test_data,
        backend=args.backend, resume=args.resume, overwrite=args.overwrite,
        **given_settings(args, TASKS[args.task])))
    if result is None:
        return code
    if args.task == "classify":
        scores = ", ".join(f"{k} accuracy {m.accuracy:.2%}" for k, m in result.metrics.items())
        print(f"{scores}; classifier saved to {result.out_dir}")
    else:
        if result.val_loss is not None:
            print(f"validation loss {result.val_loss:.4f}, perplexity {math.exp(min(result.val_loss, 50)):.2f}")
        print(f"model saved to {result.out_dir}" + (f"; test answers in {result.answers}" if result.answers else ""))
    return 0
