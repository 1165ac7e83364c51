"""Reference generation: static KV cache, one prefill, then one-token decode steps.

Left-padded batches work through `attention_mask`: padded cache slots are never attended
to, and positions count real tokens only, so a padded row produces what it would alone.
`use_cache=False` recomputes the whole sequence every step through the same sampler, and
gives the same tokens (also when sampling with a seeded generator).
"""

from __future__ import annotations

import torch

from .config import GPTConfig


def check_sampling_args(temperature, top_k, top_p) -> None:
    if temperature is None or temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
    if top_p is not None and not (0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")


def filter_logits(logits: torch.Tensor, top_k=None, top_p=None) -> torch.Tensor:
    """Set logits outside the top-k / nucleus (top-p) set to -inf. logits [B, V] float."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens ranked above it already cover top_p
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits, temperature=0.0, top_k=None, top_p=None, generator=None):
    """Next token ids [B] from last-position logits [B, V]."""
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits / temperature, top_k, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def generate(model, input_ids, max_new_tokens, temperature=0.0, top_k=None, top_p=None,
             eos_token_id=None, attention_mask=None, use_cache=True, generator=None):
    """Continue `input_ids` [B, T] by `max_new_tokens`; returns LongTensor [B, T + new].

    temperature 0 is greedy; otherwise sample from softmax(logits / temperature) restricted
    to the top_k tokens and the top_p nucleus. Once a row emits `eos_token_id` it is
    finished: its later positions hold eos. attention_mask [B, T] (1 real, 0 padding)
    supports left-padded batches.
    """
    steps = generate_steps(model, input_ids, max_new_tokens, temperature, top_k, top_p,
                           eos_token_id, attention_mask, use_cache, generator)
    out = next(steps)  # [B, T + new], filled as the steps run
    for _ in steps:
        pass
    return out


def generate_steps(model, input_ids, max_new_tokens, temperature=0.0, top_k=None, top_p=None,
                   eos_token_id=None, attention_mask=None, use_cache=True, generator=None):
    """`generate` as an iterator: first the output buffer [B, T + new], then after each
    step the new tokens [B]. The buffer holds the finished result when the iterator ends.
    Arguments are checked before the first item is returned.
    """
    config: GPTConfig = model.config
    check_sampling_args(temperature, top_k, top_p)
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    device = model.transformer.wte.weight.device
    input_ids = model._check_input_ids(torch.as_tensor(input_ids).to(device))
    attention_mask = model._check_attention_mask(attention_mask, input_ids)
    B, T = input_ids.shape
    total = T + max_new_tokens
    if total > config.n_positions:
        raise ValueError(
            f"prompt length {T} + max_new_tokens {max_new_tokens} = {total} exceeds "
            f"n_positions={config.n_positions}"
        )
    if eos_token_id is not None and not 0 <= eos_token_id < config.vocab_size:
        raise ValueError(f"eos_token_id {eos_token_id} is outside the vocabulary [0, {config.vocab_size})")
    out = torch.empty(B, total, dtype=torch.long, device=device)
    out[:, :T] = input_ids
    return _run_steps(model, out, T, attention_mask, temperature, top_k, top_p,
                      eos_token_id, use_cache, generator)


def _run_steps(model, out, T, attention_mask, temperature, top_k, top_p, eos_token_id,
               use_cache, generator):
    yield out
    B, total = out.shape
    device = out.device
    valid = torch.ones(B, total, dtype=torch.bool, device=device)  # real (not padding) slots
    if attention_mask is not None:
        valid[:, :T] = attention_mask
    positions = model.position_ids_from_mask(valid)  # (B, total) learned position per slot
    key_valid = valid if attention_mask is not None else None
    if total == T:
        return
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            if use_cache:
                model.setup_caches(B, total)
                logits = model.prefill(out[:, :T], torch.arange(T, device=device), positions[:, :T], key_valid)
            else:
                h = model.hidden_states(out[:, :T], attention_mask, positions[:, :T])
                logits = model.ops.linear(h[:, -1], model.lm_head.weight, None)
        finished = torch.zeros(B, dtype=torch.bool, device=device)
        for t in range(T, total):
            with torch.inference_mode():
                token = sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
                if eos_token_id is not None:
                    token = token.masked_fill(finished, eos_token_id)
                    finished |= token == eos_token_id
                out[:, t] = token
            yield token
            if t + 1 == total:
                break
            if eos_token_id is not None and bool(finished.all()):
                out[:, t + 1:] = eos_token_id
                break
            with torch.inference_mode():
                if use_cache:
                    slot = torch.tensor([t], device=device)
                    logits = model.decode_one_token(out[:, t:t + 1], slot, positions[:, t:t + 1], key_valid)
                else:
                    seq_mask = valid[:, :t + 1] if attention_mask is not None else None
                    h = model.hidden_states(out[:, :t + 1], seq_mask, positions[:, :t + 1])
                    logits = model.ops.linear(h[:, -1], model.lm_head.weight, None)
    finally:
        if use_cache:
            model.clear_caches()
        model.train(was_training)
