"""Every Triton kernel, in every launch configuration the dispatch tables can pick, compiles
for sm_80 and sm_90 in bf16 and fp16 without spills or too much shared memory; on sm_90 the
attention and matmul kernels use warpgroup MMA (HGMMA). No GPU needed: Triton compiles
ahead of time (tools/aot.py), in a subprocess without TRITON_INTERPRET."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

AOT = Path(__file__).resolve().parents[1] / "tools" / "aot.py"


def _load_aot():
    spec = importlib.util.spec_from_file_location("llm_tools_aot", AOT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_kernel_compiles_for_sm80_and_sm90(tmp_path):
    aot = _load_aot()
    out = tmp_path / "resources.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, str(AOT), "--json", str(out)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert len(rows) == len(aot.specs())
    seen = {(r["cc"], r["dtype"]) for r in rows}
    assert seen == {(80, "bf16"), (80, "fp16"), (90, "bf16"), (90, "fp16")}
    families = {r["family"] for r in rows}
    assert families == {"layernorm", "attention", "matmul", "lm_head_loss"}
    bad = {f"sm{r['cc']} {r['dtype']} {r['kernel']} [{r['config']}]": aot.problems(r)
           for r in rows if aot.problems(r)}
    assert not bad, bad
    hgmma = [r for r in rows if r["cc"] == 90 and r["needs_mma"]]
    assert hgmma and all(r["mma"] == "HGMMA" for r in hgmma)
    assert proc.returncode == 0, proc.stdout[-3000:]
