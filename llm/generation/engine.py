"""The decode loop: one batch of rows on a `Decoder`, from the prompt to the last token.

It follows gpt-fast: `model.make_decoder` gives a decoder that owns a static KV cache for
prompt + new tokens, `prefill` runs the whole (left-padded) prompt in one forward, and
`decode_one_token` runs one position per step at a static shape, captured in a CUDA graph
on CUDA when the decoder allows it (`cuda_graph.py`). Each call has its own decoder and
cache, so several calls may run on one model at once (threads, interleaved streams).

Rows: `valid` marks the slots holding real tokens (left padding); positions count real
tokens only and padded slots are never attended to, so each row produces what it would
alone. A row is finished when it emits an EOS id or reaches its own `max_new_tokens`, or
when the caller says so (`finish_rows`: a stop string); its later slots hold the pad id.
Finished rows are dropped from the computed batch (`Decoder.select_rows`) once enough have
piled up.

Host syncs: sampling, penalties and EOS bookkeeping stay on the device; the loop reads the
finished flags every `check_every` steps (default 1 on CPU, 16 on CUDA) to stop early and to
drop rows. `use_cache=False` recomputes the whole sequence every step through the same
code and gives the same tokens in float32, also when sampling with a seeded generator (in
bfloat16 the two paths round differently; see `generate`).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

import torch

from ..cpu import warn_if_bf16_emulated
from .config import GenerationConfig
from .cuda_graph import StaticStep
from .sampling import Penalties, next_tokens

CUDA_CHECK_EVERY = 16  # decode steps between looks at the finished flags on CUDA


class Batch:
    """The device-side state of the rows of one call.

    out [B, total]: prompt (padding included) then new tokens; valid [B, total]: slots
    holding real tokens; positions [B, total]: learned position of each slot; max_new [B];
    finished [B]; rows [n_rows]: the original row of each row still being computed.
    """

    def __init__(self, model, input_ids, mask, cfg: GenerationConfig, max_new: list[int]):
        B, T = input_ids.shape
        device = input_ids.device
        self.T = T
        self.total = T + max(max_new)
        self.pad = cfg.resolved_pad_token_id()
        self.out = torch.full((B, self.total), self.pad, dtype=torch.long, device=device)
        self.out[:, :T] = input_ids
        self.valid = torch.ones(B, self.total, dtype=torch.bool, device=device)
        if mask is not None:
            self.valid[:, :T] = mask
        self.has_mask = mask is not None
        self.positions = model.position_ids_from_mask(self.valid)  # (B, total)
        self.max_new = torch.tensor(max_new, device=device)
        self.finished = self.max_new == 0
        self.eos = torch.tensor(cfg.eos_token_ids(), dtype=torch.long, device=device)
        self.rows = torch.arange(B, device=device)
        self.n_rows = B

    @property
    def whole(self) -> bool:
        """No row dropped yet (row gathers can be skipped)."""
        return self.n_rows == self.out.shape[0]

    def key_valid(self, end: int | None = None):
        """Validity of slots [0, end) (default: all) of the rows computed, None without padding."""
        if not self.has_mask:
            return None
        valid = self.valid if self.whole else self.valid[self.rows]
        return valid if end is None else valid[:, :end]

    def record(self, token, t: int, penalties: Penalties):
        """Write the tokens [n_rows] made at slot t; update finished flags and penalties."""
        rows, done = self.rows, self.finished[self.rows]
        token = token.masked_fill(done, self.pad)
        self.out[rows, t] = token
        penalties.record(rows, token, ~done)
        now_done = done | (t - self.T + 1 >= self.max_new[rows])
        if self.eos.numel():
            now_done |= torch.isin(token, self.eos)
        self.finished[rows] = now_done
        return token

    def keep(self, keep: torch.Tensor) -> None:
        """Compute only the rows at positions `keep` of the current batch from now on."""
        self.rows = self.rows[keep]
        self.n_rows = int(keep.numel())


class Engine:
    """Runs one call: `steps()` yields slot t after the tokens of slot t are in `batch.out`."""

    def __init__(self, model, batch: Batch, cfg: GenerationConfig, generator, use_cache: bool,
                 cuda_graph: bool | None, check_every: int | None):
        self.model, self.batch, self.cfg = model, batch, cfg
        self.device = batch.out.device
        self.generator = generator
        self.use_cache = use_cache
        self.cuda_graph = cuda_graph
        self.check_every = check_every or (CUDA_CHECK_EVERY if self.device.type == "cuda" else 1)
        self.penalties = Penalties(cfg, batch.out[:, :batch.T], batch.valid[:, :batch.T],
                                   model.config.vocab_size)
        self.decoder = None
        # static input buffers for the decode step: always with a CUDA graph; settable on
        # their own so the graph path's buffers can be tested without a GPU
        self.static_buffers = False
        self._pool = None
        self._stop_requests: list[int] = []
        self._steps: dict[int, StaticStep] = {}

    def finish_rows(self, rows: list[int]) -> None:
        """Mark original rows finished (a stop string was found); applied before the next step."""
        self._stop_requests.extend(rows)

    # -- the loop --------------------------------------------------------------------------
    def steps(self) -> Iterator[int]:
        b = self.batch
        if b.total == b.T or bool(b.finished.all()):
            return
        with _eval_mode(self.model):
            try:
                with torch.inference_mode():
                    logits = self._prefill()
                for t in range(b.T, b.total):
                    with torch.inference_mode():
                        token = b.record(self._next_tokens(logits, t - b.T), t, self.penalties)
                    yield t
                    if t + 1 == b.total:
                        break
                    with torch.inference_mode():
                        token = self._look(token, t)
                        if token is None:
                            break
                        logits = self._logits_after(token, t)
            finally:
                self.decoder, self._steps = None, {}

    def _prefill(self):
        b, T = self.batch, self.batch.T
        if self.model.transformer.wte.weight.dtype == torch.bfloat16 and self.model.backend != "native":
            warn_if_bf16_emulated("generating with bfloat16 weights through torch's matmuls", self.device,
                                  "use float32, or backend='native' (its kernels widen bf16 weights themselves)")
        if not self.use_cache:
            return self.model.last_token_logits(b.out[:, :T], b.positions[:, :T], b.key_valid(T))
        self.decoder = self.model.make_decoder(b.out.shape[0], b.total)
        self._resolve_cuda_graph()
        return self.decoder.prefill(b.out[:, :T], torch.arange(T, device=self.device), b.positions[:, :T],
                                    b.key_valid())

    def _resolve_cuda_graph(self) -> None:
        graphable = self.device.type == "cuda" and self.decoder.supports_cuda_graph
        if self.cuda_graph is None:
            self.cuda_graph = graphable
        elif self.cuda_graph and not graphable:
            raise ValueError(f"cuda_graph=True, but the {self.model.backend!r} backend's decoder on "
                             f"{self.device} cannot be captured in a CUDA graph")
        self._pool = torch.cuda.graph_pool_handle() if self.cuda_graph else None

    def _next_tokens(self, logits, step: int):
        b = self.batch
        return next_tokens(logits, self.cfg, self.penalties, step, b.eos, b.out.shape[0],
                           None if b.whole else b.rows, self.generator)

    def _look(self, token, t: int):
        """Apply stop requests; every `check_every` steps read the finished flags (the host
        sync): None when every row is done, else the tokens of the rows kept."""
        b = self.batch
        stopped = bool(self._stop_requests)
        if stopped:
            b.finished[torch.tensor(self._stop_requests, device=self.device)] = True
            self._stop_requests.clear()
        if (t + 1 - b.T) % self.check_every != 0 and not stopped:
            return token
        done = b.finished[b.rows].cpu()
        if bool(done.all()):
            return None
        n_done = int(done.sum())
        if n_done and self._worth_compacting(n_done, b.total - t - 1):
            keep = (~done).nonzero().squeeze(1).to(self.device)
            if self.decoder is not None:
                self.decoder.select_rows(keep)
            b.keep(keep)
            token = token[keep]
        return token

    def _worth_compacting(self, n_done: int, steps_left: int) -> bool:
        # Copying the cache costs about one step; with a CUDA graph each new batch size
        # also costs a capture, so there compact only when the batch at least halves.
        if steps_left < 4:
            return False
        if self.cuda_graph:
            return 2 * n_done >= self.batch.n_rows
        return 4 * n_done >= self.batch.n_rows

    def _logits_after(self, token, t: int):
        """Logits [n_rows, V] for slot t + 1 after `token` [n_rows] at slot t."""
        b = self.batch
        rows = b.rows
        if not self.use_cache:
            return self.model.last_token_logits(b.out[rows, :t + 1], b.positions[rows, :t + 1], b.key_valid(t + 1))
        position = b.positions[rows, t:t + 1]
        if not (self.cuda_graph or self.static_buffers):
            slot = torch.tensor([t], device=self.device)
            return self.decoder.decode_one_token(token[:, None], slot, position, b.key_valid())
        step = self._steps.get(b.n_rows)
        if step is None:
            self._steps = {}  # a graph for another batch size holds the old cache: drop it
            step = self._steps[b.n_rows] = StaticStep(self.decoder, b.n_rows, b.key_valid(), self.device,
                                                      self.cuda_graph, self._pool)
        return step(token[:, None], t, position)


_eval_lock = threading.Lock()
_eval_users: dict[int, list] = {}  # id(model) -> [active calls, training flag to restore]


@contextmanager
def _eval_mode(model):
    """Eval mode while any call generates on `model`; the first call to start saves the
    training flag and the last to end restores it (calls may overlap in threads)."""
    with _eval_lock:
        entry = _eval_users.setdefault(id(model), [0, model.training])
        entry[0] += 1
        model.eval()
    try:
        yield
    finally:
        with _eval_lock:
            entry[0] -= 1
            if entry[0] == 0:
                del _eval_users[id(model)]
                model.train(entry[1])
