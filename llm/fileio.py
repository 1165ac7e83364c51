"""Atomic writes: a file (temporary file in the same folder, fsync, rename, fsync the
folder) and a whole folder (`replace_folder`: a temporary sibling folder swapped in).

A crash or an exception mid-write leaves the previous file or folder (if any) untouched and
no temporary file behind. New files get the usual permissions (0666 less the umask).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

_umask_lock = threading.Lock()


def _umask() -> int:
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plain `open(path, "w")` would give a new file: 0666 less the umask."""
    return 0o666 & ~_umask()


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not supported here (e.g. some network file systems)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def writing(path: str | os.PathLike, what: str = "write"):
    """Any OSError in the block (also one torch.save buries under its own error) comes out
    as OSError "cannot <what> <path>: <cause>" with the same errno."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        cause = e
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__ if cause.__cause__ or cause.__suppress_context__ else cause.__context__
        if cause is None or cause.errno is None:
            raise
        raise OSError(cause.errno, f"cannot {what} {path}: {cause.strerror}") from e


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yields a temporary path beside `path`; when the block succeeds, it becomes `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes the file private (and writers may recreate it): give it the mode
        # any new file gets, so other users can read saved models
        os.chmod(tmp, file_mode())
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    fsync_dir(path.parent)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None):
    """`open(path, mode)` whose content appears at `path` only when the block succeeds."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=encoding if mode == "w" else None) as fh:
            yield fh


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def replace_folder(folder: str | os.PathLike, write: Callable[[Path], None], replaces: set[str]) -> None:
    """Make `folder` hold what `write(tmp_folder)` writes, all at once.

    `write` fills a temporary sibling folder, which is fsynced and then exchanged with the
    old folder in one atomic rename (Linux; elsewhere: old aside, new in), so at every
    moment `folder` holds either the whole old content or the whole new one. Entries of the
    old folder whose names are not in `replaces` (and that `write` did not write) are moved
    into the new one first, so nothing else in the folder is lost (e.g. a training run's
    checkpoints beside its model); a save killed while moving them leaves them in the
    hidden sibling, and the next save of the folder puts them back. Saves of one folder
    take turns (a lock file beside it).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} exists and is not a folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with folder_lock(folder):  # one save of a folder at a time, across processes
        _recover(folder, replaces)
        _replace(folder, write, replaces)


@contextmanager
def folder_lock(folder: Path):
    """The lock every `replace_folder` of `folder` holds: a lock file beside it."""
    with open(folder.parent / f".{folder.name}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # released by the OS if the process dies
        yield


def _replace(folder: Path, write: Callable[[Path], None], replaces: set[str]) -> None:
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".new"))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private
        write(tmp)
        for entry in tmp.iterdir():
            if entry.is_file():
                with open(entry, "rb") as fh:
                    os.fsync(fh.fileno())
        fsync_dir(tmp)
        if folder.exists():
            _swap(folder, tmp, replaces)
        else:
            os.rename(tmp, folder)
        fsync_dir(folder.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _recover(folder: Path, replaces: set[str]) -> None:
    """Finish what a save killed midway left: entries it had moved into its temporary
    sibling go back into `folder`; the sibling goes."""
    stales = [p for p in folder.parent.glob(f".{folder.name}.*") if p.is_dir() and p.suffix in (".new", ".old")]
    for stale in sorted(stales, key=lambda p: p.suffix != ".old"):  # an old folder back first
        if folder.is_dir():
            for entry in stale.iterdir():
                if entry.name not in replaces and not (folder / entry.name).exists():
                    os.rename(entry, folder / entry.name)
        elif stale.suffix == ".old":  # killed between the two renames: the old one goes back
            os.rename(stale, folder)
            continue
        shutil.rmtree(stale, ignore_errors=True)


def _swap(folder: Path, new: Path, replaces: set[str]) -> None:
    written = {p.name for p in new.iterdir()}
    for entry in list(folder.iterdir()):
        if entry.name not in replaces and entry.name not in written:
            os.rename(entry, new / entry.name)
    if _exchange(new, folder):  # one atomic step: `new` now holds the old content
        shutil.rmtree(new, ignore_errors=True)
        return
    old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".old"))
    os.rmdir(old)
    os.rename(folder, old)
    os.rename(new, folder)
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
