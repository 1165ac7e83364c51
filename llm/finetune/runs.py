"""What both fine-tunings share around the training loop (`llm.training.trainer.fit`): the
run's settings (fresh or resumed), the base model, what trains, batches, the checkpointed
state and the identity of the data and the base model.

A checkpoint of a fine-tuning run holds only the trained parameters (the base model is read
again from its folder, whose weights' sha256 is checked), so checkpoints of LoRA and
last-block runs stay small.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from .. import weights
from ..model import GPT
from ..training.checkpoint import CheckpointError
from ..training.config import check_device
from ..training.data import ResumableSampler
from ..training.plan import RunPlan, plan_settings
from .config import RESUME_MAY_CHANGE, FinetuneConfig
from .lora import inject_lora


def plan_finetune(out_dir: Path, config_class, resume: bool, overwrite: bool, settings: dict) -> RunPlan:
    """The (unresolved) settings of a fine-tuning run into `out_dir`, fresh or resumed."""
    plan = plan_settings(out_dir / "checkpoints", resume, overwrite, settings, config_class, RESUME_MAY_CHANGE)
    given = {k for k, v in settings.items() if v is not None}
    if resume and "epochs" in given and "steps" not in given:  # the step count follows the new epochs
        plan.cfg = dataclasses.replace(plan.cfg, steps=None)
    check_device(plan.cfg.device)
    return plan


def resolve_plan(plan: RunPlan, n_train: int) -> None:
    """Fill the plan's settings in, knowing the number of training examples."""
    cfg = plan.cfg
    plan.cfg = cfg.resolved(-(-n_train // (cfg.batch_size * cfg.grad_accum)))
    if plan.state is not None and plan.cfg.steps < plan.state["step"]:
        raise ValueError(f"cannot resume with {plan.cfg.steps} steps: {plan.state_path} is already at "
                         f"step {plan.state['step']}")


def check_resumed(plan: RunPlan, task: str, info: dict) -> None:
    """A resumed run must be of the same kind, on the same base model and data."""
    state = plan.state
    if state is None:
        return
    if state.get("task") != task:
        raise CheckpointError(f"{plan.state_path} is not a checkpoint of a {task} fine-tuning run")
    for key, what in (("base_model", "base model"), ("data", "data")):
        if state[key]["sha256"] != info[key]["sha256"]:
            raise ValueError(f"the {what} {info[key]['source']} is not the one {plan.state_path} was trained "
                             f"on ({state[key]['source']}, sha256 {state[key]['sha256'][:12]}...)")


def files_identity(paths: list[Path]) -> dict:
    """{"source": the paths, "sha256": of their contents}."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return {"source": ", ".join(str(p) for p in paths), "sha256": h.hexdigest()}


def load_base(model, backend: str | None, cfg: FinetuneConfig) -> tuple[GPT, dict]:
    """The base GPT (on cfg.device, dropout as cfg says) and its identity (folder, sha256)."""
    folder = weights.resolve_model_dir(model)
    gpt = GPT.from_pretrained(folder, backend=backend, device=cfg.device)
    if cfg.dropout is not None:
        set_dropout(gpt, cfg.dropout)
    stored = [p for p in (folder / "model.safetensors", folder / "pytorch_model.bin") if p.is_file()][:1]
    return gpt, {**files_identity([folder / "config.json", *stored]), "source": str(folder.resolve())}


def set_dropout(gpt: GPT, p: float) -> None:
    """Every dropout of the model (embedding, attention, residual) at probability p."""
    gpt.config = dataclasses.replace(gpt.config, embd_pdrop=p, attn_pdrop=p, resid_pdrop=p)
    for m in gpt.modules():
        if isinstance(m, nn.Dropout):
            m.p = p
        if hasattr(m, "attn_pdrop"):
            m.attn_pdrop = p


def select_trainable(gpt: GPT, head: nn.Module | None, cfg: FinetuneConfig) -> str:
    """Freeze all but what `cfg.train` names (LoRA: adapters put on the targets, seeded by
    the caller); `head` (a classifier's) always trains. Returns what trains, in words."""
    n = gpt.config.n_layer
    if cfg.train == "last-k" and cfg.k > n:
        raise ValueError(f"k={cfg.k} is more than the model's {n} blocks (n_layer)")
    if cfg.train == "head" and head is None:
        raise ValueError("train='head' needs a new head (classification)")
    for p in gpt.parameters():
        p.requires_grad_(cfg.train == "all")
    what = {"all": "every parameter", "head": "the head"}.get(cfg.train, "")
    if cfg.train == "last-k":
        for block in gpt.transformer.h[n - cfg.k:]:
            block.requires_grad_(True)
        gpt.transformer.ln_f.requires_grad_(True)
        what = f"the last {cfg.k} block(s) and the final norm"
    elif cfg.train == "lora":
        lora = cfg.lora_config()
        added = inject_lora(gpt, lora)
        what = f"LoRA r={lora.r} alpha={lora.alpha:g} on {len(added)} layers ({','.join(lora.targets)})"
    if head is not None:
        head.requires_grad_(True)
        what += "" if cfg.train in ("all", "head") else " and the head"
    return what


def count_params(model: nn.Module, trainable: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


def trainable_state(model: nn.Module) -> Callable[[], dict]:
    """The job's state_dict: the trained parameters only."""
    return lambda: {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: nn.Module) -> Callable[[dict], None]:
    """The job's load_state_dict: exactly the trained parameters, by name."""

    def load(sd: dict) -> None:
        names = {n for n, p in model.named_parameters() if p.requires_grad}
        if set(sd) != names:
            raise CheckpointError(f"the checkpoint holds other trained parameters than this run trains: "
                                  f"{sorted(set(sd) ^ names)[:4]} ...")
        model.load_state_dict(sd, strict=False)

    return load


class LengthGroupedSampler(ResumableSampler):
    """Each epoch: examples sorted by length, cut into batches, the batches in a seeded random
    order (the short remainder last), so a batch holds examples of similar length."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 0, start: int = 0):
        super().__init__(len(lengths), seed=seed, start=start)
        self.order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
        self.batch_size = batch_size

    def permutation(self, epoch: int) -> torch.Tensor:
        b = self.batch_size
        chunks = [self.order[i:i + b] for i in range(0, self.n, b)]
        full = [c for c in chunks if len(c) == b]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        shuffled = [full[i] for i in torch.randperm(len(full), generator=g).tolist()]
        return torch.tensor([i for c in shuffled + chunks[len(full):] for i in c], dtype=torch.long)


def batch_iterator(dataset, batch_size: int, seed: int, start: int, collate_fn,
                   lengths: list[int] | None = None):
    """Endless batches from sample `start` on, seeded (`ResumableSampler`, or grouped by length)."""
    if lengths is None:
        sampler = ResumableSampler(len(dataset), seed=seed, start=start)
    else:
        sampler = LengthGroupedSampler(lengths, batch_size, seed=seed, start=start)
    # its own generator: a DataLoader draws a base seed, which must not move the global RNG
    return iter(DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn,
                           num_workers=0, generator=torch.Generator().manual_seed(seed)))
