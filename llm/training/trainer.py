"""Pretraining: next-token prediction on a token dataset, with checkpoints that resume exactly.

`train(data, out_dir, ...)` builds a GPT (a preset or a config.json), windows the data
(`llm.training.data`), and runs AdamW (weight decay on linear weights only) with linear
warmup then cosine decay, gradient accumulation and clipping, optional bf16 autocast, and
periodic validation. Into `out_dir` it writes `checkpoints/ckpt-<step>.pt` (model,
optimizer, scheduler, RNG states, step and data position; the newest few kept),
`loss.png`, and at the end the model as `config.json` + `model.safetensors` (loadable by
`GPT.from_pretrained`, `llm generate --model out_dir` and transformers).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..model import GPT
from .checkpoint import checkpoint_name, prune_checkpoints, rng_state, save_checkpoint, set_rng_state
from .data import TokenData, WindowDataset, make_loader
from .evaluation import autocast_context, evaluate
from .optim import lr_factor, param_groups
from .plan import RunPlan, load_data, plan_run
from .progress import logger, progress_bar, write_loss_plot


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
    out_dir = Path(out_dir)
    plan = plan_run(out_dir / "checkpoints", preset, config, resume, overwrite, settings)
    tokens, train_ds, val_ds = load_data(data, plan)
    run = _Run(out_dir, plan, tokens, train_ds, val_ds, backend)
    return run.fit(progress, callback)


class _Run:
    """One invocation of `train`: the model, optimizer and scheduler, and the progress so far."""

    def __init__(self, out_dir: Path, plan: RunPlan, tokens: TokenData, train_ds: WindowDataset,
                 val_ds: WindowDataset | None, backend: str | None):
        cfg = self.cfg = plan.cfg
        self.out_dir, self.ckpt_dir, self.stale = out_dir, out_dir / "checkpoints", plan.stale
        self.model_config, self.tokens = plan.model_config, tokens
        self.train_ds, self.val_ds = train_ds, val_ds
        self.device = device = cfg.device
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but no CUDA device is available here")
        torch.manual_seed(cfg.seed)  # the initial weights
        self.model = GPT(plan.model_config, backend=backend).to(device)
        use_fused = torch.device(device).type == "cuda"
        self.optimizer = torch.optim.AdamW(param_groups(self.model, cfg.weight_decay), lr=cfg.lr,
                                           betas=(cfg.beta1, cfg.beta2), fused=use_fused or None)
        # a plain function, not a bound method: LambdaLR's state_dict then saves nothing of it
        self.schedule = lambda s: lr_factor(s, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)  # noqa: E731
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.schedule)
        self.step, self.samples_seen = 0, 0
        self.history = {"train": [], "val": []}
        self.resumed = plan.state is not None
        self.resumed_backend = None  # the backend the resumed checkpoint was trained with
        if self.resumed:
            self._restore(plan.state)
        self.last_ckpt, self.saved_step = plan.state_path, (self.step if self.resumed else None)
        self.tokens_per_step = cfg.batch_size * cfg.grad_accum * cfg.context_length
        self.updating = False  # between the first optimizer change and the step's end

    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.step, self.samples_seen = state["step"], state["samples_seen"]
        # The saved lr is the old schedule's for this step; with a new `steps` it is not
        # this run's. The same expression as LambdaLR's, so an unchanged schedule is bit-exact.
        for group, base_lr in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base_lr * self.schedule(self.step)
        self.history = {k: [tuple(x) for x in v] for k, v in state["history"].items()}
        self.resumed_backend = state.get("backend", self.model.backend)

    def checkpoint(self, rng) -> Path:
        """Save the state after `self.step` steps, with `rng` the RNG state at that boundary."""
        tokens = self.tokens
        path = save_checkpoint({
            "step": self.step, "samples_seen": self.samples_seen,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "rng": rng,
            "model_config": self.model_config.to_hf_dict(), "train_config": dataclasses.asdict(self.cfg),
            "backend": self.model.backend,  # informational: a resume may use another one
            "data": {"source": tokens.source, "sha256": tokens.sha256, "n_tokens": len(tokens)},
            "history": {k: [list(x) for x in v] for k, v in self.history.items()},
        }, self.ckpt_dir / checkpoint_name(self.step))
        prune_checkpoints(self.ckpt_dir, self.cfg.keep_checkpoints)
        self.last_ckpt, self.saved_step = path, self.step
        return path

    def _checkpoint_if_unsaved(self) -> Path:
        return self.checkpoint(self.rng_at_step_start) if self.saved_step != self.step else self.last_ckpt

    def plot(self) -> None:
        c = self.model_config
        write_loss_plot(self.out_dir / "loss.png", self.history["train"], self.history["val"],
                        f"{c.n_layer} layers x {c.n_embd}, {Path(self.tokens.source).name}")

    def rate(self) -> float:
        """Training tokens/s of this invocation."""
        seconds = max(time.perf_counter() - self.t_start, 1e-9)
        return (self.step - self.start_step) * self.tokens_per_step / seconds

    def validate(self) -> float:
        cfg = self.cfg
        return evaluate(self.model, self.val_ds, cfg.batch_size, cfg.eval_batches, self.device, cfg.dtype)

    # -- the run --------------------------------------------------------------------------------

    def fit(self, progress: bool, callback) -> TrainResult:
        """Start (the output folder is written from here on), loop, and finish."""
        cfg = self.cfg
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for p in self.stale:
            p.unlink(missing_ok=True)
        self.log = logger(progress)
        self._log_start()
        loader = make_loader(self.train_ds, cfg.batch_size, seed=cfg.seed, start=self.samples_seen)
        self.batches = iter(loader)
        self.amp = autocast_context(self.device, cfg.dtype)
        self.bar = progress_bar(progress, self.step, cfg.steps)
        self.t_start, self.start_step = time.perf_counter(), self.step
        self.rng_at_step_start = rng_state()  # the RNG state at the last step boundary
        # the first Ctrl-C ends the loop at a step boundary; a second one arrives as a
        # KeyboardInterrupt anywhere in a step, saved only if the update had not begun
        try:
            with _StopRequest() as stop:
                self._loop(stop, callback)
        except TrainingInterrupted:
            self.bar.close()
            self.plot()
            raise
        except KeyboardInterrupt as e:
            self.bar.close()
            path = None
            if not self.updating:  # model and optimizer are as after `step` steps
                path = self._checkpoint_if_unsaved()
            self.plot()
            raise TrainingInterrupted(self.step, path or self.last_ckpt) from e
        except BaseException:
            self.bar.close()
            if self.history["train"]:
                self.plot()
            raise
        self.bar.close()
        return self._finish()

    def _log_start(self) -> None:
        val_ds, backend = self.val_ds, self.model.backend
        self.log(
            f"model: {self.model.num_params() / 1e6:.2f}M parameters (non-embedding), backend {backend}; "
            f"data: {len(self.tokens):,} tokens, {len(self.train_ds):,} training windows of "
            f"{self.cfg.context_length}"
            + (f", {len(val_ds):,} validation windows" if val_ds else "")
            + f"; {self.tokens_per_step:,} tokens per step"
            + (f"; resuming at step {self.step}" if self.resumed else "")
            + (f" (trained so far with backend {self.resumed_backend}: the same math, so the losses "
               f"agree to float rounding, not bit for bit)"
               if self.resumed and self.resumed_backend != backend else ""))

    def _loop(self, stop: _StopRequest, callback) -> None:
        cfg = self.cfg
        while self.step < cfg.steps:
            loss_value = self._train_step()
            self.bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}",
                                 tok_s=f"{self.rate():,.0f}", refresh=False)
            self.bar.update(1)
            step = self.step
            if self.val_ds is not None and (step % cfg.eval_every == 0 or step == cfg.steps):
                val = self.validate()
                self.history["val"].append((step, val))
                self.log(f"step {step}: train loss {loss_value:.4f}, val loss {val:.4f}, "
                         f"val perplexity {math.exp(min(val, 50)):.2f}, {self.rate():,.0f} tokens/s")
                self.plot()
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                self.checkpoint(self.rng_at_step_start)
            if callback is not None:
                callback(step, loss_value)
            if stop.requested:
                raise TrainingInterrupted(step, self._checkpoint_if_unsaved())
            if cfg.max_seconds is not None and time.perf_counter() - self.t_start >= cfg.max_seconds:
                if step < cfg.steps:
                    self.log(f"time limit of {cfg.max_seconds:g}s reached at step {step} of "
                             f"{cfg.steps}; resume continues the run")
                break

    def _train_step(self) -> float:
        """One optimizer step over grad_accum micro-batches; returns their mean loss."""
        cfg, model, device, K = self.cfg, self.model, self.device, self.cfg.grad_accum
        model.train()
        loss_sum = torch.zeros((), device=device)  # on the device: one sync per step, not per micro-batch
        for _ in range(K):
            x, y = next(self.batches)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with self.amp:
                loss = model.loss(x, y)
            (loss / K).backward()  # the gradient of the mean, as one K-times larger batch
            loss_sum += loss.detach()
        loss_value = loss_sum.item() / K
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(self.step + 1, "the loss", loss_value, self.last_ckpt)
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
        if not math.isfinite(grad_norm):
            raise NonFiniteLossError(self.step + 1, "the gradient norm", grad_norm, self.last_ckpt)
        # an interrupt from here to the step's end leaves a half-updated state: not saved
        self.updating = True
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.samples_seen += cfg.batch_size * K
        self.history["train"].append((self.step, loss_value))
        self.rng_at_step_start = rng_state()
        self.updating = False
        return loss_value

    def _finish(self) -> TrainResult:
        """The final validation, checkpoint, model and plot of a loop that ended normally."""
        seconds = time.perf_counter() - self.t_start
        tok_s = self.rate()
        final_val = self._final_validation() if self.val_ds is not None else None
        if self.saved_step != self.step:
            self.checkpoint(self.rng_at_step_start)
        self.model.save_pretrained(self.out_dir)
        self.plot()
        self.log(f"done: {self.step} steps, {tok_s:,.0f} tokens/s; model saved to {self.out_dir}")
        return TrainResult(self.out_dir, self.step, self.history["train"], self.history["val"],
                           tok_s, seconds, final_val)

    def _final_validation(self) -> float:
        step, history = self.step, self.history["val"]
        if history and history[-1][0] == step:
            return history[-1][1]
        final_val = self.validate()
        if step == self.cfg.steps:  # the end of the run is on the schedule
            history.append((step, final_val))
        else:  # a time-limit stop: reported, not recorded (a resume would not repeat it)
            self.log(f"step {step}: val loss {final_val:.4f}, "
                     f"val perplexity {math.exp(min(final_val, 50)):.2f}")
        return final_val
