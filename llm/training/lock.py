"""One training run per output folder: a lock file `.train.lock` in the folder.

The run holds an exclusive `flock` on the file for its whole life; the operating system
releases it when the process ends in any way (kill -9 included), so a lock is never stale.
The file holds the holder's PID, for the message a second run gets at once. The lock is
taken while holding the lock that every whole-folder save of the folder takes
(`llm.fileio.folder_lock`): such a save moves the lock file into its new folder, and a run
starting meanwhile must wait for the save rather than find the file missing. The file is
removed when the run ends; whoever opens it as it goes sees that it is gone and retries.
Within one process the lock is per thread: the thread holding it may take it again (`train`
holds it while it plans, then `fit` takes it), another thread is refused like a process.
`flock` needs a local file system or one that supports it (NFS v4, most cluster ones).
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from contextlib import contextmanager
from pathlib import Path

from ..fileio import file_mode, folder_lock, writing

LOCK_NAME = ".train.lock"


class FolderInUseError(RuntimeError):
    """Another process holds the training lock of the output folder."""

    def __init__(self, folder: Path, pid: int | None):
        self.folder, self.pid = folder, pid
        holder = f"process {pid}" if pid else "another process"
        super().__init__(f"{folder} is in use by another training run ({holder}); wait for it to "
                         f"end, or choose another output folder")


# folder (resolved) -> the thread holding its lock in this process
_held: dict[Path, int] = {}
_held_lock = threading.Lock()


@contextmanager
def run_lock(folder: str | os.PathLike):
    """Hold `folder`'s training lock for the block (creating the folder, which is removed
    again if it was created here and is still empty). FolderInUseError at once if another
    process, or another thread of this one, holds it; OSError "cannot write to <folder>:
    <cause>" if it cannot be written. Reentrant: a thread holding the lock passes."""
    folder = Path(folder)
    key = folder.resolve()
    with _held_lock:
        holder = _held.get(key)
        if holder is None:
            _held[key] = threading.get_ident()
    if holder == threading.get_ident():
        yield
        return
    if holder is not None:
        raise FolderInUseError(folder, os.getpid())
    try:
        created = not folder.exists()
        with writing(folder, "write to"):
            fd = _acquire(folder)
        try:
            yield
        finally:
            _release(folder / LOCK_NAME, fd)
            if created:
                try:
                    folder.rmdir()  # only if the run wrote nothing
                except OSError:
                    pass
    finally:
        with _held_lock:
            del _held[key]


def _acquire(folder: Path) -> int:
    path = folder / LOCK_NAME
    for _ in range(100):
        folder.parent.mkdir(parents=True, exist_ok=True)
        with folder_lock(folder):  # no whole-folder save of `folder` is midway
            folder.mkdir(exist_ok=True)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, file_mode())
            except FileNotFoundError:  # the folder went as its last run ended: again
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                pid = _holder(fd)
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise FolderInUseError(folder, pid) from None
                raise
            if _same_file(fd, path):
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return fd
            os.close(fd)  # the holder removed the file as it ended: take a fresh one
    raise OSError(errno.EAGAIN, f"cannot take the training lock {path}")


def _release(path: Path, fd: int) -> None:
    try:
        if _same_file(fd, path):
            path.unlink()
    except OSError:
        pass  # a read-only or vanished folder: the lock still ends with the descriptor
    finally:
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _holder(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
