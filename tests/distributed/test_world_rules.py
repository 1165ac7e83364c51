"""The rules of a run across processes, without starting any: per-rank data shards, the
global batch kept when a resume changes the number of processes, the settings checked up
front, and when compiling is the default."""

import dataclasses
from itertools import islice

import numpy as np
import pytest

from llm.training import TrainConfig, save_checkpoint
from llm.training.data import ResumableSampler, WindowDataset, make_loader
from llm.training.distributed import World, compile_wanted, launch_env, resolve_parallel, shard
from llm.training.plan import plan_settings


def _stream(n, start, block, rank=0, world=1, count=60):
    return list(islice(iter(ResumableSampler(n, seed=3, start=start, rank=rank, world=world, block=block)), count))


@pytest.mark.parametrize("n, block, world", [(10, 2, 3), (7, 3, 2), (12, 4, 2)])
def test_rank_shards_cover_every_sample_once_per_epoch(n, block, world):
    whole = _stream(n, 0, block, count=6 * n)
    ranks = [_stream(n, 0, block, r, world, count=6 * n) for r in range(world)]
    # micro-batch k of rank r is micro-batch k * world + r of the one-process stream
    merged = []
    for k in range(len(whole) // (block * world)):
        for r in range(world):
            merged += ranks[r][k * block:(k + 1) * block]
    assert merged == whole[:len(merged)]
    for epoch in range(len(merged) // n):  # each epoch: every window exactly once
        assert sorted(merged[epoch * n:(epoch + 1) * n]) == list(range(n))


def test_a_resumed_rank_continues_its_shard_exactly():
    n, block, world = 11, 2, 2
    seen = 3 * 2 * block * world  # samples of 3 steps of 2 micro-batches per rank
    for r in range(world):
        uninterrupted = _stream(n, 0, block, r, world, count=40)
        assert _stream(n, seen, block, r, world, count=20) == uninterrupted[seen // world:][:20]


def test_loader_shards_equal_every_nth_batch_of_the_whole_stream():
    ds = WindowDataset(np.arange(400, dtype=np.uint16), 8)
    for r in range(2):
        got = list(islice(iter(make_loader(ds, 3, seed=5, start=6, rank=r, world=2)), 5))
        want = list(islice(shard(iter(make_loader(ds, 3, seed=5, start=6)), World(r, 2)), 5))
        assert len(got) == len(want) == 5 and got[0][0].shape == (3, 8)
        assert all((a[0] == b[0]).all() and (a[1] == b[1]).all() for a, b in zip(got, want))


def _saved_run(folder, world, **settings):
    cfg = TrainConfig(**settings)
    save_checkpoint({"train_config": dataclasses.asdict(cfg), "world_size": world, "step": 1},
                    folder / "ckpt-00000001.pt")
    return folder


@pytest.mark.parametrize("saved, world, given, want", [
    ((2, 1, 2), 1, {}, (2, 2)),            # 2 processes -> 1: twice the accumulation
    ((2, 4, 1), 2, {}, (2, 2)),            # 1 -> 2: half
    ((2, 1, 1), 2, {}, (1, 1)),            # 1 -> 2 without accumulation: half the micro-batch
    ((4, 1, 2), 1, {"batch_size": 2}, (2, 4)),
    ((2, 2, 2), 2, {}, (2, 2)),            # as many processes: as saved
])
def test_resume_on_another_number_of_processes_keeps_the_global_batch(tmp_path, saved, world, given, want):
    (batch, accum, saved_world) = saved
    folder = _saved_run(tmp_path, saved_world, batch_size=batch, grad_accum=accum, parallel="fsdp", compile=True)
    cfg = plan_settings(folder, True, False, given, world_size=world).cfg
    assert (cfg.batch_size, cfg.grad_accum) == want
    assert cfg.parallel is None and cfg.compile is None  # chosen per invocation


def test_a_global_batch_that_cannot_be_kept_is_a_clear_error(tmp_path):
    folder = _saved_run(tmp_path, 1, batch_size=3, grad_accum=1)
    with pytest.raises(ValueError, match=r"global batch of 3 windows .* batch_size x grad_accum x 2 = 3"):
        plan_settings(folder, True, False, {}, world_size=2)
    with pytest.raises(ValueError, match="global batch"):
        plan_settings(_saved_run(tmp_path, 2, batch_size=2, grad_accum=2), True, False, {"grad_accum": 3},
                      world_size=1)


def test_settings_that_cannot_run_are_refused_up_front():
    launched2, launched1 = World(0, 2, 0, True), World(0, 1, 0, True)
    assert resolve_parallel(TrainConfig(), launched2) == "ddp"
    assert resolve_parallel(TrainConfig(), World()) == "none"
    assert resolve_parallel(TrainConfig(parallel="fsdp"), launched1) == "fsdp"
    with pytest.raises(ValueError, match="each would train its own copy"):
        resolve_parallel(TrainConfig(parallel="none"), launched2)
    with pytest.raises(ValueError, match="torchrun --nproc_per_node"):
        resolve_parallel(TrainConfig(parallel="ddp"), World())
    with pytest.raises(ValueError, match="use it with --parallel fsdp"):
        resolve_parallel(TrainConfig(mixed_precision="bf16"), launched2)
    for bad in (dict(parallel="zero"), dict(checkpoint_format="npz"), dict(dist_timeout=0), dict(compile="yes")):
        with pytest.raises(ValueError):
            TrainConfig(**bad)


def test_the_environment_torchrun_sets():
    assert launch_env({}) == World()
    assert launch_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == World(1, 4, 1, True)
    with pytest.raises(ValueError, match="RANK='x' is not an integer"):
        launch_env({"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match=r"RANK=2 is not in \[0, WORLD_SIZE=2\)"):
        launch_env({"RANK": "2", "WORLD_SIZE": "2"})


def test_compiling_is_the_default_once_a_run_repays_it():
    cfg = TrainConfig(batch_size=8, grad_accum=1, context_length=256, steps=1000).resolved(256)
    assert compile_wanted(cfg, cfg, World(), 1000)  # 2M tokens
    assert not compile_wanted(cfg, cfg, World(), 100)  # 200k tokens: too few to be sure it pays
    assert compile_wanted(cfg, cfg, World(0, 8, 0, True), 100)  # 8 processes: 1.6M
    off = dataclasses.replace(cfg, compile=False)
    assert not compile_wanted(off, off, World(), 10**6)
    short = dataclasses.replace(cfg, max_seconds=120.0)  # mostly compiling: not by default
    assert not compile_wanted(short, short, World(), 1000)
