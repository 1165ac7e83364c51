"""Generation engine: left-padded batches, per-row EOS and lengths, cached = recomputed,
parity with transformers, stop strings, streaming, CUDA-graph step buffers, bad arguments."""

import pytest
import torch

import llm
import llm.ops.reference
from llm.model import ModuleDecoder
from llm.generation import GenerationConfig, GenerationOutput, encode_prompts, generate, stream
from llm.generation.api import start

V = 50257


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return llm.GPT(llm.GPTConfig.from_preset("tiny")).eval()


def _batch(lengths, T=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    T = T or max(lengths)
    ids = torch.randint(0, V - 1, (len(lengths), T), generator=g)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, T - n:] = 1
        ids[i, :T - n] = V - 1  # padding holds some id; it must not matter
    return ids, mask


def _alone(model, ids, mask, i, n, **kw):
    row = ids[i][mask[i].bool()][None]
    return model.generate(row, n, **kw)[0, row.shape[1]:]


def test_left_padded_batch_equals_each_row_alone(model):
    ids, mask = _batch([5, 9, 2, 7])
    out = model.generate(ids, 12, attention_mask=mask)
    assert out.shape == (4, 9 + 12)
    assert torch.equal(out[:, :9], ids)
    for i in range(4):
        assert torch.equal(out[i, 9:], _alone(model, ids, mask, i, 12)), f"row {i}"


def test_per_row_max_new_tokens_and_compaction(model):
    ids, mask = _batch([4, 6, 3, 6, 5])
    limits = [2, 11, 0, 5, 11]
    run = start(model, ids, attention_mask=mask, max_new_tokens=limits, pad_token_id=7, cuda_graph=False)
    for _ in run.steps():
        pass
    assert run.batch.n_rows < 5  # finished rows were dropped from the batch
    for i, n in enumerate(limits):
        new = run.batch.out[i, 6:]
        if n:
            assert torch.equal(new[:n], _alone(model, ids, mask, i, n)), f"row {i}"
        assert (new[n:] == 7).all()


def test_per_row_eos(model):
    ids, mask = _batch([5, 8, 3])
    free = model.generate(ids, 10, attention_mask=mask)
    eos = int(free[0, 8 + 3])  # row 0's fourth new token
    out = model.generate(ids, 10, attention_mask=mask, eos_token_id=eos, return_dict=True)
    for i in range(3):
        new = free[i, 8:].tolist()
        n = new.index(eos) + 1 if eos in new else 10
        assert out.new_tokens[i] == new[:n]
        assert out.finish_reasons[i] == ("eos" if eos in new else "length")
        assert (out.sequences[i, 8 + n:] == eos).all()  # pad defaults to the EOS id
    assert out.finish_reasons[0] == "eos" and len(out.new_tokens[0]) <= 4


def test_several_eos_ids_and_min_new_tokens(model):
    ids, mask = _batch([6])
    free = model.generate(ids, 8).tolist()[0][6:]
    out = model.generate(ids, 8, eos_token_id=[V - 3, free[2]], return_dict=True)
    assert out.new_tokens[0] == free[:free.index(free[2]) + 1]
    # min_new_tokens: the first token may not be an EOS id, so it is the runner-up
    eos = free[0]
    logits = model(ids)[0, -1]
    runner_up = int(logits.topk(2).indices[1])
    held = model.generate(ids, 3, eos_token_id=eos, min_new_tokens=1, return_dict=True)
    assert held.new_tokens[0][0] == runner_up


@pytest.mark.parametrize("use_mask", [False, True])
def test_cached_equals_recomputed_under_seeded_sampling(model, use_mask):
    ids, mask = _batch([7, 4, 7, 1], seed=3)
    kw = dict(temperature=0.9, top_k=40, top_p=0.9, min_p=0.01, repetition_penalty=1.2,
              presence_penalty=0.3, frequency_penalty=0.2, max_new_tokens=[14, 9, 14, 14],
              attention_mask=mask if use_mask else None)
    a = model.generate(ids, generator=torch.Generator().manual_seed(5), **kw)
    b = model.generate(ids, generator=torch.Generator().manual_seed(5), use_cache=False, **kw)
    c = model.generate(ids, seed=5, **kw)
    e = model.generate(ids, seed=5, check_every=7, **kw)  # rows dropped later: same draws
    assert torch.equal(a, b)
    assert torch.equal(a, c)
    assert torch.equal(a, e)
    d = model.generate(ids, seed=6, **kw)
    assert not torch.equal(a, d)  # the seed matters: it is really sampling


def test_static_step_buffers_match(model):
    """The CUDA-graph path's static input buffers, run eagerly (no graph on CPU)."""
    ids, mask = _batch([6, 3, 5], seed=4)
    cfg = GenerationConfig(max_new_tokens=[10, 4, 10], temperature=0.8, top_k=20, seed=2)
    runs = []
    for static in (False, True):
        run = start(model, ids, attention_mask=mask, generation_config=cfg, cuda_graph=False)
        run.static_buffers = static
        for _ in run.steps():
            pass
        runs.append(run.batch.out)
    assert torch.equal(runs[0], runs[1])


def _naive_penalised_greedy(model, prompt, n, rep, presence, frequency):
    """Recompute the whole sequence each step and apply the penalties by hand."""
    seq = list(prompt)
    for _ in range(n):
        logits = model(torch.tensor([seq]))[0, -1].float().tolist()
        gen = seq[len(prompt):]
        for tok in set(seq):
            logits[tok] = logits[tok] / rep if logits[tok] > 0 else logits[tok] * rep
        for tok in set(gen):
            logits[tok] -= presence + frequency * gen.count(tok)
        seq.append(max(range(len(logits)), key=logits.__getitem__))
    return seq[len(prompt):]


def test_penalties_in_the_decode_loop(model):
    ids, mask = _batch([5, 3], seed=6)
    kw = dict(repetition_penalty=1.7, presence_penalty=0.05, frequency_penalty=0.08)
    out = model.generate(ids, 12, attention_mask=mask, **kw)
    for i in range(2):
        prompt = ids[i][mask[i].bool()].tolist()
        want = _naive_penalised_greedy(model, prompt, 12, 1.7, 0.05, 0.08)
        assert out[i, 5:].tolist() == want
    # the penalties change the output of this model (else the test above proves little)
    assert not torch.equal(out, model.generate(ids, 12, attention_mask=mask))


def test_parity_with_transformers_greedy_left_padded(model, tmp_path):
    transformers = pytest.importorskip("transformers")
    model.save_pretrained(tmp_path)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    ids, mask = _batch([6, 10, 3, 8], seed=8)
    with torch.no_grad():
        want = hf.generate(ids, attention_mask=mask, max_new_tokens=15, do_sample=False,
                           pad_token_id=V - 1, eos_token_id=None)
    got = model.generate(ids, 15, attention_mask=mask)
    assert torch.equal(got, want)
    # repetition penalty as transformers defines it (no padding: HF also penalises pad ids)
    ids, _ = _batch([7, 7, 7], seed=9)
    with torch.no_grad():
        want = hf.generate(ids, max_new_tokens=15, do_sample=False, repetition_penalty=1.5,
                           pad_token_id=V - 1, eos_token_id=None)
    assert torch.equal(model.generate(ids, 15, repetition_penalty=1.5), want)


def _text_and_tokens(model, prompt, n, **kw):
    out = model.generate(prompt, n, return_dict=True, temperature=1.0, seed=11, **kw)
    return out.texts[0], out.new_tokens[0], out


def test_stop_string_across_token_boundary(model):
    enc = llm.get_tokenizer()
    text, tokens, _ = _text_and_tokens(model, "Once upon a time", 20)
    pieces = [enc.decode([t]) for t in tokens]
    assert "".join(pieces) == text
    k = next(k for k in range(3, 15) if len(pieces[k]) >= 2 and len(pieces[k + 1]) >= 2)
    cut = len("".join(pieces[:k]))
    stop = pieces[k][-2:] + pieces[k + 1][:2]  # spans the boundary of tokens k and k + 1
    assert text.find(stop) == cut + len(pieces[k]) - 2
    got, got_tokens, out = _text_and_tokens(model, "Once upon a time", 20, stop_strings=["zzzz", stop])
    assert got == text[:text.find(stop)]
    assert got_tokens == tokens[:k + 2]
    assert out.finish_reasons == ["stop_string"]
    pad = out.sequences[0, out.sequences.shape[1] - 20 + k + 2:]
    assert (pad == 0).all()  # no EOS id configured: pad_token_id defaults to 0
    ids = model.generate("Once upon a time", 20, temperature=1.0, seed=11, stop_strings=stop)
    assert torch.equal(ids, out.sequences)  # the plain call stops the same way


def test_streaming_equals_generate(model):
    prompts = ["Hello there", "A", "The quick brown fox jumps"]
    kw = dict(temperature=1.0, top_k=100, seed=3, max_new_tokens=[16, 9, 16], stop_strings=["e t", "ing"])
    out = model.generate(prompts, return_dict=True, **kw)
    chunks = list(model.stream(prompts, **kw))
    for i in range(3):
        assert "".join(c.texts[i] for c in chunks) == out.texts[i]
        assert [c.token_ids[i] for c in chunks if c.token_ids[i] is not None] == out.new_tokens[i]
    assert all(chunks[-1].finished)
    ids, mask = encode_prompts(prompts)
    assert torch.equal(out.sequences, model.generate(ids, attention_mask=mask, **kw))


def test_stream_single_prompt_text_matches_decode(model):
    enc = llm.get_tokenizer()
    ids = torch.tensor([enc.encode("Good morning")])
    out = model.generate(ids, 25, temperature=1.0, seed=1)
    text = "".join(c.texts[0] for c in model.stream(ids, 25, temperature=1.0, seed=1))
    assert text == enc.decode(out[0, ids.shape[1]:].tolist())


def test_result_object(model):
    out = model.generate("Hi", 5, return_dict=True)
    assert isinstance(out, GenerationOutput)
    assert out.sequences.shape == (1, 1 + 5)
    assert out.finish_reasons == ["length"] and len(out.new_tokens[0]) == 5


@pytest.mark.parametrize("kw, match", [
    (dict(temperature=-0.5), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=0), "top_k"),
    (dict(top_k=2.5), "top_k"),
    (dict(min_p=1.5), "min_p"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(presence_penalty=float("inf")), "presence_penalty"),
    (dict(min_new_tokens=-1), "min_new_tokens"),
    (dict(eos_token_id=V), "outside the vocabulary"),
    (dict(eos_token_id="x"), "eos_token_id"),
    (dict(pad_token_id=-1), "outside the vocabulary"),
    (dict(stop_strings=[""]), "stop_strings"),
    (dict(seed=1, generator=torch.Generator()), "seed or generator"),
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(max_new_tokens=[3, 3]), "max_new_tokens"),
    (dict(max_new_tokens=100), "n_positions"),
    (dict(cuda_graph=True), "CUDA"),
    (dict(attention_mask=torch.tensor([[0, 0, 0]])), "no real token"),
])
def test_bad_arguments_raise(model, kw, match):
    kw = {"max_new_tokens": 4, **kw}
    with pytest.raises(ValueError, match=match):
        model.generate(torch.tensor([[1, 2, 3]]), **kw)
    if "generator" not in kw and "cuda_graph" not in kw and "attention_mask" not in kw:
        with pytest.raises(ValueError, match=match):
            model.stream(torch.tensor([[1, 2, 3]]), **kw)


def test_unknown_argument_and_missing_max_new_tokens(model):
    with pytest.raises(TypeError, match="top_n"):
        model.generate(torch.tensor([[1, 2]]), 3, top_n=3)
    with pytest.raises(ValueError, match="max_new_tokens is not set"):
        model.generate(torch.tensor([[1, 2]]))


def test_generate_and_stream_take_the_same_arguments(model):
    ids = torch.tensor([[5, 6, 7]])
    kw = dict(temperature=0.7, top_k=20, top_p=0.9, check_every=3, use_cache=True)
    a = generate(model, ids, 6, generator=torch.Generator().manual_seed(0), **kw)
    chunks = stream(model, ids, 6, generator=torch.Generator().manual_seed(0), **kw)
    assert [c.token_ids[0] for c in chunks if c.token_ids[0] is not None] == a[0, 3:].tolist()
    with pytest.raises(TypeError):
        generate(model, ids, 6, 0.7)  # sampling settings are keyword arguments


def test_model_generation_config_is_used(model, tmp_path):
    model.save_pretrained(tmp_path)
    GenerationConfig(temperature=0.7, top_k=30, eos_token_id=[V - 1, 11], max_new_tokens=7).save_pretrained(tmp_path)
    loaded = llm.GPT.from_pretrained(tmp_path)
    cfg = loaded.generation_config
    assert (cfg.temperature, cfg.top_k, cfg.eos_token_id, cfg.max_new_tokens) == (0.7, 30, [V - 1, 11], 7)
    ids = torch.tensor([[1, 2, 3]])
    a = loaded.generate(ids, seed=4)
    b = model.generate(ids, 7, temperature=0.7, top_k=30, eos_token_id=[V - 1, 11], seed=4)
    assert torch.equal(a, b)
    # arguments override the model's config
    assert torch.equal(loaded.generate(ids, 4, temperature=0.0), model.generate(ids, 4, eos_token_id=[V - 1, 11]))


def test_stream_ids_on_their_own(model):
    chunks = list(stream(model, torch.tensor([[3, 4]]), 5, tokenizer=llm.get_tokenizer()))
    assert [c.token_ids[0] for c in chunks if c.token_ids[0] is not None] == \
        model.generate(torch.tensor([[3, 4]]), 5)[0, 2:].tolist()


class _RecordingDecoder:
    """A backend's whole-model decoder (the make_decoder hook), here over torch modules."""

    supports_cuda_graph = False

    def __init__(self, model, batch_size, max_seq_len):
        self.inner = ModuleDecoder(model, batch_size, max_seq_len)
        self.calls = []

    def prefill(self, input_ids, input_pos, position_ids, key_valid=None):
        self.calls.append(("prefill", input_ids.shape[0]))
        return self.inner.prefill(input_ids, input_pos, position_ids, key_valid)

    def decode_one_token(self, token, input_pos, position_ids, key_valid=None):
        self.calls.append(("decode", token.shape[0]))
        return self.inner.decode_one_token(token, input_pos, position_ids, key_valid)

    def select_rows(self, index):
        self.calls.append(("select_rows", int(index.numel())))
        self.inner.select_rows(index)


def test_backend_decoder_hook(model, monkeypatch):
    made = []

    def make_decoder(m, batch_size, max_seq_len):
        made.append(_RecordingDecoder(m, batch_size, max_seq_len))
        return made[-1]

    table = llm.ops.reference.TORCH_OPS.replace(name="decoder-test", make_decoder=make_decoder)
    monkeypatch.setitem(llm.ops._LOADERS, "decoder-test", lambda: table)
    ids, mask = _batch([5, 2, 7, 4], seed=12)
    kw = dict(attention_mask=mask, max_new_tokens=[3, 12, 2, 12], temperature=0.7, top_k=30, seed=1)
    want = model.generate(ids, **kw)
    try:
        model.set_backend("decoder-test")
        got = model.generate(ids, **kw)
    finally:
        model.set_backend("torch")
    assert torch.equal(got, want)
    calls = made[0].calls
    assert calls[0] == ("prefill", 4) and len(calls) > 11
    rows = [n for name, n in calls if name == "decode"]
    assert isinstance(made[0], llm.ops.Decoder)
    assert ("select_rows", 2) in calls and rows[-1] == 2  # finished rows dropped


def test_make_decoder_may_decline(model, monkeypatch):
    """A backend whose make_decoder returns None generates through the model's modules."""
    table = llm.ops.reference.TORCH_OPS.replace(name="declining", make_decoder=lambda m, b, s: None)
    monkeypatch.setitem(llm.ops._LOADERS, "declining", lambda: table)
    ids = torch.tensor([[5, 6, 7]])
    want = model.generate(ids, 5)
    try:
        model.set_backend("declining")
        assert isinstance(model.make_decoder(1, 8), ModuleDecoder)
        assert torch.equal(model.generate(ids, 5), want)
    finally:
        model.set_backend("torch")
