"""Token ids to text, one token at a time: UTF-8-safe deltas and stop strings.

GPT-2's byte-level BPE can split one character over several tokens, so each token's
bytes go through an incremental UTF-8 decoder that holds an incomplete character back
until it is whole (invalid bytes become U+FFFD, exactly as decoding all bytes at once).
`RowText` adds stop strings: it looks for them in the decoded text, so a stop string
that spans token boundaries is found, and it holds back a tail that could still grow
into one, so what it has released never has to be taken back. `RowsText` keeps the rows of
a call (or of a served request) together: their texts, finish reasons and lengths.
"""

from __future__ import annotations

import codecs


class TextStreamer:
    """Turns token ids into text deltas that never split a UTF-8 character."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._n_vocab = tokenizer.n_vocab
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """The text that token `token_id` completes (ids the tokenizer lacks add nothing)."""
        if not 0 <= token_id < self._n_vocab:
            return ""
        return self._decoder.decode(self.tokenizer.decode_single_token_bytes(token_id))

    def flush(self) -> str:
        """Whatever is held back (an incomplete character becomes U+FFFD)."""
        return self._decoder.decode(b"", final=True)


class RowText:
    """The generated text of one row, released in deltas, cut at the first stop string."""

    def __init__(self, tokenizer, stop_strings=()):
        self._streamer = TextStreamer(tokenizer)
        self._stops = list(stop_strings)
        self._longest = max((len(s) for s in self._stops), default=0)
        self.text = ""  # decoded so far (released + held back), cut at a stop string
        self._released = 0
        self.stopped = False  # a stop string was found

    def push(self, token_id: int) -> str:
        """Add a token; returns the newly released text."""
        if self.stopped:
            return ""
        return self._add(self._streamer.push(token_id), final=False)

    def finish(self) -> str:
        """The row is done: release everything left."""
        if self.stopped:
            return ""
        return self._add(self._streamer.flush(), final=True)

    def _add(self, new: str, final: bool) -> str:
        start = max(0, len(self.text) - self._longest + 1)
        self.text += new
        if self._stops and new:
            hits = [i for i in (self.text.find(s, start) for s in self._stops) if i >= 0]
            if hits:
                self.text = self.text[:min(hits)]
                self.stopped = True
                final = True
        end = len(self.text) if final else len(self.text) - self._held_tail()
        delta, self._released = self.text[self._released:end], end
        return delta

    def _held_tail(self) -> int:
        """Length of the longest end of the text that begins some stop string."""
        best = 0
        for s in self._stops:
            for k in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:k]):
                    best = k
                    break
        return best


class RowsText:
    """The text of every row of a call, decoded as tokens arrive: stop strings found (and
    reported through `on_stop(rows)`), and each row's finish reason ("eos", "stop_string",
    "length") and new-token count (through the EOS / stop-string token) recorded."""

    def __init__(self, cfg, limits: list[int], tokenizer, on_stop=None):
        self.texts = [RowText(tokenizer, cfg.stop_string_list()) for _ in limits]
        self.eos = set(cfg.eos_token_ids())
        self.limits = list(limits)
        self.on_stop = on_stop
        self.done = [n == 0 for n in self.limits]
        self.reasons = ["length"] * len(limits)
        self.lengths = list(self.limits)

    def push(self, column: list, step: int) -> tuple[list[int | None], list[str]]:
        """The tokens made at new-token index `step` (one per row; a done row's entry is
        ignored): per row the token (None if the row was done) and the text it releases."""
        tokens, deltas = [None] * len(column), [""] * len(column)
        for i, tok in enumerate(column):
            if self.done[i]:
                continue
            tokens[i] = tok
            if tok in self.eos:
                self._finish(i, "eos", step + 1)
                deltas[i] = self.texts[i].finish()
                continue
            deltas[i] = self.texts[i].push(tok)
            if self.texts[i].stopped:
                self._finish(i, "stop_string", step + 1)
                if self.on_stop is not None:
                    self.on_stop([i])
            elif step + 1 >= self.limits[i]:
                self.done[i] = True
                deltas[i] += self.texts[i].finish()
        return tokens, deltas

    def _finish(self, i: int, reason: str, length: int) -> None:
        self.done[i], self.reasons[i], self.lengths[i] = True, reason, length

    def push_all(self, new) -> None:
        """Decode every row's new tokens [B, max new] at once (no stop strings to watch)."""
        for i, row in enumerate(new.tolist()):
            for j, tok in enumerate(row[:self.limits[i]]):
                if tok in self.eos:
                    self.reasons[i], self.lengths[i] = "eos", j + 1
                    break
                self.texts[i].push(tok)

    def flush(self) -> list[str]:
        return [t.finish() for t in self.texts]
