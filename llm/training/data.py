"""Token datasets for next-token training.

A source is a text file, a folder of `.txt` files (sorted, recursive) or a `.jsonl` file
with a `text` field per line. Each file (or jsonl line) is one document; documents are
joined with <|endoftext|> and tokenized once with GPT-2's BPE. The token ids are cached as
`<source>.tokens.npy` beside the source (with `<source>.tokens.json` holding the key) and
reused while the source is unchanged: same sizes and mtimes, or else the same sha256.

Training windows slide over the token stream: window i covers tokens
[i * stride, i * stride + T] with T = context_length; inputs are its first T tokens and
targets the last T (shifted by one). No window runs past the end. `ResumableSampler`
visits windows in a seeded order per epoch and can start at any sample, so a resumed run
sees exactly the samples an uninterrupted run would.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..fileio import atomic_open, atomic_write_text
from ..tokenizer import EOT_TOKEN, get_tokenizer

CACHE_FORMAT = 1
TOKEN_DTYPE = np.uint16  # GPT-2's 50257 ids fit


@dataclass
class TokenData:
    """Token ids of a source, with what identifies it."""

    ids: np.ndarray  # (N,) uint16, read-only memmap of the cache when there is one
    source: str
    sha256: str  # of the source contents: a changed source has another
    n_documents: int

    def __len__(self) -> int:
        return len(self.ids)


# -- sources ---------------------------------------------------------------------------------


def source_files(path: str | os.PathLike) -> list[Path]:
    """The files a source is made of, in a fixed order."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise ValueError(f"data folder {path} holds no .txt files")
        return files
    if path.is_file():
        return [path]
    raise FileNotFoundError(f"data not found: {path}")


def read_documents(path: str | os.PathLike) -> list[str]:
    """The documents of a source: one per .txt file, one per jsonl line."""
    docs = []
    for f in source_files(path):
        if f.suffix == ".jsonl":
            docs.extend(_read_jsonl(f))
        else:
            try:
                docs.append(f.read_text(encoding="utf-8"))
            except UnicodeDecodeError as e:
                raise ValueError(f"{f}: not UTF-8 text ({e})") from e
    return [d for d in docs if d]


def _read_jsonl(path: Path) -> list[str]:
    docs = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e})") from e
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise ValueError(f"{path}:{lineno}: expected an object with a string 'text' field")
            docs.append(record["text"])
    return docs


def tokenize_documents(docs: list[str]) -> np.ndarray:
    """GPT-2 token ids of the documents joined with <|endoftext|>.

    Text that spells "<|endoftext|>" is encoded as ordinary text, never as the separator.
    """
    enc = get_tokenizer()
    eot = np.array([EOT_TOKEN], dtype=TOKEN_DTYPE)
    parts = []
    for i, ids in enumerate(enc.encode_ordinary_batch(docs)):
        if i:
            parts.append(eot)
        parts.append(np.asarray(ids, dtype=TOKEN_DTYPE))  # ids < 50257 fit
    return np.concatenate(parts) if parts else np.zeros(0, dtype=TOKEN_DTYPE)


# -- the cache -------------------------------------------------------------------------------


def cache_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """(`<source>.tokens.npy`, `<source>.tokens.json`) beside the source."""
    path = Path(path).resolve()
    return path.with_name(path.name + ".tokens.npy"), path.with_name(path.name + ".tokens.json")


def _stat_key(path: Path, files: list[Path]) -> list:
    base = path if path.is_dir() else path.parent
    return [[str(f.relative_to(base)), f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def _content_sha256(path: Path, files: list[Path]) -> str:
    base = path if path.is_dir() else path.parent
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(base)).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def _read_meta(meta_path: Path) -> dict | None:
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT or meta.get("tokenizer") != "gpt2":
        return None
    return meta


def _load_cached(npy_path: Path, meta: dict) -> np.ndarray | None:
    try:
        ids = np.load(npy_path, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if ids.dtype != TOKEN_DTYPE or ids.ndim != 1 or len(ids) != meta.get("n_tokens"):
        return None
    return ids


def load_tokens(path: str | os.PathLike, cache: bool = True) -> TokenData:
    """Token ids of a source (see the module docstring), from the cache when it is current.

    The cache is written atomically; where the source's folder is not writable the ids are
    computed and returned without caching.
    """
    path = Path(path)
    files = source_files(path)
    stat_key = _stat_key(path, files)
    npy_path, meta_path = cache_paths(path)
    meta = _read_meta(meta_path) if cache else None
    if meta is not None and meta.get("files") == stat_key:
        ids = _load_cached(npy_path, meta)
        if ids is not None:
            return TokenData(ids, str(path), meta["sha256"], meta["n_documents"])
    sha = _content_sha256(path, files)
    if meta is not None and meta.get("sha256") == sha:  # touched, not changed
        ids = _load_cached(npy_path, meta)
        if ids is not None:
            meta["files"] = stat_key
            _write_meta(meta_path, meta)
            return TokenData(ids, str(path), sha, meta["n_documents"])
    docs = read_documents(path)
    ids = tokenize_documents(docs)
    if cache:
        meta = {"format": CACHE_FORMAT, "tokenizer": "gpt2", "files": stat_key, "sha256": sha,
                "n_tokens": int(len(ids)), "n_documents": len(docs)}
        try:
            with atomic_open(npy_path, "wb") as fh:
                np.save(fh, ids)
            _write_meta(meta_path, meta)
        except OSError:
            pass  # a read-only data folder: use the ids without caching them
    return TokenData(ids, str(path), sha, len(docs))


def _write_meta(meta_path: Path, meta: dict) -> None:
    try:
        atomic_write_text(meta_path, json.dumps(meta, indent=1) + "\n")
    except OSError:
        pass


# -- windows ---------------------------------------------------------------------------------


def num_windows(n_tokens: int, context_length: int, stride: int) -> int:
    """How many windows of `context_length` (+1 for the shifted target) fit in n_tokens."""
    if n_tokens < context_length + 1:
        return 0
    return (n_tokens - context_length - 1) // stride + 1


class WindowDataset(Dataset):
    """Item i: (inputs, targets), both LongTensor [T], from tokens [i*stride, i*stride + T]."""

    def __init__(self, ids: np.ndarray, context_length: int, stride: int | None = None,
                 name: str = "dataset"):
        if not isinstance(context_length, int) or context_length < 1:
            raise ValueError(f"context_length must be a positive integer, got {context_length!r}")
        stride = context_length if stride is None else stride
        if not isinstance(stride, int) or stride < 1:
            raise ValueError(f"stride must be a positive integer, got {stride!r}")
        n = num_windows(len(ids), context_length, stride)
        if n == 0:
            raise ValueError(
                f"{name} has {len(ids)} tokens, fewer than one window needs: context_length "
                f"{context_length} + 1 for the shifted target = {context_length + 1}"
            )
        self.ids = ids
        self.context_length = context_length
        self.stride = stride
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -self.n <= i < self.n:
            raise IndexError(f"window {i} out of range for {self.n} windows")
        start = (i % self.n) * self.stride
        chunk = torch.from_numpy(np.asarray(self.ids[start:start + self.context_length + 1], dtype=np.int64))
        return chunk[:-1], chunk[1:]


def split_tokens(ids: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation): the validation split is the last `val_fraction` of the tokens."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    n_val = int(round(len(ids) * val_fraction))
    return ids[:len(ids) - n_val], ids[len(ids) - n_val:]


# -- sampling --------------------------------------------------------------------------------


class ResumableSampler(Sampler[int]):
    """An endless stream of window indices, each epoch a seeded permutation.

    Sample number p (counting from 0 over the whole run) is window
    `perm(p // n)[p % n]`, where perm(e) depends only on seed and e; `start` is the number
    of samples already consumed, so a resumed run continues at the exact sample.

    One rank of `world` processes takes every world-th block of `block` samples from
    `start` on, beginning with its `rank`-th: with block = the micro-batch size, rank r's
    k-th micro-batch is micro-batch k * world + r of the one-process stream, so the ranks
    together see every sample once and none twice.
    """

    def __init__(self, n: int, seed: int = 0, start: int = 0, shuffle: bool = True, rank: int = 0,
                 world: int = 1, block: int = 1):
        if n < 1:
            raise ValueError("ResumableSampler needs at least one item")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        if not (0 <= rank < world and block >= 1):
            raise ValueError(f"need 0 <= rank < world and block >= 1, got rank {rank}, world {world}, block {block}")
        self.n, self.seed, self.start, self.shuffle = n, seed, start, shuffle
        self.rank, self.world, self.block = rank, world, block

    def permutation(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g)

    def __iter__(self):
        epoch, offset = divmod(self.start, self.n)
        p, span = 0, self.block * self.world  # p: samples from `start` on
        while True:
            perm = self.permutation(epoch).tolist()
            for i in perm[offset:]:
                if self.world == 1 or (p % span) // self.block == self.rank:
                    yield i
                p += 1
            epoch, offset = epoch + 1, 0


def make_loader(dataset: WindowDataset, batch_size: int, seed: int = 0, start: int = 0,
                shuffle: bool = True, rank: int = 0, world: int = 1) -> DataLoader:
    """Endless batches (inputs [B, T], targets [B, T]) starting at sample `start`; of them,
    rank `rank` of `world` processes gets batches rank, rank + world, ... (ResumableSampler)."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    sampler = ResumableSampler(len(dataset), seed=seed, start=start, shuffle=shuffle, rank=rank, world=world,
                               block=batch_size)
    # Its own generator: a DataLoader iterator draws a base seed, which must not move the
    # global RNG (dropout's), or a resumed run would diverge from an uninterrupted one.
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=0,
                      generator=torch.Generator().manual_seed(seed))
