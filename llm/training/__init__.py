"""Training: `train()` and its settings, data, checkpoints and evaluation.

    config.py      TrainConfig (every training setting, with its help text), RESUME_MAY_CHANGE
    plan.py        the model, resolved settings and data of a run, fresh or resumed
    trainer.py     train(): the loop, checkpoints, Ctrl-C, time limit, NaN stop
    optim.py       AdamW parameter groups, the warmup + cosine schedule
    evaluation.py  validation loss, bf16 autocast
    progress.py    log lines, progress bar, loss.png
    data.py        token sources, the token cache, windows, resumable sampling
    corpus.py      the built-in corpus (the local Python installation's documentation)
    checkpoint.py  atomic, weights-only checkpoints and RNG states

The names below are loaded on first use, so that `llm.training.config` (all the command
line needs to build its flags) imports without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# public name -> the module defining it
_EXPORTS = {
    "train": "trainer", "TrainResult": "trainer",
    "NonFiniteLossError": "trainer", "TrainingInterrupted": "trainer",
    "TrainConfig": "config", "RESUME_MAY_CHANGE": "config", "DTYPES": "config",
    "evaluate": "evaluation", "autocast_context": "evaluation",
    "param_groups": "optim", "lr_factor": "optim",
    "write_loss_plot": "progress",
    "CheckpointError": "checkpoint", "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint", "list_checkpoints": "checkpoint",
    "TokenData": "data", "WindowDataset": "data", "load_tokens": "data",
    "split_tokens": "data", "make_loader": "data",
    "build_corpus": "corpus",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:  # AttributeError lets `from llm.training import data` find the module
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:
    from .checkpoint import CheckpointError, list_checkpoints, load_checkpoint, save_checkpoint
    from .config import DTYPES, RESUME_MAY_CHANGE, TrainConfig
    from .corpus import build_corpus
    from .data import TokenData, WindowDataset, load_tokens, make_loader, split_tokens
    from .evaluation import autocast_context, evaluate
    from .optim import lr_factor, param_groups
    from .progress import write_loss_plot
    from .trainer import NonFiniteLossError, TrainingInterrupted, TrainResult, train
