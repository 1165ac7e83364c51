"""The torch-free CPU kernels (csrc/cpu) on every instruction set, without torch: a C++
program (cpu_kernels_test.cpp) checks each kernel against scalar references on odd shapes.
It is built with the host compiler and run here (every path this CPU has), run again under
qemu-x86_64 (a CPU without AVX-512, where the AVX2 path is the best), and cross-compiled
for aarch64 and run under qemu-aarch64 (NEON with the dot-product and BF16 extensions, and
a plain ARMv8.0 core without them). A missing compiler or emulator skips with the reason;
`.ci/run` installs them (Debian: g++-aarch64-linux-gnu, qemu-user)."""

import platform
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted((ROOT / "csrc" / "cpu").glob("*.cpp")) + [Path(__file__).with_name("cpu_kernels_test.cpp")]
X86 = platform.machine() in ("x86_64", "AMD64")
AARCH64_ISAS = ["portable", "neon", "neon_dotprod", "neon_bf16"]


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian: apt-get install g++-aarch64-linux-gnu qemu-user)")
    return path


def build(compiler: str, out: Path, *flags: str) -> Path:
    cmd = [compiler, "-O2", "-std=c++20", f"-I{ROOT / 'csrc'}", *map(str, SOURCES), "-o", str(out), *flags]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stderr[-4000:]}"
    return out


def run(*cmd) -> dict:
    """The program's report: supported isas, best, checked isas, failures."""
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    fields = dict(line.split(": ", 1) for line in r.stdout.splitlines() if ": " in line)
    checks, failures = r.stdout.splitlines()[-1].split(" checks, ")
    return {"isas": fields["isas"].split(), "best": fields["best"], "checked": fields["checked"].split(),
            "checks": int(checks), "failures": int(failures.split()[0])}


@pytest.fixture(scope="module")
def host_program(tmp_path_factory):
    return build(tool("g++"), tmp_path_factory.mktemp("cpu") / "cpu_kernels_test")


@pytest.fixture(scope="module")
def aarch64_program(tmp_path_factory):
    # static, so qemu-aarch64 needs no aarch64 library folder
    return build(tool("aarch64-linux-gnu-g++"), tmp_path_factory.mktemp("cpu") / "cpu_kernels_test", "-static")


def test_every_isa_of_this_cpu(host_program):
    report = run(host_program)
    assert report["checked"] == report["isas"] and report["isas"][0] == "portable"
    assert report["best"] == report["isas"][-1] and report["failures"] == 0 and report["checks"] > 300


@pytest.mark.skipif(not X86, reason="qemu-x86_64 checks the AVX2 path of an x86-64 build")
def test_avx2_path_on_a_cpu_without_avx512(host_program):
    report = run(tool("qemu-x86_64"), host_program, "--isa", "avx2")
    assert "avx2" in report["isas"] and report["checked"] == ["avx2"] and report["failures"] == 0
    if "avx512" not in report["isas"]:  # what qemu emulates: AVX2 + FMA, no AVX-512
        assert report["best"] in ("avx2", "avx2_vnni")


def test_neon_paths_under_qemu(aarch64_program):
    report = run(tool("qemu-aarch64"), "-cpu", "max", aarch64_program)
    assert report["isas"] == AARCH64_ISAS and report["checked"] == AARCH64_ISAS
    assert report["best"] == "neon_bf16" and report["failures"] == 0


def test_plain_armv8_core_runs_neon_without_extensions(aarch64_program):
    report = run(tool("qemu-aarch64"), "-cpu", "cortex-a57", aarch64_program)  # no sdot, no bfdot
    assert report["isas"] == ["portable", "neon"] and report["best"] == "neon" and report["failures"] == 0
