"""transformers' GPT-2 patched onto llm's op table (`llm.patch_transformers`) against the same
model unpatched: a training step (forward, backward, AdamW) and `generate`, in one run.

Providers: `transformers` (unpatched, its default attention, sdpa), `patched[<backend>]` for
each backend that runs here (torch, native; triton on CUDA). Every provider is a copy of one
random-weight model; before timing, each patched copy's logits are checked against the
unpatched model's. Providers are timed interleaved (`llm.bench.interleaved`: rounds in
alternating order); the table shows the median and the ratio to unpatched transformers
(> 1 is faster). The record goes to results/interop.jsonl (the README's table).

    python benchmarks/bench_interop.py              # gpt2 124M shape, random weights
    python benchmarks/bench_interop.py --quick      # tiny shapes, a smoke test
"""

from __future__ import annotations

import argparse
import copy
import sys

import torch

from common import markdown_table, report, set_threads
import llm
from llm.bench import interleaved
from llm.ops import BackendUnavailableError, get_ops


def build(quick: bool, device):
    from transformers import GPT2Config, GPT2LMHeadModel

    shape = dict(n_embd=64, n_layer=2, n_head=4, n_positions=128) if quick else {}
    config = GPT2Config(**shape, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=50256,
                        eos_token_id=50256)
    torch.manual_seed(0)
    return GPT2LMHeadModel(config).to(device).eval()


def providers(base, device):
    """name -> model: the unpatched model and a patched copy per backend that runs here."""
    out, backends = {"transformers": base}, ["torch", "native"] + (["triton"] if device.type == "cuda" else [])
    for backend in backends:
        try:
            get_ops(backend)
        except BackendUnavailableError as e:
            print(f"[patched[{backend}] skipped: {e}]")
            continue
        out[f"patched[{backend}]"] = llm.patch_transformers(copy.deepcopy(base), backend)
    return out


def check(models, device) -> None:
    ids = torch.randint(0, 50257, (2, 32), device=device)
    with torch.no_grad():
        ref = models["transformers"](ids).logits
        for name, model in models.items():
            torch.testing.assert_close(model(ids).logits, ref, rtol=1e-4, atol=1e-4, msg=lambda m: f"{name}: {m}")


def train_step_fn(model, ids):
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step():
        loss = model(ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def generate_fn(model, ids, new):
    def gen():
        model.eval()
        with torch.inference_mode():
            return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                                  min_new_tokens=new, do_sample=False, pad_token_id=50256)

    return gen


def measure(models, work: dict, rounds: int, device) -> list[dict]:
    """Each workload's providers timed interleaved; one row per (workload, provider)."""
    rows = []
    for w, per in work.items():
        timings = interleaved(per, device, rounds=rounds, warmup=1, budget_s=0.0)
        base = timings["transformers"].median_ms
        for p in models:
            rows.append(dict(workload=w, provider=p, **timings[p].summary(), vs_transformers=base / timings[p].median_ms))
        print(f"{w}: " + ", ".join(f"{p} {timings[p].median_ms:.0f} ms" for p in models), flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model, a smoke test")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=4, help="training batch (default 4)")
    parser.add_argument("--seq", type=int, default=128, help="training sequence length (default 128)")
    parser.add_argument("--prompt", type=int, default=32, help="generate: prompt tokens (default 32)")
    parser.add_argument("--new", type=int, default=32, help="generate: new tokens (default 32)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per provider (default 5)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    device = torch.device(args.device)
    models = providers(build(args.quick, device), device)
    check(models, device)
    train_ids = torch.randint(0, 50257, (args.batch, args.seq), device=device)
    prompt = torch.randint(0, 50257, (1, args.prompt), device=device)
    work = {f"train step B={args.batch} T={args.seq}": {p: train_step_fn(m, train_ids) for p, m in models.items()},
            f"generate {args.prompt}+{args.new} tokens": {p: generate_fn(m, prompt, args.new) for p, m in models.items()}}
    rows = measure(models, work, args.rounds, device)
    command = " ".join(["python", "benchmarks/bench_interop.py", *sys.argv[1:]]) if argv is None else None
    report("interop", rows, settings=dict(vars(args), command=command, script="bench_interop.py"))
    print(table(rows))
    return 0


def table(rows: list[dict]) -> str:
    """The markdown table of a run's rows (the README's)."""
    cols = {"workload": "workload", "provider": "provider", "ms": "median ms", "vs_transformers": "vs transformers"}
    return markdown_table(rows, list(cols), cols, align="llrr", specs={"ms": ".1f", "vs_transformers": ".2f"})


if __name__ == "__main__":
    raise SystemExit(main())
