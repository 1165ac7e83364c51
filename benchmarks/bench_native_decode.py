"""CPU decode speed of the native backend against the torch reference and transformers.

GPT-2 124M shape with random weights, batch 1, a 16-token prompt, 128 new tokens, greedy,
2 threads. Engines run interleaved, round after round, so they share the machine's state
(its read bandwidth swings by tens of percent within minutes); each round also measures
that bandwidth (best of a few full reads of a 512 MB buffer by torch.sum).

  decode ms/token = (time of generate(128 new) - time of generate(1 new)) / 127
  GB/s            = weight bytes read per token / decode time
  floor           = weight bytes / measured read bandwidth (the time just to read them)

Usage: python benchmarks/bench_native_decode.py [--rounds 3] [--threads 2]
Appends one JSON record to benchmarks/results/native_decode.jsonl and prints a table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile

import torch

from common import append_jsonl, git_commit, markdown_table, read_bandwidth_gbs, set_threads, timed, utc_time
import llm
from llm import GPT
from llm.native.packing import pack_model


def build_models(seed: int):
    """transformers' GPT2LMHeadModel with random weights, and the same weights in llm.GPT."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    hf = GPT2LMHeadModel(GPT2Config()).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        model = GPT.from_pretrained(d, backend="native").eval()
    return hf, model


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--no-int8", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    set_threads(args.threads)
    load_before = os.getloadavg()[0]
    hf, model = build_models(args.seed)
    ids = torch.randint(0, model.config.vocab_size, (1, args.prompt_len), generator=torch.Generator().manual_seed(1))
    n = args.new_tokens

    formats = ["float32", "bfloat16"] + ([] if args.no_int8 else ["int8"])
    weight_bytes = {f: int(pack_model(model, f).streamed_bytes()) for f in formats}  # packs once, up front
    fp32_bytes = sum(p.numel() * 4 for name, p in model.named_parameters()
                     if p.dim() == 2 and "wpe" not in name)  # linear weights + tied lm_head

    def native(fmt):
        def run(k):
            os.environ["LLM_NATIVE_WEIGHTS"] = fmt
            model.set_backend("native")
            return model.generate(ids, k)
        return run

    def reference(k):
        model.set_backend("torch")
        return model.generate(ids, k)

    def transformers_generate(k):
        with torch.inference_mode():
            return hf.generate(ids, max_new_tokens=k, min_new_tokens=k, do_sample=False,
                               pad_token_id=hf.config.eos_token_id)

    engines = {f"native {f}": (native(f), weight_bytes[f]) for f in formats}
    engines["torch reference"] = (reference, fp32_bytes)
    engines["transformers"] = (transformers_generate, fp32_bytes)

    outputs = {name: fn(n) for name, (fn, _) in engines.items()}  # warm-up, and the tokens
    buf = torch.ones(128 * 1024 * 1024)  # 512 MB
    rounds = []
    for r in range(args.rounds):
        rec = {"bandwidth_gbs": read_bandwidth_gbs(buf)}
        for name, (fn, _) in engines.items():
            t1, _ = timed(lambda: fn(1))
            tn, _ = timed(lambda: fn(n))
            rec[name] = {"ms_per_token": (tn - t1) / (n - 1) * 1e3, "generate_s": tn}
        rec["bandwidth_gbs_after"] = read_bandwidth_gbs(buf)
        rounds.append(rec)
        print(f"round {r}: bandwidth {rec['bandwidth_gbs']:.1f}/{rec['bandwidth_gbs_after']:.1f} GB/s, "
              + ", ".join(f"{k} {rec[k]['ms_per_token']:.2f}" for k in engines), flush=True)
    os.environ.pop("LLM_NATIVE_WEIGHTS", None)

    bw = statistics.median([x for r in rounds for x in (r["bandwidth_gbs"], r["bandwidth_gbs_after"])])
    summary = {}
    for name, (_, nbytes) in engines.items():
        ms = statistics.median(r[name]["ms_per_token"] for r in rounds)
        gbs = nbytes / (ms * 1e-3) / 1e9
        summary[name] = {
            "ms_per_token": ms,
            "tokens_per_s": 1e3 / ms,
            "weight_bytes": nbytes,
            "gbs": gbs,
            "fraction_of_bandwidth": gbs / bw,
            "floor_ms": nbytes / (bw * 1e9) * 1e3,
            "same_tokens_as_torch": bool(torch.equal(outputs[name][0, :ids.shape[1] + n],
                                                     outputs["torch reference"][0])),
        }
    tf = summary["transformers"]["ms_per_token"]
    f32 = summary["native float32"]["ms_per_token"]
    for name in summary:
        summary[name]["speedup_vs_transformers"] = tf / summary[name]["ms_per_token"]
        summary[name]["speedup_vs_native_fp32"] = f32 / summary[name]["ms_per_token"]

    # accuracy of the low-precision weights: prompt logits against fp32
    with torch.inference_mode():
        pos = torch.arange(ids.shape[1])
        from llm.native.decoder import NativeDecoder
        logits = {f: NativeDecoder(model, 1, ids.shape[1], f).prefill(ids, pos, pos[None]) for f in formats}
    accuracy = {f: {"max_abs_logit_err_vs_fp32": (logits[f] - logits["float32"]).abs().max().item(),
                    "logit_std": logits["float32"].std().item(),
                    "greedy_tokens_equal_fp32": float((outputs[f"native {f}"] == outputs["native float32"])
                                                      [0, ids.shape[1]:].float().mean())}
                for f in formats[1:]}

    record = {
        "time": utc_time(),
        "commit": git_commit(),
        "machine": platform.processor() or platform.machine(),
        "cpu_isa": torch.ops.llm.cpu_isa(),
        "threads": args.threads,
        "torch": torch.__version__,
        "llm": llm.__version__,
        "setup": {"model": "gpt2 124M shape, random weights", "batch": 1, "prompt": ids.shape[1], "new_tokens": n},
        "bandwidth_gbs_median": bw,
        "load_average_1min": [load_before, os.getloadavg()[0]],  # other processes on the same cores
        "rounds": rounds,
        "summary": summary,
        "low_precision_accuracy": accuracy,
    }
    path = append_jsonl("native_decode", record)

    print(f"\nread bandwidth (torch.sum, {args.threads} threads, median of the run): {bw:.1f} GB/s; "
          f"1-min load average {record['load_average_1min'][0]:.1f} -> {record['load_average_1min'][1]:.1f}")
    table = [{"engine": name, "ms/token": f"{s['ms_per_token']:.2f}", "tokens/s": f"{s['tokens_per_s']:.1f}",
              "weights read/token": f"{s['weight_bytes'] / 1e6:.0f} MB", "GB/s": f"{s['gbs']:.1f}",
              "% of bandwidth": f"{100 * s['fraction_of_bandwidth']:.0f}%",
              "vs transformers": f"{s['speedup_vs_transformers']:.2f}x",
              "vs native fp32": f"{s['speedup_vs_native_fp32']:.2f}x"} for name, s in summary.items()]
    print(markdown_table(table, list(table[0]), align="lrrrrrrr"))
    for f, a in accuracy.items():
        print(f"{f}: max |logit - fp32 logit| {a['max_abs_logit_err_vs_fp32']:.4f} (logit std {a['logit_std']:.3f}); "
              f"greedy tokens equal to fp32's: {100 * a['greedy_tokens_equal_fp32']:.0f}%")
    print(f"native fp32 greedy tokens equal torch's: {summary['native float32']['same_tokens_as_torch']}")
    print(f"appended to {path}")


if __name__ == "__main__":
    main()
