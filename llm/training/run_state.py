"""The model and optimizer of a run in its checkpoints, on any number of processes.

Two formats; each resumes on any number of processes, with or without a wrapper:

- consolidated: `ckpt-<step>.pt` (`llm.training.checkpoint`), written by rank 0 alone and
  the same file one process writes: the whole model state dict and the optimizer's (keyed
  by parameter index). Under FSDP the shards are gathered into it (onto rank 0's CPU), and a
  resume shards them again; DDP's replicas are all alike, so rank 0's is the state.
- sharded: a folder `ckpt-<step>.dcp` written with torch.distributed.checkpoint (DCP):
  every rank writes its own shards (a replicated tensor once) into a temporary folder; rank
  0 then adds `train_state.pt` (everything but the model and optimizer) and renames the
  folder into place. DCP reads any layout into any other, so a sharded checkpoint resumes
  on another number of processes too, one included (no process group needed). On several
  machines the output folder must be one file system they all see.

A failed write on rank 0 ends every rank: they agree on it before going on.

torch.distributed.checkpoint takes seconds to import: it is imported by the runs that use
it (FSDP, sharded checkpoints), never by a run of one process with consolidated ones.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn

from ..fileio import fsync_dir, writing
from .checkpoint import TRAIN_STATE, remove_checkpoint, save_checkpoint, temp_prefix
from .distributed import DistributedError, World, any_rank, broadcast

class RunState:
    """Saves and restores `model` (the job's, inside its wrapper) and `optimizer`.

    `fsdp`: the parameters are FSDP2 shards. `state_dict` / `load_state_dict`: the job's own
    view of the model's state (a part of it), for consolidated checkpoints without FSDP.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, world: World, fsdp: bool,
                 state_dict=None, load_state_dict=None):
        self.model, self.optimizer, self.world, self.fsdp = model, optimizer, world, fsdp
        self.own = (state_dict, load_state_dict) if state_dict is not None else None
        if self.own and fsdp:
            raise ValueError("this run checkpoints a part of the model, which FSDP cannot gather; use --parallel ddp")

    def save(self, meta: dict, path: Path) -> Path:
        """Write a checkpoint at `path` (`.pt`: consolidated, `.dcp`: sharded) holding `meta`
        (rank 0's) and the model and optimizer. Every rank calls it."""
        if path.suffix == ".dcp":
            if self.own:
                raise ValueError("this run checkpoints a part of the model: use checkpoint_format consolidated")
            return self._save_sharded(meta, path)
        model_state, optimizer_state = self._full_states()
        error = None
        if self.world.is_main:
            try:
                save_checkpoint({**meta, "model": model_state, "optimizer": optimizer_state}, path)
            except OSError as e:
                error = e
        self._agree(error, path)
        return path

    def restore(self, state: dict) -> None:
        """Load the model and optimizer of a checkpoint read by `load_checkpoint`."""
        if state.get("sharded") is not None:
            self._load_sharded(Path(state["sharded"]))
        elif self.fsdp:
            from torch.distributed.checkpoint import state_dict as api  # heavy: see the module doc

            full = api.StateDictOptions(full_state_dict=True)
            api.set_model_state_dict(self.model, state["model"], options=full)
            api.set_optimizer_state_dict(self.model, self.optimizer, _by_name(state["optimizer"], self._names()),
                                         options=full)
        else:
            (self.own[1] if self.own else self.model.load_state_dict)(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])

    # -- consolidated ----------------------------------------------------------------------------

    def _full_states(self) -> tuple[dict | None, dict | None]:
        """(model, optimizer) state dicts in the one-process layout, on rank 0 (None elsewhere)."""
        if self.fsdp:  # a collective: every rank gathers, rank 0 keeps
            from torch.distributed.checkpoint import state_dict as api

            full = api.StateDictOptions(full_state_dict=True, cpu_offload=True)
            model_state = api.get_model_state_dict(self.model, options=full)
            optimizer_state = api.get_optimizer_state_dict(self.model, self.optimizer, options=full)
            if not self.world.is_main:
                return None, None
            return model_state, _by_index(optimizer_state, self._names())
        if not self.world.is_main:
            return None, None
        return (self.own[0] if self.own else self.model.state_dict)(), self.optimizer.state_dict()

    def _names(self) -> list[str]:
        """The names of the optimizer's parameters, in its order (= the index keys)."""
        names = {id(p): n for n, p in self.model.named_parameters()}
        return [names[id(p)] for group in self.optimizer.param_groups for p in group["params"]]

    def _agree(self, error: OSError | None, path: Path) -> None:
        if any_rank([error is not None], self.world)[0]:
            if error is not None:
                raise error
            raise DistributedError(f"rank {self.world.rank}: stopping: rank 0 could not write {path} (see its error)")

    # -- sharded ---------------------------------------------------------------------------------

    def _sharded_states(self) -> dict:
        from torch.distributed.checkpoint import state_dict as api

        return {"model": api.get_model_state_dict(self.model),
                "optimizer": api.get_optimizer_state_dict(self.model, self.optimizer)}

    def _save_sharded(self, meta: dict, path: Path) -> Path:
        import torch.distributed.checkpoint as dcp

        tmp = None
        if self.world.is_main:
            with writing(path):
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = tempfile.mkdtemp(dir=path.parent, prefix=temp_prefix(path), suffix=".tmp")
        tmp = Path(broadcast(tmp, self.world))
        error = None
        try:
            with writing(path), _one_process_is_intended():
                dcp.save(self._sharded_states(), checkpoint_id=tmp)  # every rank: its shards
                if self.world.is_main:
                    save_checkpoint(meta, tmp / TRAIN_STATE)
                    os.replace(tmp, path)
                    fsync_dir(path.parent)
        except OSError as e:
            error = e
            if self.world.is_main:
                remove_checkpoint(tmp)
        self._agree(error, path)
        return path

    def _load_sharded(self, folder: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint import state_dict as api

        states = self._sharded_states()  # the layout to read into: this run's shards
        try:
            with _one_process_is_intended():
                dcp.load(states, checkpoint_id=folder)
        except Exception as e:  # DCP wraps each rank's error
            raise ValueError(f"cannot read the sharded checkpoint {folder}: {str(e).strip()[:300]}") from e
        api.set_model_state_dict(self.model, states["model"])
        api.set_optimizer_state_dict(self.model, self.optimizer, states["optimizer"])


@contextmanager
def _one_process_is_intended():
    """Without a process group DCP reads and writes as one process, which is what a run of
    one process wants: its warning saying so is dropped."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is (disabled|unavailable)")
        yield


def _by_index(state: dict, names: list[str]) -> dict:
    """An optimizer state dict keyed by parameter name -> keyed by index (Optimizer's own)."""
    index = {n: i for i, n in enumerate(names)}
    return {"state": {index[n]: v for n, v in state["state"].items()},
            "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]]}


def _by_name(state: dict, names: list[str]) -> dict:
    """The inverse of `_by_index`."""
    return {"state": {names[i]: v for i, v in state["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]}

