"""GPT-2 model configuration, with Hugging Face's field names and `config.json` format."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .fileio import atomic_write_text


@dataclass
class GPTConfig:
    """Hyperparameters of a GPT-2 model. Field names follow `transformers.GPT2Config`."""

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None  # MLP width; None means 4 * n_embd, as in GPT-2
    layer_norm_epsilon: float = 1e-5
    embd_pdrop: float = 0.0
    attn_pdrop: float = 0.0
    resid_pdrop: float = 0.0
    bias: bool = True
    tie_word_embeddings: bool = True  # lm_head shares wte's weight (GPT-2); False: its own
    bos_token_id: int | None = 50256  # <|endoftext|>; None where the vocabulary has no such id
    eos_token_id: int | None = 50256
    extra: dict = field(default_factory=dict, repr=False)  # unknown HF fields, kept for round trips

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            _check_int(name, getattr(self, name), low=1)
        if self.n_inner is not None:
            _check_int("n_inner", self.n_inner, low=1)
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )
        eps = self.layer_norm_epsilon
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
            raise ValueError(f"GPTConfig.layer_norm_epsilon must be a number in (0, 1), got {eps!r}")
        for name in ("embd_pdrop", "attn_pdrop", "resid_pdrop"):
            p = getattr(self, name)
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
                raise ValueError(f"GPTConfig.{name} must be a number in [0, 1), got {p!r}")
        for name in ("bias", "tie_word_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"GPTConfig.{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("bos_token_id", "eos_token_id"):
            token = getattr(self, name)
            if token is not None:
                _check_int(name, token, low=0)
                # GPT-2's <|endoftext|> (50256) does not exist in a smaller vocabulary
                if token >= self.vocab_size:
                    setattr(self, name, None)
        # A model of more than ~2^40 parameters is a typo, not a model: refuse it before
        # anything allocates.
        if self.num_params() > 1 << 40:
            raise ValueError(f"GPTConfig describes {self.num_params():.3g} parameters; that is not a GPT-2 "
                             f"this engine can hold (check n_layer, n_embd, vocab_size)")

    def num_params(self) -> int:
        """Parameters of the model this config describes (a tied lm_head counted once)."""
        C, H, b = self.n_embd, self.inner_dim, int(self.bias)
        block = 2 * C * (1 + b) + (3 * C * C + 3 * C * b) + (C * C + C * b) + (C * H + H * b) + (H * C + C * b)
        head = 0 if self.tie_word_embeddings else self.vocab_size * C
        return (self.vocab_size + self.n_positions) * C + self.n_layer * block + C * (1 + b) + head

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def inner_dim(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "GPTConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        overrides.setdefault("extra", dict(PRESETS[name].extra))
        return dataclasses.replace(PRESETS[name], **overrides)

    # -- Hugging Face config.json -------------------------------------------------------
    def to_hf_dict(self) -> dict:
        d = {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "activation_function": "gelu_new",
            "vocab_size": self.vocab_size,
            "n_positions": self.n_positions,
            "n_ctx": self.n_positions,
            "n_embd": self.n_embd,
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "n_inner": self.n_inner,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "embd_pdrop": self.embd_pdrop,
            "attn_pdrop": self.attn_pdrop,
            "resid_pdrop": self.resid_pdrop,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
            "tie_word_embeddings": self.tie_word_embeddings,
        }
        if not self.bias:
            d["bias"] = False  # not a transformers field: such a model loads only here
        return {**self.extra, **d}

    @classmethod
    def from_hf_dict(cls, d: dict, source: str = "config") -> "GPTConfig":
        model_type = d.get("model_type", "gpt2")
        if model_type != "gpt2":
            raise ValueError(f"{source}: model_type is {model_type!r}, only 'gpt2' is supported")
        act = d.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(
                f"{source}: activation_function {act!r} is not supported (GPT-2 uses 'gelu_new')"
            )
        if d.get("scale_attn_by_inverse_layer_idx") or d.get("reorder_and_upcast_attn"):
            raise ValueError(
                f"{source}: scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not supported"
            )
        if d.get("scale_attn_weights") is False:
            raise ValueError(f"{source}: scale_attn_weights=False is not supported")
        if d.get("add_cross_attention"):
            raise ValueError(f"{source}: add_cross_attention (an encoder-decoder GPT-2) is not supported")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: d[k] for k in known if k in d}
        if "n_positions" not in kwargs and "n_ctx" in d:
            kwargs["n_positions"] = d["n_ctx"]
        for k in ("bos_token_id", "eos_token_id"):
            if kwargs.get(k) is None or isinstance(kwargs.get(k), list):
                kwargs.pop(k, None)
        extra = {k: v for k, v in d.items() if k not in known and k not in _WRITTEN_BY_TO_HF}
        return cls(**kwargs, extra=extra)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "GPTConfig":
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            d = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(d).__name__}")
        try:
            return cls.from_hf_dict(d, source=str(path))
        except (ValueError, TypeError) as e:
            msg = str(e)
            raise ValueError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None

    def save_json(self, path: str | os.PathLike) -> None:
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        atomic_write_text(path, json.dumps(self.to_hf_dict(), indent=2, sort_keys=True) + "\n")


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        what = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise ValueError(f"GPTConfig.{name} must be {what}, got {value!r}")


# Keys `to_hf_dict` always writes itself (fixed by the architecture).
_WRITTEN_BY_TO_HF = {
    "architectures", "model_type", "activation_function", "n_ctx", "scale_attn_weights",
    "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn",
}

PRESETS: dict[str, GPTConfig] = {
    "gpt2": GPTConfig(n_embd=768, n_layer=12, n_head=12),
    "gpt2-medium": GPTConfig(n_embd=1024, n_layer=24, n_head=16),
    "gpt2-large": GPTConfig(n_embd=1280, n_layer=36, n_head=20),
    "gpt2-xl": GPTConfig(n_embd=1600, n_layer=48, n_head=25),
    # Small enough to train for a few minutes on two CPU cores, large enough to learn words.
    "small": GPTConfig(n_positions=256, n_embd=192, n_layer=4, n_head=6),
    # For tests: everything tiny.
    "tiny": GPTConfig(vocab_size=50257, n_positions=64, n_embd=64, n_layer=2, n_head=4),
}
