"""Training checkpoints: written atomically, read with `weights_only=True`.

A checkpoint is one `torch.save` file `ckpt-<step>.pt` holding only tensors and plain
Python values (dicts, lists, numbers, strings), so `torch.load(weights_only=True)` reads it
and no pickle ever runs code. It is written to a temporary file in the same folder,
fsynced, then renamed over its name (and the folder fsynced): a failed write (a full disk)
leaves the previous checkpoints and no temporary file; a crash mid-write leaves a stray
temporary file, never a half-written `ckpt-*.pt`. The newest `keep` checkpoints are kept.

A sharded checkpoint (`llm.training.run_state`) is a folder `ckpt-<step>.dcp` instead:
torch.distributed.checkpoint's files (the model and optimizer, each rank's shards) and
`train_state.pt` (the rest, as above); it too is written under a temporary name and renamed
into place whole. `load_checkpoint` of such a folder returns the train state, with
"sharded" set to the folder.

A temporary file's name carries the writer's host and PID
(`.ckpt-<step>.pt.<host>.<pid>.<random>.tmp`): pruning deletes only those of processes of
this host that no longer run, never a file another process is writing.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import socket
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..fileio import file_mode, fsync_dir, writing

CHECKPOINT_FORMAT = "llm-train-checkpoint"
CHECKPOINT_VERSION = 1
_NAME = re.compile(r"^ckpt-(\d+)\.(pt|dcp)$")
_TEMP = re.compile(r"^\.ckpt-\d+\.(pt|dcp)\.(?P<host>[^.]*)\.(?P<pid>\d+)\.[^.]+\.tmp$")
TRAIN_STATE = "train_state.pt"  # in a sharded checkpoint's folder


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or not one of ours."""


def checkpoint_name(step: int, sharded: bool = False) -> str:
    return f"ckpt-{step:08d}.{'dcp' if sharded else 'pt'}"


def list_checkpoints(folder: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of the checkpoints in `folder` (files and sharded folders), oldest first;
    temporary ones excluded."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _NAME.match(p.name)
        if m and (p.is_file() if m.group(2) == "pt" else (p / TRAIN_STATE).is_file()):
            found.append((int(m.group(1)), p))
    return sorted(found)


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write `state` to `path` atomically (temporary file, fsync, rename).

    An OSError names the checkpoint and the cause ("cannot write <path>: No space left on
    device"), also where torch.save buries it under its own error.
    """
    path = Path(path)
    state = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    tmp = None
    try:
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path), suffix=".tmp")
            with open(fd, "wb") as fh:
                torch.save(state, fh)
                fh.flush()
                os.fchmod(fh.fileno(), file_mode())  # mkstemp makes it private
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            tmp = None
    finally:
        if tmp is not None:
            try:
                os.remove(tmp)
            except OSError:
                pass
    fsync_dir(path.parent)
    return path


def temp_prefix(path: Path) -> str:
    """The start of the name of a temporary file or folder that becomes `path`."""
    return f".{path.name}.{_host()}.{os.getpid()}."


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint with weights_only=True; a clear CheckpointError when it cannot.
    Of a sharded checkpoint's folder: the train state, with "sharded" = the folder."""
    path = Path(path)
    if path.is_dir() and path.suffix == ".dcp":
        return {**load_checkpoint(path / TRAIN_STATE, map_location), "sharded": path}
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, disallowed global
        raise CheckpointError(f"cannot read checkpoint {path}: corrupt or truncated ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a training checkpoint of this package")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {state.get('version')!r}, this package reads {CHECKPOINT_VERSION}"
        )
    return state


def prune_checkpoints(folder: str | os.PathLike, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints, and the temporary files of writers
    that died (this host's processes that no longer run)."""
    folder = Path(folder)
    for _, p in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        remove_checkpoint(p)
    for p in folder.glob(".ckpt-*.tmp"):
        m = _TEMP.match(p.name)
        if m and m["host"] == _host() and not _process_runs(int(m["pid"])):
            remove_checkpoint(p)


def remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint file or a sharded checkpoint's folder."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _host() -> str:
    return socket.gethostname().replace(".", "_") or "host"


def _process_runs(pid: int) -> bool:
    if pid == os.getpid():
        return True  # a write of this process (another thread's) may be in flight
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


# -- random number generator states, as tensors and plain values -------------------------


def rng_state() -> dict:
    """The states of torch (CPU and CUDA), Python's and NumPy's global generators."""
    version, mt, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": [version, torch.tensor(mt, dtype=torch.int64), gauss],
        "numpy": [np_kind, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos),
                  int(np_has_gauss), float(np_gauss)],
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(int(x) for x in mt.tolist()), gauss))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
