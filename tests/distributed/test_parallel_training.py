"""DDP and FSDP2 across 2 gloo processes against one process with the same global batch:
the same losses and weights after a few steps, checkpoints that resume at another number of
processes (2 -> 1 and 1 -> 2, consolidated and sharded), and the triton / native backends
and the FSDP options inside the wrappers.

All 2-process runs happen in one start of 2 processes (`module_runs`), which is most of the
time these tests take.
"""

import shutil

import pytest
import torch

from dist_helpers import assert_same_run, final_weights, read_result, run_ranks, write_result
from llm.ops import BackendUnavailableError, get_ops
from llm.training import list_checkpoints, train
from llm.training.corpus import build_corpus

# one process: 2 windows x 4 micro-batches; two: 2 windows x 2 micro-batches each
RUN = dict(preset="tiny", steps=3, batch_size=2, context_length=32, lr=3e-3, warmup_steps=1,
           val_fraction=0.1, eval_every=3, eval_batches=2, seed=7)
LONG = dict(RUN, steps=4, eval_every=2, checkpoint_every=2, keep_checkpoints=3)
# Triton's CPU interpreter takes seconds per micro-batch: one step of one window per process
SHORT = dict(RUN, steps=1, context_length=16, val_fraction=0.0)
FP32 = dict(rtol=1e-4, atol=2e-5)  # the same sums in another order (fp32 rounding)

pytestmark = pytest.mark.slow  # 2 processes start and train 10 runs: ~40 s on 2 quiet cores


def _backend_loads(name: str) -> bool:
    try:
        get_ops(name)
        return True
    except BackendUnavailableError:
        return False


def _resumable_copy(folder, into, step: int):
    """A copy of a finished run's folder as it was after `step` steps (later checkpoints and
    the final model removed): resuming it must end where the run ended."""
    shutil.copytree(folder, into)
    for s, path in list_checkpoints(into / "checkpoints"):
        if s > step:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    for name in ("model.safetensors", "config.json", "result.json"):
        (into / name).unlink(missing_ok=True)
    return into


def _one_process(data, out, **kwargs):
    torch.set_num_threads(1)
    write_result(train(data, out, progress=False, **kwargs))
    return out


@pytest.fixture(scope="module")
def module_runs(tmp_path_factory):
    """{name: folder} of the finished runs, 1 and 2 processes."""
    root = tmp_path_factory.mktemp("parallel")
    data = build_corpus(root / "corpus", max_bytes=150_000)
    threads = torch.get_num_threads()
    runs = {"one": _one_process(data, root / "one", grad_accum=4, **RUN),
            "one-long": _one_process(data, root / "one-long", grad_accum=4, **LONG),
            "one-long-sharded": _one_process(data, root / "one-long-sharded", grad_accum=4,
                                             checkpoint_format="sharded", **LONG),
            "one-short": _one_process(data, root / "one-short", **SHORT)}
    for name in ("one-long", "one-long-sharded"):
        _resumable_copy(runs[name], root / f"{name}@2", 2)
    two = {  # name: train() settings of a 2-process run
        "ddp": dict(RUN, parallel="ddp", grad_accum=2),
        "fsdp": dict(RUN, parallel="fsdp", grad_accum=2, activation_checkpointing=True),
        "fsdp-bf16": dict(RUN, parallel="fsdp", grad_accum=2, mixed_precision="bf16-fp32-reduce"),
        "fsdp-long": dict(LONG, parallel="fsdp", grad_accum=2),
        "fsdp-long-sharded": dict(LONG, parallel="fsdp", grad_accum=2, checkpoint_format="sharded"),
        # one process's checkpoints continued by 2 (grad_accum 4 -> 2 by itself)
        "one-long@2": dict(resume=True, parallel="fsdp"),
        "one-long-sharded@2": dict(resume=True, parallel="ddp"),
    }
    if _backend_loads("native"):
        two["ddp-native"] = dict(RUN, parallel="ddp", grad_accum=2, backend="native")
        two["fsdp-native"] = dict(RUN, parallel="fsdp", grad_accum=2, backend="native")
    if _backend_loads("triton"):
        two["fsdp-triton"] = dict(SHORT, parallel="fsdp", batch_size=1, backend="triton")
    run_ranks([dict(kwargs, data=data, out_dir=root / name) for name, kwargs in two.items()])
    runs.update({name: root / name for name in two})
    # the 2-process runs' checkpoints at step 2, continued by one process
    for name in ("fsdp-long", "fsdp-long-sharded"):
        copy = _resumable_copy(runs[name], root / f"{name}@1", 2)
        runs[f"{name}@1"] = _one_process(data, copy, resume=True)
    torch.set_num_threads(threads)
    return runs


@pytest.mark.parametrize("name", ["ddp", "fsdp"])
def test_two_processes_equal_one_with_the_same_global_batch(module_runs, name):
    assert_same_run(module_runs[name], module_runs["one"], **FP32)


@pytest.mark.parametrize("name", ["ddp-native", "fsdp-native", "fsdp-triton"])
def test_fast_backends_inside_the_wrappers(module_runs, name):
    if name not in module_runs:
        pytest.skip(f"the {name.split('-')[1]} backend does not load here")
    # another backend: the same math to float rounding
    want = module_runs["one-short" if name.endswith("triton") else "one"]
    assert_same_run(module_runs[name], want, rtol=1e-3, atol=1e-4)


def test_fsdp_bf16_mixed_precision_follows_fp32(module_runs):
    got, want = read_result(module_runs["fsdp-bf16"]), read_result(module_runs["one"])
    # bf16 parameters and compute: a relative error of a few 2^-8 in each loss
    torch.testing.assert_close(torch.tensor([l for _, l in got["train"]]), torch.tensor([l for _, l in want["train"]]),
                               rtol=2e-2, atol=0)
    # the weights trained and saved are the float32 shards, not their bf16 copies
    assert {w.dtype for w in final_weights(module_runs["fsdp-bf16"]).values()} == {torch.float32}


def test_sharded_checkpoints_are_folders_of_shards(module_runs):
    found = list_checkpoints(module_runs["fsdp-long-sharded"] / "checkpoints")
    assert [s for s, _ in found] == [2, 4]
    assert all(p.is_dir() and (p / "train_state.pt").is_file() and (p / ".metadata").is_file() for _, p in found)
    assert len(list(found[0][1].glob("*.distcp"))) == 2  # one file per rank


@pytest.mark.parametrize("name", ["fsdp-long@1", "fsdp-long-sharded@1"])
def test_two_process_checkpoint_resumes_in_one(module_runs, name):
    assert_same_run(module_runs[name], module_runs[name.removesuffix("@1")], **FP32)
    assert_same_run(module_runs[name], module_runs["one-long"], **FP32)


@pytest.mark.parametrize("name", ["one-long@2", "one-long-sharded@2"])
def test_one_process_checkpoint_resumes_in_two(module_runs, name):
    assert_same_run(module_runs[name], module_runs["one-long"], **FP32)
