"""Fine-tuning step throughput and peak memory: full fine-tuning vs the last block vs LoRA.

The book's classification fine-tuning step (chapter 6, appendix E): a GPT-2 with a 2-label
head, batch 8 x 120 tokens (the longest SMS Spam Collection message), AdamW with weight
decay 0.1 and gradient clipping, the step `llm finetune classify` runs: forward to the last
real token, cross-entropy, backward, clipping, optimizer step. What trains:

    full        every parameter (--train all)
    last block  the last block, the final norm and the head (--train last-k --k 1, the book's)
    LoRA        rank-16 adapters (alpha 16) on c_attn, c_proj, c_fc, and the head (--train lora)
    head        the head only (--train head)

For each shape (the `small` preset, the gpt2 124M shape), random weights, every mode starts
from the same weights; modes are interleaved round by round in alternating order, and the
median step is reported as tokens/s. Peak memory is what building the model and its first
two steps add to the process (weights, gradients, AdamW state, activations): the peak
resident set on CPU (as bench_train.py measures it), `max_memory_allocated` on CUDA.
`--task instruct` times the instruction-tuning step instead (next-token loss through the
op table's lm_head_loss over GPT-2's vocabulary; the last block mode then trains no head).

    python benchmarks/bench_finetune.py [--shapes small,gpt2] [--modes full,last-block,lora]
        [--task classify] [--batch 8] [--tokens 120] [--rounds 3] [--threads 2] [--device cpu]

A record is appended to benchmarks/results/finetune.jsonl (the one results format, llm.bench).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from common import RESULTS, environment, markdown_table, set_threads
from llm import GPT, GPTConfig
from llm.bench import PeakMemory, interleaved, make_record, sync, write_record
from llm.bench.env import describe
from llm.finetune import ClassifyConfig, GPTForSequenceClassification, InstructConfig
from llm.finetune.runs import select_trainable
from llm.training import param_groups

MODES = {"full": "all", "last-block": "last-k", "lora": "lora", "head": "head"}
TITLES = {"full": "full", "last-block": "last block", "lora": "LoRA r=16", "head": "head only"}


def build(config: GPTConfig, state: dict, mode: str, task: str, device: str):
    """(model, step function, trained parameters) for one mode, from the same weights."""
    gpt = GPT(config).to(device)
    gpt.load_state_dict(state)
    torch.manual_seed(1)  # the same head in every mode (LoRA starts at B = 0): equal first losses
    if task == "classify":
        model = GPTForSequenceClassification(gpt, ["ham", "spam"])
        cfg = ClassifyConfig(train=MODES[mode], k=1, lora_r=16, lora_alpha=16)
        select_trainable(gpt, model.score, cfg)
    else:
        model = gpt
        select_trainable(gpt, None, InstructConfig(train=MODES[mode], k=1, lora_r=16, lora_alpha=16))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=5e-5)

    def step(x, y, mask):
        loss = model.loss(x, y, mask) if task == "classify" else model.loss(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return model, step, sum(p.numel() for p in params)


def batch(config: GPTConfig, B: int, T: int, task: str, device: str):
    """Inputs [B, T] (right padded: row i has T - 3 i real tokens), their mask and targets."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, config.vocab_size, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    for i in range(B):
        mask[i, max(1, T - 3 * i):] = False
    if task == "classify":
        y = torch.randint(0, 2, (B,), generator=g)
    else:
        y = x.roll(-1, 1).masked_fill(~mask, -100)
    return x.to(device), y.to(device), mask.to(device)


def bench_shape(shape: str, modes: list[str], task: str, B: int, T: int, rounds: int, device: str) -> list[dict]:
    config = GPTConfig.from_preset(shape)
    x, y, mask = batch(config, B, T, task, device)
    torch.manual_seed(0)
    state = GPT(config).state_dict()
    steps, peaks, trained, losses = {}, {}, {}, {}
    for mode in modes:
        with PeakMemory(device) as mem:
            model, step, trained[mode] = build(config, state, mode, task, device)
            losses[mode] = float(step(x, y, mask))  # warm-up; allocates the AdamW state
            step(x, y, mask)
            sync(device)
        steps[mode], peaks[mode] = step, mem.peak_mb
    # ABBA rounds (llm.bench.interleaved): a drift in machine speed hits every mode alike
    times = interleaved({mode: (lambda step=steps[mode]: step(x, y, mask)) for mode in modes}, device,
                        rounds=rounds, warmup=0, budget_s=0.0, max_reps=1)
    rows = []
    for mode in modes:
        t = times[mode].median_ms / 1e3
        rows.append({"shape": shape, "task": task, "batch": B, "tokens": T, "mode": TITLES[mode],
                     "trained_M": round(trained[mode] / 1e6, 3), "step_ms": round(t * 1e3, 1),
                     "spread": round(times[mode].spread, 3), "tokens_per_s": round(B * T / t, 1),
                     "peak_mem_MB": None if peaks[mode] is None else round(peaks[mode], 1),
                     "first_loss": round(losses[mode], 4)})
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="small,gpt2")
    ap.add_argument("--modes", default="full,last-block,lora", help=f"comma-separated, of {list(MODES)}")
    ap.add_argument("--task", default="classify", choices=("classify", "instruct"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=120)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    modes = args.modes.split(",")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        ap.error(f"unknown modes {unknown}; choose from {list(MODES)}")
    set_threads(args.threads)
    env = environment(args.device)
    bench_shape("tiny", modes, args.task, 2, 16, 1, args.device)  # first use of the math libraries
    rows = []
    for shape in args.shapes.split(","):
        new = bench_shape(shape, modes, args.task, args.batch, args.tokens, args.rounds, args.device)
        for r in new:
            print(json.dumps(r))
        rows.extend(new)
    settings = dict(vars(args), command=" ".join(["python benchmarks/bench_finetune.py", *sys.argv[1:]]))
    path = write_record(RESULTS, make_record("finetune", env, rows, settings=settings))
    cols = ["shape", "mode", "trained_M", "tokens_per_s", "step_ms", "peak_mem_MB", "first_loss"]
    print(f"\n{describe(env)}; task {args.task}, batch {args.batch} x {args.tokens} tokens\n")
    print(markdown_table(rows, cols, float_spec=""))
    print(f"appended to {path}")


if __name__ == "__main__":
    main()
