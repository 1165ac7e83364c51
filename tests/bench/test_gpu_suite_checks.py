"""benchmarks/gpu_suite.py as far as a CPU allows: its correctness part (every kernel
against the reference) through Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1; fp16, since bf16 is not exact there) and the native kernels in bf16,
then the whole command with --check-only, which writes its report and records."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from llm.bench import read_records
from llm.ops import BackendUnavailableError, get_ops

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def gpu_suite():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location("_gpu_suite", BENCHMARKS / "gpu_suite.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCHMARKS))
        sys.modules.pop("common", None)


def _needs(backend):
    try:
        get_ops(backend)
    except BackendUnavailableError as e:
        pytest.skip(str(e))


@pytest.mark.parametrize("backend,dtype", [("triton", torch.float16), ("native", torch.bfloat16)])
def test_every_kernel_passes_its_check(gpu_suite, backend, dtype):
    _needs(backend)
    ok, rows, notes = gpu_suite.correctness("cpu", dtype, "small", (backend,))
    assert ok, [r for r in rows if r["status"] != "ok"]
    assert not notes
    checked = {r["name"].split()[0] for r in rows}
    own = {"layer_norm", "mlp", "attention", "cached_attention"}
    assert own <= checked  # the ops each backend has kernels for
    assert ("lm_head_loss" in checked) == (backend == "triton")
    grads = [r for r in rows if " grad " in r["name"]]
    assert bool(grads) == (backend == "triton")  # native kernels are inference only


def test_check_only_run_writes_report_and_records(gpu_suite, tmp_path, capsys):
    _needs("triton")
    assert gpu_suite.main([str(tmp_path), "--skip-build", "--check-only", "--device", "cpu", "--dtype", "float16",
                           "--check-size", "small"]) == 0
    assert "checks passed" in capsys.readouterr().out
    record = read_records(tmp_path / "gpu_checks.jsonl")[0]
    assert record["rows"] and all(r["status"] == "ok" for r in record["rows"])
    report = (tmp_path / "gpu_suite.md").read_text()
    assert "## bf16 checks against the reference" in report and "| triton |" in report


def test_a_wrong_kernel_stops_the_suite(gpu_suite, monkeypatch):
    from llm.ops import reference

    wrong = reference.TORCH_OPS.replace(name="native", mlp=lambda *a: reference.mlp(*a) * 1.01)
    monkeypatch.setattr(gpu_suite, "get_ops", lambda name: wrong)
    ok, rows, _ = gpu_suite.correctness("cpu", torch.float32, "small", ("native",))
    assert not ok and any(r["status"] == "FAIL" and r["name"].startswith("mlp") for r in rows)


def test_refuses_cuda_without_a_gpu(gpu_suite, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the suite would run")
    assert gpu_suite.main([str(tmp_path / "out")]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
