"""Writes that fail (a full disk, a read-only folder): one clear error naming the file and
the cause, and the previous checkpoint and model as they were."""

import errno
import os

import pytest

from llm.cli import main
from llm.model import GPT
from llm.training import checkpoint as ckpt_mod
from llm.training import list_checkpoints, load_checkpoint, train
from llm.training import lock as lock_mod

RUN = dict(preset="tiny", steps=2, batch_size=2, context_length=16, lr=1e-3, val_fraction=0.0,
           checkpoint_every=1, seed=3, progress=False)
FLAGS = ["--preset", "tiny", "--batch-size", "2", "--context-length", "16", "--lr", "1e-3",
         "--val-fraction", "0", "--checkpoint-every", "1", "--seed", "3"]


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "t.txt"
    path.write_text("The quick brown fox jumps over the lazy dog, and the dog sleeps on. " * 40)
    return path


@pytest.fixture
def finished(text, tmp_path):
    """A finished two-step run and a snapshot of its folder."""
    out = tmp_path / "run"
    train(text, out, **RUN)
    return out, snapshot(out)


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class FullDisk:
    """A file whose writes fail with ENOSPC once `room` bytes are written."""

    def __init__(self, fh, room: int):
        self.fh, self.room = fh, room

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.fh.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()

    def __getattr__(self, name):
        return getattr(self.fh, name)


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(text, finished, monkeypatch, capsys):
    out, before = finished
    monkeypatch.setattr(ckpt_mod, "open", lambda *a, **k: FullDisk(open(*a, **k), room=50_000), raising=False)
    rc = main(["train", "--data", str(text), "--out", str(out), "--resume", "--steps", "4"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    target = out / "checkpoints" / "ckpt-00000003.pt"
    assert err.splitlines()[-1] == f"error: cannot write {target}: No space left on device"
    # the previous checkpoints and the model as they were, no temporary file; only the loss
    # plot shows the step that was computed
    after = snapshot(out)
    assert {k: v for k, v in after.items() if k != "loss.png"} == {k: v for k, v in before.items() if k != "loss.png"}
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["ckpt-00000001.pt", "ckpt-00000002.pt"]
    monkeypatch.undo()
    GPT.from_pretrained(out)
    assert train(text, out, **{**RUN, "steps": 3}, resume=True).step == 3  # the space is back


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_unwritable_output_folder_is_one_line(text, finished, monkeypatch, capsys, code):
    out, before = finished
    real_open = os.open

    def refuse_lock(path, *args, **kwargs):
        if str(path).endswith(lock_mod.LOCK_NAME):
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(lock_mod.os, "open", refuse_lock)
    assert main(["train", "--data", str(text), "--out", str(out), "--resume", "--steps", "4"]) == 2
    assert capsys.readouterr().err == f"error: cannot write to {out}: {os.strerror(code)}\n"
    assert snapshot(out) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder: see the injected EROFS test")
def test_read_only_output_folder(text, finished, capsys):
    out, before = finished
    os.chmod(out, 0o555)
    try:
        assert main(["train", "--data", str(text), "--out", str(out), "--resume", "--steps", "4"]) == 2
    finally:
        os.chmod(out, 0o755)
    assert capsys.readouterr().err == f"error: cannot write to {out}: Permission denied\n"
    assert snapshot(out) == before


def test_out_that_is_a_file_or_under_one(text, tmp_path, capsys):
    path = tmp_path / "a_file"
    path.write_text("mine")
    assert main(["train", "--data", str(text), "--out", str(path), *FLAGS]) == 2
    assert capsys.readouterr().err == f"error: output folder {path} exists and is not a folder\n"
    assert main(["train", "--data", str(text), "--out", str(path / "sub"), *FLAGS]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write to {path / 'sub'}: ") and err.count("\n") == 1, err
    assert path.read_text() == "mine"


def test_failed_checkpoint_write_through_the_api(tmp_path, monkeypatch):
    path = tmp_path / "ckpt-00000001.pt"
    ckpt_mod.save_checkpoint({"step": 1}, path)
    monkeypatch.setattr(ckpt_mod, "open", lambda *a, **k: FullDisk(open(*a, **k), room=10), raising=False)
    with pytest.raises(OSError, match=f"cannot write {path}: No space left on device") as info:
        ckpt_mod.save_checkpoint({"step": 2}, path)
    assert info.value.errno == errno.ENOSPC
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    assert load_checkpoint(path)["step"] == 1 and [s for s, _ in list_checkpoints(tmp_path)] == [1]
