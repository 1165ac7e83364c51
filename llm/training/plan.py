"""What a training run will do before it starts: the model, the settings and the data.

A fresh run takes its model from a preset or a config and its settings from the caller. A
resumed run takes both from the newest checkpoint and accepts only the changes that leave
every loss already in the history as it is (`RESUME_MAY_CHANGE`). Everything is checked
here, before the output folder is touched, so a run that cannot start leaves it as it was.
`plan_settings` is the part every kind of run shares (fine-tuning has its own settings class).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ..config import GPTConfig
from .checkpoint import CheckpointError, list_checkpoints, load_checkpoint
from .config import PER_INVOCATION, RESUME_MAY_CHANGE, TrainConfig, check_device
from .data import TokenData, WindowDataset, load_tokens, split_tokens


@dataclass
class RunPlan:
    model_config: GPTConfig | None  # pretraining's model; None for runs that load theirs
    cfg: TrainConfig  # resolved: no None left (another settings class for fine-tuning)
    state: dict | None = None  # the checkpoint a resumed run continues
    state_path: Path | None = None
    stale: list = field(default_factory=list)  # an overwritten run's checkpoints


def model_config_for(preset, config) -> GPTConfig:
    """The GPTConfig of a preset name or a config (a GPTConfig or a config.json path)."""
    if preset is not None and config is not None:
        raise ValueError("pass a preset or a config, not both")
    if isinstance(config, GPTConfig):
        return config
    if config is not None:
        return GPTConfig.from_json(config)
    return GPTConfig.from_preset(preset or "small")


def plan_run(ckpt_dir: Path, preset, config, resume: bool, overwrite: bool, settings: dict,
             world_size: int = 1) -> RunPlan:
    """The model and resolved settings of a run into `ckpt_dir`'s folder (see `train`), run
    by `world_size` processes."""
    plan = plan_settings(ckpt_dir, resume, overwrite, settings, world_size=world_size)
    if resume:
        plan.model_config = _resumed_model_config(plan, preset, config)
        if plan.cfg.steps < plan.state["step"]:
            raise ValueError(f"cannot resume with steps={plan.cfg.steps}: {plan.state_path} is already at "
                             f"step {plan.state['step']}")
    else:
        plan.model_config = model_config_for(preset, config)
    plan.cfg = plan.cfg.resolved(plan.model_config.n_positions)
    check_device(plan.cfg.device)
    if plan.cfg.context_length > plan.model_config.n_positions:
        raise ValueError(f"context_length {plan.cfg.context_length} exceeds the model's "
                         f"n_positions={plan.model_config.n_positions}")
    return plan


def plan_settings(ckpt_dir: Path, resume: bool, overwrite: bool, settings: dict, config_class=TrainConfig,
                  may_change=RESUME_MAY_CHANGE, world_size: int = 1) -> RunPlan:
    """The unresolved settings of a run into `ckpt_dir`'s folder (model_config left None).

    Fresh: `settings` (None: not given) over `config_class`'s defaults; a folder holding
    checkpoints is an error unless `overwrite` (they are listed as stale). Resumed: the
    newest checkpoint's settings, of which only the `may_change` ones may be given otherwise,
    and `batch_size` / `grad_accum` so that the global batch stays (`rebatched`) when
    `world_size` processes continue a run of another number.
    """
    names = [f.name for f in dataclasses.fields(config_class)]
    unknown = set(settings) - set(names)
    if unknown:
        raise TypeError(f"unknown training settings {sorted(unknown)}; valid: {names}")
    given = {k: v for k, v in settings.items() if v is not None}
    if not resume:
        stale = []
        if list_checkpoints(ckpt_dir):
            if not overwrite:
                raise ValueError(f"{ckpt_dir} already holds checkpoints: resume the run, or "
                                 f"overwrite it, or choose another output folder")
            stale = [p for _, p in list_checkpoints(ckpt_dir)]  # deleted once the run can start
        return RunPlan(None, config_class(**given), stale=stale)
    state, state_path = newest_checkpoint(ckpt_dir)
    try:
        saved = config_class(**{**state["train_config"], **{k: None for k in PER_INVOCATION if k in names}})
    except TypeError as e:
        raise CheckpointError(f"{state_path} holds the settings of another kind of run ({e})") from None
    resized = rebatched(saved, given, state.get("world_size", 1), world_size, state_path)
    for k, v in given.items():
        if k not in may_change and k not in resized and v != getattr(saved, k):
            raise ValueError(f"cannot resume with {k}={v!r}: {state_path} was trained with "
                             f"{k}={getattr(saved, k)!r}")
    return RunPlan(None, dataclasses.replace(saved, **{**given, **resized}), state, state_path)


def rebatched(saved, given: dict, saved_world: int, world: int, state_path: Path) -> dict:
    """{} when `world` processes continue a run of as many; else the `batch_size` and
    `grad_accum` with which they take the same global batch per optimizer step (batch_size x
    grad_accum x processes windows: the gradient is their mean however they are split). Given
    values must keep it; else grad_accum is rescaled, or failing that batch_size."""
    if world == saved_world:
        return {}
    total = saved.batch_size * saved.grad_accum * saved_world
    batch = given.get("batch_size", saved.batch_size)
    if "grad_accum" in given:
        accum = given["grad_accum"]
    elif total % (batch * world) == 0:
        accum = total // (batch * world)
    else:
        accum = saved.grad_accum
        if "batch_size" not in given and total % (accum * world) == 0:
            batch = total // (accum * world)
    if batch * accum * world != total:
        raise ValueError(
            f"cannot resume {state_path} with {world} process(es): it was trained with a global batch of "
            f"{total} windows (batch_size {saved.batch_size} x grad_accum {saved.grad_accum} x {saved_world} "
            f"process(es)); give --batch-size and --grad-accum with batch_size x grad_accum x {world} = {total}")
    return {"batch_size": batch, "grad_accum": accum}


def _resumed_model_config(plan: RunPlan, preset, config) -> GPTConfig:
    model_config = GPTConfig.from_hf_dict(plan.state["model_config"], source=str(plan.state_path))
    if preset is not None or config is not None:
        wanted = model_config_for(preset, config)
        if wanted.to_hf_dict() != model_config.to_hf_dict():
            raise ValueError(f"the model asked for differs from the one in {plan.state_path}")
    return model_config


def newest_checkpoint(ckpt_dir: Path) -> tuple[dict, Path]:
    """(state, path) of the newest checkpoint in `ckpt_dir`; FileNotFoundError when there is
    none, CheckpointError (naming the older one to fall back to) when it cannot be read."""
    found = list_checkpoints(ckpt_dir)
    if not found:
        raise FileNotFoundError(f"cannot resume: no checkpoint (ckpt-*.pt) in {ckpt_dir}")
    path = found[-1][1]
    try:
        return load_checkpoint(path), path
    except CheckpointError as e:
        older = f"; delete it to resume from {found[-2][1].name}" if len(found) > 1 else ""
        raise CheckpointError(f"{e}{older}") from e


def load_data(data, plan: RunPlan) -> tuple[TokenData, WindowDataset, WindowDataset | None]:
    """The tokens of `data` and its training and validation windows (None: no validation)."""
    tokens = load_tokens(data)
    state, cfg = plan.state, plan.cfg
    if state is not None and state["data"]["sha256"] != tokens.sha256:
        raise ValueError(f"{data} is not the data {plan.state_path} was trained on "
                         f"({state['data']['source']}, sha256 {state['data']['sha256'][:12]}...)")
    T, n = cfg.context_length, len(tokens)
    if n == 0:
        raise ValueError(f"{tokens.source} holds no text (0 tokens)")
    if n < T + 1:
        raise ValueError(
            f"{tokens.source} has {n} tokens, fewer than one training window needs "
            f"(context_length {T} + 1 = {T + 1}); use more data or a smaller context_length"
        )
    train_ids, val_ids = split_tokens(tokens.ids, cfg.val_fraction)
    train_ds = WindowDataset(train_ids, T, cfg.stride, name=f"the training split of {tokens.source}")
    val_ds = None
    if cfg.val_fraction > 0:
        val_ds = WindowDataset(val_ids, T, T, name=f"the validation split ({cfg.val_fraction:g}) of {tokens.source}")
    return tokens, train_ds, val_ds
