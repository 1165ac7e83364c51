"""Logits processors against small hand-computed examples; UTF-8-safe streaming and stop
strings on a toy tokenizer; GenerationConfig and HF's generation_config.json."""

import json
import math
import warnings

import pytest
import torch

from llm.generation.config import GenerationConfig
from llm.generation.sampling import (
    apply_presence_frequency_penalty,
    apply_repetition_penalty,
    draw,
    filter_logits,
    sample_next,
    suppress_tokens,
)
from llm.generation.text import RowText, TextStreamer

NEG = float("-inf")


def test_repetition_penalty_by_hand():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0], [2.0, -1.0, 0.5, 3.0]])
    seen = torch.tensor([[True, True, False, False], [False, False, True, True]])
    got = apply_repetition_penalty(logits, seen, 2.0)
    assert torch.equal(got, torch.tensor([[1.0, -2.0, 0.5, 3.0], [2.0, -1.0, 0.25, 1.5]]))
    # a penalty below 1 favours repeats
    assert torch.equal(apply_repetition_penalty(logits[:1], seen[:1], 0.5), torch.tensor([[4.0, -0.5, 0.5, 3.0]]))


def test_presence_frequency_penalty_by_hand():
    logits = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    counts = torch.tensor([[0.0, 1.0, 3.0, 0.0]])
    got = apply_presence_frequency_penalty(logits, counts, presence=0.5, frequency=0.25)
    assert torch.allclose(got, torch.tensor([[1.0, 0.25, -0.25, 1.0]]), atol=0, rtol=0)
    got = apply_presence_frequency_penalty(logits, counts, presence=0.0, frequency=-1.0)
    assert torch.equal(got, torch.tensor([[1.0, 2.0, 4.0, 1.0]]))


def test_suppress_tokens_by_hand():
    logits = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    got = suppress_tokens(logits, torch.tensor([2, 0]))
    assert torch.equal(got, torch.tensor([[NEG, 2.0, NEG], [NEG, 5.0, NEG]]))
    assert logits[0, 0] == 1.0  # the input is left alone


def test_top_k_top_p_min_p_by_hand():
    # probs of softmax(log p) = p: 0.5, 0.25, 0.15, 0.1
    p = torch.tensor([[0.5, 0.25, 0.15, 0.1]])
    logits = p.log()
    keep = lambda out: (out > NEG).tolist()[0]  # noqa: E731
    assert keep(filter_logits(logits, top_k=2)) == [True, True, False, False]
    # top_p: keep a token while the tokens above it cover < top_p
    assert keep(filter_logits(logits, top_p=0.5)) == [True, False, False, False]
    assert keep(filter_logits(logits, top_p=0.6)) == [True, True, False, False]
    assert keep(filter_logits(logits, top_p=0.8)) == [True, True, True, False]
    assert keep(filter_logits(logits, top_p=1.0)) == [True, True, True, True]
    # min_p: keep p >= min_p * 0.5
    assert keep(filter_logits(logits, min_p=0.3)) == [True, True, True, False]
    assert keep(filter_logits(logits, min_p=0.5)) == [True, True, False, False]
    # together: top_k 3 then min_p of the renormalised 0.5/0.9: same ratio test
    assert keep(filter_logits(logits, top_k=3, min_p=0.35)) == [True, True, False, False]
    # kept logits are unchanged
    assert torch.equal(filter_logits(logits, top_k=2)[0, :2], logits[0, :2])


def test_sample_next_greedy_and_filtered_draws():
    logits = torch.tensor([[0.0, 3.0, 1.0], [5.0, 1.0, 0.0]])
    assert sample_next(logits).tolist() == [1, 0]
    g = torch.Generator().manual_seed(0)
    for _ in range(20):  # top_k=1 makes sampling greedy
        assert sample_next(logits, temperature=2.0, top_k=1, generator=g).tolist() == [1, 0]


def test_draw_frequencies_match_probs():
    probs = torch.tensor([[0.6, 0.3, 0.1, 0.0]]).repeat(20000, 1)
    got = draw(probs, torch.Generator().manual_seed(1))
    freq = torch.bincount(got, minlength=4).float() / 20000
    assert freq[3] == 0
    assert torch.allclose(freq[:3], torch.tensor([0.6, 0.3, 0.1]), atol=0.015)


class ToyTokenizer:
    """Token i decodes to pieces[i] (bytes), like tiktoken's decode_single_token_bytes."""

    def __init__(self, pieces):
        self.pieces = pieces
        self.n_vocab = len(pieces)

    def decode_single_token_bytes(self, i):
        return self.pieces[i]


def test_text_streamer_never_splits_a_character():
    e_acute = "é".encode()  # 2 bytes
    snake = "🐍".encode()  # 4 bytes
    tok = ToyTokenizer([b"a", e_acute[:1], e_acute[1:], snake[:3], snake[3:], b"\xff"])
    s = TextStreamer(tok)
    assert [s.push(i) for i in (0, 1, 2, 3, 4, 0)] == ["a", "", "é", "", "🐍", "a"]
    # an invalid byte, and a character cut off at the end, become U+FFFD as in bytes.decode
    assert s.push(5) == "\ufffd"
    assert s.push(3) == "" and s.flush() == "\ufffd"
    assert s.push(99) == ""  # ids the tokenizer lacks add nothing


def test_row_text_stop_string_across_tokens_and_hold_back():
    tok = ToyTokenizer([b"Hel", b"lo wo", b"rld", b"!", b" END", b"x"])
    row = RowText(tok, ["o world", "lo?"])
    deltas = [row.push(i) for i in (0, 1)]
    # "l" could begin "lo?", then "o wo" could begin "o world": both are held back
    assert deltas == ["He", "ll"]
    assert row.push(2) == "" and row.stopped
    assert row.text == "Hell"
    assert row.push(3) == "" and row.finish() == ""
    # a held-back tail that does not become a stop string is released
    row = RowText(tok, ["o world"])
    out = [row.push(0), row.push(1), row.push(3)]
    assert out == ["Hel", "l", "o wo!"]
    assert row.finish() == "" and not row.stopped
    # a stop string inside one token
    row = RowText(tok, ["EN"])
    assert row.push(3) + row.push(4) == "! " and row.stopped


def test_row_text_without_stops_streams_everything():
    tok = ToyTokenizer([b"ab", b"c"])
    row = RowText(tok)
    assert [row.push(0), row.push(1)] == ["ab", "c"] and row.finish() == ""


def test_generation_config_from_hf_file(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = transformers.GenerationConfig(do_sample=True, temperature=0.7, top_p=0.9, eos_token_id=[50256, 13],
                                       repetition_penalty=1.1, max_new_tokens=33, min_new_tokens=2)
    hf.save_pretrained(tmp_path)
    cfg = GenerationConfig.from_pretrained(tmp_path)
    assert cfg.temperature == 0.7 and cfg.top_p == 0.9 and cfg.top_k == 50  # HF's default top_k
    assert cfg.eos_token_ids() == [50256, 13] and cfg.repetition_penalty == 1.1
    assert cfg.max_new_tokens == 33 and cfg.min_new_tokens == 2
    # greedy in HF (do_sample false) is temperature 0 here
    (tmp_path / "generation_config.json").write_text(json.dumps({"do_sample": False, "temperature": 0.5}))
    assert GenerationConfig.from_pretrained(tmp_path).temperature == 0.0


def test_generation_config_round_trip_and_fallbacks(tmp_path):
    cfg = GenerationConfig(max_new_tokens=5, temperature=0.8, top_k=7, min_p=0.05, presence_penalty=0.5,
                           frequency_penalty=0.1, stop_strings=["\n\n"], eos_token_id=[1, 2], seed=3)
    cfg.save_pretrained(tmp_path)
    back = GenerationConfig.from_pretrained(tmp_path)
    assert back.replace(extra={}) == cfg
    (tmp_path / "generation_config.json").unlink()
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 9}))
    assert GenerationConfig.from_pretrained(tmp_path).eos_token_id == 9
    assert GenerationConfig.from_pretrained(tmp_path / "nothing") == GenerationConfig()


def test_generation_config_bad_files(tmp_path):
    (tmp_path / "generation_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        GenerationConfig.from_pretrained(tmp_path)
    (tmp_path / "generation_config.json").write_text(json.dumps({"do_sample": True, "top_p": 1.5}))
    with pytest.raises(ValueError, match="top_p"):
        GenerationConfig.from_pretrained(tmp_path)
    (tmp_path / "generation_config.json").write_text(json.dumps({"num_beams": 4}))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        cfg = GenerationConfig.from_pretrained(tmp_path)
    assert any("num_beams" in str(x.message) for x in w)
    assert cfg.extra["num_beams"] == 4


@pytest.mark.parametrize("field, value", [
    ("temperature", -1.0), ("temperature", math.inf), ("top_k", 0), ("top_p", 0.0), ("top_p", 1.01),
    ("min_p", -0.1), ("repetition_penalty", -1.0), ("frequency_penalty", math.nan),
    ("min_new_tokens", 1.5), ("max_new_tokens", -2), ("max_new_tokens", [1, -1]), ("seed", "7"),
    ("stop_strings", [3]), ("eos_token_id", [True]),
])
def test_generation_config_validate(field, value):
    with pytest.raises(ValueError, match=field):
        GenerationConfig(**{field: value}).validate(vocab_size=100)
