"""Reference decode speed next to transformers' generate, in one run.

gpt2 124M shape, random weights, batch 1, 16-token prompt, 128 new tokens, greedy, CPU.
The engines are interleaved (round-robin, several rounds) so a swing in the machine's
speed hits both alike; the median per engine is reported.

    python benchmarks/bench_decode.py [--rounds 3] [--threads 2] [--new 128]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from common import append_jsonl, environment, llm_from_hf, markdown_table, set_threads, timed


def build(dtype):
    """transformers' GPT-2 (124M shape, random weights) and llm.GPT with the same weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_embd=768, n_layer=12, n_head=12)).eval().to(dtype)
    ours = llm_from_hf(hf, backend="torch").eval()
    return hf, ours.to(dtype)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    args = ap.parse_args()
    set_threads(args.threads)
    import transformers

    env = environment(transformers=transformers.__version__)
    rows = []
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        hf, ours = build(dtype)
        x = torch.randint(0, 50257, (1, args.prompt))
        engines = {
            "llm torch (reference)": lambda: ours.generate(x, args.new),
            "transformers generate": lambda: hf.generate(x, max_new_tokens=args.new, min_new_tokens=args.new,
                                                          do_sample=False, pad_token_id=0,
                                                          attention_mask=torch.ones_like(x)),
        }
        outs = {name: fn() for name, fn in engines.items()}  # warm-up, and the tokens must agree
        same = torch.equal(*outs.values())
        times = {name: [] for name in engines}
        for _ in range(args.rounds):
            for name, fn in engines.items():
                with torch.inference_mode():
                    times[name].append(timed(fn)[0])
        base = statistics.median(times["transformers generate"])
        for name, ts in times.items():
            t = statistics.median(ts)
            rows.append({"engine": name, "dtype": dtype_name, "ms/token": 1000 * t / args.new,
                         "tokens/s": args.new / t, "vs transformers": base / t,
                         "same tokens": same})
    path = append_jsonl("decode_reference", {"env": env, "rows": rows})
    print(f"{env['cpu']}, {env['threads']} threads, torch {env['torch']}, commit {env['commit']}")
    print(f"gpt2 124M shape, batch 1, prompt {args.prompt}, {args.new} new tokens, greedy, "
          f"median of {args.rounds} interleaved rounds")
    print(markdown_table(rows, ["engine", "dtype", "ms/token", "tokens/s", "vs transformers", "same tokens"]))
    print(f"saved to {path}")


if __name__ == "__main__":
    main()
