"""The engine loop of `llm serve`: continuous batching on a fixed pool of KV-cache slots.

One thread owns the model and a `SlotCache` (`llm.generation.slots`). Requests (`Job`s)
wait in a bounded queue; each turn of the loop

  1. drops the requests whose client went away (their slots are free at once),
  2. admits waiting requests, first come first served, while enough slots are free (a
     request takes one slot per prompt and choice); a prompt that begins with tokens a free
     slot still holds goes to that slot and is not computed again (the prefix cache),
  3. prefills at most `prefill_chunk` prompt tokens (a long prompt takes several turns, so
     the running rows wait at most one chunk between their tokens); a request whose prompts
     are all in picks its first tokens,
  4. runs one decode step for every running row, each at its own depth, and picks the next
     tokens; a row that ends (EOS, stop string, max_tokens) frees its slot at once.

Tokens are picked as `generate` picks them (`llm.generation.sampling.next_tokens`, with the
request's own penalties and its own generator, drawing noise for all its rows), and the
decoder computes every row on its own, so each request gets exactly what `model.generate`
gives for it alone: greedy, and with the same seed when sampling (its rows being those of
`generate(prompts repeated n times)`).

Results go back through `Job.emit`, called on this thread with lists of `Delta`s, then one
`Finished` or `Failed`. An exception while computing one request fails that request only:
a decode step that raises is run again request by request, and those that raise again fail.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..generation.config import GenerationConfig
from ..generation.sampling import Penalties, next_tokens
from ..generation.slots import SlotCache
from ..generation.text import RowsText
from .metrics import Metrics

log = logging.getLogger("llm.serve")


class QueueFullError(RuntimeError):
    """The waiting queue is full; try again later."""


class ShuttingDownError(RuntimeError):
    """The server is stopping and admits no new request."""


@dataclass
class TokenLogprob:
    """A token's log-probability under the model (raw logits) and the `top` most likely
    tokens at its position, as (id, logprob); a prompt's first token has logprob None."""

    token: int
    logprob: float | None
    top: list[tuple[int, float]]


@dataclass
class Delta:
    """What one step added to choice `index`: text (never a split character; held back
    while it could begin a stop string), tokens, their logprobs when asked, and the finish
    reason ("stop": EOS or a stop string; "length": max_tokens) when the choice ended."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob]
    finish_reason: str | None = None


@dataclass
class Finished:
    prompt_tokens: int
    completion_tokens: int
    prompt_logprobs: list | None = None  # per prompt: a TokenLogprob per token (echo)


@dataclass
class Failed:
    message: str
    status: int = 500


@dataclass
class Job:
    """One request: `prompts` (token ids) x `n` choices; choice i continues prompt i // n.
    `cfg.max_new_tokens` is one integer. logprobs: how many top alternatives to report per
    token (None: no logprobs). prompt_logprobs: also score the prompt tokens (echo)."""

    prompts: list[list[int]]
    n: int
    cfg: GenerationConfig
    emit: Callable[[object], None]
    logprobs: int | None = None
    prompt_logprobs: bool = False
    arrival: float = field(default_factory=time.monotonic)
    cancelled: bool = False

    @property
    def rows(self) -> int:
        return len(self.prompts) * self.n


class _Run:
    """A job admitted into slots: per prompt its slots and prefill progress, per row (choice)
    its slot, last token, text and penalties."""

    def __init__(self, job: Job, groups: list[tuple[list[int], int]], tokenizer, vocab_size: int, device,
                 prompt_logprobs=None):
        self.job, cfg = job, job.cfg
        self.prompt_logprobs = prompt_logprobs
        self.groups = [[slots, start, None] for slots, start in groups]  # [slots, next token, logits]
        self.slot: list[int | None] = [s for slots, _ in groups for s in slots]
        self.last: list[int | None] = [None] * job.rows
        self.text = RowsText(cfg, [cfg.max_new_tokens] * job.rows, tokenizer)
        prompts = [p for p in job.prompts for _ in range(job.n)]
        T = max(len(p) for p in prompts)
        ids = torch.zeros(job.rows, T, dtype=torch.long, device=device)
        valid = torch.zeros(job.rows, T, dtype=torch.bool, device=device)
        for i, p in enumerate(prompts):
            ids[i, T - len(p):] = torch.tensor(p, device=device)
            valid[i, T - len(p):] = True
        self.penalties = Penalties(cfg, ids, valid, vocab_size)
        self.eos = torch.tensor(cfg.eos_token_ids(), dtype=torch.long, device=device)
        self.generator = None if cfg.seed is None else torch.Generator(device=device).manual_seed(cfg.seed)
        self.step = 0
        self.last_emit = None

    def alive(self) -> list[int]:
        return [i for i, s in enumerate(self.slot) if s is not None]

    def prefill(self, slots: SlotCache, budget: int) -> int:
        """Prefill up to `budget` prompt tokens; returns how many."""
        used = 0
        for g, prompt in zip(self.groups, self.job.prompts):
            take = min(budget - used, len(prompt) - g[1])
            if take <= 0:
                continue
            logits = slots.prefill(g[0], prompt[g[1]:g[1] + take])
            g[1] += take
            used += take
            if g[1] == len(prompt):
                g[2] = logits
        return used

    @property
    def prefilled(self) -> bool:
        return all(g[2] is not None for g in self.groups)


class Scheduler:
    """The engine loop on `model`: `max_batch_size` slots, at most `max_queue` waiting jobs."""

    def __init__(self, model, tokenizer, max_batch_size: int = 16, max_queue: int = 64,
                 prefill_chunk: int = 256, prefix_cache: bool = True, metrics: Metrics | None = None):
        for name, v, lo in (("max_batch_size", max_batch_size, 1), ("max_queue", max_queue, 1),
                            ("prefill_chunk", prefill_chunk, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        self.model, self.tokenizer = model, tokenizer
        self.slots = SlotCache(model, max_batch_size)
        self.max_queue, self.prefill_chunk, self.prefix_cache = max_queue, prefill_chunk, prefix_cache
        self.metrics = metrics or Metrics(max_batch_size)
        self.device = model.transformer.wte.weight.device
        self._waiting: deque[Job] = deque()
        self._prefilling: list[_Run] = []
        self._decoding: list[_Run] = []
        self._cond = threading.Condition()
        self._stopping, self._deadline = False, 0.0
        self._thread: threading.Thread | None = None

    # -- the other threads' side ---------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="llm-serve-engine", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue `job`; QueueFullError / ShuttingDownError / ValueError (more rows than slots)."""
        if job.rows > self.slots.n_slots:
            raise ValueError(f"the request needs {job.rows} slots (prompts x n) but the server has "
                             f"{self.slots.n_slots} (--max-batch-size)")
        with self._cond:
            if self._stopping:
                raise ShuttingDownError("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFullError(f"the queue is full ({self.max_queue} requests waiting)")
            self._waiting.append(job)
            self.metrics.queue_depth.set(len(self._waiting))
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        """The client went away: free the job's slots before the next step."""
        with self._cond:
            job.cancelled = True
            self._cond.notify()

    def stop(self, timeout: float) -> None:
        """Admit nothing more (waiting jobs fail with 503), let running jobs finish for up to
        `timeout` seconds, fail the rest, and end the loop."""
        with self._cond:
            self._stopping, self._deadline = True, time.monotonic() + timeout
            while self._waiting:
                _emit(self._waiting.popleft(), Failed("the server is shutting down", 503))
            self.metrics.queue_depth.set(0)
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout + 30)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the loop ------------------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            with torch.inference_mode():
                while self._turn():
                    pass
        except Exception:  # a bug in the loop itself: fail everyone rather than hang them
            log.exception("the engine loop stopped")
            for run in self._prefilling + self._decoding:
                _emit(run.job, Failed("the engine stopped", 500))
            with self._cond:
                self._stopping = True
                while self._waiting:
                    _emit(self._waiting.popleft(), Failed("the engine stopped", 500))

    def _turn(self) -> bool:
        with self._cond:
            while not (self._waiting or self._prefilling or self._decoding or self._stopping):
                self._cond.wait()
            if self._stopping and (not (self._prefilling or self._decoding) or time.monotonic() > self._deadline):
                for run in self._prefilling + self._decoding:
                    self._end(run, Failed("the server is shutting down", 503))
                return False
            self._drop_cancelled()
            admitted = self._pop_admissible()
        for job in admitted:
            self._admit(job)
        self._prefill_some()
        self._decode_step()
        self.metrics.active_slots.set(self.slots.n_slots - self.slots.free_count())
        return True

    def _drop_cancelled(self) -> None:
        for job in [j for j in self._waiting if j.cancelled]:
            self._waiting.remove(job)
            self.metrics.cancelled.inc()
        for run in [r for r in self._prefilling + self._decoding if r.job.cancelled]:
            self._end(run, None)
            self.metrics.cancelled.inc()
        self.metrics.queue_depth.set(len(self._waiting))

    def _pop_admissible(self) -> list[Job]:
        """Waiting jobs, in order, that the free slots take now."""
        free, out = self.slots.free_count(), []
        while self._waiting and self._waiting[0].rows <= free:
            job = self._waiting.popleft()
            free -= job.rows if job.cfg.max_new_tokens else 0
            out.append(job)
        self.metrics.queue_depth.set(len(self._waiting))
        return out

    def _admit(self, job: Job) -> None:
        groups: list[tuple[list[int], int]] = []
        try:
            prompt_lp = [prompt_logprobs(self.model, p, job.logprobs or 0) for p in job.prompts] \
                if job.prompt_logprobs else None
            n_prompt = sum(len(p) for p in job.prompts) * job.n
            self.metrics.prompt_tokens.inc(n_prompt)
            if not job.cfg.max_new_tokens:  # nothing to generate (echo / scoring requests)
                _emit(job, Finished(n_prompt, 0, prompt_lp))
                return
            for p in job.prompts:
                groups.append(self.slots.acquire(p, job.n, reuse=self.prefix_cache))
            run = _Run(job, groups, self.tokenizer, self.model.config.vocab_size, self.device, prompt_lp)
        except Exception as e:
            for slots, _ in groups:
                for s in slots:
                    self.slots.release(s)
            log.exception("admitting a request failed")
            _emit(job, Failed(f"admitting the request failed: {e}", 500))
            return
        for _, start in groups:
            if start:
                self.metrics.prefix_hits.inc()
                self.metrics.prefix_tokens.inc(start * job.n)
        self._prefilling.append(run)

    def _prefill_some(self) -> None:
        budget = self.prefill_chunk
        for run in list(self._prefilling):
            if budget <= 0:
                break
            try:
                budget -= run.prefill(self.slots, budget)
            except Exception as e:
                self._fail(run, e)
                continue
            if run.prefilled:
                self._prefilling.remove(run)
                self._decoding.append(run)
                logits = torch.cat([g[2] for g in run.groups])
                run.groups = None  # the prompt logits are no longer needed
                self._advance(run, logits, run.alive())

    def _decode_step(self) -> None:
        batch = [(run, run.alive()) for run in self._decoding if run.last_emit is not None]
        batch = [(run, rows) for run, rows in batch if rows]
        if not batch:
            return
        try:
            logits = self._decode([(run, rows) for run, rows in batch])
        except Exception:
            log.exception("a decode step failed; running it again request by request")
            logits = None
        self.metrics.occupancy.observe(sum(len(rows) for _, rows in batch))
        offset = 0
        for run, rows in batch:
            if logits is None:
                try:
                    part = self._decode([(run, rows)])
                except Exception as e:
                    self._fail(run, e)
                    continue
            else:
                part = logits[offset:offset + len(rows)]
                offset += len(rows)
            self._advance(run, part, rows)

    def _decode(self, batch) -> torch.Tensor:
        slots = [run.slot[i] for run, rows in batch for i in rows]
        tokens = [run.last[i] for run, rows in batch for i in rows]
        return self.slots.decode(slots, tokens)

    def _advance(self, run: _Run, logits: torch.Tensor, rows: list[int]) -> None:
        """Pick the next token of rows `rows` of `run` from their logits, emit them, and end
        the rows (and the run) that finish."""
        try:
            deltas = self._pick(run, logits, rows)
        except Exception as e:
            self._fail(run, e)
            return
        now = time.monotonic()
        if run.last_emit is None:
            self.metrics.ttft.observe(now - run.job.arrival)
        else:
            self.metrics.itl.observe(now - run.last_emit)
        run.last_emit = now
        self.metrics.generation_tokens.inc(len(rows))
        _emit(run.job, deltas)
        if not run.alive():
            job = run.job
            self._end(run, Finished(sum(len(p) for p in job.prompts) * job.n, sum(run.text.lengths),
                                    run.prompt_logprobs))

    def _pick(self, run: _Run, logits: torch.Tensor, rows: list[int]) -> list[Delta]:
        job = run.job
        index = torch.tensor(rows, device=self.device)
        subset = None if len(rows) == job.rows else index
        tokens = next_tokens(logits, job.cfg, run.penalties, run.step, run.eos, job.rows, subset, run.generator)
        run.penalties.record(index, tokens, torch.ones_like(tokens, dtype=torch.bool))
        top = _logprobs(logits, tokens, job.logprobs) if job.logprobs is not None else None
        ids = tokens.tolist()
        column = [None] * job.rows
        for i, t in zip(rows, ids):
            column[i] = t
        _, texts = run.text.push(column, run.step)
        run.step += 1
        deltas = []
        for j, (i, t) in enumerate(zip(rows, ids)):
            finish = None
            if run.text.done[i]:
                finish = "length" if run.text.reasons[i] == "length" else "stop"
                self.slots.release(run.slot[i])
                run.slot[i] = None
            else:
                run.last[i] = t
            deltas.append(Delta(i, texts[i], [t], [] if top is None else [top[j]], finish))
        return deltas

    def _fail(self, run: _Run, error: Exception) -> None:
        log.error("a request failed: %r", error, exc_info=error)
        self._end(run, Failed(f"generation failed: {error}", 500))

    def _end(self, run: _Run, final) -> None:
        """Free the run's slots and forget it; send `final` (None: the client is gone)."""
        for i, s in enumerate(run.slot):
            if s is not None:
                self.slots.release(s)
                run.slot[i] = None
        for queue in (self._prefilling, self._decoding):
            if run in queue:
                queue.remove(run)
        if final is not None:
            _emit(run.job, final)


def _emit(job: Job, item) -> None:
    try:
        job.emit(item)
    except Exception:  # the receiving side is gone (its event loop closed): nothing to tell
        job.cancelled = True


def _logprobs(logits: torch.Tensor, tokens: torch.Tensor, k: int) -> list[TokenLogprob]:
    """TokenLogprobs of the chosen `tokens` [b] under the raw logits [b, V], with the top k."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    chosen = lp.gather(1, tokens[:, None])[:, 0].tolist()
    out = []
    values, ids = lp.topk(k, dim=-1)
    for t, c, v, i in zip(tokens.tolist(), chosen, values.tolist(), ids.tolist()):
        out.append(TokenLogprob(t, c, list(zip(i, v))))
    return out


def prompt_logprobs(model, prompt: list[int], k: int) -> list[TokenLogprob]:
    """Per prompt token its logprob given the tokens before it (the first has none: logprob
    None)."""
    ids = torch.tensor(prompt, device=model.transformer.wte.weight.device)[None]
    logits = model(ids)[0, :-1]  # (T - 1, V): the prediction of each next token
    scored = _logprobs(logits, ids[0, 1:], k) if len(prompt) > 1 else []
    return [TokenLogprob(prompt[0], None, []), *scored]
