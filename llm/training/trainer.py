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

Under torchrun the same call runs in every process (`llm.training.distributed`: DDP or
FSDP2, each rank a share of every step's batch, rank 0 alone printing and writing), and
`compile` runs the loss through torch.compile.

The loop itself is `fit(job, plan, out_dir)`: a `Job` names what is trained (the model, with
its frozen parameters already frozen), the loss of a batch, the batches, validation and the
final save; the loop owns the rest. Pretraining (`train`, via `pretraining_job`) and
fine-tuning (`llm.finetune`) each make their job.
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
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn

from ..fileio import writing
from ..model import GPT
from . import distributed
from .checkpoint import checkpoint_name, prune_checkpoints, remove_checkpoint, rng_state, set_rng_state
from .data import TokenData, WindowDataset, make_loader
from .evaluation import autocast_context, evaluate
from .optim import lr_factor, param_groups
from .plan import RunPlan, load_data, plan_run
from .progress import logger, progress_bar, write_loss_plot
from .run_state import RunState


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


@dataclass
class Evaluation:
    """A validation: the loss (recorded and plotted) and a summary for the log line."""

    loss: float
    summary: str = ""


@dataclass
class Job:
    """What `fit` trains. The loop owns the rest: AdamW over the parameters that require
    grad, the schedule, accumulation, clipping, checkpoints and exact resume, progress,
    Ctrl-C, the NaN stop and the time limit. Whoever makes a job builds the model (seeded)."""

    model: nn.Module  # with `.backend`; its parameters that require grad are trained
    loss: Callable[[Any], torch.Tensor]  # the mean loss of one micro-batch from `batches`
    batches: Callable[[int], Iterator]  # endless micro-batches, from sample `start` on
    tokens: Callable[[Any], int]  # tokens in a micro-batch, for tokens/s
    save: Callable[[Path], None]  # writes the trained model into the output folder
    validate: Callable[[], Evaluation] | None = None  # None: no validation
    describe: str = ""  # the model and the data, for the first log line
    title: str = ""  # of loss.png
    info: dict = field(default_factory=dict)  # kept in every checkpoint: model config, data identity
    # what a checkpoint holds of the model and how it comes back (default: the whole state dict)
    state_dict: Callable[[], dict] | None = None
    load_state_dict: Callable[[dict], Any] | None = None
    # rank r of n processes' micro-batches from sample `start`: (start, r, n) -> micro-batches
    # r, r + n, ... of `batches(start)`; None: taken from `batches` (which then reads them all)
    rank_batches: Callable[[int, int, int], Iterator] | None = None


class _StopRequest:
    """First Ctrl-C asks the loop to stop at the next step boundary; a second one raises."""

    def __init__(self, quiet: bool = False):
        self.requested, self.quiet = False, quiet
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if not self.quiet:
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

    One run at a time writes into `out_dir`: it holds the folder's lock file for its whole
    life (`llm.training.lock`), and a second run into the folder fails at once with
    FolderInUseError, touching nothing of the first.

    Under torchrun (or in a process group the caller made) every process calls this alike:
    `parallel` (ddp, fsdp) says how they share the work, `batch_size` is per process (the
    global batch is batch_size x grad_accum x processes), and a resume may use another
    number of processes (`llm.training.plan.rebatched`). DistributedError when the processes
    lose each other (one failed or stalled longer than `dist_timeout`).

    Raises NonFiniteLossError on a NaN/inf loss (the last good checkpoint is kept),
    TrainingInterrupted on Ctrl-C (after saving a checkpoint), and OSError "cannot write
    <path>: <cause>" when a file cannot be written (on a full disk the previous checkpoints
    stay, with no temporary file beside them).
    """
    out_dir = checked_out_dir(out_dir)
    world = distributed.launch_env()
    with distributed.main_rank_lock(out_dir, world):  # before reading the folder: what the plan reads stays
        plan = plan_run(out_dir / "checkpoints", preset, config, resume, overwrite, settings, world.size)
        with distributed.process_group(plan.cfg.device, plan.cfg, world):
            tokens, train_ds, val_ds = load_data(data, plan)
            job = pretraining_job(plan, tokens, train_ds, val_ds, backend)
            return fit(job, plan, out_dir, progress, callback)


def checked_out_dir(out_dir) -> Path:
    """`out_dir` as a Path; a ValueError if it names something other than a folder."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output folder {out_dir} exists and is not a folder")
    return out_dir


def pretraining_job(plan: RunPlan, tokens: TokenData, train_ds: WindowDataset, val_ds: WindowDataset | None,
                    backend: str | None) -> Job:
    """Next-token prediction of a new GPT (seeded) over the windows of a token dataset."""
    cfg, c = plan.cfg, plan.model_config
    torch.manual_seed(cfg.seed)  # the initial weights
    model = GPT(c, backend=backend).to(cfg.device)

    def loss(batch):
        x, y = (t.to(cfg.device, non_blocking=True) for t in batch)
        return model.loss(x, y)

    def validate() -> Evaluation:
        val = evaluate(model, val_ds, cfg.batch_size, cfg.eval_batches, cfg.device, cfg.dtype)
        return Evaluation(val, f"val perplexity {math.exp(min(val, 50)):.2f}")

    processes = distributed.current_world().size
    describe = (f"model: {model.num_params() / 1e6:.2f}M parameters (non-embedding); data: {len(tokens):,} "
                f"tokens, {len(train_ds):,} training windows of {cfg.context_length}"
                + (f", {len(val_ds):,} validation windows" if val_ds else "")
                + f"; {cfg.batch_size * cfg.grad_accum * processes * cfg.context_length:,} tokens per step")

    def loader(start: int, rank: int = 0, world: int = 1):
        return iter(make_loader(train_ds, cfg.batch_size, seed=cfg.seed, start=start, rank=rank, world=world))

    return Job(model, loss, loader,
               tokens=lambda batch: batch[0].numel(), save=model.save_pretrained,
               validate=validate if val_ds is not None else None, describe=describe,
               title=f"{c.n_layer} layers x {c.n_embd}, {Path(tokens.source).name}",
               info={"model_config": c.to_hf_dict(),
                     "data": {"source": tokens.source, "sha256": tokens.sha256, "n_tokens": len(tokens)}},
               rank_batches=loader)


def fit(job: Job, plan: RunPlan, out_dir, progress: bool = True,
        callback: Callable[[int, float], None] | None = None) -> TrainResult:
    """Run `job` with the settings and resume state of `plan` into `out_dir` (see `train`
    for the outputs, the resume rules, the folder's lock and the exceptions). The caller
    may hold the folder's lock already (`run_lock`), as `train` does while it plans."""
    out_dir = checked_out_dir(out_dir)
    with distributed.main_rank_lock(out_dir, distributed.current_world()):
        return _Run(out_dir, plan, job).fit(progress, callback)


class _Run:
    """One invocation of `fit`: the job, optimizer and scheduler, and the progress so far."""

    def __init__(self, out_dir: Path, plan: RunPlan, job: Job):
        cfg = self.cfg = plan.cfg
        self.out_dir, self.ckpt_dir, self.stale = out_dir, out_dir / "checkpoints", plan.stale
        self.job, self.model, self.device = job, job.model, cfg.device
        self.world, self.settings = distributed.current_world(), distributed.parallel_settings(cfg)
        self.parallel = distributed.resolve_parallel(self.settings, self.world)
        # the loss runs as the forward of this module (DDP's, FSDP's); FSDP shards in place,
        # so the optimizer comes after it
        self.stepper = distributed.wrap(self.model, self.parallel, self.settings)
        use_fused = torch.device(self.device).type == "cuda" and self.parallel != "fsdp"
        self.optimizer = torch.optim.AdamW(param_groups(self.model, cfg.weight_decay), lr=cfg.lr,
                                           betas=(cfg.beta1, cfg.beta2), fused=use_fused or None)
        self.state_io = RunState(self.model, self.optimizer, self.world, self.parallel == "fsdp",
                                 job.state_dict, job.load_state_dict)
        # a plain function, not a bound method: LambdaLR's state_dict then saves nothing of it
        self.schedule = lambda s: lr_factor(s, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)  # noqa: E731
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.schedule)
        self.step, self.samples_seen = 0, 0
        self.history = {"train": [], "val": []}
        self.resumed = plan.state is not None
        self.resumed_backend = None  # the backend the resumed checkpoint was trained with
        self.resumed_world = 1  # and its number of processes
        if self.resumed:
            self._restore(plan.state)
        elif self.world.size > 1:  # a dropout stream of its own per rank
            torch.manual_seed(distributed.rank_seed(cfg.seed, 0, self.world.rank))
        self.compiled = distributed.compile_wanted(self.settings, cfg, self.world, cfg.steps - self.step)
        self.loss = torch.compile(job.loss) if self.compiled else job.loss
        self.last_ckpt, self.saved_step = plan.state_path, (self.step if self.resumed else None)
        self.tokens_done = 0  # by this invocation's training steps
        self.updating = False  # between the first optimizer change and the step's end

    def _restore(self, state: dict) -> None:
        self.state_io.restore(state)
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.samples_seen = state["step"], state["samples_seen"]
        ranks = state.get("rng_ranks")
        if ranks is not None and len(ranks) == self.world.size:
            set_rng_state(ranks[self.world.rank])
        else:
            set_rng_state(state["rng"])
            if self.world.size > 1:  # another number of processes: a new stream per rank
                torch.manual_seed(distributed.rank_seed(self.cfg.seed, self.step, self.world.rank))
        # The saved lr is the old schedule's for this step; with a new `steps` it is not
        # this run's. The same expression as LambdaLR's, so an unchanged schedule is bit-exact.
        for group, base_lr in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base_lr * self.schedule(self.step)
        self.history = {k: [tuple(x) for x in v] for k, v in state["history"].items()}
        self.resumed_backend = state.get("backend", self.model.backend)
        self.resumed_world = state.get("world_size", 1)

    def checkpoint(self, rng) -> Path:
        """Save the state after `self.step` steps, with `rng` the RNG state at that boundary
        (every rank calls it; rank 0 writes, or each its shards)."""
        meta = {
            **self.job.info, "step": self.step, "samples_seen": self.samples_seen,
            "scheduler": self.scheduler.state_dict(), "rng": rng, "train_config": dataclasses.asdict(self.cfg),
            "backend": self.model.backend,  # informational: a resume may use another one
            "history": {k: [list(x) for x in v] for k, v in self.history.items()},
            "world_size": self.world.size,
        }
        if self.world.size > 1:
            meta["rng_ranks"] = distributed.gather(rng, self.world)
        sharded = self.settings.checkpoint_format == "sharded"
        path = self.state_io.save(meta, self.ckpt_dir / checkpoint_name(self.step, sharded))
        if self.world.is_main:
            prune_checkpoints(self.ckpt_dir, self.cfg.keep_checkpoints)
        self.last_ckpt, self.saved_step = path, self.step
        return path

    def _checkpoint_if_unsaved(self) -> Path:
        return self.checkpoint(self.rng_at_step_start) if self.saved_step != self.step else self.last_ckpt

    def plot(self, quiet: bool = False) -> None:
        """Write loss.png; `quiet` on the way out of a stopped run: an OSError (a full disk)
        is dropped rather than hiding why the run stopped."""
        if not self.world.is_main:
            return
        try:
            write_loss_plot(self.out_dir / "loss.png", self.history["train"], self.history["val"], self.job.title)
        except OSError:
            if not quiet:
                raise

    def rate(self) -> float:
        """Training tokens/s of this invocation (all processes)."""
        return self.tokens_done * self.world.size / max(time.perf_counter() - self.t_start, 1e-9)

    def validate(self) -> Evaluation:
        """The job's validation, on every rank (FSDP's forward needs them all)."""
        with distributed.unsharded(self.stepper, self.parallel):
            return self.job.validate()

    @staticmethod
    def validation_line(step: int, val: Evaluation, loss_value: float | None = None) -> str:
        train = f"train loss {loss_value:.4f}, " if loss_value is not None else ""
        return f"step {step}: {train}val loss {val.loss:.4f}" + (f", {val.summary}" if val.summary else "")

    # -- the run --------------------------------------------------------------------------------

    def fit(self, progress: bool, callback) -> TrainResult:
        """Start (the output folder is written from here on), loop, and finish."""
        cfg, main = self.cfg, self.world.is_main
        for p in self.stale if main else ():
            with writing(p, "delete"):
                remove_checkpoint(p)
        self.log = logger(progress and main)
        self._log_start()
        self.batches = self._batches()
        self.amp = autocast_context(self.device, cfg.dtype)
        self.bar = progress_bar(progress and main, self.step, cfg.steps)
        self.t_start, self.start_step = time.perf_counter(), self.step
        self.rng_at_step_start = rng_state()  # the RNG state at the last step boundary
        # the first Ctrl-C ends the loop at a step boundary; a second one arrives as a
        # KeyboardInterrupt anywhere in a step, saved only if the update had not begun
        try:
            with _StopRequest(quiet=not main) as stop:
                self._loop(stop, callback)
        except TrainingInterrupted:
            self.bar.close()
            self.plot(quiet=True)
            raise
        except KeyboardInterrupt as e:
            self.bar.close()
            path = None
            # model and optimizer are as after `step` steps; with several processes the
            # others may be anywhere in theirs: no checkpoint
            if not self.updating and self.world.size == 1:
                path = self._checkpoint_if_unsaved()
            self.plot(quiet=True)
            raise TrainingInterrupted(self.step, path or self.last_ckpt) from e
        except BaseException as e:
            self.bar.close()
            if self.history["train"]:
                self.plot(quiet=True)
            lost = distributed.failure(e, self.world, self.step)
            if lost is not None:
                raise lost from e
            raise
        self.bar.close()
        try:
            return self._finish()
        except Exception as e:
            lost = distributed.failure(e, self.world, self.step)
            if lost is not None:
                raise lost from e
            raise

    def _batches(self) -> Iterator:
        """This process's micro-batches from the run's position on."""
        job, world = self.job, self.world
        if world.size == 1:
            return job.batches(self.samples_seen)
        if job.rank_batches is not None:
            return job.rank_batches(self.samples_seen, world.rank, world.size)
        return distributed.shard(job.batches(self.samples_seen), world)

    def _log_start(self) -> None:
        backend = self.model.backend
        self.log(
            f"{self.job.describe}; backend {backend}"
            + (f"; resuming at step {self.step}" if self.resumed else "")
            + (f" (trained so far with backend {self.resumed_backend}: the same math, so the losses "
               f"agree to float rounding, not bit for bit)"
               if self.resumed and self.resumed_backend != backend else ""))
        resumed_from = self.resumed_world if self.resumed else None
        if self.parallel != "none" or resumed_from not in (None, self.world.size):
            self.log(distributed.describe(self.world, self.parallel, self.settings, self.cfg, resumed_from))
        if self.compiled:
            self.log("the training step runs compiled (torch.compile; --no-compile for eager)")

    def _loop(self, stop: _StopRequest, callback) -> None:
        cfg = self.cfg
        while self.step < cfg.steps:
            t0 = time.perf_counter()
            loss_value = self._train_step()
            if self.compiled and self.step == self.start_step + 1:
                self.log(f"torch.compile: the first step took {time.perf_counter() - t0:.1f}s, compiling included")
            self.bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}",
                                 tok_s=f"{self.rate():,.0f}", refresh=False)
            self.bar.update(1)
            step = self.step
            if self.job.validate is not None and (step % cfg.eval_every == 0 or step == cfg.steps):
                val = self.validate()
                self.history["val"].append((step, val.loss))
                self.log(f"{self.validation_line(step, val, loss_value)}, {self.rate():,.0f} tokens/s")
                self.plot()
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                self.checkpoint(self.rng_at_step_start)
            if callback is not None:
                callback(step, loss_value)
            time_up = cfg.max_seconds is not None and time.perf_counter() - self.t_start >= cfg.max_seconds
            stop_now, time_up = distributed.any_rank([stop.requested, time_up], self.world)  # all ranks alike
            if stop_now:
                raise TrainingInterrupted(step, self._checkpoint_if_unsaved())
            if time_up:
                if step < cfg.steps:
                    self.log(f"time limit of {cfg.max_seconds:g}s reached at step {step} of "
                             f"{cfg.steps}; resume continues the run")
                break

    def _train_step(self) -> float:
        """One optimizer step over grad_accum micro-batches; returns their mean loss."""
        cfg, model, device, K = self.cfg, self.model, self.device, self.cfg.grad_accum
        model.train()
        loss_sum = torch.zeros((), device=device)  # on the device: one sync per step, not per micro-batch
        for k in range(K):
            batch = next(self.batches)
            # gradients are averaged across processes in the last micro-batch's backward only
            with distributed.gradient_sync(self.stepper, self.parallel, k == K - 1):
                with self.amp:
                    loss = self.stepper(self.loss, batch)
                (loss / K).backward()  # the gradient of the mean, as one K-times larger batch
            loss_sum += loss.detach()
            self.tokens_done += self.job.tokens(batch)
        loss_value = distributed.mean_over_ranks(loss_sum, self.world).item() / K
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(self.step + 1, "the loss", loss_value, self.last_ckpt)
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = distributed.clip_grad_norm(model.parameters(), max_norm, self.parallel)
        if not math.isfinite(grad_norm):
            raise NonFiniteLossError(self.step + 1, "the gradient norm", grad_norm, self.last_ckpt)
        # an interrupt from here to the step's end leaves a half-updated state: not saved
        self.updating = True
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.samples_seen += cfg.batch_size * K * self.world.size
        self.history["train"].append((self.step, loss_value))
        self.rng_at_step_start = rng_state()
        self.updating = False
        return loss_value

    def _finish(self) -> TrainResult:
        """The final validation, checkpoint, model and plot of a loop that ended normally."""
        seconds = time.perf_counter() - self.t_start
        tok_s = self.rate()
        final_val = self._final_validation() if self.job.validate is not None else None
        if self.saved_step != self.step:
            self.checkpoint(self.rng_at_step_start)
        self.plot()
        with distributed.whole_parameters(self.model, self.parallel):
            if self.world.is_main:
                with writing(self.out_dir, "save the model to"):
                    self.job.save(self.out_dir)
        self.log(f"done: {self.step} steps, {tok_s:,.0f} tokens/s; model saved to {self.out_dir}")
        return TrainResult(self.out_dir, self.step, self.history["train"], self.history["val"],
                           tok_s, seconds, final_val)

    def _final_validation(self) -> float:
        step, history = self.step, self.history["val"]
        if history and history[-1][0] == step:
            return history[-1][1]
        val = self.validate()
        if step == self.cfg.steps:  # the end of the run is on the schedule
            history.append((step, val.loss))
        else:  # a time-limit stop: reported, not recorded (a resume would not repeat it)
            self.log(self.validation_line(step, val))
        return val.loss
