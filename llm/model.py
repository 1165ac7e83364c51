"""GPT-2, exactly: learned positions, pre-LayerNorm blocks, GELU (tanh), tied lm_head (or,
with `tie_word_embeddings=False`, an lm_head of its own).

Parameter names are GPT-2's / Hugging Face's (`transformer.h.0.attn.c_attn.weight`, ...), so
weights map by name; linear weights are stored [out, in] (HF's Conv1D stores [in, out]; the
loader transposes). All layernorm, attention and MLP math goes through the op table of the
backend the model was built with (`llm/ops`); this file never imports a kernel.

Decoding follows gpt-fast: `make_decoder` gives a `Decoder` (`llm/ops/__init__.py`) with a
preallocated static KV cache; `prefill` runs the prompt in one forward, `decode_one_token`
one position; shapes never change between steps, so the step can be captured in a CUDA
graph. A backend may supply its own decoder; otherwise `ModuleDecoder` runs these modules.
The caches belong to the decoder, not to the modules, so calls may overlap.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn as nn

from . import weights
from .config import GPTConfig
from .generation import GenerationConfig
from .generation import generate as _generate
from .generation import stream as _stream
from .interop import book
from .interop import transformers as hf_interop
from .ops import IGNORE_INDEX, Decoder, OpTable, get_ops


class LayerNorm(nn.Module):
    def __init__(self, ndim: int, eps: float, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None
        self.eps = eps
        self.ops: OpTable | None = None

    def forward(self, x):
        return self.ops.layer_norm(x, self.weight, self.bias, self.eps)


class KVCache:
    """Static K and V buffers [B, nh, S, hs] of one layer, written at the slots being computed."""

    def __init__(self, batch_size, n_head, max_seq_len, head_dim, dtype, device):
        shape = (batch_size, n_head, max_seq_len, head_dim)
        self.k_cache = torch.zeros(shape, dtype=dtype, device=device)
        self.v_cache = torch.zeros(shape, dtype=dtype, device=device)

    @classmethod
    def of(cls, k_cache, v_cache) -> "KVCache":
        """A KVCache on given buffers (views write through to what they view)."""
        cache = cls.__new__(cls)
        cache.k_cache, cache.v_cache = k_cache, v_cache
        return cache

    def update(self, input_pos, k, v):
        # input_pos: (T,) cache slots of every row, or (B, T) per row; k, v: (B, nh, T, hs)
        if input_pos.dim() == 1:
            self.k_cache.index_copy_(2, input_pos, k)
            self.v_cache.index_copy_(2, input_pos, v)
        else:
            rows = torch.arange(k.shape[0], device=k.device)[:, None]  # (B, 1)
            self.k_cache[rows, :, input_pos] = k.transpose(1, 2)  # (B, T, nh, hs)
            self.v_cache[rows, :, input_pos] = v.transpose(1, 2)
        return self.k_cache, self.v_cache

    def select_rows(self, index):
        self.k_cache = self.k_cache.index_select(0, index)
        self.v_cache = self.v_cache.index_select(0, index)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_pdrop = config.attn_pdrop
        self.resid_dropout = nn.Dropout(config.resid_pdrop)
        self.ops: OpTable | None = None

    def forward(self, x, key_valid=None, kv_cache: KVCache | None = None, input_pos=None, prefill=False):
        """x [B, T, C]. Without a cache, causal attention among the T tokens (key_valid
        [B, T]); with one, the tokens go to cache slots input_pos [T] (or [B, T], per row;
        key_valid [B, S])."""
        B, T, C = x.shape
        qkv = self.ops.linear(x, self.c_attn.weight, self.c_attn.bias)  # (B, T, 3C)
        q, k, v = qkv.split(C, dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        if kv_cache is None:
            dropout_p = self.attn_pdrop if self.training else 0.0
            y = self.ops.attention(q, k, v, key_valid, dropout_p)  # (B, nh, T, hs)
        elif prefill:
            # the prompt fills slots 0..T-1 of an empty cache: it attends only among itself
            kv_cache.update(input_pos, k, v)
            y = self.ops.attention(q, k, v, None if key_valid is None else key_valid[:, :T])
        else:
            k_cache, v_cache = kv_cache.update(input_pos, k, v)  # (B, nh, S, hs)
            y = self.ops.cached_attention(q, k_cache, v_cache, input_pos, key_valid)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.ops.linear(y, self.c_proj.weight, self.c_proj.bias))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.inner_dim, bias=config.bias)
        self.c_proj = nn.Linear(config.inner_dim, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.resid_pdrop)
        self.ops: OpTable | None = None

    def forward(self, x):
        y = self.ops.mlp(x, self.c_fc.weight, self.c_fc.bias, self.c_proj.weight, self.c_proj.bias)
        return self.dropout(y)


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, config.layer_norm_epsilon, config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, config.layer_norm_epsilon, config.bias)
        self.mlp = MLP(config)

    def forward(self, x, key_valid=None, kv_cache=None, input_pos=None, prefill=False):
        x = x + self.attn(self.ln_1(x), key_valid, kv_cache, input_pos, prefill)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    """GPT-2 language model.

    `GPT(config, backend="torch")`; backend is one of `llm.ops.available_backends()`
    ('torch', 'triton', 'native', 'auto'), default $LLM_BACKEND or 'torch'.
    """

    def __init__(self, config: GPTConfig, backend: str | None = None):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.n_positions, config.n_embd),
                drop=nn.Dropout(config.embd_pdrop),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=LayerNorm(config.n_embd, config.layer_norm_epsilon, config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.transformer.wte.weight  # tied, as in GPT-2
        # how `generate` continues by default: a new model greedily and without EOS; a loaded
        # one as its generation_config.json says
        self.generation_config = GenerationConfig()
        self.apply(self._init_weights)
        # GPT-2: residual projections scaled by 1/sqrt(2 * n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        self.set_backend(backend)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    # -- backend ---------------------------------------------------------------------------
    def set_backend(self, backend: str | None) -> "GPT":
        """Route every op through `backend`'s op table (see `llm.ops.get_ops`). A module that
        holds `adapt_ops` (LoRA adapters, `llm.finetune.lora`) runs the table it makes of it."""
        self.ops = get_ops(backend)
        for m in self.modules():
            if hasattr(m, "ops") and m is not self:
                adapt = getattr(m, "adapt_ops", None)
                m.ops = self.ops if adapt is None else adapt(self.ops)
        return self

    def has_adapted_ops(self) -> bool:
        """True when some module runs an adapted op table (see `set_backend`)."""
        return any(getattr(m, "adapt_ops", None) is not None for m in self.modules())

    @property
    def backend(self) -> str:
        """Name of the backend whose op table the model runs."""
        return self.ops.name

    # -- checks ----------------------------------------------------------------------------
    def check_inputs(self, input_ids, attention_mask=None):
        """(input_ids [B, T] long, attention_mask [B, T] bool or None), checked against the
        config: integer ids inside the vocabulary, 1 <= T <= n_positions, a 0/1 mask of
        the same shape. Raises ValueError naming the problem."""
        input_ids = self._check_input_ids(input_ids)
        return input_ids, self._check_attention_mask(attention_mask, input_ids)

    def _check_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        if not isinstance(input_ids, torch.Tensor):
            input_ids = torch.as_tensor(input_ids)
        if input_ids.dtype not in _ID_DTYPES:
            raise ValueError(f"input_ids must be an integer tensor, got dtype {input_ids.dtype}")
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape [B, T], got {tuple(input_ids.shape)}")
        if input_ids.shape[0] == 0:
            raise ValueError("input_ids has no rows (B = 0)")
        if input_ids.shape[1] == 0:
            raise ValueError("input_ids is empty (T = 0)")
        if input_ids.shape[1] > self.config.n_positions:
            raise ValueError(
                f"sequence length {input_ids.shape[1]} exceeds n_positions={self.config.n_positions}"
            )
        input_ids = input_ids.long()
        if torch.compiler.is_compiling():  # a graph cannot branch on values: checked in eager runs
            return input_ids
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= self.config.vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"token id {bad} is outside the vocabulary [0, {self.config.vocab_size})"
            )
        return input_ids.long()

    @staticmethod
    def _check_attention_mask(attention_mask, input_ids):
        if attention_mask is None:
            return None
        attention_mask = torch.as_tensor(attention_mask, device=input_ids.device)
        if attention_mask.dim() == 1:
            attention_mask = attention_mask[None]
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} does not match "
                f"input_ids shape {tuple(input_ids.shape)}"
            )
        if attention_mask.dtype != torch.bool:
            if ((attention_mask != 0) & (attention_mask != 1)).any():
                raise ValueError("attention_mask must hold only 0 and 1")
            attention_mask = attention_mask.bool()
        return attention_mask

    # -- forward ---------------------------------------------------------------------------
    @staticmethod
    def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
        """Positions counting only real tokens, so a left-padded row starts at 0."""
        return (attention_mask.long().cumsum(-1) - 1).clamp_(min=0)

    def hidden_states(self, input_ids, position_ids, key_valid=None, caches=None, input_pos=None,
                      prefill=False):
        """Final-layernormed hidden states [B, T, C] of checked inputs.

        position_ids [B or 1, T]; key_valid [B, T] (with caches [B, S]) marks real tokens /
        valid cache slots, None: all. caches: one KVCache per layer, written at cache slots
        input_pos [T] (or [B, T], per row); with prefill=True the tokens fill slots 0..T-1 of
        an empty cache.
        """
        x = self.transformer.wte(input_ids) + self.transformer.wpe(position_ids)  # (B, T, C)
        x = self.transformer.drop(x)
        for i, block in enumerate(self.transformer.h):
            x = block(x, key_valid, None if caches is None else caches[i], input_pos, prefill)
        return self.transformer.ln_f(x)

    def head(self, h):
        """Logits [..., vocab] of hidden states [..., C] (the lm_head)."""
        return self.ops.linear(h, self.lm_head.weight, None)

    def last_token_logits(self, input_ids, position_ids, key_valid=None):
        """Logits [B, vocab] of each row's last token, recomputing the whole sequence."""
        return self.head(self.hidden_states(input_ids, position_ids, key_valid)[:, -1])

    def _positions(self, input_ids, attention_mask):
        if attention_mask is not None:
            return self.position_ids_from_mask(attention_mask)
        return torch.arange(input_ids.shape[1], device=input_ids.device)[None]

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        """Logits [B, T, vocab]. attention_mask [B, T] (1 real, 0 padding) allows left padding."""
        input_ids, mask = self.check_inputs(input_ids, attention_mask)
        if position_ids is None:
            position_ids = self._positions(input_ids, mask)
        return self.head(self.hidden_states(input_ids, position_ids, mask))

    def loss(self, input_ids, targets, attention_mask=None):
        """Mean next-token cross-entropy; targets [B, T] with IGNORE_INDEX (-100) skipped.

        Goes through `ops.lm_head_loss`, so a backend can fuse the vocabulary projection
        with the loss and never hold the [B*T, vocab] logits.
        """
        input_ids, mask = self.check_inputs(input_ids, attention_mask)
        targets = torch.as_tensor(targets, device=input_ids.device).long()
        if targets.dim() == 1:
            targets = targets[None]
        if targets.shape != input_ids.shape:
            raise ValueError(
                f"targets shape {tuple(targets.shape)} does not match input_ids shape {tuple(input_ids.shape)}"
            )
        h = self.hidden_states(input_ids, self._positions(input_ids, mask), mask)
        C = h.shape[-1]
        return self.ops.lm_head_loss(h.reshape(-1, C), self.lm_head.weight, targets.reshape(-1), IGNORE_INDEX)

    # -- KV-cache decoding -----------------------------------------------------------------
    def make_decoder(self, batch_size: int, max_seq_len: int) -> Decoder:
        """A `Decoder` for `batch_size` rows and `max_seq_len` cache slots: the backend's
        own when it has one for this model, else `ModuleDecoder`."""
        if max_seq_len > self.config.n_positions:
            raise ValueError(f"max_seq_len {max_seq_len} exceeds n_positions={self.config.n_positions}")
        decoder = None
        # a backend's decoder runs the weights, not the modules: adapted ops would be skipped
        if self.ops.make_decoder is not None and not self.has_adapted_ops():
            decoder = self.ops.make_decoder(self, batch_size, max_seq_len)
        return decoder if decoder is not None else ModuleDecoder(self, batch_size, max_seq_len)

    # -- generation and weights ------------------------------------------------------------
    def generate(self, input_ids, max_new_tokens=None, **kwargs):
        """See `llm.generation.generate`."""
        return _generate(self, input_ids, max_new_tokens, **kwargs)

    def stream(self, input_ids, max_new_tokens=None, **kwargs):
        """See `llm.generation.stream`: yields token ids and text deltas as they are made."""
        return _stream(self, input_ids, max_new_tokens, **kwargs)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, backend: str | None = None, dtype=None,
                        device=None, allow_non_finite: bool = False, config=None) -> "GPT":
        """Load a Hugging Face GPT-2 folder or hub name (see `llm.weights`). Every tensor is
        checked against config.json before any module is built (NaN/inf refused unless
        `allow_non_finite`); the model then takes the tensors (no random init). dtype: a
        torch dtype or its name ('float32', 'bfloat16', 'float16').

        With `config` (the book's config dict, or a JSON file holding it), `path` is instead
        a `GPTModel` state dict of "Build a Large Language Model (From Scratch)" saved with
        `torch.save` (see `llm.interop.book`)."""
        if config is not None:
            model_config, state_dict = book.read_checkpoint(path, config, allow_non_finite)
            generation_config = GenerationConfig(eos_token_id=model_config.eos_token_id)
        else:
            folder = weights.resolve_model_dir(path)
            model_config = GPTConfig.from_json(folder / "config.json")
            state_dict, generation_config = weights.read_weights(folder, model_config, allow_non_finite)
        model = cls._from_state_dict(model_config, state_dict, generation_config)
        model.to(device=device, dtype=_as_dtype(dtype))
        return model.set_backend(backend).eval()

    @classmethod
    def from_transformers(cls, hf_model, backend: str | None = None, dtype=None, device=None) -> "GPT":
        """A GPT holding a copy of the weights of a transformers GPT-2 (`GPT2LMHeadModel`, or
        `GPT2Model` whose head is then the tied embedding), in eval mode; dtype and device
        default to the source model's."""
        model_config, state_dict, generation_config = hf_interop.read_model(hf_model)
        source = state_dict["transformer.wte.weight"]
        model = cls._from_state_dict(model_config, state_dict, generation_config)
        model.to(device=device or source.device, dtype=source.dtype if dtype is None else _as_dtype(dtype))
        return model.set_backend(backend).eval()

    @classmethod
    def _from_state_dict(cls, config: GPTConfig, state_dict: dict, generation_config) -> "GPT":
        """A GPT built on the meta device that takes checked tensors as its parameters."""
        with torch.device("meta"):
            model = cls(config, backend="torch")
        weights.assign_weights(model, state_dict)
        model.generation_config = generation_config
        return model

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write config.json + model.safetensors that transformers' GPT2LMHeadModel loads."""
        weights.save_pretrained(self, path)

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel() + self.transformer.wte.weight.numel()
        return n


_ID_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8, torch.uint16, torch.uint32)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _as_dtype(dtype) -> torch.dtype:
    """A floating torch dtype from a dtype or its name; None is float32."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(_DTYPES)}")
        return _DTYPES[dtype]
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch dtype or its name, got {dtype!r}")
    return dtype


class ModuleDecoder:
    """The `Decoder` every backend has: the model's modules (so its op table) over a torch
    KV cache per layer, owned here.

    Calls that name `rows` run on those cache rows only: a consecutive range in place
    (views), any other set gathered into a copy and written back after the call."""

    supports_cuda_graph = True

    def __init__(self, model: GPT, batch_size: int, max_seq_len: int):
        c, p = model.config, model.transformer.wte.weight
        self.model = model
        self.caches = [KVCache(batch_size, c.n_head, max_seq_len, c.head_dim, p.dtype, p.device)
                       for _ in range(c.n_layer)]

    def _logits(self, input_ids, input_pos, position_ids, key_valid, prefill, rows):
        caches, index = self._row_caches(rows)
        h = self.model.hidden_states(input_ids, position_ids, key_valid, caches, input_pos, prefill)
        if index is not None:  # gathered rows: write them back
            for cache, part in zip(self.caches, caches):
                cache.k_cache.index_copy_(0, index, part.k_cache)
                cache.v_cache.index_copy_(0, index, part.v_cache)
        return self.model.head(h[:, -1])

    def _row_caches(self, rows):
        """(per-layer caches of cache rows `rows`, the index to write them back at or None)."""
        if rows is None:
            return self.caches, None
        ids = rows.tolist()
        lo, n = ids[0], len(ids)
        if ids == list(range(lo, lo + n)):
            return [KVCache.of(c.k_cache[lo:lo + n], c.v_cache[lo:lo + n]) for c in self.caches], None
        index = torch.as_tensor(ids, device=self.caches[0].k_cache.device)
        return [KVCache.of(c.k_cache[index], c.v_cache[index]) for c in self.caches], index

    def prefill(self, input_ids, input_pos, position_ids, key_valid=None, rows=None):
        # Attending only among the prompt is exact when it starts at slot 0 (the rows' earlier
        # contents are not theirs).
        from_start = input_ids.shape[1] > 1 and input_pos.dim() == 1 and int(input_pos[0]) == 0
        return self._logits(input_ids, input_pos, position_ids, key_valid, from_start, rows)

    def decode_one_token(self, token, input_pos, position_ids, key_valid=None, rows=None):
        return self._logits(token, input_pos, position_ids, key_valid, False, rows)

    def select_rows(self, index):
        for cache in self.caches:
            cache.select_rows(index)
