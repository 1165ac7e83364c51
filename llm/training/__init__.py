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
    distributed.py processes under torchrun: DDP / FSDP2 wrapping, data shards, collectives
    run_state.py   the model and optimizer in checkpoints, consolidated or sharded, any world size
"""

from .checkpoint import CheckpointError, list_checkpoints, load_checkpoint, save_checkpoint
from .config import DTYPES, RESUME_MAY_CHANGE, ParallelSettings, TrainConfig
from .corpus import build_corpus
from .data import TokenData, WindowDataset, load_tokens, make_loader, split_tokens
from .distributed import DistributedError
from .evaluation import autocast_context, evaluate
from .optim import lr_factor, param_groups
from .progress import write_loss_plot
from .trainer import NonFiniteLossError, TrainingInterrupted, TrainResult, train

__all__ = ["CheckpointError", "DTYPES", "DistributedError", "NonFiniteLossError", "ParallelSettings",
           "RESUME_MAY_CHANGE", "TokenData", "TrainConfig",
           "TrainResult", "TrainingInterrupted", "WindowDataset", "autocast_context", "build_corpus", "evaluate",
           "list_checkpoints", "load_checkpoint", "lr_factor", "make_loader", "param_groups", "save_checkpoint",
           "split_tokens", "train", "write_loss_plot"]
