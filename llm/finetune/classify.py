"""`GPTForSequenceClassification`: a GPT body and a `num_labels` head on the hidden state of
each row's last real token.

The last real token is found from the attention mask (the rightmost 1), and positions count
real tokens only, so a row gives the same logits unpadded, right padded or left padded. The
head is transformers' `score` (a Linear without bias) and runs through the op table's linear.

Saved as transformers saves `GPT2ForSequenceClassification`: model.safetensors (the body in
GPT-2's names and Conv1D layout, and `score.weight`) and config.json with `id2label`,
`label2id`, `pad_token_id` (<|endoftext|>, the padding) and `truncation_length` (the longest
input the head was trained on), so transformers loads the folder too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import weights
from ..config import GPTConfig
from ..fileio import file_mode, replace_folder
from ..model import GPT
from ..tokenizer import EOT_TOKEN
from .classify_data import encode_texts, pad_right
from .lora import lora_layers

ARCHITECTURE = "GPT2ForSequenceClassification"


class GPTForSequenceClassification(nn.Module):
    """`gpt` (its lm_head unused) with `score` [num_labels, n_embd]; labels in id order."""

    def __init__(self, gpt: GPT, labels: Sequence[str], truncation_length: int | None = None):
        super().__init__()
        labels = [str(x) for x in labels]
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise ValueError(f"a classifier needs at least two distinct labels, got {labels}")
        self.gpt, self.labels = gpt, labels
        self.truncation_length = truncation_length  # texts are cut to this many tokens (None: n_positions)
        w = gpt.transformer.wte.weight
        self.score = nn.Linear(gpt.config.n_embd, len(labels), bias=False, device=w.device, dtype=w.dtype)
        nn.init.normal_(self.score.weight, std=0.02)  # transformers' initializer_range

    @property
    def config(self) -> GPTConfig:
        return self.gpt.config

    @property
    def backend(self) -> str:
        return self.gpt.backend

    def set_backend(self, backend: str | None) -> "GPTForSequenceClassification":
        self.gpt.set_backend(backend)
        return self

    # -- forward ---------------------------------------------------------------------------

    def forward(self, input_ids, attention_mask=None) -> torch.Tensor:
        """Logits [B, num_labels] of input_ids [B, T]; attention_mask [B, T] (1 real, 0
        padding; either side) or None (every token real)."""
        gpt = self.gpt
        input_ids, mask = gpt.check_inputs(input_ids, attention_mask)
        B, T = input_ids.shape
        steps = torch.arange(T, device=input_ids.device)
        if mask is None:
            positions, last, key_valid = steps[None], torch.full((B,), T - 1, device=input_ids.device), None
        else:
            if not bool(mask.any(dim=1).all()):
                raise ValueError("attention_mask has a row with no real token")
            positions = GPT.position_ids_from_mask(mask)
            last = (steps * mask).argmax(dim=1)  # the rightmost real token of each row
            key_valid = None if bool(mask.all()) else mask
        h = gpt.hidden_states(input_ids, positions, key_valid)  # (B, T, C)
        pooled = h[torch.arange(B, device=h.device), last]  # (B, C)
        return gpt.ops.linear(pooled, self.score.weight, None)

    def loss(self, input_ids, labels, attention_mask=None, class_weights=None) -> torch.Tensor:
        """Mean cross-entropy of the logits against labels [B] (ids), `class_weights` [num_labels]."""
        logits = self(input_ids, attention_mask)
        labels = torch.as_tensor(labels, device=logits.device).long().reshape(-1)
        if labels.shape[0] != logits.shape[0]:
            raise ValueError(f"{labels.shape[0]} labels for {logits.shape[0]} rows")
        if bool(((labels < 0) | (labels >= len(self.labels))).any()):
            raise ValueError(f"label ids must be in [0, {len(self.labels)})")
        if class_weights is not None:
            class_weights = class_weights.to(logits.device, torch.float32)
        return F.cross_entropy(logits.float(), labels, weight=class_weights)

    @torch.no_grad()
    def predict_proba(self, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        """Probabilities [N, num_labels] of texts (cut to `truncation_length` tokens)."""
        if isinstance(texts, str):
            texts = [texts]
        limit = min(self.truncation_length or self.config.n_positions, self.config.n_positions)
        rows = encode_texts(list(texts), limit)
        for i, r in enumerate(rows):
            if not r:
                raise ValueError(f"text {i} is empty")
        was_training = self.training
        self.eval()
        device = self.score.weight.device
        out = []
        for start in range(0, len(rows), batch_size):
            ids, mask = pad_right([torch.tensor(r) for r in rows[start:start + batch_size]], EOT_TOKEN)
            out.append(torch.softmax(self(ids.to(device), mask.to(device)).float(), dim=-1).cpu())
        self.train(was_training)
        return torch.cat(out)

    def predict(self, texts: Sequence[str], batch_size: int = 32) -> list[tuple[str, float]]:
        """(label, probability) of the most likely label of each text."""
        probs = self.predict_proba(texts, batch_size)
        p, i = probs.max(dim=-1)
        return [(self.labels[j], float(q)) for j, q in zip(i.tolist(), p)]

    # -- files -----------------------------------------------------------------------------

    def hf_config(self) -> dict:
        """config.json as transformers writes it for GPT2ForSequenceClassification."""
        d = self.config.to_hf_dict()
        d.update(architectures=[ARCHITECTURE], id2label={str(i): x for i, x in enumerate(self.labels)},
                 label2id={x: i for i, x in enumerate(self.labels)}, pad_token_id=EOT_TOKEN,
                 problem_type="single_label_classification", truncation_length=self.truncation_length)
        return d

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write model.safetensors and config.json into folder `path`, replacing its model as
        a whole (`llm.fileio.replace_folder`); other files in the folder are kept."""
        from safetensors.torch import save_file

        if lora_layers(self.gpt):
            raise ValueError("the model holds LoRA adapters: merge them in first (llm.finetune.lora.remove_lora)")
        sd = weights.state_dict_to_hf(self.gpt)
        sd["score.weight"] = self.score.weight.detach().contiguous().cpu()
        text = json.dumps(self.hf_config(), indent=2, sort_keys=True) + "\n"

        def write(folder: Path) -> None:
            save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
            os.chmod(folder / "model.safetensors", file_mode())
            (folder / "config.json").write_text(text)

        replace_folder(path, write, weights.MODEL_FILES)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, labels: Sequence[str] | None = None, backend: str | None = None,
                        dtype: torch.dtype | None = None, device=None) -> "GPTForSequenceClassification":
        """A saved classifier (its labels from config.json; `labels`, if given, must match),
        or any GPT-2 folder our engine loads with a new, seeded-random head for `labels`."""
        folder = weights.resolve_model_dir(path)
        config = GPTConfig.from_json(folder / "config.json")
        hf, source = weights.read_state_dict(folder)
        score = hf.pop("score.weight", None)
        if score is None:
            if labels is None:
                raise ValueError(f"{folder} holds no classification head (score.weight): pass the labels "
                                 f"to put a new one on it")
            model = cls(GPT.from_pretrained(folder), labels)
        else:
            saved = _saved_labels(config.extra, score.shape[0], folder / "config.json")
            if labels is not None and list(map(str, labels)) != saved:
                raise ValueError(f"{folder} classifies into {saved}, not {list(labels)}")
            with torch.device("meta"):
                gpt = GPT(config, backend="torch")
            weights.assign_weights(gpt, weights.hf_to_state_dict(hf, config, str(source)))
            model = cls(gpt, saved, config.extra.get("truncation_length"))
            shape = (len(saved), config.n_embd)
            model.score.weight = nn.Parameter(weights.checked_tensor(score, "score.weight", shape, str(source), False))
        model.to(device=device, dtype=dtype)
        return model.set_backend(backend).eval()


def _saved_labels(extra: dict, n: int, source: Path) -> list[str]:
    """The label names of a saved classifier's config.json (id2label), n of them."""
    id2label = extra.get("id2label")
    if not isinstance(id2label, dict):
        return [f"LABEL_{i}" for i in range(n)]  # transformers' names when none are given
    try:
        labels = [str(id2label[str(i)]) for i in range(n)]
    except KeyError:
        raise ValueError(f"{source}: id2label {id2label} does not name the {n} labels of score.weight") from None
    return labels
