"""Helpers for tests/distributed: runs of `llm.train` in processes of one gloo process group.

`run_ranks(runs, world)` starts `world` processes (torch.multiprocessing, as torchrun would:
RANK, WORLD_SIZE, ... in the environment), each making the process group once and then
calling `train(**kwargs)` for every run in order, as torchrun-launched code that owns its
process group does. Rank 0 writes each result as `result.json` into the run's folder.
"""

from __future__ import annotations

import json
import os
import socket
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from llm.training import train


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, runs: list, timeout_s: float) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=timeout_s))
    try:
        for kwargs in runs:
            result = train(progress=False, **kwargs)
            if rank == 0:
                write_result(result)
    finally:
        dist.destroy_process_group()


def run_ranks(runs: list[dict], world: int = 2, timeout_s: float = 120.0) -> None:
    """Each run's `train(**kwargs)` in `world` processes of one process group."""
    mp.spawn(_rank_main, (world, free_port(), runs, timeout_s), nprocs=world, join=True)


def write_result(result) -> None:
    (Path(result.out_dir) / "result.json").write_text(json.dumps(
        {"step": result.step, "train": result.train_losses, "val": result.val_losses}))


def read_result(folder) -> dict:
    return json.loads((Path(folder) / "result.json").read_text())


def final_weights(folder) -> dict:
    return load_file(str(Path(folder) / "model.safetensors"))


def assert_same_run(got, want, rtol: float, atol: float) -> None:
    """Two finished runs' histories (loss by loss) and final weights agree to the tolerance."""
    a, b = read_result(got), read_result(want)
    assert a["step"] == b["step"]
    for key in ("train", "val"):
        assert [s for s, _ in a[key]] == [s for s, _ in b[key]], key
        torch.testing.assert_close(torch.tensor([v for _, v in a[key]]), torch.tensor([v for _, v in b[key]]),
                                   rtol=rtol, atol=atol, msg=lambda m: f"{key} losses of {got} vs {want}: {m}")
    wa, wb = final_weights(got), final_weights(want)
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=rtol, atol=atol,
                                   msg=lambda m: f"{name} of {got} vs {want}: {m}")
