"""The settings of a training run: `TrainConfig`, the one place each setting is defined.

Every field carries its help text in `metadata["help"]`, from which `llm train` derives its
command-line flags (`--batch-size` for `batch_size`, ...; a bool field gives `--x/--no-x`).
`ParallelSettings` holds how a run is executed (torch.compile, torchrun's processes); a
settings class without them (fine-tuning's) runs eagerly in one process.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field

import torch

# dtype setting -> the autocast dtype (a torch attribute name); None runs in float32; "auto"
# is bfloat16 where the device does bf16 arithmetic, else float32 (resolved by autocast_context)
DTYPES = {"float32": None, "bfloat16": "bfloat16", "auto": "auto"}


_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


def check_device(device, available: bool = True) -> str:
    """`device` if it is "cpu", "cuda" or "cuda:<index>" (and, with `available`, usable
    here); a ValueError saying why not otherwise."""
    if not isinstance(device, str) or not _DEVICE.match(device):
        raise ValueError(f"unknown device {device!r}; use cpu, cuda or cuda:<index>")
    if available and device != "cpu":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no CUDA device is available here; use cpu")
        index = torch.device(device).index
        if index is not None and index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def setting(default, help_text: str, **metadata):
    """A TrainConfig field with its help text (and, e.g., `choices` or flag `aliases`)."""
    return field(default=default, metadata={"help": help_text, **metadata})


PARALLEL_CHOICES = ("none", "ddp", "fsdp")
CHECKPOINT_FORMATS = ("consolidated", "sharded")
MIXED_PRECISION = ("none", "bf16", "bf16-fp32-reduce")


@dataclass
class ParallelSettings:
    """How a run executes: compiled or eager, and across the processes torchrun starts
    (`llm.training.distributed`). None of them changes the math beyond float rounding,
    except `mixed_precision`."""

    compile: bool | None = setting(
        None, "compile the training step with torch.compile (--no-compile: eager); default: on when the "
        "run trains enough tokens to repay the compile time (docs/distributed.md)")
    parallel: str | None = setting(
        None, "under torchrun: ddp (a replica per process, gradients all-reduced) or fsdp (FSDP2: "
        "parameters, gradients and optimizer state sharded); default ddp when WORLD_SIZE > 1",
        choices=PARALLEL_CHOICES)
    checkpoint_format: str = setting(
        "consolidated", "consolidated: one ckpt-<step>.pt written by rank 0; sharded: a ckpt-<step>.dcp "
        "folder each rank writes its part of (torch.distributed.checkpoint); both resume at any world size",
        choices=CHECKPOINT_FORMATS)
    mixed_precision: str = setting(
        "none", "with fsdp: bf16 parameters and compute, gradients reduced in bf16 (bf16) or fp32 "
        "(bf16-fp32-reduce); the sharded weights and the optimizer stay float32", choices=MIXED_PRECISION)
    activation_checkpointing: bool = setting(
        False, "recompute each block's activations in the backward pass instead of keeping them")
    dist_timeout: float = setting(
        600.0, "seconds a process waits for the others before the run stops with an error")

    def __post_init__(self):
        for name, choices in (("parallel", PARALLEL_CHOICES), ("checkpoint_format", CHECKPOINT_FORMATS),
                              ("mixed_precision", MIXED_PRECISION)):
            v = getattr(self, name)
            if v not in choices and not (name == "parallel" and v is None):
                raise ValueError(f"{name} must be one of {choices}, got {v!r}")
        for name in ("compile", "activation_checkpointing"):
            v = getattr(self, name)
            if not (isinstance(v, bool) or (name == "compile" and v is None)):
                raise ValueError(f"{name} must be True or False, got {v!r}")
        if not (isinstance(self.dist_timeout, (int, float)) and 0 < self.dist_timeout < math.inf):
            raise ValueError(f"dist_timeout must be a positive number of seconds, got {self.dist_timeout!r}")


@dataclass
class TrainConfig(ParallelSettings):
    """Settings of a training run (everything but the model's shape and the data).

    A None default is filled in by `resolved` from the model and the other settings.
    """

    steps: int = setting(1000, "optimizer steps")
    batch_size: int = setting(8, "windows per micro-batch")
    grad_accum: int = setting(1, "micro-batches per optimizer step")
    lr: float = setting(6e-4, "peak learning rate")
    min_lr_ratio: float = setting(0.1, "the cosine decay ends at lr * min_lr_ratio")
    warmup_steps: int | None = setting(None, "linear warmup steps (default: steps // 20, at most 200)")
    weight_decay: float = setting(0.1, "AdamW weight decay of the linear weights")
    beta1: float = setting(0.9, "AdamW beta1")
    beta2: float = setting(0.95, "AdamW beta2")
    grad_clip: float = setting(1.0, "max global gradient norm, 0 for none")
    context_length: int | None = setting(None, "window length (default: the model's n_positions)")
    stride: int | None = setting(None, "window stride (default: the context length, windows do not overlap)")
    val_fraction: float = setting(0.05, "the last part of the tokens held out for validation; 0 for none")
    eval_every: int | None = setting(None, "steps between evaluations (default: about ten per run)")
    eval_batches: int = setting(20, "validation batches per evaluation")
    checkpoint_every: int | None = setting(None, "steps between checkpoints (default: eval_every)")
    keep_checkpoints: int = setting(3, "checkpoints kept", aliases=("--keep",))
    seed: int = setting(1337, "seed of the initial weights, dropout and data order")
    max_seconds: float | None = setting(
        None, "stop and save at the first step boundary after this many seconds")
    dtype: str = setting("float32", "bfloat16: autocast; weights and optimizer stay float32; auto: bfloat16 "
                         "where the device does bf16 arithmetic, else float32", choices=tuple(DTYPES))
    device: str = setting("cpu", "cpu or cuda")

    def __post_init__(self):
        super().__post_init__()
        for name in ("steps", "batch_size", "grad_accum", "eval_batches", "keep_checkpoints"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name in ("warmup_steps",):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 0):
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        for name in ("context_length", "stride", "eval_every", "checkpoint_every"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < 1 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be in (0, 1), got {self.lr!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("weight_decay and grad_clip must be >= 0")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError("beta1 and beta2 must be in [0, 1)")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0, got {self.max_seconds!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        check_device(self.device, available=False)  # a resumed run may move to another machine

    def resolved(self, n_positions: int) -> "TrainConfig":
        """A copy with every None default filled in."""
        ctx = self.context_length or n_positions
        eval_every = self.eval_every or max(1, self.steps // 10)
        return dataclasses.replace(
            self,
            warmup_steps=self.warmup_steps if self.warmup_steps is not None else min(200, self.steps // 20),
            context_length=ctx,
            stride=self.stride or ctx,
            eval_every=eval_every,
            checkpoint_every=self.checkpoint_every or eval_every,
        )


# Settings that may differ when a run is resumed. None changes a loss already in the history:
# `steps` moves the end of the cosine decay (warmup stays as resolved at the start),
# `eval_every` only which steps are validated, `device` (like `train`'s `backend` argument),
# `compile` and `parallel` only the float rounding of the same math. `eval_batches` is not
# here: it changes what a validation loss measures, so one history would mix two estimates.
# `batch_size` and `grad_accum` may change together with the number of processes as long as
# the global batch stays (`llm.training.plan`).
RESUME_MAY_CHANGE = {"steps", "device", "eval_every", "checkpoint_every", "keep_checkpoints",
                     "max_seconds", "compile", "parallel", "checkpoint_format", "activation_checkpointing",
                     "dist_timeout"}

# Settings a resumed run does not take from its checkpoint: they are chosen per invocation
# (None: the default for this invocation's machine and processes).
PER_INVOCATION = ("max_seconds", "compile", "parallel")
