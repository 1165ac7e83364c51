"""The decode step on static input buffers, captured once in a CUDA graph and replayed.

A CUDA graph replays fixed kernels on fixed addresses, so the step's inputs (token, cache
slot, position, slot validity) live in buffers that are copied into before each replay, and
its logits come back in the same output tensor every time. One `StaticStep` serves one
batch size; when rows are dropped the engine makes a new one (the old graph holds the old
cache's addresses).
"""

from __future__ import annotations

import warnings

import torch


class StaticStep:
    """`decoder.decode_one_token` for a batch of `b` rows on static buffers. With
    `graph=True` (CUDA) the first call captures it in a CUDA graph, later calls replay."""

    def __init__(self, decoder, b: int, key_valid, device, graph: bool, pool=None):
        self.decoder = decoder
        self.token = torch.zeros(b, 1, dtype=torch.long, device=device)
        self.slot = torch.zeros(1, dtype=torch.long, device=device)
        self.position = torch.zeros(b, 1, dtype=torch.long, device=device)
        self.key_valid = None if key_valid is None else key_valid.clone()
        self.graph = torch.cuda.CUDAGraph() if graph else None
        self.pool = pool
        self.logits = None

    def _run(self):
        return self.decoder.decode_one_token(self.token, self.slot, self.position, self.key_valid)

    def __call__(self, token, slot: int, position):
        self.token.copy_(token)
        self.slot.fill_(slot)
        self.position.copy_(position)
        if self.graph is None:
            return self._run()
        if self.logits is None:
            return self._capture()
        self.graph.replay()
        return self.logits

    def _capture(self):
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
                          stacklevel=3)
            self.graph = None
            return logits
        self.graph.replay()
        return self.logits
