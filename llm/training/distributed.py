"""Training on several processes with torch.distributed, as launched by torchrun.

`torchrun --nproc_per_node N -m llm train ...` starts N copies of the same command. Each
reads its place from the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT; `launch_env`), and `process_group` joins them: NCCL on CUDA (rank
r on cuda:LOCAL_RANK), gloo on CPU, every collective bounded by `dist_timeout`. A caller
that set up a process group itself keeps it, and `train` runs in it.

`wrap` puts the job's model in a `StepModule`, a module whose forward runs a function
(the job's loss, compiled or not), so that the wrappers' hooks see the training step:

- ddp: `DistributedDataParallel`, a replica per process; the gradients are averaged by an
  all-reduce in the backward of a step's last micro-batch only (`gradient_sync`: `no_sync`
  for the others).
- fsdp: FSDP2 `fully_shard` on every transformer block and on the whole; parameters,
  gradients and AdamW state are sharded, each block's parameters all-gathered for its
  forward and backward and its gradients reduce-scattered (on the last micro-batch only:
  `set_requires_gradient_sync`). `mixed_precision` runs the gathered parameters in bf16.

With `activation_checkpointing` each block's forward runs under
`torch.utils.checkpoint` (non-reentrant): its activations are recomputed in the backward.

Data: rank r takes micro-batches r, r + N, r + 2N, ... of the one-process stream, so the
ranks together see each sample once (`ResumableSampler`, or `shard` for jobs that cannot
shard their own). Everything but the data is identical on every rank, so the mean loss of a
step is all-reduced once and every rank takes the same decisions (the NaN stop, Ctrl-C, the
time limit: `any_rank`). Only rank 0 prints, draws and writes files.

A process that dies or stalls does not leave the others waiting: torchrun ends them, and
without it their next collective fails within `dist_timeout`, raising `DistributedError`.

FSDP and DTensor take seconds to import, so they are imported when a run uses FSDP: a run
of one process, and `import llm`, never load them.
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from itertools import islice
from typing import Iterator

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.utils.checkpoint

from ..model import Block
from .config import ParallelSettings
from .lock import run_lock

# torch.compile pays once the eager time it saves exceeds the compile time. Measured on 2
# shared CPU cores (benchmarks/bench_distributed.py, fp32): the small preset 1.16-1.43x faster
# after 27-63 s of compiling, even after 32k-161k tokens; the gpt2 shape 1.24-1.65x after
# 55-161 s, even after 4k-21k. The default asks for about 3x the most. The CUDA figure is an
# estimate (steps there are ~100x faster, compiles about as slow), not measured here. A run
# cut short by max_seconds below COMPILE_MIN_SECONDS is not compiled by default either.
COMPILE_PAYS_AFTER_TOKENS = {"cpu": 500_000, "cuda": 20_000_000}
COMPILE_MIN_SECONDS = 600


class DistributedError(RuntimeError):
    """The processes of a run lost each other: one failed, stalled or never came."""


@dataclass(frozen=True)
class World:
    """This process's place among the run's processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    launched: bool = False  # started by torchrun (or in a process group made by the caller)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launch_env(environ=None) -> World:
    """The world of this process: the caller's process group if there is one, else the
    environment torchrun sets, else one process. A ValueError names a malformed variable."""
    if dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(),
                     int(os.environ.get("LOCAL_RANK", dist.get_rank())), True)
    environ = os.environ if environ is None else environ
    if "WORLD_SIZE" not in environ:
        return World()
    values = {}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        try:
            values[name] = int(environ.get(name, "0"))
        except ValueError:
            raise ValueError(f"environment variable {name}={environ[name]!r} is not an integer") from None
    rank, size = values["RANK"], values["WORLD_SIZE"]
    if not 0 <= rank < size:
        raise ValueError(f"RANK={rank} is not in [0, WORLD_SIZE={size})")
    return World(rank, size, values["LOCAL_RANK"], True)


def current_world() -> World:
    """The world of the process group this process is in (one process when there is none)."""
    return launch_env() if dist.is_initialized() else World()


def parallel_settings(cfg) -> ParallelSettings:
    """`cfg`'s execution settings; the defaults (eager, one process) for a settings class
    that has none."""
    return cfg if isinstance(cfg, ParallelSettings) else ParallelSettings()


def resolve_parallel(settings: ParallelSettings, world: World) -> str:
    """"none", "ddp" or "fsdp" for `world`; a ValueError for a combination that cannot run."""
    parallel = settings.parallel or ("ddp" if world.size > 1 else "none")
    if parallel == "none" and world.size > 1:
        raise ValueError(f"{world.size} processes were started but parallel is none: each would train its own "
                         f"copy; use --parallel ddp or fsdp")
    if parallel != "none" and not world.launched:
        raise ValueError(f"--parallel {parallel} trains across the processes torchrun starts: run "
                         f"torchrun --nproc_per_node N -m llm train ... (WORLD_SIZE is not set)")
    if settings.mixed_precision != "none" and parallel != "fsdp":
        raise ValueError(f"mixed_precision {settings.mixed_precision} is FSDP's: use it with --parallel fsdp "
                         f"(or --dtype bfloat16 for autocast)")
    return parallel


def compile_wanted(settings: ParallelSettings, cfg, world: World, steps_left: int) -> bool:
    """The `compile` setting, or by default whether the rest of the run (`steps_left` steps
    of `world.size` processes) trains enough tokens to repay compiling."""
    if settings.compile is not None:
        return settings.compile
    if getattr(cfg, "context_length", None) is None:  # no fixed tokens per step to count
        return False
    if cfg.max_seconds is not None and cfg.max_seconds < COMPILE_MIN_SECONDS:
        return False
    tokens = steps_left * cfg.batch_size * cfg.grad_accum * world.size * cfg.context_length
    return tokens >= COMPILE_PAYS_AFTER_TOKENS[torch.device(cfg.device).type]


def describe(world: World, parallel: str, settings: ParallelSettings, cfg, resumed_from: int | None = None) -> str:
    """The log line of a run's processes: how they share it, the global batch and the lr;
    `resumed_from`: the number of processes that wrote the checkpoint it continues."""
    n = world.size
    windows = cfg.batch_size * cfg.grad_accum * n
    tokens = f" = {windows * cfg.context_length:,} tokens" if hasattr(cfg, "context_length") else ""
    how = "1 process"
    if parallel != "none":
        precision = f", {settings.mixed_precision}" if settings.mixed_precision != "none" else ""
        backend = f", {dist.get_backend()}" if dist.is_initialized() else ""
        how = f"{n} process{'es' if n > 1 else ''} ({parallel}{precision}{backend})"
    return (f"{how}: global batch {cfg.batch_size} x {cfg.grad_accum} accumulated x {n} = {windows:,} windows"
            f"{tokens} per step at peak lr {cfg.lr:g}"
            + ("; each process trains on its own share of every step" if n > 1 else "")
            + (f"; continuing a checkpoint of {resumed_from} process{'es' if resumed_from > 1 else ''} with the "
               f"same global batch" if resumed_from not in (None, n) else ""))


@contextmanager
def process_group(device: str, settings: ParallelSettings, world: World):
    """Join the processes torchrun started, for the block (nothing to do for one process
    without --parallel, or when the caller's process group exists); yields the World."""
    parallel = resolve_parallel(settings, world)
    if dist.is_initialized() or parallel == "none":
        yield world
        return
    cuda = torch.device(device).type == "cuda"
    if cuda:
        if torch.device(device).index is not None and world.size > 1:
            raise ValueError(f"device {device!r}: under torchrun use --device cuda; rank r runs on cuda:LOCAL_RANK")
        torch.cuda.set_device(world.local_rank)
    address = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    try:
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=settings.dist_timeout))
    except (RuntimeError, ValueError) as e:
        raise DistributedError(f"rank {world.rank}: cannot join the other {world.size - 1} process(es) at "
                               f"{address} within {settings.dist_timeout:g}s ({_first_line(e)})") from e
    try:
        yield world
    finally:
        dist.destroy_process_group()


def main_rank_lock(out_dir, world: World):
    """The output folder's run lock (`llm.training.lock`), held by rank 0 for the run."""
    return run_lock(out_dir) if world.is_main else nullcontext()


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def failure(e: BaseException, world: World, step: int) -> DistributedError | None:
    """The DistributedError to raise for an error a collective raised (None for others)."""
    if world.size == 1 or not isinstance(e, (dist.DistError, RuntimeError)):
        return None
    text = str(e)
    if not (isinstance(e, dist.DistError) or any(w in text for w in ("gloo", "NCCL", "Connection", "Timed out"))):
        return None
    return DistributedError(f"rank {world.rank}: lost the other processes during step {step + 1}: another rank "
                            f"failed or stalled (see its output; collectives wait at most the dist_timeout): "
                            f"{_first_line(e)}")


# -- the model -----------------------------------------------------------------------------------


class StepModule(nn.Module):
    """Holds the model; its forward runs a function of it (the loss of a micro-batch), so
    that DDP's and FSDP's forward and backward hooks run around the training step."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn, *args):
        return fn(*args)


def checkpoint_activations(module: nn.Module) -> None:
    """Run `module`'s forward under non-reentrant activation checkpointing: only its inputs
    are kept; the backward recomputes the rest (the same dropout masks: the RNG is replayed).
    Parameter names stay as they are."""
    forward = module.forward

    def recomputed(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)

    module.forward = recomputed


def wrap(model: nn.Module, parallel: str, settings: ParallelSettings) -> nn.Module:
    """The StepModule to train `model` through: DDP's, FSDP2's, or a plain one. FSDP shards
    the parameters in place, so the optimizer is made after this."""
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    if settings.activation_checkpointing:
        for block in blocks:
            checkpoint_activations(block)
    step = StepModule(model)
    if parallel == "ddp":
        # device_ids None: the model's own device, and the inputs are left where they are
        return nn.parallel.DistributedDataParallel(step)
    if parallel == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # heavy: see the module doc

        policy = MixedPrecisionPolicy()
        if settings.mixed_precision != "none":
            reduce = torch.float32 if settings.mixed_precision == "bf16-fp32-reduce" else torch.bfloat16
            policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=reduce)
        for block in blocks:
            fully_shard(block, mp_policy=policy)
        fully_shard(step, mp_policy=policy)  # the rest: embeddings (= the tied head), ln_f
    return step


def gradient_sync(step: nn.Module, parallel: str, sync: bool):
    """A context for one micro-batch's forward and backward: with `sync` False the
    gradients are only accumulated locally (no all-reduce, no reduce-scatter)."""
    if parallel == "ddp":
        return nullcontext() if sync else step.no_sync()
    if parallel == "fsdp":
        step.set_requires_gradient_sync(sync)
    return nullcontext()


def _fsdp_modules(step: nn.Module) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in step.modules() if isinstance(m, FSDPModule)]


@contextmanager
def unsharded(step: nn.Module, parallel: str):
    """The model's own parameters whole for the block (FSDP), so that code calling the model
    directly (validation) runs as without sharding; every rank must enter it."""
    modules = _fsdp_modules(step) if parallel == "fsdp" else []
    for m in modules:
        m.unshard()
    try:
        yield
    finally:
        for m in modules:
            m.reshard()


@contextmanager
def whole_parameters(model: nn.Module, parallel: str):
    """`model`'s FSDP-sharded parameters replaced by whole tensors at their own precision
    (float32 also under mixed precision) for the block, to save the model; every rank must
    enter it, in the same order of modules."""
    if parallel != "fsdp":
        yield
        return
    from torch.distributed.tensor import DTensor

    swapped, whole = [], {}
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if isinstance(p, DTensor):
                if id(p) not in whole:  # a tied parameter is gathered once and stays tied
                    whole[id(p)] = nn.Parameter(p.full_tensor(), requires_grad=p.requires_grad)
                module._parameters[name] = whole[id(p)]
                swapped.append((module, name, p))
    try:
        yield
    finally:
        for module, name, p in swapped:
            module._parameters[name] = p


def clip_grad_norm(parameters, max_norm: float, parallel: str) -> float:
    """The global gradient norm before clipping to `max_norm` (over all shards under FSDP)."""
    norm = torch.nn.utils.clip_grad_norm_(list(parameters), max_norm)
    if parallel == "fsdp":
        norm = norm.full_tensor()  # a DTensor: the norm of the whole from the shards' norms
    return float(norm)


# -- data and collectives ------------------------------------------------------------------------


def shard(batches: Iterator, world: World) -> Iterator:
    """Rank r's micro-batches of a one-process stream: r, r + N, r + 2N, ..."""
    return batches if world.size == 1 else islice(batches, world.rank, None, world.size)


def mean_over_ranks(t: torch.Tensor, world: World) -> torch.Tensor:
    """The mean of `t` over the ranks (`t` itself for one process)."""
    if world.size == 1:
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / world.size


def any_rank(flags: list[bool], world: World) -> list[bool]:
    """Each flag, true if it is true on some rank: a decision every rank takes alike."""
    if world.size == 1:
        return flags
    t = torch.tensor([float(f) for f in flags], device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def gather(obj, world: World) -> list:
    """`obj` of every rank, in rank order (on every rank)."""
    if world.size == 1:
        return [obj]
    out = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj, world: World):
    """Rank 0's `obj`, on every rank."""
    if world.size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def rank_seed(seed: int, step: int, rank: int) -> int:
    """The seed of rank `rank`'s random stream (dropout) from step `step` of a run that did
    not leave one for it: the ranks' streams differ, and each is reproducible."""
    return (seed * 1_000_003 + step) * 1_009 + rank
