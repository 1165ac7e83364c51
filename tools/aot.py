"""Ahead-of-time compilation of every Triton kernel of `llm.kernels` in every launch
configuration the dispatch tables can pick, for sm_80 and sm_90, without a GPU.

A developer tool, not part of the package (tests/test_triton_aot.py runs it).
`python tools/aot.py [--json PATH] [--only TEXT]` compiles each (kernel, configuration,
dtype, target) with `triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))`,
reads registers, local memory (spills) and shared memory from the cubin with the
`cuobjdump` shipped inside triton's package, and greps the SASS for the MMA instructions
(HGMMA: Hopper warpgroup MMA; HMMA: Ampere-style warp MMA). It must run in a process
without TRITON_INTERPRET (the interpreter replaces the compiler).

Shape classes compiled: head sizes 32, 64 and 128 (BLOCK_D; the flash forward both for
self-attention and with explicit query slots, as cached prompts use it), the three row-width classes
of the layer norm table at their widest block, every matmul tile of the matmul table (the
MLP's GELU forward, GELU backward and bias-gradient variants), the lm_head loss's
cross-entropy row kernel.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}  # bytes of shared memory per block
TARGETS = {80: "sm80", 90: "sm90"}
DTYPES = ("bf16", "fp16")
MMA_KERNELS = ("attention", "matmul")  # families whose kernels must use tensor cores


@dataclass
class Spec:
    family: str
    kernel: str  # module attribute of the @triton.jit function
    label: str
    cc: int
    dtype: str
    signature: dict
    attrs: dict
    constexprs: dict
    num_warps: int
    num_stages: int
    needs_mma: bool


_STRIDE = re.compile(r"^(s[a-z]{2,3}|stride_\w+)$")


def _signature(fn, ptrs: dict, consts: dict, floats=()) -> tuple[dict, dict]:
    """Signature and attributes as the JIT would specialise a typical launch: pointers
    16-byte aligned and strides divisible by 16 (unit strides are passed as constexpr 1,
    as the JIT does)."""
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in ptrs or (_STRIDE.match(name) and name not in consts):
            attrs[(i,)] = [["tt.divisibility", 16]]
        if name in consts:
            sig[name] = "constexpr"
        elif name in ptrs:
            sig[name] = ptrs[name]
        elif name in floats:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig, attrs


def specs() -> list[Spec]:
    from llm.kernels import attention, layernorm, lm_head_loss, matmul

    out = []

    def add(family, module, kernel, label, cc, dt, ptrs, consts, cfg, floats=(), mma=False):
        fn = getattr(module, kernel)
        consts = dict(consts, **cfg.meta)
        out.append(Spec(family, kernel, label, cc, dt, *_signature(fn, ptrs, consts, floats),
                        consts, cfg.num_warps, cfg.num_stages, mma))

    for cc, dev in TARGETS.items():
        for dt in DTYPES:
            p = f"*{dt}"
            # layer norm: the widest block of each row of the width table, and the reduction
            for limit, _ in layernorm._WARPS_BY_BLOCK:
                cfg = layernorm.row_config(limit)
                add("layernorm", layernorm, "_layer_norm_fwd_kernel", cfg.label(), cc, dt,
                    dict(X=p, W=p, B=p, Y=p, Mean="*fp32", Rstd="*fp32"),
                    dict(HAS_BIAS=True), cfg, floats=("eps",))
                add("layernorm", layernorm, "_layer_norm_bwd_dx_kernel", cfg.label(), cc, dt,
                    dict(DY=p, X=p, W=p, Mean="*fp32", Rstd="*fp32", DX=p, DW_part="*fp32",
                         DB_part="*fp32"), {}, cfg)
            cfg = layernorm._REDUCE_CONFIG
            add("layernorm", layernorm, "_column_sum_kernel", cfg.label(), cc, dt,
                dict(P="*fp32", Out=p), {}, cfg)
            # attention
            for block_d in (32, 64, 128):
                qkv = dict(Q=p, K=p, V=p, O=p, LSE="*fp32", KVALID="*i8", QPOS="*i32")
                for cfg in attention.fwd_configs(dev, block_d):
                    for qpos in (False, True):  # self-attention; cached prompt (query slots)
                        add("attention", attention, "_attn_fwd_kernel",
                            f"D={block_d},{'qpos,' if qpos else ''}{cfg.label()}", cc, dt, qkv,
                            dict(HAS_KVALID=True, HAS_QPOS=qpos, IEEE=False, BLOCK_D=block_d),
                            cfg, ("qk_scale",), mma=True)
                bwd = dict(Q=p, K=p, V=p, DO=p, LSE="*fp32", Delta="*fp32", DK=p, DV=p, DQ=p,
                           KVALID="*i8")
                for cfg in attention.bwd_configs(dev, block_d):
                    for kernel in ("_attn_bwd_dkdv_kernel", "_attn_bwd_dq_kernel"):
                        add("attention", attention, kernel, f"D={block_d},{cfg.label()}", cc, dt,
                            bwd, dict(HAS_KVALID=True, IEEE=False, BLOCK_D=block_d), cfg,
                            ("qk_scale", "sm_scale"), mma=True)
                cfg = attention._PRE
                add("attention", attention, "_attn_bwd_preprocess_kernel",
                    f"D={block_d},{cfg.label()}", cc, dt, dict(O=p, DO=p, Delta="*fp32"),
                    dict(BLOCK_D=block_d), cfg)
                cfg = attention.decode_config(dev)
                add("attention", attention, "_attn_decode_kernel", f"D={block_d},{cfg.label()}",
                    cc, dt, dict(Q=p, K=p, V=p, QPOS="*i32", KVALID="*i8", PACC="*fp32",
                                 PML="*fp32"), dict(HAS_KVALID=True, BLOCK_D=block_d), cfg,
                    ("qk_scale",))
                add("attention", attention, "_attn_decode_combine_kernel",
                    f"D={block_d},BLOCK_S=64", cc, dt, dict(PACC="*fp32", PML="*fp32", O=p),
                    dict(BLOCK_S=64, BLOCK_D=block_d), attention.LaunchConfig({}, 4, 1))
            # matmul, as the MLP launches it: forward GELU (+ saved pre-activation), backward
            # GELU, bias gradient
            mm = dict(A=p, B=p, C=p, Bias=p, Aux=p, Aux2=p, RowSum=p)
            # unit strides as in the launches: x @ fc_w^T, dy @ proj_w, dy^T @ act
            variants = {
                "gelu_fwd": dict(HAS_BIAS=True, EPILOGUE=matmul.EPI_GELU, STORE_AUX=True,
                                 ROW_SUM=False, ACCUMULATE=False, sak=1, sbk=1, scn=1),
                "gelu_bwd": dict(HAS_BIAS=False, EPILOGUE=matmul.EPI_GELU_BWD, STORE_AUX=False,
                                 ROW_SUM=False, ACCUMULATE=False, sak=1, sbn=1, scn=1),
                "dw_db": dict(HAS_BIAS=False, EPILOGUE=matmul.EPI_BIAS, STORE_AUX=False,
                              ROW_SUM=True, ACCUMULATE=False, sam=1, sbn=1, scn=1),
            }
            for name, flags in variants.items():
                for cfg in matmul.matmul_configs(dev, flags["EPILOGUE"]):
                    add("matmul", matmul, "_matmul_kernel", f"{name},{cfg.label()}", cc, dt, mm,
                        dict(flags, IEEE=False), cfg, mma=True)
            cfg = lm_head_loss.ce_config(dev)
            add("lm_head_loss", lm_head_loss, "_cross_entropy_kernel", cfg.label(), cc, dt,
                dict(Logits=p, Targets="*i64", Loss="*fp32", NValid="*i64"),
                dict(COMPUTE_GRAD=True), cfg)
    return out


def _cuobjdump() -> str:
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(path):
        raise FileNotFoundError(f"cuobjdump not found in triton's package at {path}")
    return path


def compile_spec(spec: Spec) -> dict:
    """Compile one spec; returns its resource row (error set on failure)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("AOT compilation needs a process without TRITON_INTERPRET=1")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from llm.kernels import attention, layernorm, lm_head_loss, matmul

    module = {"layernorm": layernorm, "attention": attention, "matmul": matmul,
              "lm_head_loss": lm_head_loss}[spec.family]
    row = dict(family=spec.family, kernel=spec.kernel, config=spec.label, cc=spec.cc,
               dtype=spec.dtype, needs_mma=spec.needs_mma)
    try:
        src = ASTSource(getattr(module, spec.kernel), spec.signature, spec.constexprs, spec.attrs)
        compiled = triton.compile(src, target=GPUTarget("cuda", spec.cc, 32),
                                  options=dict(num_warps=spec.num_warps, num_stages=spec.num_stages))
    except Exception as e:  # reported, and failed by the test
        return dict(row, error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        res = subprocess.run([_cuobjdump(), "-res-usage", "-sass", f.name],
                             capture_output=True, text=True, check=True).stdout
    usage = dict(re.findall(r"\b(REG|SHARED|LOCAL|STACK):(\d+)", res))
    mma = "HGMMA" if "HGMMA" in res else "HMMA" if "HMMA" in res else "-"
    # register spills land in the stack frame (STACK); LOCAL counts other local memory
    return dict(row, regs=int(usage.get("REG", 0)),
                spill=int(usage.get("STACK", 0)) + int(usage.get("LOCAL", 0)),
                shared=int(compiled.metadata.shared) + int(usage.get("SHARED", 0)), mma=mma,
                error=None)


def problems(row: dict) -> list[str]:
    """Why a compiled row is unacceptable: compile error, spills, shared memory, no MMA."""
    if row["error"]:
        return [f"compile error: {row['error']}"]
    bad = []
    if row["spill"] > 0:
        bad.append(f"spills: {row['spill']} bytes of stack/local memory")
    if row["shared"] > SHARED_LIMIT[row["cc"]]:
        bad.append(f"shared memory {row['shared']} > {SHARED_LIMIT[row['cc']]}")
    if row["cc"] == 90 and row["needs_mma"] and row["mma"] != "HGMMA":
        bad.append(f"no HGMMA in SASS (found {row['mma']})")
    return bad


def compile_all(jobs: int | None = None, only: str | None = None) -> list[dict]:
    todo = [s for s in specs() if not only or only in f"{s.cc} {s.dtype} {s.kernel} {s.label}"]
    jobs = jobs or os.cpu_count() or 1
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(compile_spec, todo))


def format_table(rows: list[dict]) -> str:
    head = f"{'sm':>3} {'dtype':5} {'kernel':30} {'config':44} {'regs':>4} {'smem':>7} {'spill':>5} {'mma':5} status"
    lines = [head, "-" * len(head)]
    for r in rows:
        status = "; ".join(problems(r)) or "ok"
        if r["error"]:
            lines.append(f"{r['cc']:>3} {r['dtype']:5} {r['kernel']:30} {r['config']:44} {status}")
            continue
        lines.append(f"{r['cc']:>3} {r['dtype']:5} {r['kernel']:30} {r['config']:44} "
                     f"{r['regs']:>4} {r['shared']:>7} {r['spill']:>5} {r['mma']:5} {status}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--jobs", type=int, default=None, help="parallel compiler processes")
    parser.add_argument("--only", help="compile only specs whose 'cc dtype kernel config' contains this")
    args = parser.parse_args(argv)
    rows = compile_all(args.jobs, args.only)
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    bad = [r for r in rows if problems(r)]
    print(f"{len(rows)} compiled kernels, {len(bad)} with problems")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
