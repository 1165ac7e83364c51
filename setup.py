"""Builds the native extension `llm._C` from csrc/ and lists the packages (the rest of the
package metadata lives in pyproject.toml).

A CPU build by default; CUDA kernels (csrc/cuda/*.cu) too when torch has CUDA and nvcc is
found. Environment switches:
  LLM_SKIP_NATIVE=1        build no extension (the `native` backend then reports why)
  LLM_SKIP_CUDA=1          CPU kernels only, even where CUDA is available
  LLM_CUDA_ARCH_LIST="8.0;9.0"  GPU architectures (default: torch's TORCH_CUDA_ARCH_LIST logic)
No -march=native: the AVX2, AVX-512 and NEON extension code paths (csrc/cpu) carry their
own target attributes and are chosen at run time, so one build runs on any x86-64 or
aarch64 CPU.
"""

import glob
import os
import shutil

from setuptools import find_packages, setup


def _flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0", "false", "False")


def _extensions():
    if _flag("LLM_SKIP_NATIVE"):
        return [], {}
    try:
        from torch.utils import cpp_extension
    except ImportError:
        # An isolated build environment has no torch: the package still installs, and the
        # `native` backend reports that llm._C is missing.
        print("setup.py: torch is not importable here, building without llm._C "
              "(install torch first, then pip install --no-build-isolation)")
        return [], {}

    here = os.path.dirname(os.path.abspath(__file__))
    # the torch bindings (csrc/*.cpp) and the torch-free CPU kernels they call (csrc/cpu)
    cpu_sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    cxx_flags = ["-O3", "-fopenmp", "-std=c++20", "-Wno-unused-function", "-Wno-maybe-uninitialized"]
    link_flags = ["-fopenmp"]
    cuda_home = cpp_extension.CUDA_HOME
    with_cuda = (
        not _flag("LLM_SKIP_CUDA")
        and cpp_extension.torch.version.cuda is not None
        and cuda_home is not None
        and shutil.which(os.path.join(cuda_home, "bin", "nvcc")) is not None
    )
    if with_cuda:
        if os.environ.get("LLM_CUDA_ARCH_LIST"):
            os.environ["TORCH_CUDA_ARCH_LIST"] = os.environ["LLM_CUDA_ARCH_LIST"]
        sources = cpu_sources + sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
        ext = cpp_extension.CUDAExtension(
            "llm._C",
            sources,
            include_dirs=[os.path.join(here, "csrc")],
            define_macros=[("LLM_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--use_fast_math", "-std=c++17"]},
            extra_link_args=link_flags,
        )
    else:
        ext = cpp_extension.CppExtension(
            "llm._C",
            cpu_sources,
            include_dirs=[os.path.join(here, "csrc")],
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
        )
    cmdclass = {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)}
    return [ext], cmdclass


# Every package under llm/ (found, so a new one ships without a list to update), and the
# top-level kernels/ folder as llm.kernels (pyproject.toml's package-dir).
packages = find_packages(include=["llm", "llm.*"]) + ["llm.kernels"]
ext_modules, cmdclass = _extensions()
setup(packages=packages, ext_modules=ext_modules, cmdclass=cmdclass)
