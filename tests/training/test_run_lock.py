"""One training run per output folder (a lock file held for the run's life), and checkpoint
temporary files that only their writer, or nobody left, deletes."""

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from llm.cli import main
from llm.training import checkpoint as ckpt_mod
from llm.training import list_checkpoints, load_checkpoint, train
from llm.training.lock import LOCK_NAME, FolderInUseError, run_lock

ROOT = Path(__file__).resolve().parents[2]
RUN = dict(preset="tiny", steps=2, batch_size=2, context_length=16, lr=1e-3, val_fraction=0.0,
           checkpoint_every=1, seed=3, progress=False)
HOLD = """
import sys, time
from llm.training.lock import run_lock
sys.stdin.readline()
with run_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "t.txt"
    path.write_text("The quick brown fox jumps over the lazy dog, and the dog sleeps on. " * 40)
    return path


def snapshot(folder: Path) -> dict:
    """Every file under `folder` but a lock file: relative path -> bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != LOCK_NAME}


@pytest.fixture
def holder():
    """`holder(folder)`: a process that takes the training lock of `folder` on `.lock()`."""
    procs = []

    class Holder:
        def __init__(self, folder):
            self.proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=ROOT, text=True,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            self.pid = self.proc.pid
            procs.append(self.proc)

        def lock(self):
            self.proc.stdin.write("go\n")
            self.proc.stdin.flush()
            assert self.proc.stdout.readline() == "locked\n"
            return self

    yield Holder
    for proc in procs:
        proc.kill()
        proc.wait()


def test_second_run_into_a_folder_in_use_fails_at_once(text, tmp_path, holder, capsys):
    out = tmp_path / "run"
    other = holder(out)  # started now: its imports overlap the first run
    train(text, out, **RUN)
    assert not (out / LOCK_NAME).exists()  # removed when the run ends
    before = snapshot(out)
    proc = other.lock().proc

    # the command line: one line naming the folder and the process, exit code 2
    assert main(["train", "--data", str(text), "--out", str(out), "--preset", "tiny", "--steps", "2",
                 "--context-length", "16", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(out) in err and f"process {proc.pid}" in err, err
    with pytest.raises(FolderInUseError, match=f"process {proc.pid}") as info:
        train(text, out, **{**RUN, "steps": 4}, resume=True)
    assert info.value.pid == proc.pid
    assert snapshot(out) == before  # nothing of the first run touched
    assert (out / LOCK_NAME).read_text() == f"{proc.pid}\n"

    proc.send_signal(signal.SIGKILL)  # a killed holder's lock goes with it
    proc.wait()
    result = train(text, out, **{**RUN, "steps": 3}, resume=True)
    assert result.step == 3 and load_checkpoint(list_checkpoints(out / "checkpoints")[-1][1])["step"] == 3


def test_a_thread_of_the_same_process_is_refused_too(text, tmp_path):
    out = tmp_path / "run"
    held, release = threading.Event(), threading.Event()

    def hold():
        with run_lock(out):
            held.set()
            release.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert held.wait(30)
        with pytest.raises(FolderInUseError, match=f"process {os.getpid()}"):
            train(text, out, **RUN)
    finally:
        release.set()
        thread.join()
    assert not out.exists()  # made by the lock, removed with it: the run wrote nothing
    train(text, out, **RUN)  # free again


def test_a_run_that_cannot_start_leaves_no_folder_or_lock(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("too short to train on")
    out = tmp_path / "new"
    with pytest.raises(ValueError, match="fewer than one training window"):
        train(short, out, **RUN)
    assert not out.exists()


def test_pruning_deletes_only_the_temporary_files_of_dead_writers(tmp_path, holder):
    folder = tmp_path / "checkpoints"
    ckpt_mod.save_checkpoint({"step": 1}, folder / "ckpt-00000001.pt")
    live = holder(tmp_path / "other").pid  # a process that runs
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = ckpt_mod._host()
    names = {
        "live": f".ckpt-00000002.pt.{host}.{live}.abc123.tmp",  # being written by another run
        "dead": f".ckpt-00000002.pt.{host}.{dead.pid}.def456.tmp",  # its writer was killed
        "other host": f".ckpt-00000002.pt.elsewhere.{dead.pid}.x1y2.tmp",  # a shared folder
        "unknown": ".ckpt-00000002.pt.x1y2.tmp",  # no writer named
    }
    for name in names.values():
        (folder / name).write_bytes(b"partial")
    ckpt_mod.prune_checkpoints(folder, keep=3)
    left = {p.name for p in folder.iterdir()}
    assert left == {"ckpt-00000001.pt", names["live"], names["other host"], names["unknown"]}
    assert [s for s, _ in list_checkpoints(folder)] == [1]
