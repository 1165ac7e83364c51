"""`generate` and `stream`: arguments in, tokens and text out.

Both take the same arguments in the same way: the prompt (ids [B, T], or a string or list
of strings, tokenized and left padded), `max_new_tokens`, and keyword arguments: call
options (attention_mask, generation_config, use_cache, generator, tokenizer, cuda_graph,
check_every) and `GenerationConfig` fields (temperature, top_k, ...), which override
`generation_config`, which overrides the model's `generation_config`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from ..tokenizer import get_tokenizer
from .config import GenerationConfig
from .engine import Batch, Engine
from .text import RowsText


@dataclass
class GenerationOutput:
    """What `generate(..., return_dict=True)` returns.

    sequences: [B, T + max new] prompt (as given, padding included) and new tokens; a
        finished row's later positions hold pad_token_id.
    new_tokens: per row, the generated ids (through the EOS or stop-string token).
    texts: per row, the generated text (EOS excluded, the stop string and what follows
        it cut).
    finish_reasons: per row, "eos", "stop_string" or "length".
    """

    sequences: torch.Tensor
    new_tokens: list[list[int]]
    texts: list[str]
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


def resolve_config(model, generation_config=None, **overrides) -> GenerationConfig:
    """The config a call runs with: `overrides` (None: not given) over `generation_config`
    over the model's `generation_config`."""
    base = generation_config if generation_config is not None else model.generation_config
    if not isinstance(base, GenerationConfig):
        raise ValueError(f"generation_config must be a GenerationConfig, got {type(base).__name__}")
    fields = set(GenerationConfig.__dataclass_fields__) - {"extra"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"unknown generation arguments {unknown}; valid: {sorted(fields)}")
    return base.replace(**{k: v for k, v in overrides.items() if v is not None})


def encode_prompts(prompts, tokenizer=None):
    """Left-padded input_ids [B, T] and attention_mask [B, T] for a string or list of strings."""
    tokenizer = tokenizer or get_tokenizer()
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


def _check_left_padded(mask: torch.Tensor) -> None:
    """New tokens go after the last slot, so padding must come first in every row."""
    if not bool(mask.any(dim=1).all()):
        raise ValueError("attention_mask has a row with no real token")
    after_real = mask.long().cummax(dim=1).values.bool() & ~mask
    if bool(after_real.any()):
        row = int(after_real.any(dim=1).nonzero()[0])
        raise ValueError(f"attention_mask row {row} has padding after a real token: generation needs "
                         f"left padding (padding first, then the prompt)")


def _is_text(prompt) -> bool:
    return isinstance(prompt, str) or (isinstance(prompt, list) and bool(prompt) and isinstance(prompt[0], str))


def start(model, input_ids, max_new_tokens=None, *, attention_mask=None, generation_config=None,
          use_cache=True, generator=None, tokenizer=None, cuda_graph=None, check_every=None,
          **settings) -> Engine:
    """Check every argument and build the call's `Engine` (nothing runs yet)."""
    if isinstance(input_ids, (list, tuple)) and len(input_ids) == 0:
        raise ValueError("no prompt given (input_ids is an empty list)")
    if _is_text(input_ids):
        if attention_mask is not None:
            raise ValueError("attention_mask is computed for text prompts; do not pass one")
        input_ids, attention_mask = encode_prompts(input_ids, tokenizer)
    cfg = resolve_config(model, generation_config, max_new_tokens=max_new_tokens, **settings)
    if cfg.max_new_tokens is None:
        raise ValueError("max_new_tokens is not set (pass it or set it in the generation config)")
    device = model.transformer.wte.weight.device
    input_ids, mask = model.check_inputs(torch.as_tensor(input_ids).to(device), attention_mask)
    B, T = input_ids.shape
    cfg.validate(vocab_size=model.config.vocab_size, batch_size=B)
    max_new = cfg.max_new_tokens_per_row(B)
    if T + max(max_new) > model.config.n_positions:
        raise ValueError(f"prompt length {T} + max_new_tokens {max(max_new)} = {T + max(max_new)} "
                         f"exceeds n_positions={model.config.n_positions}")
    if mask is not None:
        _check_left_padded(mask)
    if cuda_graph and device.type != "cuda":
        raise ValueError("cuda_graph=True needs a model on a CUDA device")
    if check_every is not None and (isinstance(check_every, bool) or not isinstance(check_every, int)
                                    or check_every < 1):
        raise ValueError(f"check_every must be an integer >= 1, got {check_every!r}")
    batch = Batch(model, input_ids, mask, cfg, max_new)
    return Engine(model, batch, cfg, _make_generator(cfg, generator, device), use_cache,
                  cuda_graph if use_cache else False, check_every)


# -- text ----------------------------------------------------------------------------------


def _rows_text(engine: Engine, tokenizer) -> RowsText:
    return RowsText(engine.cfg, engine.batch.max_new.tolist(), tokenizer or get_tokenizer(), engine.finish_rows)


def _text_steps(engine: Engine, rows: RowsText, per_step: bool):
    """Drive `engine`: yields (tokens, deltas, finished) per step when `per_step` or when
    stop strings need watching, then (None, flushed deltas, all finished)."""
    watch = per_step or bool(engine.cfg.stop_string_list())
    for t in engine.steps():
        if watch:
            tokens, deltas = rows.push(engine.batch.out[:, t].tolist(), t - engine.batch.T)
            yield tokens, deltas, list(rows.done)
    if not watch:
        rows.push_all(engine.batch.out[:, engine.batch.T:])
    yield None, rows.flush(), [True] * len(rows.done)


# -- public API ----------------------------------------------------------------------------


def generate(model, input_ids, max_new_tokens=None, *, return_dict=False, **kwargs):
    """Continue `input_ids` [B, T] (or a string / list of strings, tokenized and left
    padded); returns LongTensor [B, T + max_new_tokens], or a `GenerationOutput` with
    `return_dict=True`.

    Keyword arguments: `GenerationConfig` fields (temperature, top_k, top_p, min_p,
    repetition_penalty, presence_penalty, frequency_penalty, min_new_tokens, eos_token_id,
    pad_token_id, stop_strings, seed) override `generation_config`, which overrides
    `model.generation_config` (None keeps the configured value; `eos_token_id=[]` turns
    EOS off). attention_mask [B, T] (1 real, 0 padding) for left-padded batches. Stop
    strings and returned texts decode with `tokenizer` (default: GPT-2's). generator: a
    torch.Generator for sampling (or `seed`). `use_cache=False` recomputes every step:
    the same tokens in float32. In bfloat16 and float16 the two paths round differently
    (the cached step attends with one query over the whole preallocated cache, its unwritten
    slots masked; recomputation attends over exactly the written keys; the kernels sum in
    another order): each path's logits stay within that precision's rounding of a float32
    computation, and they differ by about one unit in the last place, so a choice between
    tokens whose logits are that close may differ, and the sequences part from there.
    cuda_graph: None captures the decode step on CUDA when the decoder allows it, False
    never. check_every: decode steps between looks at the finished flags (default 1 on
    CPU, 16 on CUDA; each look is a host sync).
    """
    engine = start(model, input_ids, max_new_tokens, **kwargs)
    if not (return_dict or engine.cfg.stop_string_list()):
        for _ in engine.steps():
            pass
        return engine.batch.out
    rows = _rows_text(engine, kwargs.get("tokenizer"))
    for _ in _text_steps(engine, rows, per_step=False):
        pass
    if not return_dict:
        return engine.batch.out
    b = engine.batch
    new = [row[:n] for row, n in zip(b.out[:, b.T:].tolist(), rows.lengths)]
    return GenerationOutput(b.out, new, [t.text for t in rows.texts], rows.reasons)


def stream(model, input_ids, max_new_tokens=None, **kwargs) -> Iterator[GenerationChunk]:
    """`generate` as an iterator of `GenerationChunk`s, one per decode step; the same
    arguments. Per row, the concatenated texts equal `generate(..., return_dict=True).texts`.
    Arguments are checked before the iterator is returned."""
    engine = start(model, input_ids, max_new_tokens, **kwargs)
    rows = _rows_text(engine, kwargs.get("tokenizer"))
    return _chunks(_text_steps(engine, rows, per_step=True))


def _chunks(steps) -> Iterator[GenerationChunk]:
    for tokens, deltas, finished in steps:
        if tokens is not None:
            yield GenerationChunk(tokens, deltas, finished)
        elif any(deltas):
            yield GenerationChunk([None] * len(deltas), deltas, finished)
