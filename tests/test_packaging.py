"""The package layout: `kernels/` installs as `llm.kernels`, in editable installs and wheels."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_kernels_import_as_llm_kernels():
    import llm.kernels

    assert Path(llm.kernels.__file__).resolve().parent == ROOT / "kernels"


def test_import_llm_imports_no_backend():
    code = "import sys, llm; print(any(m == 'triton' or m.startswith('triton.') or m == 'llm._C' for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_wheel_contains_llm_kernels(tmp_path):
    # built from a copy of the sources: setuptools would reuse (stale) files in ROOT/build
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "*.so", "__pycache__", "results"))
    env = dict(os.environ, LLM_SKIP_NATIVE="1")  # the layout is what is checked, not the C++ build
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(src)], check=True, env=env, capture_output=True)
    wheel = next(tmp_path.glob("llm-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "llm/kernels/__init__.py" in names
    assert "llm/model.py" in names and "llm/ops/__init__.py" in names
    # every module of the source tree ships: llm/ as is, kernels/ as llm/kernels/
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "llm").rglob("*.py")}
    sources |= {"llm/" + p.relative_to(ROOT).as_posix() for p in (ROOT / "kernels").rglob("*.py")}
    assert sources <= names, sorted(sources - names)
    # no top-level `kernels` package; developer tools, tests and benchmarks stay out
    assert not any(n.split("/")[0] in ("kernels", "tools", "tests", "benchmarks") for n in names)
    assert not any(n.endswith("/aot.py") for n in names)
    # installed from the wheel alone (no source tree on the path), llm.kernels imports
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(target)
    code = "import llm.kernels, llm; print(llm.kernels.__file__)"
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r}); " + code],
                         capture_output=True, text=True, check=True)
    assert str(target) in out.stdout
