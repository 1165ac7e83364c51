import hashlib

import pytest

from llm import get_tokenizer
from llm import tokenizer as tok


def test_known_ids():
    enc = get_tokenizer()
    assert enc.encode("Hello, world. Is this-- a test?") == [15496, 11, 995, 13, 1148, 428, 438, 257, 1332, 30]
    assert enc.n_vocab == 50257
    assert enc.eot_token == 50256
    assert enc.encode("<|endoftext|>", allowed_special="all") == [50256]


@pytest.mark.parametrize("text", [
    "",
    "héllo wörld — naïve café ☕ 日本語のテキスト 🤖🚀",
    "  leading and trailing spaces  \n\n\ttabs\r\nand newlines   ",
    "def f(x):\n    return {'a': [1, 2, 3]}  # comment\n",
    "emoji + combining: e\u0301 👩‍👩‍👧",
])
def test_round_trips(text):
    enc = get_tokenizer()
    assert enc.decode(enc.encode(text)) == text


def test_hashes_are_the_ones_tiktoken_expects():
    import inspect

    import tiktoken_ext.openai_public as public

    src = inspect.getsource(public.gpt2)
    assert tok.VOCAB_BPE_SHA256 in src and tok.ENCODER_JSON_SHA256 in src
    assert tok.GPT2_PATTERN == public.r50k_pat_str
    vocab, encoder = tok._bpe_files()
    assert hashlib.sha256(vocab.read_bytes()).hexdigest() == tok.VOCAB_BPE_SHA256
    assert hashlib.sha256(encoder.read_bytes()).hexdigest() == tok.ENCODER_JSON_SHA256


def test_hash_mismatch_is_an_error(tmp_path):
    vocab, encoder = tok._bpe_files()
    bad = tmp_path / "vocab.bpe"
    bad.write_bytes(vocab.read_bytes() + b"x y\n")
    with pytest.raises(ValueError, match="sha256"):
        tok.mergeable_ranks_from_files(bad, encoder)


def test_matches_a_tiktoken_encoding_built_by_tiktoken(monkeypatch):
    """tiktoken's own data-gym loader on the same local files gives the same ranks."""
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    vocab, encoder = tok._bpe_files()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # no cache writes
    theirs = data_gym_to_mergeable_bpe_ranks(str(vocab), str(encoder), tok.VOCAB_BPE_SHA256,
                                             tok.ENCODER_JSON_SHA256)
    assert theirs == get_tokenizer()._mergeable_ranks
