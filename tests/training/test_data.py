"""Token datasets: sources, the token cache, windows, the split, resumable sampling, corpus."""

import json
import os

import numpy as np
import pytest
import torch

from llm.training import data as data_mod
from llm.training.corpus import build_corpus, harvest_documents
from llm.training.data import (ResumableSampler, WindowDataset, load_tokens, make_loader, num_windows,
                               read_documents, split_tokens)
from llm.tokenizer import EOT_TOKEN, get_tokenizer


# -- windows ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n,T,stride", [(100, 8, 8), (101, 8, 3), (9, 8, 1), (50, 7, 11), (64, 13, 5)])
def test_windows_shift_stride_and_end(n, T, stride):
    ids = np.arange(n, dtype=np.uint16)
    ds = WindowDataset(ids, T, stride)
    assert len(ds) == num_windows(n, T, stride) == (n - T - 1) // stride + 1
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (T,)
        start = i * stride
        assert x.tolist() == list(range(start, start + T))  # window i starts at i * stride
        assert y.tolist() == list(range(start + 1, start + T + 1))  # targets shifted by one
        assert start + T + 1 <= n  # no window runs past the end
    # one more window would run past the end
    assert len(ds) * stride + T + 1 > n
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_window_needs_context_plus_one_tokens():
    WindowDataset(np.arange(9, dtype=np.uint16), 8)  # exactly one window
    with pytest.raises(ValueError, match="fewer than one window"):
        WindowDataset(np.arange(8, dtype=np.uint16), 8)
    with pytest.raises(ValueError, match="fewer than one window"):
        WindowDataset(np.zeros(0, dtype=np.uint16), 4)
    with pytest.raises(ValueError, match="stride"):
        WindowDataset(np.arange(20, dtype=np.uint16), 4, 0)
    with pytest.raises(ValueError, match="context_length"):
        WindowDataset(np.arange(20, dtype=np.uint16), 0)


def test_split_is_contiguous_tail():
    ids = np.arange(1000, dtype=np.uint16)
    train, val = split_tokens(ids, 0.1)
    assert len(train) == 900 and len(val) == 100
    assert train[-1] + 1 == val[0] and val[-1] == 999
    train, val = split_tokens(ids, 0.0)
    assert len(train) == 1000 and len(val) == 0
    with pytest.raises(ValueError, match="val_fraction"):
        split_tokens(ids, 1.0)


# -- sampling ---------------------------------------------------------------------------------


def _take(it, k):
    return [next(it) for _ in range(k)]


def test_sampler_epochs_are_permutations_and_resume_exactly():
    n = 7
    full = _take(iter(ResumableSampler(n, seed=3)), 4 * n)
    for e in range(4):
        assert sorted(full[e * n:(e + 1) * n]) == list(range(n))
    assert full[:n] != full[n:2 * n]  # each epoch reshuffles
    for start in (0, 1, 6, 7, 13, 20):
        resumed = _take(iter(ResumableSampler(n, seed=3, start=start)), 4 * n - start)
        assert resumed == full[start:]
    assert _take(iter(ResumableSampler(n, seed=4)), n) != full[:n]
    assert _take(iter(ResumableSampler(n, shuffle=False)), n + 2) == list(range(n)) + [0, 1]


def test_loader_resumes_at_the_exact_sample():
    ds = WindowDataset(np.arange(200, dtype=np.uint16), 5, 3)
    full = iter(make_loader(ds, 4, seed=1))
    batches = [next(full) for _ in range(30)]  # crosses several epochs (65 windows)
    resumed = iter(make_loader(ds, 4, seed=1, start=4 * 11))
    for b in batches[11:]:
        x, y = next(resumed)
        assert x.shape == (4, 5)
        assert torch.equal(x, b[0]) and torch.equal(y, b[1])


# -- sources and the cache --------------------------------------------------------------------


def test_sources_txt_folder_jsonl(tmp_path):
    enc = get_tokenizer()
    (tmp_path / "one.txt").write_text("Hello world.")
    d = tmp_path / "folder"
    (d / "sub").mkdir(parents=True)
    (d / "b.txt").write_text("second")
    (d / "a.txt").write_text("first")
    (d / "sub" / "c.txt").write_text("third")
    (d / "skip.md").write_text("not a .txt")
    jl = tmp_path / "docs.jsonl"
    jl.write_text(json.dumps({"text": "alpha <|endoftext|>"}) + "\n\n" + json.dumps({"text": "beta", "id": 2}) + "\n")

    assert load_tokens(tmp_path / "one.txt").ids.tolist() == enc.encode("Hello world.")
    assert read_documents(d) == ["first", "second", "third"]  # sorted, recursive, .txt only
    got = load_tokens(d).ids.tolist()
    eot = [EOT_TOKEN]
    assert got == enc.encode("first") + eot + enc.encode("second") + eot + enc.encode("third")
    toks = load_tokens(jl)
    # literal "<|endoftext|>" in a document is text, never the separator
    assert toks.ids.tolist() == enc.encode_ordinary("alpha <|endoftext|>") + eot + enc.encode("beta")
    assert toks.n_documents == 2 and toks.ids.dtype == np.uint16


def test_bad_sources_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="data not found"):
        load_tokens(tmp_path / "nope.txt")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError, match="no .txt files"):
        load_tokens(tmp_path / "empty_dir")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        load_tokens(bad)
    bad.write_text('{"text": "ok"}\n{"body": "x"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected an object with a string 'text'"):
        load_tokens(bad)
    (tmp_path / "empty.txt").write_text("")
    assert len(load_tokens(tmp_path / "empty.txt")) == 0


def test_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    src = tmp_path / "text.txt"
    src.write_text("The quick brown fox. " * 50)
    first = load_tokens(src)
    npy, meta = tmp_path / "text.txt.tokens.npy", tmp_path / "text.txt.tokens.json"
    assert npy.is_file() and meta.is_file()

    calls = []
    real = data_mod.tokenize_documents
    monkeypatch.setattr(data_mod, "tokenize_documents", lambda docs: calls.append(1) or real(docs))
    again = load_tokens(src)
    assert calls == [] and isinstance(again.ids, np.memmap)  # reused as a memmap
    assert np.array_equal(again.ids, first.ids) and again.sha256 == first.sha256

    os.utime(src, ns=(1, 1))  # touched, same contents: the hash says reuse
    assert np.array_equal(load_tokens(src).ids, first.ids) and calls == []
    assert json.loads(meta.read_text())["files"][0][2] == 1  # key updated to the new mtime

    src.write_text("Something else entirely.")
    changed = load_tokens(src)
    assert calls == [1] and changed.ids.tolist() == get_tokenizer().encode("Something else entirely.")
    assert changed.sha256 != first.sha256

    npy.write_bytes(b"garbage")  # a broken cache is rebuilt, not trusted
    assert load_tokens(src).ids.tolist() == changed.ids.tolist() and calls == [1, 1]


# -- the built-in corpus ----------------------------------------------------------------------


def test_corpus_is_deterministic_and_written_once(tmp_path):
    docs = list(harvest_documents(max_bytes=60_000))
    assert docs == list(harvest_documents(max_bytes=60_000))
    assert sum(len(d.encode()) for d in docs) >= 60_000
    assert all(d.strip() for d in docs)
    path = build_corpus(tmp_path, max_bytes=60_000)
    assert [json.loads(line)["text"] for line in path.read_text().splitlines()] == docs
    mtime = path.stat().st_mtime_ns
    assert build_corpus(tmp_path, max_bytes=60_000) == path and path.stat().st_mtime_ns == mtime
    # the first module documents look like documentation
    assert "\n===" in docs[0] and ("def " in "".join(docs) or "class " in "".join(docs))
    assert len(load_tokens(path)) > 10_000
