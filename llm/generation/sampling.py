"""From last-position logits to the next token: penalties, then temperature, top-k, top-p
and min-p, then greedy argmax or a draw.

Everything stays on the device and never asks the host for a value, so a decode loop
that samples with these functions does not synchronise per token. The draw uses the
exponential-race form of multinomial sampling (argmax of p / E with E ~ Exp(1)), which
samples exactly from p without torch.multinomial's host round trip on CUDA.
Order (as Hugging Face's): repetition penalty, presence/frequency penalties, EOS
suppression for min_new_tokens, temperature, top-k, top-p, min-p.
"""

from __future__ import annotations

import torch


def apply_repetition_penalty(logits, seen, penalty: float):
    """CTRL's penalty: logits [B, V]; seen [B, V] bool marks tokens already present."""
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def apply_presence_frequency_penalty(logits, counts, presence: float, frequency: float):
    """OpenAI's penalties: counts [B, V] (float) of each token generated so far."""
    if presence == 0.0 and frequency == 0.0:
        return logits
    return logits - frequency * counts - presence * (counts > 0).to(logits.dtype)


def suppress_tokens(logits, token_ids: torch.Tensor):
    """Set the logits of `token_ids` [n] to -inf in every row."""
    logits = logits.clone()
    logits[:, token_ids] = float("-inf")
    return logits


def filter_logits(logits, top_k=None, top_p=None, min_p=None):
    """Set logits outside the top-k / nucleus (top-p) / min-p set to -inf. logits [B, V]."""
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
    if min_p is not None and min_p > 0.0:
        probs = torch.softmax(logits, dim=-1)
        floor = min_p * probs.max(dim=-1, keepdim=True).values  # (B, 1)
        logits = logits.masked_fill(probs < floor, float("-inf"))
    return logits


def exponential_noise(shape, device, generator=None):
    """Exp(1) noise for `draw`."""
    return torch.empty(shape, device=device).exponential_(1, generator=generator)


def draw(probs, generator=None, noise=None):
    """One token per row from probs [B, V] (rows sum to 1), without a host sync. `noise`
    [B, V] ~ Exp(1) may be passed in (so a row's draw need not depend on the others)."""
    if noise is None:
        noise = exponential_noise(probs.shape, probs.device, generator)
    return torch.argmax(probs / noise, dim=-1)


def sample_next(logits, temperature=0.0, top_k=None, top_p=None, min_p=None, generator=None,
                noise=None):
    """Next token ids [B] from processed last-position logits [B, V]."""
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits / temperature, top_k, top_p, min_p)
    return draw(torch.softmax(logits, dim=-1), generator, noise)


def next_tokens(logits, cfg, penalties: "Penalties", step: int, eos: torch.Tensor, n_rows: int,
                rows: torch.Tensor | None = None, generator=None):
    """The next token [b] of each row of one call (or request) from its last-position
    logits [b, V]: penalties, EOS suppressed before `cfg.min_new_tokens` (step: new tokens
    so far), then `sample_next` with cfg's temperature and filters.

    rows [b]: which of the call's `n_rows` rows these are (None: all, in order). The noise of
    a draw is made for all `n_rows` rows from `generator` and each row takes its own, so
    what a row draws does not depend on which other rows are still being computed.
    """
    logits = penalties.apply(logits.float(), rows)
    if step < cfg.min_new_tokens and eos.numel():
        logits = suppress_tokens(logits, eos)
    noise = None
    if cfg.temperature > 0:
        noise = exponential_noise((n_rows, logits.shape[1]), logits.device, generator)
        noise = noise if rows is None else noise[rows]
    return sample_next(logits, cfg.temperature, cfg.top_k, cfg.top_p, cfg.min_p, noise=noise)


class Penalties:
    """Per-row state of the repetition and presence/frequency penalties, kept on the device
    for every row of the original batch (so a row's penalties do not depend on which other
    rows are still being computed).

    seen [B, V] bool: tokens in the prompt's real positions or the output (repetition);
    counts [B, V] float: how often each token was generated (presence, frequency).
    """

    def __init__(self, cfg, prompt: torch.Tensor, prompt_valid: torch.Tensor, vocab_size: int):
        B, device = prompt.shape[0], prompt.device
        self.cfg = cfg
        self.seen = None
        if cfg.repetition_penalty != 1.0:
            w = prompt_valid.float()
            self.seen = torch.zeros(B, vocab_size, device=device).scatter_add_(1, prompt, w) > 0
        self.counts = None
        if cfg.presence_penalty != 0.0 or cfg.frequency_penalty != 0.0:
            self.counts = torch.zeros(B, vocab_size, device=device)

    def apply(self, logits, rows: torch.Tensor | None):
        """Penalised logits [b, V] of the original rows `rows` (None: all rows, in order)."""
        cfg = self.cfg
        if self.seen is not None:
            seen = self.seen if rows is None else self.seen[rows]
            logits = apply_repetition_penalty(logits, seen, cfg.repetition_penalty)
        if self.counts is not None:
            counts = self.counts if rows is None else self.counts[rows]
            logits = apply_presence_frequency_penalty(logits, counts, cfg.presence_penalty,
                                                      cfg.frequency_penalty)
        return logits

    def record(self, rows: torch.Tensor, token: torch.Tensor, live: torch.Tensor) -> None:
        """Rows `rows` made `token` [b]; only those with `live` [b] True count."""
        if self.seen is not None:
            self.seen[rows, token] |= live
        if self.counts is not None:
            self.counts.index_put_((rows, token), live.float(), accumulate=True)
