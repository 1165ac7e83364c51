"""Pretraining: next-token prediction on a token dataset, with checkpoints that resume exactly.

`train(data, out_dir, ...)` builds a GPT (a preset or a config.json), windows the data
(`llm.data`), and runs AdamW (weight decay on linear weights only) with linear warmup then
cosine decay, gradient accumulation and clipping, optional bf16 autocast, and periodic
validation. Into `out_dir` it writes `checkpoints/ckpt-<step>.pt` (model, optimizer,
scheduler, RNG states, step and data position; the newest few kept), `loss.png`, and at the
end the model as `config.json` + `model.safetensors` (loadable by `GPT.from_pretrained`,
`llm generate --model out_dir` and transformers).

Resuming loads the newest checkpoint and continues so that every later loss, training and
validation, equals the one an uninterrupted run computes. Seeded: the same settings give the
same losses on CPU.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from .checkpoint import (CheckpointError, checkpoint_name, list_checkpoints, load_checkpoint,
                         prune_checkpoints, rng_state, save_checkpoint, set_rng_state)
from .config import GPTConfig
from .data import TokenData, WindowDataset, load_tokens, make_loader, split_tokens
from .model import GPT

DTYPES = {"float32": None, "bfloat16": torch.bfloat16}


@dataclass
class TrainConfig:
    """Settings of a training run (everything but the model's shape and the data)."""

    steps: int = 1000  # optimizer steps
    batch_size: int = 8  # windows per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 6e-4  # peak learning rate
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int | None = None  # None: steps // 20, at most 200
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global gradient norm; 0 turns clipping off
    context_length: int | None = None  # None: the model's n_positions
    stride: int | None = None  # None: context_length (windows do not overlap)
    val_fraction: float = 0.05  # the last part of the tokens; 0: no validation
    eval_every: int | None = None  # None: about ten evaluations per run
    eval_batches: int = 20
    checkpoint_every: int | None = None  # None: eval_every
    keep_checkpoints: int = 3
    seed: int = 1337
    max_seconds: float | None = None  # stop (and save) at the first step boundary after this
    dtype: str = "float32"  # "bfloat16": autocast (weights and optimizer stay float32)
    device: str = "cpu"

    def __post_init__(self):
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
# `eval_every` only which steps are validated, `device` (like `train`'s `backend` argument)
# only the float rounding of the same math. `eval_batches` is not here: it changes what a
# validation loss measures, so one history would mix two estimates.
RESUME_MAY_CHANGE = {"steps", "device", "eval_every", "checkpoint_every", "keep_checkpoints",
                     "max_seconds"}


class NonFiniteLossError(RuntimeError):
    """Training met a NaN/inf loss or gradient; the last good checkpoint is kept."""

    def __init__(self, step: int, what: str, value: float, last_checkpoint: Path | None):
        self.step, self.last_checkpoint = step, last_checkpoint
        kept = (f"the last good checkpoint is {last_checkpoint}" if last_checkpoint
                else "no checkpoint had been written yet")
        super().__init__(f"{what} is {value} at step {step}: training stopped; {kept}")


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, after the checkpoint was saved (if the state allowed it)."""

    def __init__(self, step: int, checkpoint: Path | None):
        self.step, self.checkpoint = step, checkpoint
        super().__init__(f"interrupted at step {step}; checkpoint {checkpoint}")


@dataclass
class TrainResult:
    out_dir: Path
    step: int
    train_losses: list = field(default_factory=list)  # [(step, loss)], whole run incl. resumed part
    val_losses: list = field(default_factory=list)  # [(step, loss)]
    tokens_per_s: float = 0.0  # this invocation's training steps only
    seconds: float = 0.0
    # validation loss of the returned model (at `step`); after a time-limit stop off the eval
    # schedule it is not in val_losses, so a resumed run's history equals an uninterrupted one
    final_val_loss: float | None = None


# -- pieces -------------------------------------------------------------------------------------


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on Linear weights; none on biases, norms and embeddings.

    The tied lm_head weight is the token embedding, so it is not decayed.
    """
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            if isinstance(module, nn.Linear) and name == "weight" and module is not getattr(model, "lm_head", None):
                decay.append(p)
            else:
                no_decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based): linear warmup, cosine."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def autocast_context(device: str, dtype: str):
    if DTYPES[dtype] is None:
        return nullcontext()
    device_type = torch.device(device).type
    if device_type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("bfloat16 autocast is not supported on this CUDA device; use dtype='float32'")
    return torch.autocast(device_type=device_type, dtype=DTYPES[dtype])


@torch.no_grad()
def evaluate(model: GPT, dataset: WindowDataset, batch_size: int = 8, max_batches: int | None = None,
             device: str | None = None, dtype: str = "float32") -> float:
    """Mean next-token loss over the dataset's windows in order (the first max_batches batches)."""
    device = device or str(model.transformer.wte.weight.device)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    n = len(dataset) if max_batches is None else min(len(dataset), max_batches * batch_size)
    for start in range(0, n, batch_size):
        items = [dataset[i] for i in range(start, min(n, start + batch_size))]
        x = torch.stack([a for a, _ in items]).to(device)
        y = torch.stack([b for _, b in items]).to(device)
        with autocast_context(device, dtype):
            loss = model.loss(x, y)
        total += float(loss) * len(items)
        count += len(items)
    model.train(was_training)
    return total / count


def write_loss_plot(path: Path, train_losses, val_losses, title: str = "") -> None:
    """`loss.png`: training loss per step and validation loss (Agg canvas, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if train_losses:
        s, l = zip(*train_losses)
        ax.plot(s, l, lw=0.8, alpha=0.8, label="train")
    if val_losses:
        s, l = zip(*val_losses)
        ax.plot(s, l, "o-", ms=3, label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    tmp.replace(path)


class _StopRequest:
    """First Ctrl-C asks the loop to stop at the next step boundary; a second one raises."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: stopping after this step and saving a checkpoint "
              "(press again to stop at once)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


# -- the run ------------------------------------------------------------------------------------


def _model_config(preset, config) -> GPTConfig:
    if preset is not None and config is not None:
        raise ValueError("pass a preset or a config, not both")
    if isinstance(config, GPTConfig):
        return config
    if config is not None:
        return GPTConfig.from_json(config)
    return GPTConfig.from_preset(preset or "small")


def _datasets(tokens: TokenData, cfg: TrainConfig):
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
    return train_ds, val_ds


def _resume_state(ckpt_dir: Path) -> tuple[dict, Path]:
    found = list_checkpoints(ckpt_dir)
    if not found:
        raise FileNotFoundError(f"cannot resume: no checkpoint (ckpt-*.pt) in {ckpt_dir}")
    path = found[-1][1]
    try:
        return load_checkpoint(path), path
    except CheckpointError as e:
        older = f"; delete it to resume from {found[-2][1].name}" if len(found) > 1 else ""
        raise CheckpointError(f"{e}{older}") from e


def train(data, out_dir, *, preset: str | None = None, config=None, backend: str | None = None,
          resume: bool = False, overwrite: bool = False, progress: bool = True,
          callback: Callable[[int, float], None] | None = None, **settings) -> TrainResult:
    """Train a GPT on `data` (a .txt file, a folder of .txt, or a .jsonl) into `out_dir`.

    The model is `preset` (default 'small') or `config` (a GPTConfig or config.json path);
    `settings` are `TrainConfig` fields (steps, batch_size, grad_accum, lr, ...). With
    `resume=True` the newest checkpoint in `out_dir/checkpoints` is continued; its settings
    are kept, and a setting passed here that would change the losses is an error (see
    RESUME_MAY_CHANGE). `steps` may change (not below the checkpoint's step): from the first
    resumed step on, the cosine decay runs to the new total, while the warmup keeps its
    length. `backend` may change too: the same math, so the losses then agree with an
    uninterrupted run to float rounding rather than bit for bit. Without `resume`, a folder
    that already holds checkpoints is an error unless `overwrite=True`. `callback(step, loss)`
    runs after every optimizer step.

    With `max_seconds` the run stops at the first step boundary after that many seconds,
    saving a checkpoint and the model as at the end (a resume continues it). The validation
    loss at such a stop is `final_val_loss`; `val_losses` holds only scheduled evaluations.

    Raises NonFiniteLossError on a NaN/inf loss (the last good checkpoint is kept) and
    TrainingInterrupted on Ctrl-C (after saving a checkpoint).
    """
    unknown = set(settings) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise TypeError(f"unknown training settings {sorted(unknown)}; valid: "
                        f"{[f.name for f in dataclasses.fields(TrainConfig)]}")
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    state, state_path, stale = None, None, []
    if resume:
        state, state_path = _resume_state(ckpt_dir)
        model_config = GPTConfig.from_hf_dict(state["model_config"], source=str(state_path))
        if preset is not None or config is not None:
            wanted = _model_config(preset, config)
            if wanted.to_hf_dict() != model_config.to_hf_dict():
                raise ValueError(f"the model asked for differs from the one in {state_path}")
        saved = TrainConfig(**{**state["train_config"], "max_seconds": None})  # per invocation
        for k, v in settings.items():
            if k not in RESUME_MAY_CHANGE and v is not None and v != getattr(saved, k):
                raise ValueError(f"cannot resume with {k}={v!r}: {state_path} was trained with "
                                 f"{k}={getattr(saved, k)!r}")
        cfg = dataclasses.replace(saved, **{k: v for k, v in settings.items() if v is not None})
        if cfg.steps < state["step"]:
            raise ValueError(f"cannot resume with steps={cfg.steps}: {state_path} is already at "
                             f"step {state['step']}")
    else:
        if list_checkpoints(ckpt_dir):
            if not overwrite:
                raise ValueError(f"{ckpt_dir} already holds checkpoints: resume the run, or "
                                 f"overwrite it, or choose another output folder")
            stale = [p for _, p in list_checkpoints(ckpt_dir)]  # deleted once the run can start
        model_config = _model_config(preset, config)
        cfg = TrainConfig(**{k: v for k, v in settings.items() if v is not None})
    cfg = cfg.resolved(model_config.n_positions)
    if cfg.context_length > model_config.n_positions:
        raise ValueError(f"context_length {cfg.context_length} exceeds the model's "
                         f"n_positions={model_config.n_positions}")

    tokens = load_tokens(data)
    if state is not None and state["data"]["sha256"] != tokens.sha256:
        raise ValueError(f"{data} is not the data {state_path} was trained on "
                         f"({state['data']['source']}, sha256 {state['data']['sha256'][:12]}...)")
    train_ds, val_ds = _datasets(tokens, cfg)

    device = cfg.device
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but no CUDA device is available here")
    torch.manual_seed(cfg.seed)
    model = GPT(model_config, backend=backend).to(device)
    use_fused = torch.device(device).type == "cuda"
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr,
                                  betas=(cfg.beta1, cfg.beta2), fused=use_fused or None)
    schedule = lambda s: lr_factor(s, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)  # noqa: E731
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    step, samples_seen = 0, 0
    history = {"train": [], "val": []}
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        step, samples_seen = state["step"], state["samples_seen"]
        # The saved lr is the old schedule's for this step; with a new `steps` it is not
        # this run's. The same expression as LambdaLR's, so an unchanged schedule is bit-exact.
        for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = base_lr * schedule(step)
        history = {k: [tuple(x) for x in v] for k, v in state["history"].items()}
    last_ckpt, saved_step = state_path, (step if state is not None else None)

    def checkpoint(rng) -> Path:
        nonlocal last_ckpt, saved_step
        path = save_checkpoint({
            "step": step, "samples_seen": samples_seen,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "rng": rng,
            "model_config": model_config.to_hf_dict(), "train_config": dataclasses.asdict(cfg),
            "backend": model.backend,  # informational: a resume may use another one
            "data": {"source": tokens.source, "sha256": tokens.sha256, "n_tokens": len(tokens)},
            "history": {k: [list(x) for x in v] for k, v in history.items()},
        }, ckpt_dir / checkpoint_name(step))
        prune_checkpoints(ckpt_dir, cfg.keep_checkpoints)
        last_ckpt, saved_step = path, step
        return path

    out_dir.mkdir(parents=True, exist_ok=True)
    for p in stale:
        p.unlink(missing_ok=True)
    log = _logger(progress)
    T, B, K = cfg.context_length, cfg.batch_size, cfg.grad_accum
    tokens_per_step = B * K * T
    log(f"model: {model.num_params() / 1e6:.2f}M parameters (non-embedding), backend {model.backend}; "
        f"data: {len(tokens):,} tokens, {len(train_ds):,} training windows of {T}"
        + (f", {len(val_ds):,} validation windows" if val_ds else "")
        + f"; {tokens_per_step:,} tokens per step"
        + (f"; resuming at step {step}" if state is not None else "")
        + (f" (trained so far with backend {state['backend']}: the same math, so the losses "
           f"agree to float rounding, not bit for bit)"
           if state is not None and state.get("backend", model.backend) != model.backend else ""))
    batches = iter(make_loader(train_ds, B, seed=cfg.seed, start=samples_seen))
    amp = autocast_context(device, cfg.dtype)
    bar = _progress_bar(progress, step, cfg.steps)
    t_start, start_step = time.perf_counter(), step
    updating = False
    rng_at_step_start = rng_state()  # the RNG state at the last step boundary

    def finish_plot():
        write_loss_plot(out_dir / "loss.png", history["train"], history["val"],
                        f"{model_config.n_layer} layers x {model_config.n_embd}, {Path(tokens.source).name}")

    def rate() -> float:
        return (step - start_step) * tokens_per_step / max(time.perf_counter() - t_start, 1e-9)

    try:
        with _StopRequest() as stop:
            while step < cfg.steps:
                model.train()
                loss_sum = torch.zeros((), device=device)
                for _ in range(K):
                    x, y = next(batches)
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    with amp:
                        loss = model.loss(x, y)
                    (loss / K).backward()
                    loss_sum += loss.detach()
                loss_value = loss_sum.item() / K
                if not math.isfinite(loss_value):
                    raise NonFiniteLossError(step + 1, "the loss", loss_value, last_ckpt)
                max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
                grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
                if not math.isfinite(grad_norm):
                    raise NonFiniteLossError(step + 1, "the gradient norm", grad_norm, last_ckpt)
                updating = True
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                samples_seen += B * K
                history["train"].append((step, loss_value))
                rng_at_step_start = rng_state()
                updating = False
                bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}",
                                tok_s=f"{rate():,.0f}", refresh=False)
                bar.update(1)
                if val_ds is not None and (step % cfg.eval_every == 0 or step == cfg.steps):
                    val = evaluate(model, val_ds, B, cfg.eval_batches, device, cfg.dtype)
                    history["val"].append((step, val))
                    log(f"step {step}: train loss {loss_value:.4f}, val loss {val:.4f}, "
                        f"val perplexity {math.exp(min(val, 50)):.2f}, {rate():,.0f} tokens/s")
                    finish_plot()
                if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                    checkpoint(rng_at_step_start)
                if callback is not None:
                    callback(step, loss_value)
                if stop.requested:
                    path = checkpoint(rng_at_step_start) if saved_step != step else last_ckpt
                    raise TrainingInterrupted(step, path)
                if cfg.max_seconds is not None and time.perf_counter() - t_start >= cfg.max_seconds:
                    if step < cfg.steps:
                        log(f"time limit of {cfg.max_seconds:g}s reached at step {step} of "
                            f"{cfg.steps}; resume continues the run")
                    break
    except TrainingInterrupted:
        bar.close()
        finish_plot()
        raise
    except KeyboardInterrupt as e:
        bar.close()
        path = None
        if not updating:  # model and optimizer are as after `step` steps
            path = checkpoint(rng_at_step_start) if saved_step != step else last_ckpt
        finish_plot()
        raise TrainingInterrupted(step, path or last_ckpt) from e
    except BaseException:
        bar.close()
        if history["train"]:
            finish_plot()
        raise
    bar.close()
    seconds = time.perf_counter() - t_start
    tok_s = rate()
    final_val = None
    if val_ds is not None:
        if history["val"] and history["val"][-1][0] == step:
            final_val = history["val"][-1][1]
        else:
            final_val = evaluate(model, val_ds, B, cfg.eval_batches, device, cfg.dtype)
            if step == cfg.steps:  # the end of the run is on the schedule
                history["val"].append((step, final_val))
            else:  # a time-limit stop: reported, not recorded (a resume would not repeat it)
                log(f"step {step}: val loss {final_val:.4f}, "
                    f"val perplexity {math.exp(min(final_val, 50)):.2f}")
    if saved_step != step:
        checkpoint(rng_at_step_start)
    model.save_pretrained(out_dir)
    finish_plot()
    log(f"done: {step} steps, {tok_s:,.0f} tokens/s; model saved to {out_dir}")
    return TrainResult(out_dir, step, history["train"], history["val"], tok_s, seconds, final_val)


def _logger(enabled: bool):
    if not enabled:
        return lambda msg: None
    from tqdm import tqdm

    return tqdm.write


def _progress_bar(enabled: bool, initial: int, total: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step",
                dynamic_ncols=True, smoothing=0.1)
