"""The settings of a fine-tuning run, one place each: `ClassifyConfig` and `InstructConfig`
share `FinetuneConfig` (the loop, what trains, LoRA) and add their data settings.

Every field carries its help text in `metadata["help"]`; `llm finetune classify|instruct`
derive their flags from them as `llm train` does from `TrainConfig`. The defaults are the
book's ("Build a Large Language Model (From Scratch)", chapters 6 and 7): AdamW at a constant
5e-5 with weight decay 0.1, batch size 8, seed 123; 5 epochs training the last block, the
final norm and the head for classification; 2 epochs training everything for instructions.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..training.config import DTYPES, check_device, setting
from .lora import TARGETS, LoRAConfig

TRAIN_CHOICES = ("head", "last-k", "all", "lora")

# Settings that may differ when a run is resumed: none changes a loss already in the history
# (`epochs` / `steps` move the end, the schedule being constant by default; `max_new_tokens`
# only shapes the answers written after training).
RESUME_MAY_CHANGE = {"epochs", "steps", "device", "eval_every", "checkpoint_every", "keep_checkpoints",
                     "max_seconds", "max_new_tokens"}


@dataclass
class FinetuneConfig:
    """Settings shared by both fine-tunings. None defaults are filled by `resolved`."""

    train: str = setting("last-k", "what trains: head (the new head only), last-k (the last k blocks, "
                         "the final norm and the head), all, lora (adapters, and a classifier's head)",
                         choices=TRAIN_CHOICES)
    k: int = setting(1, "blocks trained with --train last-k")
    lora_r: int = setting(16, "LoRA rank")
    lora_alpha: float = setting(16.0, "LoRA alpha: the adapter term is scaled by alpha / r")
    lora_dropout: float = setting(0.0, "dropout on the LoRA adapters' input")
    lora_targets: str = setting("c_attn,c_proj,c_fc", f"layers that get adapters, comma-separated, of {TARGETS} "
                                "(c_proj: both attn.c_proj and mlp.c_proj)")
    epochs: float = setting(5.0, "passes over the training split (may be fractional)")
    steps: int | None = setting(None, "optimizer steps (default: epochs x batches per epoch)")
    batch_size: int = setting(8, "examples per micro-batch")
    grad_accum: int = setting(1, "micro-batches per optimizer step")
    lr: float = setting(5e-5, "peak learning rate")
    warmup_steps: int = setting(0, "linear warmup steps")
    min_lr_ratio: float = setting(1.0, "cosine decay to lr * min_lr_ratio after warmup; 1 keeps lr constant")
    weight_decay: float = setting(0.1, "AdamW weight decay of the linear weights")
    beta1: float = setting(0.9, "AdamW beta1")
    beta2: float = setting(0.999, "AdamW beta2")
    grad_clip: float = setting(1.0, "max global gradient norm, 0 for none")
    max_length: int | None = setting(None, "tokens per example at most (default: the longest training "
                                     "example, up to the model's n_positions)")
    dropout: float | None = setting(None, "dropout of the model (attention, residual, embedding; default: "
                                    "its config.json's)")
    eval_every: int | None = setting(None, "steps between evaluations (default: about ten per run)")
    eval_batches: int | None = setting(None, "validation batches per evaluation (default: the whole split)")
    checkpoint_every: int | None = setting(None, "steps between checkpoints (default: eval_every)")
    keep_checkpoints: int = setting(2, "checkpoints kept", aliases=("--keep",))
    seed: int = setting(123, "seed of the split, the new weights, dropout and data order")
    max_seconds: float | None = setting(
        None, "stop and save at the first step boundary after this many seconds")
    dtype: str = setting("float32", "bfloat16: autocast; weights and optimizer stay float32",
                         choices=tuple(DTYPES))
    device: str = setting("cpu", "cpu or cuda")

    def __post_init__(self):
        if self.train not in TRAIN_CHOICES:
            raise ValueError(f"train must be one of {TRAIN_CHOICES}, got {self.train!r}")
        for name in ("k", "batch_size", "grad_accum", "keep_checkpoints", "lora_r"):
            _positive_int(name, getattr(self, name))
        for name in ("steps", "max_length", "eval_every", "eval_batches", "checkpoint_every"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        if not (isinstance(self.epochs, (int, float)) and 0 < self.epochs < math.inf):
            raise ValueError(f"epochs must be a positive number, got {self.epochs!r}")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < 1):
            raise ValueError(f"lr must be in (0, 1), got {self.lr!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("weight_decay and grad_clip must be >= 0")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError("beta1 and beta2 must be in [0, 1)")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0, got {self.max_seconds!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        check_device(self.device, available=False)  # a resumed run may move to another machine
        self.lora_config()  # checks the LoRA settings

    def lora_config(self) -> LoRAConfig:
        return LoRAConfig(self.lora_r, self.lora_alpha, self.lora_dropout, LoRAConfig.parse_targets(self.lora_targets))

    def resolved(self, steps_per_epoch: int) -> "FinetuneConfig":
        """A copy with every None default filled in (`steps_per_epoch`: optimizer steps)."""
        steps = self.steps or max(1, math.ceil(self.epochs * steps_per_epoch))
        eval_every = self.eval_every or max(1, steps // 10)
        return dataclasses.replace(self, steps=steps, eval_every=eval_every,
                                   checkpoint_every=self.checkpoint_every or eval_every)


@dataclass
class ClassifyConfig(FinetuneConfig):
    text_column: str = setting("text", "the text's column (CSV, TSV) or field (JSONL)")
    label_column: str = setting("label", "the label's column or field")
    format: str = setting("auto", "data format: csv, tsv, jsonl, sms (the SMS Spam Collection's "
                          "'label<TAB>text' lines); auto: by the file's extension, sms without one",
                          choices=("auto", "csv", "tsv", "jsonl", "sms"))
    balance: str = setting("none", "downsample: every class cut to the size of the smallest (seeded)",
                           choices=("none", "downsample"))
    split: str = setting("0.7,0.1,0.2", "train,validation,test fractions of a stratified split "
                         "(when no --val-data / --test-data files are given)")
    class_weights: str = setting("none", "loss weights per class: none, balanced (n / (classes x count)), "
                                 "or one number per label, comma-separated, in label order")

    def __post_init__(self):
        super().__post_init__()
        parse_fractions(self.split, 3)


@dataclass
class InstructConfig(FinetuneConfig):
    train: str = setting("all", "what trains: all, last-k (the last k blocks and the final norm), "
                         "lora (adapters)", choices=("all", "last-k", "lora"))
    epochs: float = setting(2.0, "passes over the training split (may be fractional)")
    template: str = setting("alpaca", "prompt template: alpaca, phi3, or a string with {instruction}, "
                            "{input} and, at its end, {output}")
    prompt_loss: str = setting("keep", "mask: the prompt's tokens (instruction and input) are not "
                               "targets; keep: they are", choices=("keep", "mask"))
    batch_order: str = setting("random", "by-length: batches of examples of similar length (less "
                               "padding), in random order", choices=("random", "by-length"))
    split: str = setting("0.85,0.05,0.1", "train,validation,test fractions of a random split "
                         "(when no --val-data / --test-data files are given)")
    max_new_tokens: int = setting(256, "tokens generated per answer for the test split (greedy)")

    def __post_init__(self):
        if self.train == "head":
            raise ValueError("train='head' is for classification; instruction tuning trains all, last-k or lora")
        super().__post_init__()
        _positive_int("max_new_tokens", self.max_new_tokens)
        parse_fractions(self.split, 3)


def _positive_int(name: str, v) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")


def parse_fractions(text: str, n: int) -> tuple[float, ...]:
    """"0.7,0.1,0.2" -> (0.7, 0.1, 0.2): n fractions >= 0 summing to 1, the first > 0."""
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != n or any(not 0 <= p <= 1 for p in parts) or parts[0] <= 0 or abs(sum(parts) - 1) > 1e-6:
        raise ValueError(f"split must be {n} comma-separated fractions summing to 1 (train first, > 0), "
                         f"got {text!r}")
    return parts
