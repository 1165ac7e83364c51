"""`GenerationConfig`: every knob of `generate` / `stream`, checked, and read from HF's
`generation_config.json`.

Temperature 0 means greedy. Hugging Face's file says greedy with `do_sample: false` (its
default) and samples with its defaults (temperature 1, top_k 50) when `do_sample: true`;
`from_hf_dict` translates, so a checkpoint generates here as it does in transformers.
Settings that have no equivalent here (beam search, n-gram blocking, ...) are kept in
`extra` and warned about when they would change the output.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..fileio import atomic_write_text

# HF fields that change what is generated and that this engine does not implement,
# with the value that means "off".
_UNSUPPORTED_HF = {
    "num_beams": 1,
    "num_beam_groups": 1,
    "penalty_alpha": None,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "force_words_ids": None,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "diversity_penalty": 0.0,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "sequence_bias": None,
}


def _as_id_list(value, name: str) -> list[int]:
    if value is None:
        return []
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer or a list of integers, got {value!r}")
    if isinstance(value, int):
        return [value]
    try:
        ids = list(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer or a list of integers, got {value!r}") from None
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int):
            raise ValueError(f"{name} must hold integers, got {i!r}")
    return ids


@dataclass
class GenerationConfig:
    """How to continue a prompt.

    max_new_tokens: int, or one int per row of the batch.
    min_new_tokens: EOS ids are suppressed until a row has this many new tokens.
    temperature: 0 is greedy; > 0 samples from softmax(logits / temperature).
    top_k, top_p, min_p: keep the k most likely tokens / the smallest set whose probability
        reaches top_p / tokens at least min_p times as likely as the most likely one.
    repetition_penalty: CTRL's penalty on every token already in the prompt or output
        (logit / p if positive, logit * p if negative); 1 is off.
    presence_penalty, frequency_penalty: OpenAI's, on tokens already generated:
        logit - presence * (count > 0) - frequency * count; 0 is off.
    eos_token_id: one id or several; a row that emits one is finished.
    pad_token_id: fills a finished row's later positions (default: the first EOS id, else 0).
    stop_strings: a row is finished once its generated text contains one; matched across
        token boundaries and cut from the returned text.
    seed: seeds a fresh torch.Generator (or pass `generator=` to generate).
    """

    max_new_tokens: int | list[int] | None = None
    min_new_tokens: int = 0
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    stop_strings: str | list[str] | None = None
    seed: int | None = None
    extra: dict = field(default_factory=dict, repr=False)  # HF fields kept for round trips

    # -- checks ----------------------------------------------------------------------------
    def validate(self, vocab_size: int | None = None, batch_size: int | None = None) -> None:
        """Raise ValueError naming the first bad value."""
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise ValueError(f"temperature must be a finite number >= 0 (0 is greedy), got {t!r}")
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int)
                                       or self.top_k < 1):
            raise ValueError(f"top_k must be an integer >= 1 (or None for off), got {self.top_k!r}")
        if self.top_p is not None and not (isinstance(self.top_p, (int, float)) and 0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1] (or None for off), got {self.top_p!r}")
        if self.min_p is not None and not (isinstance(self.min_p, (int, float)) and 0.0 <= self.min_p <= 1.0):
            raise ValueError(f"min_p must be in [0, 1] (or None for off), got {self.min_p!r}")
        rp = self.repetition_penalty
        if not isinstance(rp, (int, float)) or not math.isfinite(rp) or rp <= 0:
            raise ValueError(f"repetition_penalty must be a finite number > 0 (1 is off), got {rp!r}")
        for name in ("presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number (0 is off), got {v!r}")
        if isinstance(self.min_new_tokens, bool) or not isinstance(self.min_new_tokens, int) \
                or self.min_new_tokens < 0:
            raise ValueError(f"min_new_tokens must be an integer >= 0, got {self.min_new_tokens!r}")
        if self.max_new_tokens is not None:
            self.max_new_tokens_per_row(batch_size if batch_size is not None else self._rows())
        named = [("eos_token_id", i) for i in self.eos_token_ids()]
        if self.pad_token_id is not None:
            named.append(("pad_token_id", self.pad_token_id))
        if vocab_size is not None:
            for name, i in named:
                if not 0 <= i < vocab_size:
                    raise ValueError(f"{name} {i} is outside the vocabulary [0, {vocab_size})")
        self.stop_string_list()
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")

    def _rows(self) -> int:
        m = self.max_new_tokens
        return 1 if isinstance(m, int) or m is None else len(list(m))

    def max_new_tokens_per_row(self, batch_size: int) -> list[int]:
        m = self.max_new_tokens
        if m is None:
            raise ValueError("max_new_tokens is not set")
        if isinstance(m, bool):
            raise ValueError(f"max_new_tokens must be an integer >= 0, got {m!r}")
        if not isinstance(m, (int, list, tuple)):
            raise ValueError(f"max_new_tokens must be an integer >= 0 (or one per row), got {m!r}")
        per_row = [m] * batch_size if isinstance(m, int) else list(m)
        if len(per_row) != batch_size:
            raise ValueError(f"max_new_tokens has {len(per_row)} values for a batch of {batch_size} rows")
        for v in per_row:
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"max_new_tokens must be an integer >= 0 (or one per row), got {m!r}")
        return per_row

    def eos_token_ids(self) -> list[int]:
        return _as_id_list(self.eos_token_id, "eos_token_id")

    def resolved_pad_token_id(self) -> int:
        if self.pad_token_id is not None:
            return self.pad_token_id
        eos = self.eos_token_ids()
        return eos[0] if eos else 0

    def stop_string_list(self) -> list[str]:
        s = self.stop_strings
        if s is None:
            return []
        items = [s] if isinstance(s, str) else list(s)
        for x in items:
            if not isinstance(x, str) or not x:
                raise ValueError(f"stop_strings must be non-empty strings, got {x!r}")
        return items

    def replace(self, **changes) -> "GenerationConfig":
        """A copy with some fields changed; unknown names raise TypeError."""
        return dataclasses.replace(self, **changes)

    # -- Hugging Face generation_config.json -----------------------------------------------
    @classmethod
    def from_hf_dict(cls, d: dict, source: str = "generation config") -> "GenerationConfig":
        sample = bool(d.get("do_sample", False))
        kwargs = {}
        if sample:
            kwargs["temperature"] = float(d["temperature"]) if d.get("temperature") is not None else 1.0
            top_k = d.get("top_k", 50)
            kwargs["top_k"] = top_k if top_k else None  # HF: 0 or None is off
            top_p = d.get("top_p")
            kwargs["top_p"] = None if top_p is None or top_p == 1.0 else top_p
            min_p = d.get("min_p")
            kwargs["min_p"] = min_p if min_p else None
        for name in ("max_new_tokens", "min_new_tokens", "repetition_penalty", "presence_penalty",
                     "frequency_penalty", "eos_token_id", "pad_token_id", "stop_strings", "seed"):
            if d.get(name) is not None:
                kwargs[name] = d[name]
        for name, off in _UNSUPPORTED_HF.items():
            if d.get(name, off) not in (off, None, [], {}):
                warnings.warn(f"{source}: {name}={d[name]!r} is not supported and is ignored", stacklevel=3)
        known = {f.name for f in dataclasses.fields(cls)} | {"do_sample", "temperature", "top_k", "top_p", "min_p"}
        extra = {k: v for k, v in d.items() if k not in known}
        cfg = cls(**kwargs, extra=extra)
        try:
            cfg.validate()
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from e
        return cfg

    def to_hf_dict(self) -> dict:
        d = dict(self.extra)
        d["do_sample"] = self.temperature > 0
        if self.temperature > 0:
            d["temperature"] = self.temperature
            d["top_k"] = self.top_k if self.top_k is not None else 0
            d["top_p"] = self.top_p if self.top_p is not None else 1.0
            if self.min_p is not None:
                d["min_p"] = self.min_p
        for name in ("max_new_tokens", "eos_token_id", "pad_token_id", "stop_strings", "seed"):
            if getattr(self, name) is not None:
                d[name] = getattr(self, name)
        if self.min_new_tokens:
            d["min_new_tokens"] = self.min_new_tokens
        if self.repetition_penalty != 1.0:
            d["repetition_penalty"] = self.repetition_penalty
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                d[name] = getattr(self, name)
        return d

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "GenerationConfig":
        """Read `generation_config.json` from a model folder (or the file itself); without
        one, take the EOS id from `config.json`; without either, the defaults."""
        p = Path(path)
        file = p if p.is_file() else p / "generation_config.json"
        if file.is_file():
            try:
                d = json.loads(file.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{file}: not valid JSON ({e})") from e
            if not isinstance(d, dict):
                raise ValueError(f"{file}: expected a JSON object")
            return cls.from_hf_dict(d, source=str(file))
        model_config = p / "config.json"
        if model_config.is_file():
            d = json.loads(model_config.read_text())
            if d.get("eos_token_id") is not None:
                return cls(eos_token_id=d["eos_token_id"])
        return cls()

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write `generation_config.json` into folder `path` (atomically)."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "generation_config.json",
                          json.dumps(self.to_hf_dict(), indent=2, sort_keys=True) + "\n")
