"""Training step throughput and peak memory: `llm` next to a plain nanoGPT-style step.

For each model shape (the `small` preset, the gpt2 124M shape) and precision (fp32, bf16
autocast) it builds `llm.GPT` with each requested backend and an eager PyTorch GPT-2
written below the nanoGPT way (nn.Linear, SDPA, logits then F.cross_entropy), both holding
the same weights, and times full training steps: forward + loss, backward, gradient
clipping, AdamW with decay groups. The implementations are interleaved round by round, in
alternating order, so a swing in machine speed hits all alike; the median step is reported
as tokens/s.

Peak memory is what a step adds on top of the process: on CUDA `max_memory_allocated`
minus the memory allocated before the model was built; on CPU the peak resident set
(VmHWM, reset through /proc/self/clear_refs) minus the resident set before the model was
built. It covers weights, gradients, AdamW state and activations.

    python benchmarks/bench_train.py [--shapes small,gpt2] [--dtypes float32,bfloat16]
        [--backends torch] [--rounds 3] [--steps 2] [--threads 2] [--device cpu]

Results are appended to benchmarks/results/train.jsonl and train.csv with the machine,
versions and commit.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import gc
import json
import statistics
from contextlib import nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F

from common import RESULTS, append_jsonl, environment, markdown_table, set_threads, sync, timed
from llm import GPT, GPTConfig
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


# -- measuring -------------------------------------------------------------------------------


def _status_kb(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _release_memory():
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


class PeakMemory:
    """Bytes a block adds at its peak: CUDA allocator, else resident set (Linux)."""

    def __init__(self, device: str):
        self.cuda = torch.device(device).type == "cuda"

    def __enter__(self):
        _release_memory()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current VmRSS
            self.base = _status_kb("VmRSS") * 1024
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.peak = _status_kb("VmHWM") * 1024 - self.base
        return False


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
        impls[name], peaks[name] = step, mem.peak
    times = {name: [] for name in impls}
    for r in range(rounds):
        order = list(impls.items())
        for name, step in (order if r % 2 == 0 else order[::-1]):  # ABBA: drift hits both alike
            seconds, _ = timed(lambda: [step(x, y) for _ in range(steps)], device)
            times[name].append(seconds / steps)
    rows = []
    base = first_loss[names[-1]]
    for name in impls:
        t = statistics.median(times[name])
        rows.append({"shape": shape, "params_M": round(sum(p.numel() for p in reference_params(config)) / 1e6, 1),
                     "batch": B, "context": T, "dtype": dtype if dtype == "float32" else "bf16 autocast",
                     "impl": name, "step_ms": round(t * 1e3, 1), "tokens_per_s": round(B * T / t, 1),
                     "peak_mem_MB": round(peaks[name] / 2**20, 1),
                     "first_loss_diff": float(f"{abs(first_loss[name] - base):.2e}")})
    del impls
    _release_memory()
    return rows


def reference_params(config):
    with torch.device("meta"):
        return list(GPT(config, backend="torch").parameters())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="small,gpt2")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--backends", default="torch", help="llm backends to run, comma-separated")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=1, help="steps per timed round")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
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
    append_jsonl("train", {"env": env, "rows": rows})
    csv_path = RESULTS / "train.csv"
    new_file = not csv_path.exists()
    if new_file:
        fields = list(env) + list(rows[0])
    else:  # the file's own columns: an environment with other keys must not shift them
        with open(csv_path, newline="") as f:
            fields = next(csv.reader(f))
    with open(csv_path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new_file:
            w.writeheader()
        for r in rows:
            w.writerow({**env, **r})
    cols = ["shape", "dtype", "impl", "batch", "context", "tokens_per_s", "step_ms", "peak_mem_MB",
            "first_loss_diff"]
    print(f"\n{env['cpu']}, {env['threads']} threads, torch {env['torch']}, commit {env['commit']}\n")
    print(markdown_table(rows, cols, float_spec=""))


if __name__ == "__main__":
    main()
