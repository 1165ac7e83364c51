"""`llm train`: pretrain a GPT on a text dataset (torch is imported only to run)."""

from __future__ import annotations

import math
import sys


def add_parser(sub):
    p = sub.add_parser("train", help="pretrain a GPT on a text dataset, with resumable checkpoints")
    p.add_argument("--data", required=True, help="a .txt file, a folder of .txt files, or a .jsonl with a 'text' field")
    p.add_argument("--out", required=True, help="output folder: checkpoints/, loss.png, the final model")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--preset", default=None, help="model preset (default 'small'): small, tiny, gpt2, ...")
    g.add_argument("--config", default=None, help="model config.json (Hugging Face GPT-2 format)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default 1000)")
    p.add_argument("--batch-size", type=int, default=None, help="windows per micro-batch (default 8)")
    p.add_argument("--grad-accum", type=int, default=None, help="micro-batches per step (default 1)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 6e-4)")
    p.add_argument("--warmup-steps", type=int, default=None)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--grad-clip", type=float, default=None, help="max gradient norm, 0 for none (default 1.0)")
    p.add_argument("--context-length", type=int, default=None, help="window length (default: n_positions)")
    p.add_argument("--stride", type=int, default=None, help="window stride (default: context length)")
    p.add_argument("--val-fraction", type=float, default=None, help="validation split (default 0.05)")
    p.add_argument("--eval-every", type=int, default=None)
    p.add_argument("--eval-batches", type=int, default=None, help="validation batches per evaluation (default 20)")
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--keep", type=int, default=None, help="checkpoints kept (default 3)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--max-seconds", type=float, default=None,
                   help="stop and save at the first step boundary after this many seconds")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="bfloat16: autocast; weights and optimizer stay float32")
    p.add_argument("--device", default=None, help="cpu (default) or cuda")
    p.add_argument("--backend", default=None,
                   help="op backend: torch, triton, native or auto (may change on --resume)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--overwrite", action="store_true", help="start over even if --out holds checkpoints")
    return p


def run(args) -> int:
    from ..checkpoint import CheckpointError
    from ..train import NonFiniteLossError, TrainingInterrupted, train

    settings = dict(steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
                    lr=args.lr, warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
                    grad_clip=args.grad_clip, context_length=args.context_length, stride=args.stride,
                    val_fraction=args.val_fraction, eval_every=args.eval_every, eval_batches=args.eval_batches,
                    checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep,
                    seed=args.seed, max_seconds=args.max_seconds, dtype=args.dtype, device=args.device)
    try:
        result = train(args.data, args.out, preset=args.preset, config=args.config,
                       backend=args.backend, resume=args.resume, overwrite=args.overwrite,
                       **{k: v for k, v in settings.items() if v is not None})
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
