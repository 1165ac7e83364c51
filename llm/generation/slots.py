"""A fixed pool of KV-cache slots on one `Decoder`: the state of a continuous batch.

Each slot is one row of a decoder made for `n_slots` rows and the model's whole context, and
holds one sequence left-aligned: its token i sits at cache slot i with learned position i,
so a slot needs no padding and no validity mask (a query at slot p sees slots <= p, which
are all its own). Requests come and go between decode steps:

  acquire   pick free slots for a prompt, preferring those whose held tokens begin with it
            (a shared system prompt, a template, a retried request): those are not
            computed again (the prefix cache)
  prefill   write the prompt into the slots, in chunks if the caller wants, at the slots'
            own positions (`Decoder.prefill(..., rows=slots)`); other slots are untouched
  decode    one token for each of the given slots, each at its own depth
            (`Decoder.decode_one_token` with per-row `input_pos`)
  release   the slot is free again; what it holds stays for the prefix cache

The decoder computes each row on its own, so a slot's logits are those of its sequence
alone, whatever the other slots hold or do.
"""

from __future__ import annotations

import torch


class SlotCache:
    """`n_slots` slots of `max_seq_len` tokens (default: the model's context)."""

    def __init__(self, model, n_slots: int, max_seq_len: int | None = None):
        if isinstance(n_slots, bool) or not isinstance(n_slots, int) or n_slots < 1:
            raise ValueError(f"n_slots must be an integer >= 1, got {n_slots!r}")
        self.max_seq_len = max_seq_len or model.config.n_positions
        self.device = model.transformer.wte.weight.device
        self.decoder = model.make_decoder(n_slots, self.max_seq_len)
        self.n_slots = n_slots
        self.held: list[list[int]] = [[] for _ in range(n_slots)]  # tokens whose K/V each slot holds
        self.busy = [False] * n_slots

    def free_count(self) -> int:
        return self.busy.count(False)

    def acquire(self, prompt: list[int], n: int = 1, reuse: bool = True) -> tuple[list[int], int]:
        """Take `n` free slots for `prompt`; returns (slots, start): the slots already hold
        prompt[:start] (at least the last prompt token is always computed, for its logits),
        so `prefill` goes on from `start`. Slots with the longest common prefix are taken
        first, then the lowest free ones (which keeps the busy rows together)."""
        if not prompt:
            raise ValueError("a prompt needs at least one token")
        if len(prompt) > self.max_seq_len:
            raise ValueError(f"prompt of {len(prompt)} tokens exceeds the slot length {self.max_seq_len}")
        free = [s for s in range(self.n_slots) if not self.busy[s]]
        if len(free) < n:
            raise ValueError(f"{n} slots wanted, {len(free)} free")
        match = {s: _common_prefix(self.held[s], prompt) if reuse else 0 for s in free}
        slots = sorted(free, key=lambda s: (-match[s], s))[:n]
        start = min(min(match[s] for s in slots), len(prompt) - 1)
        for s in slots:
            self.busy[s] = True
            del self.held[s][start:]
        return slots, start

    def release(self, slot: int) -> None:
        self.busy[slot] = False

    def _rows(self, slots: list[int]) -> torch.Tensor:
        return torch.tensor(slots, dtype=torch.long, device=self.device)

    def prefill(self, slots: list[int], tokens: list[int]) -> torch.Tensor:
        """Append the same `tokens` to every slot of `slots` (each holding the same number
        of tokens); logits [len(slots), V] of the last one."""
        start = len(self.held[slots[0]])
        if any(len(self.held[s]) != start for s in slots):
            raise ValueError("slots prefilled together must hold the same number of tokens")
        end = start + len(tokens)
        if end > self.max_seq_len:
            raise ValueError(f"{end} tokens exceed the slot length {self.max_seq_len}")
        pos = torch.arange(start, end, device=self.device)
        ids = torch.tensor(tokens, dtype=torch.long, device=self.device)[None].expand(len(slots), -1)
        logits = self.decoder.prefill(ids, pos, pos[None].expand(len(slots), -1), None, rows=self._rows(slots))
        for s in slots:
            self.held[s].extend(tokens)
        return logits

    def decode(self, slots: list[int], tokens: list[int]) -> torch.Tensor:
        """One token per slot, each after what its slot holds; logits [len(slots), V]."""
        depth = [len(self.held[s]) for s in slots]
        if max(depth) >= self.max_seq_len:
            raise ValueError(f"a slot is full ({self.max_seq_len} tokens)")
        pos = torch.tensor(depth, dtype=torch.long, device=self.device)[:, None]  # (b, 1)
        ids = torch.tensor(tokens, dtype=torch.long, device=self.device)[:, None]
        logits = self.decoder.decode_one_token(ids, pos, pos, None, rows=self._rows(slots))
        for s, t in zip(slots, tokens):
            self.held[s].append(t)
        return logits


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
