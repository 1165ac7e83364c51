"""What the engine knows about the CPU: the instruction-set list and controls of llm._C,
threads ($LLM_NUM_THREADS, --threads), bf16 support, the warning before bf16 work a CPU
would emulate, and the `auto` compute dtype."""

import os
import subprocess
import sys
import warnings

import pytest
import torch

import llm.cpu as cpu
from llm import GPT, GPTConfig
from llm.ops import BackendUnavailableError
from llm.training.evaluation import autocast_context


def native_or_skip():
    from llm import native

    try:
        native.cpu_isas()
    except BackendUnavailableError as e:
        pytest.skip(str(e))
    return native


@pytest.fixture
def emulated(monkeypatch):
    """A CPU without bf16 arithmetic, as far as llm.cpu can tell."""
    monkeypatch.setattr(cpu, "has_bf16_arithmetic", lambda: False)


def test_isa_list_and_controls():
    native = native_or_skip()
    isas = native.cpu_isas()
    assert isas[0] == "portable" and isas[-1] == native.cpu_best_isa() and native.cpu_isa() in isas
    other = "neon" if "avx2" in isas or isas == ["portable"] else "avx2"  # a family this CPU lacks
    before = native.cpu_isa()
    with pytest.raises(ValueError, match=rf"this CPU does not support '{other}' \(it runs 'portable'"):
        native.set_cpu_isa(other)
    assert native.cpu_isa() == before
    for isa in isas:
        native.set_cpu_isa(isa)
        assert native.cpu_isa() == isa
    native.set_cpu_isa(before)
    assert isinstance(cpu.has_bf16_arithmetic(), bool)
    assert cpu.has_bf16_arithmetic() == bool(torch.ops.llm.cpu_has_bf16())


def test_isa_variable_picks_a_supported_level_and_ignores_one_the_cpu_lacks():
    native = native_or_skip()
    isas = native.cpu_isas()
    lacking = "neon_bf16" if "avx2" in isas or isas == ["portable"] else "avx512"
    script = "import torch, llm._C; print(torch.ops.llm.cpu_isa())"
    for want, got in ((isas[0], isas[0]), (lacking, isas[-1])):
        env = {**os.environ, "LLM_NATIVE_ISA": want}
        r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 and r.stdout.strip() == got, (want, r.stdout, r.stderr)


def test_threads_setting(monkeypatch):
    monkeypatch.delenv(cpu.THREADS_VARIABLE, raising=False)
    assert cpu.requested_threads() is None and cpu.requested_threads(3) == 3
    monkeypatch.setenv(cpu.THREADS_VARIABLE, "2")
    assert cpu.requested_threads() == 2 and cpu.requested_threads(1) == 1  # an explicit count wins
    for bad in ("two", "1.5"):
        monkeypatch.setenv(cpu.THREADS_VARIABLE, bad)
        with pytest.raises(ValueError, match=r"\$LLM_NUM_THREADS must be a whole number of threads"):
            cpu.requested_threads()
    monkeypatch.setenv(cpu.THREADS_VARIABLE, "0")
    with pytest.raises(ValueError, match=r"\$LLM_NUM_THREADS must be >= 1, got 0"):
        cpu.requested_threads()
    with pytest.raises(ValueError, match="threads must be >= 1, got -2"):
        cpu.requested_threads(-2)
    before = torch.get_num_threads()
    try:
        assert cpu.set_threads(1) == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_generate_cli_rejects_bad_threads(tmp_path):
    GPT(GPTConfig.from_preset("tiny")).save_pretrained(tmp_path)
    cmd = [sys.executable, "-m", "llm", "generate", "--model", str(tmp_path), "--prompt", "Hi",
           "--max-new-tokens", "1", "--threads", "0"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.strip() == "error: threads must be >= 1, got 0", r.stderr


def test_auto_dtype_and_bf16_autocast_warning(emulated):
    assert cpu.bf16_is_emulated("cpu") and cpu.auto_dtype("cpu") == "float32"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto picks float32 here: no autocast, no warning
        with autocast_context("cpu", "auto"):
            assert not torch.is_autocast_enabled("cpu")
    with pytest.warns(RuntimeWarning, match="bfloat16 autocast: this CPU has no bf16 arithmetic"):
        ctx = autocast_context("cpu", "bfloat16")
    with ctx:
        assert torch.is_autocast_enabled("cpu")


def test_auto_dtype_where_bf16_is_native(monkeypatch):
    monkeypatch.setattr(cpu, "has_bf16_arithmetic", lambda: True)
    assert cpu.auto_dtype("cpu") == "bfloat16" and not cpu.warn_if_bf16_emulated("anything")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with autocast_context("cpu", "auto"):
            assert torch.is_autocast_enabled("cpu")


def test_bf16_generation_warns_only_off_the_native_kernels(emulated):
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny"), backend="torch").eval().to(torch.bfloat16)
    ids = torch.randint(0, model.config.vocab_size, (1, 4))
    with pytest.warns(RuntimeWarning, match="generating with bfloat16 weights through torch's matmuls"):
        model.generate(ids, 2)
    try:
        model.set_backend("native")
    except BackendUnavailableError as e:
        pytest.skip(str(e))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.generate(ids, 2)
