"""Generation: batched, left-padded decoding on a static KV cache, every sampling control,
stop strings, streaming, and CUDA graphs.

The loop follows gpt-fast: `model.setup_caches` preallocates the cache for prompt + new
tokens, `model.prefill` runs the whole (left-padded) prompt in one forward, and
`model.decode_one_token` runs one position per step at a static shape. On CUDA that step
is captured once in a CUDA graph and replayed (`cuda_graph=None` does so whenever the
model is on CUDA and uses the module path; a backend decoder from `make_decoder` is
graphed only if it sets `supports_cuda_graph = True`).

Batches: `attention_mask` marks real tokens (left padding); positions count real tokens
only, and padded cache slots are never attended to, so each row produces what it would
alone. A row is finished when it emits an EOS id, reaches its own `max_new_tokens` or its
text contains a stop string; its later positions hold `pad_token_id`. Finished rows are
dropped from the batch (the cache is compacted) when enough of them have piled up; with
a backend decoder only if it offers `select_rows(index)`.

Host syncs: sampling, penalties and EOS bookkeeping stay on the device. On CUDA the loop
looks at the finished flags every `_CUDA_CHECK_EVERY` steps (to stop early and to drop
rows); streaming and stop strings read each token, which needs one sync per step.
`use_cache=False` recomputes the whole sequence every step through the same code and gives
the same tokens, also when sampling with a seeded generator.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Iterator

import torch

from .generation_config import GenerationConfig
from .sampling import (
    apply_presence_frequency_penalty,
    apply_repetition_penalty,
    exponential_noise,
    sample_next,
    suppress_tokens,
)
from .streaming import RowText

_CUDA_CHECK_EVERY = 16  # decode steps between looks at the finished flags on CUDA


@dataclass
class GenerationOutput:
    """What `generate(..., return_dict=True)` returns.

    sequences: [B, T + max new] prompt (as given, padding included) and new tokens; a
        finished row's later positions hold pad_token_id.
    new_tokens: per row, the generated ids (through the EOS or stop-string token).
    texts: per row, the generated text (EOS excluded, the stop string and what follows
        it cut), or None when no tokenizer was available.
    finish_reasons: per row, "eos", "stop_string" or "length".
    """

    sequences: torch.Tensor
    new_tokens: list[list[int]]
    texts: list[str] | None
    finish_reasons: list[str]


@dataclass
class GenerationChunk:
    """One step of `stream`: per row, the token made (None if the row was already done),
    the new text (never a split UTF-8 character; '' while text is held back because it
    could begin a stop string) and whether the row is now finished. The last chunk may
    carry only text (what was held back) and no tokens."""

    token_ids: list[int | None]
    texts: list[str]
    finished: list[bool]


# -- arguments ---------------------------------------------------------------------------


_POSITIONAL = ("temperature", "top_k", "top_p", "eos_token_id")


def resolve_config(model, generation_config=None, **overrides) -> GenerationConfig:
    """The config a call runs with: `overrides` over `generation_config` over the model's
    `generation_config` (set when loaded from a folder) over the defaults."""
    base = generation_config if generation_config is not None else getattr(model, "generation_config", None)
    if base is None:
        base = GenerationConfig()
    if not isinstance(base, GenerationConfig):
        raise ValueError(f"generation_config must be a GenerationConfig, got {type(base).__name__}")
    fields = set(GenerationConfig.__dataclass_fields__) - {"extra"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"unknown generation arguments {unknown}; valid: {sorted(fields)}")
    return base.replace(**{k: v for k, v in overrides.items() if v is not None})


def encode_prompts(prompts, tokenizer=None):
    """Left-padded input_ids [B, T] and attention_mask [B, T] for a string or list of strings."""
    if tokenizer is None:
        from .tokenizer import get_tokenizer

        tokenizer = get_tokenizer()
    if isinstance(prompts, str):
        prompts = [prompts]
    rows = [tokenizer.encode(p, allowed_special={"<|endoftext|>"}) for p in prompts]
    if not rows:
        raise ValueError("no prompts given")
    for i, r in enumerate(rows):
        if not r:
            raise ValueError(f"prompt {i} encodes to no tokens")
    T = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, T - len(r):] = torch.tensor(r)
        mask[i, T - len(r):] = 1
    return ids, mask


def _make_generator(cfg: GenerationConfig, generator, device):
    if generator is not None and cfg.seed is not None:
        raise ValueError("pass either seed or generator, not both")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if torch.device(generator.device).type != device.type:
            raise ValueError(f"generator is on {generator.device} but the model is on {device}")
        return generator
    if cfg.seed is not None:
        return torch.Generator(device=device).manual_seed(cfg.seed)
    return None


# -- the decode loop ---------------------------------------------------------------------


class _StaticStep:
    """`decode_one_token` on static input buffers for a batch of `b` rows. With
    `graph=True` (CUDA) the first call captures it in a CUDA graph, later calls replay."""

    def __init__(self, model, b, key_valid, graph, pool=None):
        device = model.transformer.wte.weight.device
        self.model = model
        self.token = torch.zeros(b, 1, dtype=torch.long, device=device)
        self.slot = torch.zeros(1, dtype=torch.long, device=device)
        self.position = torch.zeros(b, 1, dtype=torch.long, device=device)
        self.key_valid = None if key_valid is None else key_valid.clone()
        self.graph = torch.cuda.CUDAGraph() if graph else None
        self.pool = pool
        self.logits = None

    def _run(self):
        return self.model.decode_one_token(self.token, self.slot, self.position, self.key_valid)

    def __call__(self, token, slot: int, position):
        self.token.copy_(token)
        self.slot.fill_(slot)
        self.position.copy_(position)
        if self.graph is None:
            return self._run()
        if self.logits is None:
            # Warm up on a side stream, then capture. Each run rewrites the same cache slot
            # with the same values, so the warm-up is harmless.
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):
                    logits = self._run()
            torch.cuda.current_stream().wait_stream(stream)
            try:
                with torch.cuda.graph(self.graph, pool=self.pool):
                    self.logits = self._run()
            except RuntimeError as e:  # an op that cannot be captured: stay eager
                warnings.warn(f"decode step could not be captured in a CUDA graph ({e}); running it eagerly",
                              stacklevel=2)
                self.graph = None
                return logits
        self.graph.replay()
        return self.logits


class _Decoding:
    """The state of one generate call; `steps()` runs it and yields after each new token."""

    def __init__(self, model, input_ids, attention_mask, cfg: GenerationConfig, use_cache,
                 generator, cuda_graph, check_every):
        config = model.config
        self.model = model
        device = model.transformer.wte.weight.device
        self.device = device
        input_ids = model._check_input_ids(torch.as_tensor(input_ids).to(device))
        mask = model._check_attention_mask(attention_mask, input_ids)
        B, T = input_ids.shape
        cfg.validate(vocab_size=config.vocab_size, batch_size=B)
        self.cfg = cfg
        max_new = cfg.max_new_tokens_per_row(B)
        total = T + max(max_new)
        if total > config.n_positions:
            raise ValueError(
                f"prompt length {T} + max_new_tokens {max(max_new)} = {total} exceeds "
                f"n_positions={config.n_positions}"
            )
        if mask is not None and not bool(mask.any(dim=1).all()):
            raise ValueError("attention_mask has a row with no real token")
        self.generator = _make_generator(cfg, generator, device)
        self._graph_auto = cuda_graph is None
        if cuda_graph is None:
            cuda_graph = device.type == "cuda" and use_cache
        elif cuda_graph and device.type != "cuda":
            raise ValueError("cuda_graph=True needs a model on a CUDA device")
        self.cuda_graph = bool(cuda_graph) and use_cache
        self.static = self.cuda_graph  # static input buffers (always with a graph)
        self.use_cache = use_cache
        self.T, self.total = T, total
        self.pad = cfg.resolved_pad_token_id()
        self.out = torch.full((B, total), self.pad, dtype=torch.long, device=device)
        self.out[:, :T] = input_ids
        self.valid = torch.ones(B, total, dtype=torch.bool, device=device)  # real slots
        if mask is not None:
            self.valid[:, :T] = mask
        self.has_mask = mask is not None
        self.positions = model.position_ids_from_mask(self.valid)  # (B, total)
        self.max_new = torch.tensor(max_new, device=device)
        self.finished = self.max_new == 0
        self.eos = torch.tensor(cfg.eos_token_ids(), dtype=torch.long, device=device)
        V = config.vocab_size
        self.seen = None  # tokens in prompt or output, for the repetition penalty
        if cfg.repetition_penalty != 1.0:
            w = self.valid[:, :T].float()
            self.seen = torch.zeros(B, V, device=device).scatter_add_(1, self.out[:, :T], w) > 0
        self.counts = None  # generated tokens, for presence / frequency penalties
        if cfg.presence_penalty != 0.0 or cfg.frequency_penalty != 0.0:
            self.counts = torch.zeros(B, V, device=device)
        self.rows = torch.arange(B, device=device)  # original row of each batch slot
        self.n_rows = B  # rows in the batch being computed
        self.check_every = check_every if check_every is not None else (
            _CUDA_CHECK_EVERY if device.type == "cuda" else 1)
        self._stop_requests: list[int] = []
        self._steps: dict[int, _StaticStep] = {}
        self._pool = torch.cuda.graph_pool_handle() if self.cuda_graph else None

    # -- per step ------------------------------------------------------------------------
    def finish_rows(self, rows: list[int]) -> None:
        """Mark original rows finished (a stop string was found); applied before the next step."""
        self._stop_requests.extend(rows)

    def _process(self, logits, step: int):
        cfg = self.cfg
        logits = logits.float()
        whole = self.n_rows == self.out.shape[0]  # no row dropped yet: no gathers needed
        if self.seen is not None:
            seen = self.seen if whole else self.seen[self.rows]
            logits = apply_repetition_penalty(logits, seen, cfg.repetition_penalty)
        if self.counts is not None:
            counts = self.counts if whole else self.counts[self.rows]
            logits = apply_presence_frequency_penalty(logits, counts, cfg.presence_penalty, cfg.frequency_penalty)
        if step < cfg.min_new_tokens and self.eos.numel():
            logits = suppress_tokens(logits, self.eos)
        noise = None
        if cfg.temperature > 0:
            # noise for every row of the original batch, so that what a row draws does not
            # depend on which other rows are still being computed
            noise = exponential_noise(self.out.shape[:1] + logits.shape[1:], self.device, self.generator)
            noise = noise if whole else noise[self.rows]
        return sample_next(logits, cfg.temperature, cfg.top_k, cfg.top_p, cfg.min_p, noise=noise)

    def _record(self, token, t: int):
        """Write the tokens made at slot t; update finished flags and penalty state."""
        rows, step = self.rows, t - self.T
        done = self.finished[rows]
        token = token.masked_fill(done, self.pad)
        self.out[rows, t] = token
        if self.seen is not None:
            self.seen[rows, token] |= ~done
        if self.counts is not None:
            self.counts.index_put_((rows, token), (~done).float(), accumulate=True)
        now_done = done | (step + 1 >= self.max_new[rows])
        if self.eos.numel():
            now_done |= torch.isin(token, self.eos)
        self.finished[rows] = now_done
        return token

    def _logits_next(self, token, t: int):
        """Logits [b, V] for slot t + 1 after `token` [b] at slot t."""
        rows = self.rows
        if not self.use_cache:
            seq_mask = self.valid[rows, :t + 1] if self.has_mask else None
            h = self.model.hidden_states(self.out[rows, :t + 1], seq_mask, self.positions[rows, :t + 1])
            return self.model.ops.linear(h[:, -1], self.model.lm_head.weight, None)
        position = self.positions[rows, t:t + 1]
        key_valid = self.valid[rows] if self.has_mask else None
        if not self.static:
            slot = torch.tensor([t], device=self.device)
            return self.model.decode_one_token(token[:, None], slot, position, key_valid)
        step = self._steps.get(self.n_rows)
        if step is None:
            self._steps = {}  # a graph for another batch size holds the old cache: drop it
            step = self._steps[self.n_rows] = _StaticStep(self.model, self.n_rows, key_valid,
                                                          self.cuda_graph, self._pool)
        return step(token[:, None], t, position)

    def _compact(self, keep: torch.Tensor) -> None:
        """Drop the batch slots not in `keep` (indices into the current batch)."""
        model = self.model
        if not self.use_cache:
            pass
        elif model._decoder is not None:
            model._decoder.select_rows(keep)
        else:
            for block in model.transformer.h:
                kv = block.attn.kv_cache
                kv.k_cache = kv.k_cache.index_select(0, keep)
                kv.v_cache = kv.v_cache.index_select(0, keep)
        self.rows = self.rows[keep]
        self.n_rows = int(keep.numel())

    def _can_compact(self) -> bool:
        if not self.use_cache:
            return True
        return self.model._decoder is None or hasattr(self.model._decoder, "select_rows")

    def steps(self) -> Iterator[int]:
        """Run; yields slot t after the tokens of slot t are in `self.out`."""
        model, T, total = self.model, self.T, self.total
        if total == T or bool(self.finished.all()):
            return
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                if self.use_cache:
                    model.setup_caches(self.out.shape[0], total)
                    decoder = model._decoder
                    if self._graph_auto and decoder is not None and not getattr(decoder, "supports_cuda_graph", False):
                        self.cuda_graph = self.static = False
                    key_valid = self.valid if self.has_mask else None
                    logits = model.prefill(self.out[:, :T], torch.arange(T, device=self.device),
                                           self.positions[:, :T], key_valid)
                else:
                    mask = self.valid[:, :T] if self.has_mask else None
                    h = model.hidden_states(self.out[:, :T], mask, self.positions[:, :T])
                    logits = model.ops.linear(h[:, -1], model.lm_head.weight, None)
            for t in range(T, total):
                with torch.inference_mode():
                    token = self._record(self._process(logits, t - T), t)
                yield t
                if t + 1 == total:
                    break
                with torch.inference_mode():
                    stopped = bool(self._stop_requests)
                    if stopped:
                        self.finished[torch.tensor(self._stop_requests, device=self.device)] = True
                        self._stop_requests.clear()
                    if (t + 1 - T) % self.check_every == 0 or stopped:
                        done = self.finished[self.rows].cpu()  # the host sync
                        if bool(done.all()):
                            break
                        n_done = int(done.sum())
                        if n_done and self._can_compact() and self._worth_compacting(n_done, total - t - 1):
                            keep = (~done).nonzero().squeeze(1).to(self.device)
                            self._compact(keep)
                            token = token[keep]
                    logits = self._logits_next(token, t)
        finally:
            if self.use_cache:
                model.clear_caches()
            self._steps = {}
            model.train(was_training)

    def _worth_compacting(self, n_done: int, steps_left: int) -> bool:
        # Copying the cache costs about one step; with a CUDA graph each new batch size
        # also costs a capture, so there compact only when the batch at least halves.
        if steps_left < 4:
            return False
        if self.cuda_graph:
            return 2 * n_done >= self.n_rows
        return 4 * n_done >= self.n_rows


# -- public API --------------------------------------------------------------------------


def _start(model, input_ids, max_new_tokens, attention_mask, generation_config, use_cache,
           generator, cuda_graph, check_every, tokenizer, overrides):
    if isinstance(input_ids, (str, list)) and (isinstance(input_ids, str) or
                                               (input_ids and isinstance(input_ids[0], str))):
        if attention_mask is not None:
            raise ValueError("attention_mask is computed for text prompts; do not pass one")
        input_ids, attention_mask = encode_prompts(input_ids, tokenizer)
    cfg = resolve_config(model, generation_config, max_new_tokens=max_new_tokens, **overrides)
    if cfg.max_new_tokens is None:
        raise ValueError("max_new_tokens is not set (pass it or set it in the generation config)")
    return _Decoding(model, input_ids, attention_mask, cfg, use_cache, generator, cuda_graph,
                     check_every)


def _texts(run: _Decoding, tokenizer, per_step: bool):
    """Drive `run`, decoding text per row; yields (tokens or None, deltas) per step and a
    last (None, flushed deltas); `run.reasons` is filled as rows finish."""
    B = run.out.shape[0]
    stops = run.cfg.stop_string_list()
    texts = [RowText(tokenizer, stops) for _ in range(B)]
    eos = set(run.cfg.eos_token_ids())
    limits = run.max_new.tolist()
    done = [n == 0 for n in limits]
    run.reasons = ["length"] * B
    run.lengths = list(limits)  # new tokens per row, through the EOS / stop-string token
    run.row_texts = texts
    for t in run.steps():
        if not per_step and not stops:
            continue
        col = run.out[:, t].tolist()
        tokens, deltas = [None] * B, [""] * B
        for i in range(B):
            if done[i]:
                continue
            tok = tokens[i] = col[i]
            if tok in eos:
                done[i], run.reasons[i], run.lengths[i] = True, "eos", t - run.T + 1
                deltas[i] = texts[i].finish()
                continue
            deltas[i] = texts[i].push(tok)
            if texts[i].stopped:
                done[i], run.reasons[i], run.lengths[i] = True, "stop_string", t - run.T + 1
                run.finish_rows([i])
            elif t - run.T + 1 >= limits[i]:
                done[i] = True
                deltas[i] += texts[i].finish()
        yield tokens, deltas, list(done)
    if not per_step and not stops:  # decode everything once, at the end
        for i in range(B):
            for j, tok in enumerate(run.out[i, run.T:].tolist()[:limits[i]]):
                if tok in eos:
                    run.reasons[i], run.lengths[i] = "eos", j + 1
                    break
                texts[i].push(tok)
    yield None, [texts[i].finish() for i in range(B)], [True] * B


def generate(model, input_ids, max_new_tokens=None, temperature=None, top_k=None, top_p=None,
             eos_token_id=None, attention_mask=None, use_cache=True, generator=None, *,
             generation_config=None, return_dict=False, tokenizer=None, cuda_graph=None,
             check_every=None, **kwargs):
    """Continue `input_ids` [B, T] (or a string / list of strings, tokenized and left
    padded); returns LongTensor [B, T + max_new_tokens], or a `GenerationOutput` with
    `return_dict=True`.

    Sampling arguments (temperature, top_k, top_p, min_p, repetition_penalty,
    presence_penalty, frequency_penalty, min_new_tokens, eos_token_id, pad_token_id,
    stop_strings, seed) are `GenerationConfig` fields; given here they override
    `generation_config`, which overrides `model.generation_config` (None keeps the
    configured value; `eos_token_id=[]` turns EOS off). attention_mask [B, T] (1 real,
    0 padding) for left-padded batches. Stop strings and returned texts decode with
    `tokenizer` (default: GPT-2's). `use_cache=False` recomputes every step. cuda_graph:
    None captures the decode step on CUDA, False never. check_every: decode steps between
    looks at the finished flags (default 1 on CPU, 16 on CUDA; each look is a host sync).
    """
    overrides = dict(zip(_POSITIONAL, (temperature, top_k, top_p, eos_token_id)), **kwargs)
    run = _start(model, input_ids, max_new_tokens, attention_mask, generation_config, use_cache,
                 generator, cuda_graph, check_every, tokenizer, overrides)
    needs_text = return_dict or run.cfg.stop_string_list()
    if not needs_text:
        for _ in run.steps():
            pass
        return run.out
    tokenizer = tokenizer or _default_tokenizer()
    for _ in _texts(run, tokenizer, per_step=False):
        pass
    if not return_dict:
        return run.out
    return _output(run)


def _output(run) -> GenerationOutput:
    rows = run.out[:, run.T:].tolist()
    new = [row[:n] for row, n in zip(rows, run.lengths)]
    return GenerationOutput(run.out, new, [r.text for r in run.row_texts], run.reasons)


def stream(model, input_ids, max_new_tokens=None, *, attention_mask=None, generation_config=None,
           use_cache=True, generator=None, tokenizer=None, cuda_graph=None, **kwargs
           ) -> Iterator[GenerationChunk]:
    """`generate` as an iterator of `GenerationChunk`s, one per decode step. Per row, the
    concatenated texts equal `generate(..., return_dict=True).texts` exactly."""
    run = _start(model, input_ids, max_new_tokens, attention_mask, generation_config, use_cache,
                 generator, cuda_graph, None, tokenizer, kwargs)
    tokenizer = tokenizer or _default_tokenizer()
    return _stream_chunks(run, tokenizer)


def _stream_chunks(run, tokenizer):
    for tokens, deltas, finished in _texts(run, tokenizer, per_step=True):
        if tokens is None:
            if any(deltas):
                yield GenerationChunk([None] * len(deltas), deltas, finished)
        else:
            yield GenerationChunk(tokens, deltas, finished)


def generate_steps(model, input_ids, max_new_tokens=None, temperature=None, top_k=None, top_p=None,
                   eos_token_id=None, attention_mask=None, use_cache=True, generator=None, **kwargs):
    """`generate` as an iterator: first the output buffer [B, T + new], then after each
    step the new tokens [B] (on the device; no host sync). The buffer holds the finished
    result when the iterator ends. Arguments are checked before the first item is returned.
    """
    overrides = dict(zip(_POSITIONAL, (temperature, top_k, top_p, eos_token_id)), **kwargs)
    cuda_graph = overrides.pop("cuda_graph", None)
    check_every = overrides.pop("check_every", None)
    run = _start(model, input_ids, max_new_tokens, attention_mask, overrides.pop("generation_config", None),
                 use_cache, generator, cuda_graph, check_every, None, overrides)

    def steps():
        yield run.out
        for t in run.steps():
            yield run.out[:, t]

    return steps()


def _default_tokenizer():
    from .tokenizer import get_tokenizer

    return get_tokenizer()
