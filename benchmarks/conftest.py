"""pytest-benchmark suites of the harness (`llm.bench`): ops, generation, a training step.

    pytest benchmarks/ --benchmark-only                          # quick sizes, this machine
    pytest benchmarks/ --benchmark-only --bench-size full --benchmark-autosave
    pytest benchmarks/ --benchmark-only --benchmark-compare      # against the last saved run
    pytest benchmarks/ --bench-size smoke --benchmark-disable    # each once, no timing (make test)

Every fast path is checked against the reference before it is timed; nothing asserts a
time. Options: --bench-size smoke | quick | full (default quick), --bench-device (default
cuda when visible, else cpu).
"""

import pytest
import torch

from llm.bench import ops

OP_PROVIDERS = ("torch", "triton", "native", "compile")


def pytest_addoption(parser):
    group = parser.getgroup("llm bench")
    group.addoption("--bench-size", default="quick", choices=("smoke", "quick", "full"),
                    help="sizes of the llm benchmark suites (default quick; smoke: tiny, for make test)")
    group.addoption("--bench-device", default=None, help="cpu or cuda (default: cuda when visible)")


def bench_device(config) -> str:
    return config.getoption("--bench-device") or ("cuda" if torch.cuda.is_available() else "cpu")


def provider_tables(device: str) -> dict:
    """name -> OpTable, or the text saying why the provider does not run (or is not timed) here."""
    notes = []
    tables = ops.load_providers(OP_PROVIDERS, notes)
    out = {}
    for name in OP_PROVIDERS:
        out[name] = ops.timeable(name, device) or tables.get(name) or next(n for n in notes if n.startswith(name))
    return out


def _op_params(size: str, device: str) -> list:
    """(op, size, provider, mode) of every measurement; a provider that cannot run here is
    one skipped test per op, with the reason."""
    params = []
    for name, table in provider_tables(device).items():
        if name == "compile" and size == "smoke":
            continue  # minutes of compiling for a run that times nothing
        for op in ops.OPS:
            if isinstance(table, str):
                params.append(pytest.param((op, None, name, None), id=f"{op}-{name}", marks=pytest.mark.skip(table)))
                continue
            params += [pytest.param((op, s, name, mode), id=f"{op}-{'x'.join(map(str, s))}-{name}-{mode}")
                       for s in ops.sizes(op, size, device) for mode in ops.provider_modes(name, table, op)]
    return params


def pytest_generate_tests(metafunc):
    """op_case: (op, size, provider, mode); engine: a generation or training engine name."""
    size, device = metafunc.config.getoption("--bench-size"), bench_device(metafunc.config)
    if "op_case" in metafunc.fixturenames:
        metafunc.parametrize("op_case", _op_params(size, device))
    if "gen_engine" in metafunc.fixturenames:
        metafunc.parametrize("gen_engine", ["llm[torch]", "llm[native]", "llm[native bf16]", "llm[native int8]",
                                            "llm[triton]", "llm[triton] no graph", "transformers"])
    if "train_engine" in metafunc.fixturenames:
        metafunc.parametrize("train_engine", ["llm[torch]", "llm[triton]", "transformers"])


@pytest.fixture(scope="session")
def size(pytestconfig) -> str:
    return pytestconfig.getoption("--bench-size")


@pytest.fixture(scope="session")
def device(pytestconfig) -> str:
    return bench_device(pytestconfig)


@pytest.fixture(scope="session")
def synced(device):
    """synced(fn): fn followed by a device sync, so pytest-benchmark's clock covers the work."""
    def wrap(fn):
        if torch.device(device).type != "cuda":
            return fn

        def run():
            out = fn()
            torch.cuda.synchronize()
            return out
        return run
    return wrap


@pytest.fixture(scope="session")
def op_tables(device) -> dict:
    """provider name -> OpTable (or why it cannot run here), loaded once."""
    return provider_tables(device)
