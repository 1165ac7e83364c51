"""The native backend's `Decoder`: GPT's prefill / decode_one_token run by the C++
`llm.Decoder`, which owns a static KV cache and runs the whole model per call on packed
weights (float32, bfloat16, or int8 with per-channel scales). CPU, float32 or bfloat16
models; anything else generates through the model's modules (`make_decoder` returns None).
"""

from __future__ import annotations

import torch

from .packing import pack_model

_FLOAT_DTYPES = (torch.float32, torch.bfloat16)


class NativeDecoder:
    """A `llm.ops.Decoder` on the C++ decoder: `batch_size` rows, `max_seq_len` cache
    slots; logits come back as float32 [B, vocab]."""

    supports_cuda_graph = False  # a CPU decoder

    def __init__(self, model, batch_size: int, max_seq_len: int, weight_format: str | None = None):
        self.weights = pack_model(model, weight_format)
        self._decoder = torch.classes.llm.Decoder(self.weights, batch_size, max_seq_len)

    def prefill(self, input_ids, input_pos, position_ids, key_valid=None, rows=None):
        return self._decoder.prefill(input_ids.long(), input_pos.long(), position_ids.long(), key_valid,
                                     None if rows is None else rows.long())

    def decode_one_token(self, token, input_pos, position_ids, key_valid=None, rows=None):
        return self._decoder.decode_one_token(token.long(), input_pos.long(), position_ids.long(), key_valid,
                                              None if rows is None else rows.long())

    def select_rows(self, index):
        self._decoder.select_rows(index.long())


def make_decoder(model, batch_size: int, max_seq_len: int) -> NativeDecoder | None:
    p = model.transformer.wte.weight
    if p.device.type == "cpu" and p.dtype in _FLOAT_DTYPES:
        return NativeDecoder(model, batch_size, max_seq_len)
    return None
