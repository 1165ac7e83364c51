"""The package layout: `kernels/` installs as `llm.kernels`, in editable installs and wheels."""

import os
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
    env = dict(os.environ, LLM_SKIP_NATIVE="1")  # the layout is what is checked, not the C++ build
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, env=env, capture_output=True)
    wheel = next(tmp_path.glob("llm-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "llm/kernels/__init__.py" in names
    assert "llm/model.py" in names and "llm/ops.py" in names
    assert not any(n.startswith("kernels/") for n in names)  # no top-level `kernels` package
    # installed from the wheel alone (no source tree on the path), llm.kernels imports
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(target)
    code = "import llm.kernels, llm; print(llm.kernels.__file__)"
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r}); " + code],
                         capture_output=True, text=True, check=True)
    assert str(target) in out.stdout
