"""The checkpoints of "Build a Large Language Model (From Scratch)" (S. Raschka, 2024).

The book's `GPTModel` is GPT-2 under other names: `tok_emb`, `pos_emb`, `trf_blocks.N`
(`norm1` -> `att` -> `norm2` -> `ff`), `final_norm`, `out_head`; its LayerNorm (`scale`,
`shift`, eps 1e-5, biased variance) and its tanh GELU are GPT-2's, so the same weights give
the same logits here. Its readers save `model.state_dict()` with `torch.save` (alone, or as
`{"model_state_dict": ..., "optimizer_state_dict": ...}`); with the book's config dict
(`GPT_CONFIG_124M` below, the book's own name) `read_checkpoint` maps such a file onto this
engine's names, every tensor checked and named by its book key:

  tok_emb / pos_emb                        transformer.wte / wpe
  trf_blocks.N.norm1, norm2 (scale, shift) transformer.h.N.ln_1, ln_2 (weight, bias)
  trf_blocks.N.att.W_query, W_key, W_value transformer.h.N.attn.c_attn (rows q, k, v);
                                           zero biases when qkv_bias is false
  trf_blocks.N.att.out_proj                transformer.h.N.attn.c_proj
  trf_blocks.N.ff.layers.0, layers.2       transformer.h.N.mlp.c_fc, c_proj
  final_norm                               transformer.ln_f
  out_head                                 lm_head: tied when equal to tok_emb, else its own

The attention's causal `mask` buffer holds no weights and is skipped. Files load with
`weights_only=True`: a checkpoint never runs code.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from ..config import GPTConfig
from ..weights import checked_tensor

# The book's configuration of GPT-2 small (chapter 4).
GPT_CONFIG_124M = {"vocab_size": 50257, "context_length": 1024, "emb_dim": 768, "n_heads": 12,
                   "n_layers": 12, "drop_rate": 0.1, "qkv_bias": False}
CONFIG_KEYS = tuple(GPT_CONFIG_124M)
_BLOCK = re.compile(r"^trf_blocks\.(\d+)\.")
# What a state dict may carry around its keys: a torch.compile'd or DataParallel model.
_KEY_PREFIXES = ("_orig_mod.", "module.")


def load_config(config, source: str = "book config") -> dict:
    """The book's config dict, given as a dict or a JSON file; every key checked."""
    if isinstance(config, (str, os.PathLike)):
        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"book config file not found: {path}")
        try:
            config = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
        source = str(path)
    if not isinstance(config, dict):
        raise ValueError(f"{source}: expected the book's config dict, got {type(config).__name__}")
    missing = [k for k in CONFIG_KEYS if k not in config]
    unknown = [k for k in config if k not in CONFIG_KEYS]
    if missing or unknown:
        raise ValueError(f"{source}: missing keys {missing}, unknown keys {unknown}; the book's config has "
                         f"exactly {list(CONFIG_KEYS)}")
    for key in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers"):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{source}: {key} must be a positive integer, got {value!r}")
    rate = config["drop_rate"]
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
        raise ValueError(f"{source}: drop_rate must be a number in [0, 1), got {rate!r}")
    if not isinstance(config["qkv_bias"], bool):
        raise ValueError(f"{source}: qkv_bias must be true or false, got {config['qkv_bias']!r}")
    if config["emb_dim"] % config["n_heads"]:
        raise ValueError(f"{source}: emb_dim ({config['emb_dim']}) must be divisible by n_heads ({config['n_heads']})")
    return dict(config)


def gpt_config(book: dict, tie_word_embeddings: bool = True) -> GPTConfig:
    """This engine's config of a (checked) book config."""
    p = float(book["drop_rate"])
    return GPTConfig(vocab_size=book["vocab_size"], n_positions=book["context_length"], n_embd=book["emb_dim"],
                     n_layer=book["n_layers"], n_head=book["n_heads"], layer_norm_epsilon=1e-5,
                     embd_pdrop=p, attn_pdrop=p, resid_pdrop=p, tie_word_embeddings=tie_word_embeddings)


def expected_shapes(book: dict) -> dict[str, tuple[int, ...]]:
    """Book key -> shape of every tensor of the book's `GPTModel` with `book`'s config."""
    V, P, C, n = book["vocab_size"], book["context_length"], book["emb_dim"], book["n_layers"]
    shapes = {"tok_emb.weight": (V, C), "pos_emb.weight": (P, C)}
    for i in range(n):
        b = f"trf_blocks.{i}."
        for w in ("W_query", "W_key", "W_value"):
            shapes[f"{b}att.{w}.weight"] = (C, C)
            if book["qkv_bias"]:
                shapes[f"{b}att.{w}.bias"] = (C,)
        shapes.update({f"{b}att.out_proj.weight": (C, C), f"{b}att.out_proj.bias": (C,),
                       f"{b}ff.layers.0.weight": (4 * C, C), f"{b}ff.layers.0.bias": (4 * C,),
                       f"{b}ff.layers.2.weight": (C, 4 * C), f"{b}ff.layers.2.bias": (C,)})
        for norm in ("norm1", "norm2"):
            shapes[f"{b}{norm}.scale"], shapes[f"{b}{norm}.shift"] = (C,), (C,)
    shapes.update({"final_norm.scale": (C,), "final_norm.shift": (C,), "out_head.weight": (V, C)})
    return shapes


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The book model's state dict in a `torch.save` file (weights only), unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, truncated zip, disallowed globals
        raise ValueError(f"{path}: cannot be read as a weights-only checkpoint ({type(e).__name__}: {e})") from e
    if isinstance(sd, dict) and isinstance(sd.get("model_state_dict"), dict):
        sd = sd["model_state_dict"]  # the book's model-and-optimizer checkpoint
    if not isinstance(sd, dict) or not all(isinstance(k, str) for k in sd):
        raise ValueError(f"{path}: expected a state dict (a dict of tensors), got {type(sd).__name__}")
    for prefix in _KEY_PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _checked(sd: dict, book: dict, source: str, allow_non_finite: bool) -> dict[str, torch.Tensor]:
    layers = {int(m.group(1)) for k in sd if (m := _BLOCK.match(k))}
    if (max(layers) + 1 if layers else 0) != book["n_layers"]:
        raise ValueError(f"{source}: holds {max(layers) + 1 if layers else 0} transformer blocks, "
                         f"the config says n_layers={book['n_layers']}")
    expected = expected_shapes(book)
    out = {}
    for name, shape in expected.items():
        if name not in sd:
            hint = " (is qkv_bias right?)" if ".W_" in name and name.endswith(".bias") else ""
            raise ValueError(f"{source}: missing tensor {name!r}{hint}")
        out[name] = checked_tensor(sd[name], name, shape, source, allow_non_finite)
    unexpected = [k for k in sd if k not in expected and not re.fullmatch(r"trf_blocks\.\d+\.att\.mask", k)]
    if unexpected:
        hint = " (is qkv_bias right?)" if any(".W_" in k and k.endswith(".bias") for k in unexpected) else ""
        raise ValueError(f"{source}: unexpected tensors {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}{hint}")
    return out


def to_gpt_state_dict(sd: dict[str, torch.Tensor], book: dict) -> dict[str, torch.Tensor]:
    """Checked book tensors -> this engine's state dict (the lm_head only when untied)."""
    out = {"transformer.wte.weight": sd["tok_emb.weight"], "transformer.wpe.weight": sd["pos_emb.weight"]}
    for i in range(book["n_layers"]):
        b, h = f"trf_blocks.{i}.", f"transformer.h.{i}."
        qkv = [f"{b}att.{w}" for w in ("W_query", "W_key", "W_value")]
        weight = torch.cat([sd[f"{k}.weight"] for k in qkv])  # (3C, C): rows q, k, v
        bias = torch.cat([sd[f"{k}.bias"] for k in qkv]) if book["qkv_bias"] else weight.new_zeros(weight.shape[0])
        out.update({f"{h}attn.c_attn.weight": weight, f"{h}attn.c_attn.bias": bias})
        for ours, theirs in (("attn.c_proj", "att.out_proj"), ("mlp.c_fc", "ff.layers.0"), ("mlp.c_proj", "ff.layers.2")):
            out[f"{h}{ours}.weight"], out[f"{h}{ours}.bias"] = sd[f"{b}{theirs}.weight"], sd[f"{b}{theirs}.bias"]
        for ours, theirs in (("ln_1", "norm1"), ("ln_2", "norm2")):
            out[f"{h}{ours}.weight"], out[f"{h}{ours}.bias"] = sd[f"{b}{theirs}.scale"], sd[f"{b}{theirs}.shift"]
    out["transformer.ln_f.weight"], out["transformer.ln_f.bias"] = sd["final_norm.scale"], sd["final_norm.shift"]
    if not torch.equal(sd["out_head.weight"], sd["tok_emb.weight"]):
        out["lm_head.weight"] = sd["out_head.weight"]
    return {k: v.contiguous() for k, v in out.items()}


def read_checkpoint(path: str | os.PathLike, config, allow_non_finite: bool = False
                    ) -> tuple[GPTConfig, dict[str, torch.Tensor]]:
    """(config, state dict) of the book's `GPTModel` checkpoint `path` with the book's
    `config` (a dict or a JSON file of it); everything checked before anything is built."""
    book = load_config(config)
    sd = read_state_dict(path)
    state = to_gpt_state_dict(_checked(sd, book, str(path), allow_non_finite), book)
    return gpt_config(book, tie_word_embeddings="lm_head.weight" not in state), state
