"""GGUF export: a GPT as llama.cpp's `gpt2` architecture reads it, for llama.cpp and ollama.

Written through the `gguf` package (`pip install 'llm[export]'`), with llama.cpp's names:

  transformer.wte / wpe                 token_embd / position_embd
  transformer.h.N.ln_1, ln_2            blk.N.attn_norm, blk.N.ffn_norm (weight, bias)
  transformer.h.N.attn.c_attn, c_proj   blk.N.attn_qkv (rows q, k, v), blk.N.attn_output
  transformer.h.N.mlp.c_fc, c_proj      blk.N.ffn_up, blk.N.ffn_down
  transformer.ln_f                      output_norm
  lm_head (untied only)                 output (llama.cpp uses token_embd when it is absent)

Linear weights keep this engine's [out, in] layout, which GGUF lists as (in, out): llama.cpp's
convention. A model without biases gets zero biases (llama.cpp's GPT-2 expects them).
Hyperparameters go under `gpt2.*`; the tokenizer is GPT-2's byte-level BPE with its 50000
merges (`llm.tokenizer.bpe_vocab_and_merges`); a vocabulary padded past 50257 gets unused
`[PADn]` tokens, a smaller one is refused (GPT-2's tokenizer would not fit it).

Types, as llama.cpp's own converter picks them: 1-D tensors (norms, biases) and
position_embd stay float32; `f16` stores the other matrices as float16; `q8_0` stores them
in blocks of 32 int8 values with one float16 scale (matrices whose rows are not a multiple
of 32 fall back to float16). The file is written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..fileio import atomic_path
from ..tokenizer import EOT_TOKEN, bpe_vocab_and_merges

DTYPES = ("f32", "f16", "q8_0")
ARCH = "gpt2"
GPT2_VOCAB = 50257


def _gguf():
    try:
        import gguf
    except ImportError as e:
        raise ImportError(f"GGUF export needs the gguf package (pip install 'llm[export]'): {e}") from e
    return gguf


def gguf_tensors(model) -> dict[str, torch.Tensor]:
    """GGUF name -> float32 CPU tensor of every tensor the file holds, in file order."""
    tr, c = model.transformer, model.config

    def f32(t):
        return t.detach().to(device="cpu", dtype=torch.float32).contiguous()

    def bias(t, n):
        return torch.zeros(n) if t is None else f32(t)

    out = {"token_embd.weight": f32(tr.wte.weight), "position_embd.weight": f32(tr.wpe.weight)}
    for i, block in enumerate(tr.h):
        a, m = block.attn, block.mlp
        for name, module, n in (("attn_norm", block.ln_1, c.n_embd), ("attn_qkv", a.c_attn, 3 * c.n_embd),
                                ("attn_output", a.c_proj, c.n_embd), ("ffn_norm", block.ln_2, c.n_embd),
                                ("ffn_up", m.c_fc, c.inner_dim), ("ffn_down", m.c_proj, c.n_embd)):
            out[f"blk.{i}.{name}.weight"] = f32(module.weight)
            out[f"blk.{i}.{name}.bias"] = bias(module.bias, n)
    out["output_norm.weight"] = f32(tr.ln_f.weight)
    out["output_norm.bias"] = bias(tr.ln_f.bias, c.n_embd)
    if not c.tie_word_embeddings:
        out["output.weight"] = f32(model.lm_head.weight)
    return out


def tensor_type(name: str, shape: tuple[int, ...], dtype: str):
    """The GGML type `name` is stored in for export `dtype`."""
    q = _gguf().GGMLQuantizationType
    if dtype == "f32" or len(shape) == 1 or name == "position_embd.weight":
        return q.F32
    if dtype == "q8_0" and shape[-1] % 32 == 0:
        return q.Q8_0
    return q.F16


def _tokenizer(writer, vocab_size: int, bos: int | None, eos: int | None) -> None:
    gguf = _gguf()
    if vocab_size < GPT2_VOCAB:
        raise ValueError(f"vocab_size={vocab_size} is smaller than GPT-2's tokenizer ({GPT2_VOCAB} tokens): "
                         f"a GGUF file needs a tokenizer that fits the model")
    tokens, merges = bpe_vocab_and_merges()
    types = [gguf.TokenType.NORMAL] * GPT2_VOCAB
    types[EOT_TOKEN] = gguf.TokenType.CONTROL
    padding = [f"[PAD{i}]" for i in range(GPT2_VOCAB, vocab_size)]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(list(tokens) + padding)
    writer.add_token_types(types + [gguf.TokenType.UNUSED] * len(padding))
    writer.add_token_merges(list(merges))
    writer.add_bos_token_id(EOT_TOKEN if bos is None else bos)
    writer.add_eos_token_id(EOT_TOKEN if eos is None else eos)
    writer.add_add_bos_token(False)


def _hyperparameters(writer, model, dtype: str, name: str) -> None:
    gguf, c = _gguf(), model.config
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype]
    writer.add_name(name)
    writer.add_context_length(c.n_positions)
    writer.add_embedding_length(c.n_embd)
    writer.add_feed_forward_length(c.inner_dim)
    writer.add_block_count(c.n_layer)
    writer.add_head_count(c.n_head)
    writer.add_layer_norm_eps(c.layer_norm_epsilon)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def export_gguf(model, path: str | os.PathLike, dtype: str = "f32", name: str | None = None,
                progress: bool = False) -> Path:
    """Write `model` (a GPT) to the GGUF file `path` in `dtype` ('f32', 'f16', 'q8_0');
    returns the path. `name` is the file's general.name (default: the file's stem)."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown GGUF dtype {dtype!r}; choose one of {list(DTYPES)}")
    gguf, path = _gguf(), Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give the .gguf file to write")
    c = model.config
    tensors = gguf_tensors(model)
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(tmp, ARCH)
        _hyperparameters(writer, model, dtype, name or path.stem)
        _tokenizer(writer, c.vocab_size, c.bos_token_id, c.eos_token_id)
        for key, t in tqdm(tensors.items(), desc="gguf tensors", unit="tensor", disable=not progress):
            qtype = tensor_type(key, tuple(t.shape), dtype)
            data = gguf.quants.quantize(t.numpy(), qtype)
            writer.add_tensor(key, data, raw_dtype=qtype if qtype == gguf.GGMLQuantizationType.Q8_0 else None)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=progress)
        writer.close()
    return path


def read_gguf_tensors(source) -> dict[str, np.ndarray]:
    """GGUF name -> float32 array (dequantized, in [out, in] layout) of a GGUF file (a path,
    or a `gguf.GGUFReader` already open on it)."""
    gguf = _gguf()
    reader = source if isinstance(source, gguf.GGUFReader) else gguf.GGUFReader(str(source))
    out = {}
    for t in reader.tensors:
        shape = tuple(int(n) for n in reversed(t.shape))  # GGUF lists dims innermost first
        out[t.name] = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
    return out
