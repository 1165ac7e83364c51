"""The GPU suite for the Triton backend, in one run of under 8 minutes: first bf16
correctness of every op against the fp32 reference (each error at most ~2x that of torch's
own bf16 op), then the quick benchmarks of layernorm, attention, MLP and cross-entropy, the
goals table, and the results in benchmarks/results/gpu_suite-<time>.{json,md}.

    python benchmarks/gpu_suite.py

Without a CUDA device it says so and exits.
"""

import json
import sys
import time

import torch

from _harness import RESULTS, copy_bandwidth_gbs, machine, print_rows, require_cuda

BUDGET_S = 7 * 60  # leave headroom under 8 minutes


def _err(a, b):
    return (a.float() - b.float()).abs().max().item()


def _check(name, fn_kernel, fn_ref, inputs, report):
    """bf16 kernel vs fp32 reference vs bf16 torch: output and every gradient."""
    def leaves(dtype):
        return [t.detach().to(dtype).requires_grad_(t.requires_grad) if t.is_floating_point() else t
                for t in inputs]

    results = []
    for fn, dtype in ((fn_kernel, torch.bfloat16), (fn_ref, torch.float32), (fn_ref, torch.bfloat16)):
        xs = leaves(dtype)
        out = fn(*xs)
        g = torch.ones_like(out) if out.dim() == 0 else torch.randn(
            out.shape, generator=torch.Generator("cuda").manual_seed(1), device="cuda").to(out.dtype)
        grads = torch.autograd.grad(out, [x for x in xs if x.requires_grad], g)
        results.append((out, grads))
    (k_out, k_grads), (r_out, r_grads), (t_out, t_grads) = results
    ok = True
    for part, k, r, t in [("out", k_out, r_out, t_out)] + [
            (f"grad{i}", *x) for i, x in enumerate(zip(k_grads, r_grads, t_grads))]:
        ek, et = _err(k, r), _err(t, r)
        good = ek <= 2 * et + 1e-3 * max(1.0, r.abs().max().item()) * 0.01
        ok &= good
        report.append(dict(op=name, part=part, err_triton=ek, err_torch_bf16=et,
                           status="ok" if good else "FAIL"))
    return ok


def correctness() -> tuple[bool, list]:
    from llm import ops
    from llm.ops import get_ops

    tri = get_ops("triton")
    torch.manual_seed(0)
    r = []
    dev = "cuda"
    ok = True
    x = torch.randn(4096, 768, device=dev, requires_grad=True)
    w, b = torch.randn(768, device=dev, requires_grad=True), torch.randn(768, device=dev, requires_grad=True)
    ok &= _check("layer_norm", lambda *a: tri.layer_norm(*a, 1e-5), lambda *a: ops.layer_norm(*a, 1e-5), [x, w, b], r)
    for hs, T in ((64, 1000), (128, 777)):
        q, k, v = (torch.randn(2, 4, T, hs, device=dev, requires_grad=True) for _ in range(3))
        mask = torch.ones(2, T, dtype=torch.bool, device=dev)
        mask[1, :100] = False
        ok &= _check(f"attention hs={hs} T={T}", lambda *a: tri.attention(*a, None, 0.0),
                     lambda *a: ops.attention(*a, None, 0.0), [q, k, v], r)
        ok &= _check(f"attention+mask hs={hs}", lambda *a: tri.attention(*a, mask, 0.0),
                     lambda *a: ops.attention(*a, mask, 0.0), [q, k, v], r)
    xm = torch.randn(2047, 768, device=dev, requires_grad=True)
    pm = [(torch.randn(3072, 768, device=dev) * 0.02).requires_grad_(), torch.randn(3072, device=dev, requires_grad=True),
          (torch.randn(768, 3072, device=dev) * 0.02).requires_grad_(), torch.randn(768, device=dev, requires_grad=True)]
    ok &= _check("mlp", tri.mlp, ops.mlp, [xm, *pm], r)
    h = torch.randn(1023, 768, device=dev, requires_grad=True)
    wv = (torch.randn(50257, 768, device=dev) * 0.02).requires_grad_()
    t = torch.randint(0, 50257, (1023,), device=dev)
    t[::9] = -100
    ok &= _check("lm_head_loss", lambda a, b: tri.lm_head_loss(a, b, t, -100),
                 lambda a, b: ops.lm_head_loss(a, b, t, -100), [h, wv], r)
    # decode over a 1000-slot cache, left-padded row
    kc, vc = (torch.randn(3, 12, 1000, 64, device=dev, dtype=torch.bfloat16) for _ in range(2))
    valid = torch.ones(3, 1000, dtype=torch.bool, device=dev)
    valid[0, :37] = False
    qd = torch.randn(3, 12, 1, 64, device=dev, dtype=torch.bfloat16)
    pos = torch.tensor([900], device=dev)
    ek = _err(tri.cached_attention(qd, kc, vc, pos, valid), ops.cached_attention(qd.float(), kc.float(), vc.float(), pos, valid))
    et = _err(ops.cached_attention(qd, kc, vc, pos, valid), ops.cached_attention(qd.float(), kc.float(), vc.float(), pos, valid))
    good = ek <= 2 * et + 1e-5
    ok &= good
    r.append(dict(op="cached_attention decode", part="out", err_triton=ek, err_torch_bf16=et,
                  status="ok" if good else "FAIL"))
    return ok, r


GOALS = [  # (op, provider, mode, metric, threshold, description)
    ("layernorm", "fwd+bwd", "of_copy", 0.8, "layernorm fwd+bwd >= 80% of copy bandwidth"),
    ("attention", "fwd", "vs_torch", 0.9, "attention fwd >= 0.9x torch SDPA"),
    ("attention", "fwd+bwd", "vs_torch", 0.8, "attention fwd+bwd >= 0.8x torch SDPA"),
    ("mlp", "fwd+bwd", "speedup", 1.1, "MLP fwd+bwd >= 1.1x eager torch"),
]


def main():
    if not require_cuda("gpu_suite"):
        return 0
    start = time.time()
    import bench_attention
    import bench_cross_entropy
    import bench_layernorm
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
                      ("mlp", bench_mlp), ("cross_entropy", bench_cross_entropy)):
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
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"gpu_suite-{stamp}.json").write_text(json.dumps(
        dict(machine=machine(), correctness=report, rows=rows, goals=goals), indent=1))
    with open(RESULTS / f"gpu_suite-{stamp}.md", "w") as f:
        f.write(f"# GPU suite {stamp}\n\n{json.dumps(machine())}\n\n")
        for r in rows:
            f.write("| " + " | ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                      for k, v in r.items()) + " |\n")
    print(f"\nsuite took {time.time() - start:.0f} s; results in {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
