"""The GPU suite for the Triton backend, in one run of under 8 minutes: first bf16
correctness of every op against the fp32 reference (each error at most ~2x that of torch's
own bf16 op), then the quick benchmarks of layernorm, attention, MLP and lm_head loss, the
goals table, and the results in benchmarks/results/gpu_suite-<time>.{json,md}.

    python benchmarks/gpu_suite.py

Without a CUDA device it says so and exits.
"""

import argparse
import json
import sys
import time

import torch

from common import copy_bandwidth_gbs, machine, print_rows, require_cuda, save_json

BUDGET_S = 7 * 60  # leave headroom under 8 minutes
# bf16 at GPT-2 sizes against the fp32 reference: llm.testing's 2x rule with this slack
# (relative to the output's scale)
SLACK = 1e-5


def correctness() -> tuple[bool, list]:
    from llm.ops import get_ops
    from llm.ops import reference as ops
    from llm.testing import compare, within_2x

    tri = get_ops("triton")
    torch.manual_seed(0)
    checks = []

    def against_reference(name, fast_fn, ref_fn, inputs):
        checks.extend(compare(name, fast_fn, ref_fn, inputs, dtype=torch.bfloat16,
                              ref_dtype=torch.float32, slack=SLACK))

    dev = "cuda"
    x = torch.randn(4096, 768, device=dev, requires_grad=True)
    w, b = torch.randn(768, device=dev, requires_grad=True), torch.randn(768, device=dev, requires_grad=True)
    against_reference("layer_norm", lambda *a: tri.layer_norm(*a, 1e-5), lambda *a: ops.layer_norm(*a, 1e-5),
                      [x, w, b])
    for hs, T in ((64, 1000), (128, 777)):
        q, k, v = (torch.randn(2, 4, T, hs, device=dev, requires_grad=True) for _ in range(3))
        mask = torch.ones(2, T, dtype=torch.bool, device=dev)
        mask[1, :100] = False
        against_reference(f"attention hs={hs} T={T}", lambda *a: tri.attention(*a, None, 0.0),
                          lambda *a: ops.attention(*a, None, 0.0), [q, k, v])
        against_reference(f"attention+mask hs={hs}", lambda *a: tri.attention(*a, mask, 0.0),
                          lambda *a: ops.attention(*a, mask, 0.0), [q, k, v])
    xm = torch.randn(2047, 768, device=dev, requires_grad=True)
    pm = [(torch.randn(3072, 768, device=dev) * 0.02).requires_grad_(), torch.randn(3072, device=dev, requires_grad=True),
          (torch.randn(768, 3072, device=dev) * 0.02).requires_grad_(), torch.randn(768, device=dev, requires_grad=True)]
    against_reference("mlp", tri.mlp, ops.mlp, [xm, *pm])
    h = torch.randn(1023, 768, device=dev, requires_grad=True)
    wv = (torch.randn(50257, 768, device=dev) * 0.02).requires_grad_()
    t = torch.randint(0, 50257, (1023,), device=dev)
    t[::9] = -100
    against_reference("lm_head_loss", lambda a, b: tri.lm_head_loss(a, b, t, -100),
                      lambda a, b: ops.lm_head_loss(a, b, t, -100), [h, wv])
    # decode over a 1000-slot cache, left-padded row (absolute slack: outputs are O(1))
    kc, vc = (torch.randn(3, 12, 1000, 64, device=dev, dtype=torch.bfloat16) for _ in range(2))
    valid = torch.ones(3, 1000, dtype=torch.bool, device=dev)
    valid[0, :37] = False
    qd = torch.randn(3, 12, 1, 64, device=dev, dtype=torch.bfloat16)
    pos = torch.tensor([900], device=dev)
    ref = ops.cached_attention(qd.float(), kc.float(), vc.float(), pos, valid)
    checks.append(within_2x("cached_attention decode output", tri.cached_attention(qd, kc, vc, pos, valid), ref,
                            ops.cached_attention(qd, kc, vc, pos, valid), slack=SLACK, scaled=False))
    return all(c.ok for c in checks), [c.row() for c in checks]


GOALS = [  # (op, mode, metric, threshold, description), judged on the triton provider
    ("layernorm", "fwd+bwd", "of_copy", 0.8, "layernorm fwd+bwd >= 80% of copy bandwidth"),
    ("attention", "fwd", "vs_torch", 0.9, "attention fwd >= 0.9x torch SDPA"),
    ("attention", "fwd+bwd", "vs_torch", 0.8, "attention fwd+bwd >= 0.8x torch SDPA"),
    ("mlp", "fwd+bwd", "speedup", 1.1, "MLP fwd+bwd >= 1.1x eager torch"),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    if not require_cuda("gpu_suite"):
        return 0
    start = time.time()
    import bench_attention
    import bench_layernorm
    import bench_lm_head_loss
    import bench_mlp

    print("== bf16 correctness against the fp32 reference")
    ok, report = correctness()
    print_rows(report)
    if not ok:
        print("correctness FAILED: benchmarks not run")
        return 1
    rows = []
    print(f"\ncopy bandwidth: {copy_bandwidth_gbs():.0f} GB/s")
    for name, mod in (("layernorm", bench_layernorm), ("attention", bench_attention),
                      ("mlp", bench_mlp), ("lm_head_loss", bench_lm_head_loss)):
        if time.time() - start > BUDGET_S:
            print(f"[{name} skipped: time budget spent]")
            continue
        print(f"\n== {name}")
        part = mod.run(quick=True)
        print_rows(part)
        rows += part
    print("\n== goals (measured, triton provider)")
    goals = []
    for op, mode, metric, threshold, text in GOALS:
        vals = [r[metric] for r in rows if r["op"] == op and r["provider"] == "triton" and r["mode"] == mode]
        if vals:
            worst = min(vals)
            goals.append(dict(goal=text, worst=worst, met="yes" if worst >= threshold else "no"))
    print_rows(goals)
    path = save_json("gpu_suite", correctness=report, rows=rows, goals=goals)
    stamp = path.stem.removeprefix("gpu_suite-")
    with open(path.with_suffix(".md"), "w") as f:
        f.write(f"# GPU suite {stamp}\n\n{json.dumps(machine())}\n\n")
        for r in rows:
            f.write("| " + " | ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                      for k, v in r.items()) + " |\n")
    print(f"\nsuite took {time.time() - start:.0f} s; results in {path} and {path.with_suffix('.md').name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
