"""Training step throughput and peak memory: `llm` next to a plain nanoGPT-style step.

For each model shape (the `small` preset, the gpt2 124M shape) and precision (fp32, bf16
autocast) it builds `llm.GPT` with each requested backend and an eager PyTorch GPT-2
written below the nanoGPT way (nn.Linear, SDPA, logits then F.cross_entropy), both holding
the same weights, and times full training steps: forward + loss, backward, gradient
clipping, AdamW with decay groups. The implementations are interleaved round by round, in
alternating order, so a swing in machine speed hits all alike; the median step is reported
as tokens/s.

Peak memory is what building the model and its first two steps add to the process
(llm.bench.PeakMemory: CUDA allocator, or the peak resident set on a CPU): weights,
gradients, AdamW state and activations. `llm bench --op train` times the same step against
transformers' GPT-2 instead (llm/bench/training.py).

    python benchmarks/bench_train.py [--shapes small,gpt2] [--dtypes float32,bfloat16]
        [--backends torch] [--rounds 3] [--steps 2] [--threads 2] [--device cpu]

A record is appended to benchmarks/results/train.jsonl (the one results format).
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F

from common import RESULTS, environment, markdown_table, set_threads
from llm import GPT, GPTConfig
from llm.bench import PeakMemory, interleaved, make_record, release_memory, sync, write_record
from llm.bench.env import describe
from llm.ops import BackendUnavailableError
from llm.training import param_groups

# (preset, batch size, context length) per shape: a few steps each on two CPU cores.
SHAPES = {"tiny": ("tiny", 4, 64), "small": ("small", 8, 256), "gpt2": ("gpt2", 1, 256)}


# -- the plain eager model, nanoGPT style -----------------------------------------------------


class EagerBlock(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.n_head = c.n_head
        self.ln_1 = nn.LayerNorm(c.n_embd, eps=c.layer_norm_epsilon)
        self.attn = nn.Module()
        self.attn.c_attn = nn.Linear(c.n_embd, 3 * c.n_embd)
        self.attn.c_proj = nn.Linear(c.n_embd, c.n_embd)
        self.ln_2 = nn.LayerNorm(c.n_embd, eps=c.layer_norm_epsilon)
        self.mlp = nn.Module()
        self.mlp.c_fc = nn.Linear(c.n_embd, c.inner_dim)
        self.mlp.c_proj = nn.Linear(c.inner_dim, c.n_embd)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.attn.c_attn(self.ln_1(x)).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))
        return x + self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x)), approximate="tanh"))


class EagerGPT(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(c.vocab_size, c.n_embd), wpe=nn.Embedding(c.n_positions, c.n_embd),
            h=nn.ModuleList([EagerBlock(c) for _ in range(c.n_layer)]),
            ln_f=nn.LayerNorm(c.n_embd, eps=c.layer_norm_epsilon)))
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight

    def loss(self, idx, targets):
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, V)
        return F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.view(-1))


# -- measuring (PeakMemory, imported from here by bench_finetune.py, is llm.bench's) ----------


def make_step(model, device, dtype, clip=1.0):
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-4, betas=(0.9, 0.95),
                            fused=True if torch.device(device).type == "cuda" else None)
    amp = (torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
           if dtype == "bfloat16" else nullcontext())

    def step(x, y):
        with amp:
            loss = model.loss(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def bench_shape(shape, dtype, backends, rounds, steps, device):
    preset, B, T = SHAPES[shape]
    config = GPTConfig.from_preset(preset)
    x = torch.randint(0, config.vocab_size, (B, T), device=device)
    y = torch.randint(0, config.vocab_size, (B, T), device=device)
    impls, peaks, first_loss = {}, {}, {}
    torch.manual_seed(0)
    reference_sd = GPT(config, backend="torch").to(device).state_dict()  # every impl starts here
    names = [f"llm {b}" for b in backends] + ["eager nanoGPT-style"]
    for name in names:
        try:
            with PeakMemory(device) as mem:
                if name.startswith("llm"):
                    model = GPT(config, backend=name.split()[1]).to(device)
                else:
                    model = EagerGPT(config).to(device)
                model.load_state_dict(reference_sd)  # same weights: the first losses must agree
                step = make_step(model, device, dtype)
                first_loss[name] = float(step(x, y))  # warm-up; allocates AdamW state
                step(x, y)
                sync(device)
        except BackendUnavailableError as e:
            print(f"skipping {name}: {e}")
            continue
        impls[name], peaks[name] = step, mem.peak_mb
    # ABBA rounds (llm.bench.interleaved): a drift in machine speed hits every impl alike
    times = interleaved({name: (lambda step=step: [step(x, y) for _ in range(steps)]) for name, step in impls.items()},
                        device, rounds=rounds, warmup=0, budget_s=0.0, max_reps=1)
    rows = []
    base = first_loss[names[-1]]
    for name in impls:
        t = times[name].median_ms / steps / 1e3
        rows.append({"shape": shape, "params_M": round(sum(p.numel() for p in reference_params(config)) / 1e6, 1),
                     "batch": B, "context": T, "dtype": dtype if dtype == "float32" else "bf16 autocast",
                     "impl": name, "step_ms": round(t * 1e3, 1), "spread": round(times[name].spread, 3),
                     "tokens_per_s": round(B * T / t, 1),
                     "peak_mem_MB": None if peaks[name] is None else round(peaks[name], 1),
                     "first_loss_diff": float(f"{abs(first_loss[name] - base):.2e}")})
    del impls
    release_memory()
    return rows


def reference_params(config):
    with torch.device("meta"):
        return list(GPT(config, backend="torch").parameters())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="small,gpt2")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--backends", default="torch", help="llm backends to run, comma-separated")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=1, help="steps per timed round")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(RESULTS), help="results folder (default benchmarks/results)")
    args = ap.parse_args(argv)
    set_threads(args.threads)
    env = environment(args.device)
    for dtype in args.dtypes.split(","):  # first use of the math libraries, kept out of the figures
        bench_shape("tiny", dtype, args.backends.split(","), 1, 1, args.device)
    rows = []
    for shape in args.shapes.split(","):
        for dtype in args.dtypes.split(","):
            new = bench_shape(shape, dtype, args.backends.split(","), args.rounds, args.steps, args.device)
            for r in new:
                print(json.dumps(r))
            rows.extend(new)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    settings["command"] = " ".join(["python benchmarks/bench_train.py", *(sys.argv[1:] if argv is None else argv)])
    path = write_record(args.out, make_record("train", env, rows, settings=settings))
    cols = ["shape", "dtype", "impl", "batch", "context", "tokens_per_s", "step_ms", "peak_mem_MB",
            "first_loss_diff"]
    print(f"\n{describe(env)}\n")
    print(markdown_table(rows, cols, float_spec=""))
    print(f"appended to {path}")


if __name__ == "__main__":
    main()
