"""The record of where a benchmark ran: time, machine, versions, commit and the code path
(CPU instruction set of the native kernels, GPU and its compute capability).

Versions are read from the installed package metadata, so recording them imports nothing
(in particular neither triton nor the C++ extension).
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

from ..native import cpu_best_isa, cpu_isa, extension
from ..ops import BackendUnavailableError

PACKAGES = ("torch", "triton", "transformers", "ctranslate2", "numpy")


def utc_now() -> str:
    """The one timestamp style of results: ISO 8601 UTC to the second, '2026-11-28T16:43:47Z'."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def source_checkout() -> Path | None:
    """The repository root when `llm` runs from a source checkout (it has benchmarks/ and
    .git next to the package), else None (an installed wheel)."""
    root = Path(__file__).resolve().parents[2]
    if (root / "benchmarks").is_dir() and (root / ".git").exists():
        return root
    return None


def git_commit(root: Path | None = None) -> tuple[str, bool]:
    """(short commit, whether the tree has uncommitted changes) of the checkout; ("", False)
    outside one or without git."""
    root = root or source_checkout()
    if root is None:
        return "", False
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=root, timeout=10).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                text=True, cwd=root, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "", False
    return commit, bool(status.strip())


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict:
    """Installed versions of llm, python and the packages benchmarks use (absent: not installed)."""
    out = {"llm": _version("llm"), "python": platform.python_version()}
    for name in PACKAGES:
        v = _version(name)
        if v:
            out[name] = v
    return out


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return ""


def native_path() -> dict:
    """The native extension's code path: built or not, CPU instruction set in use and the
    best this CPU has, CUDA kernels built. Loads llm._C if it is there."""
    try:
        extension()
        return dict(built=True, cpu_isa=cpu_isa(), cpu_best_isa=cpu_best_isa(),
                    cuda_kernels=bool(torch.ops.llm.has_cuda_kernels()))
    except (BackendUnavailableError, ValueError) as e:
        return dict(built=False, why=str(e).splitlines()[0][:200])


def environment(device="cpu", **extra) -> dict:
    """Everything a result needs to be read later: time, commit, host, CPU, threads, device
    (GPU name and capability on CUDA), versions (keys llm, python, torch, ...), the native
    code path, the load average when the run started, then `extra`."""
    device = torch.device(device)
    commit, dirty = git_commit()
    env = dict(time=utc_now(), commit=commit, dirty=dirty, host=platform.node(),
               arch=platform.machine(), cpu=cpu_name(), cores=os.cpu_count(),
               threads=torch.get_num_threads(), device=device.type)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        env.update(gpu=torch.cuda.get_device_name(index), capability=f"sm_{major}{minor}",
                   cuda=torch.version.cuda)
    env.update(versions())
    env["native"] = native_path()
    if hasattr(os, "getloadavg"):
        env["load_1min"] = round(os.getloadavg()[0], 2)
    env.update(extra)
    return env


def describe(env: dict) -> str:
    """One line for a table's heading: device, CPU path, threads, load, versions, commit."""
    where = env.get("gpu") and f"{env['gpu']} ({env.get('capability', '')})" or env.get("cpu", "")
    native = env.get("native", {})
    isa = f", native {native['cpu_isa']}" if native.get("built") else ""
    commit = env.get("commit") or "no commit"
    load = f", 1-min load {env['load_1min']:g}" if env.get("load_1min") is not None else ""
    return (f"{where}{isa}, {env.get('threads')} threads{load}, torch {env.get('torch', '?')}, "
            f"llm {env.get('llm', '?')} at {commit}{' (modified tree)' if env.get('dirty') else ''}, "
            f"{env.get('time', '')}")
