"""The benchmark scripts are not run by the suite (they take minutes, and some need a GPU),
so this checks that each one imports without running anything and answers `--help`. (The
pytest-benchmark suites in benchmarks/ run once at their smoke size in `make test`.)"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
# scripts: not the shared module, nor the pytest-benchmark suites and their conftest
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py")
                 if p.name != "common.py" and p.name != "conftest.py" and not p.name.startswith("test_"))


def test_scripts_found():
    assert {"gpu_suite.py", "bench_generate.py", "readme_tables.py"} <= set(SCRIPTS) and len(SCRIPTS) >= 8


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_imports(name, monkeypatch):
    # run as a script, a benchmark finds its sibling `common` through its own folder on sys.path
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    had_common = "common" in sys.modules
    spec = importlib.util.spec_from_file_location(f"_benchmark_{name[:-3]}", BENCHMARKS / name)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    finally:
        if not had_common:
            sys.modules.pop("common", None)
    assert module.__doc__
    if name != "kernel_resources.py":  # that one only forwards to tools/aot.py
        assert callable(module.main)


def test_scripts_answer_help():
    # --help exits before any work; without TRITON_INTERPRET, which kernel_resources refuses
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    procs = {name: subprocess.Popen([sys.executable, str(BENCHMARKS / name), "--help"], cwd=BENCHMARKS.parent,
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in SCRIPTS}  # in parallel: each start is mostly importing torch
    failures = []
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        if proc.returncode != 0 or not out.startswith("usage:"):
            failures.append(f"{name}: exit {proc.returncode}\n{out[-500:]}{err[-1500:]}")
    assert not failures, "\n".join(failures)
