"""Generation state belongs to the call: threads and interleaved streams on one model get
exactly what each gets alone, on every backend that decodes here; and argument errors."""

import threading

import pytest
import torch

import llm
from llm.ops import BackendUnavailableError

V = 50257


def _backends():
    out = []
    for name in ("torch", "native"):
        try:
            llm.get_ops(name)
            out.append(pytest.param(name, id=name))
        except BackendUnavailableError as e:
            out.append(pytest.param(name, id=name, marks=pytest.mark.skip(reason=str(e))))
    return out


@pytest.fixture(scope="module", params=_backends())
def model(request):
    torch.manual_seed(0)
    return llm.GPT(llm.GPTConfig.from_preset("tiny"), backend=request.param).eval()


PROMPTS = [torch.tensor([[11, 12, 13, 14]]), torch.tensor([[500, 7]]), torch.tensor([[9, 9, 9, 9, 9, 3]])]


def test_threads_generating_on_one_model_get_what_they_get_alone(model):
    kw = dict(temperature=0.9, top_k=50, seed=3)
    alone = [model.generate(p, 30, **kw) for p in PROMPTS]
    for _ in range(3):
        got, errors = [None] * 3, []

        def work(i):
            try:
                got[i] = model.generate(PROMPTS[i], 30, **kw)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors
        for i in range(3):
            assert torch.equal(got[i], alone[i]), f"thread {i}"


def test_interleaved_streams_and_a_generate_between(model):
    want = [model.generate(p, 12)[0, p.shape[1]:].tolist() for p in PROMPTS[:2]]
    a, b = model.stream(PROMPTS[0], 12), model.stream(PROMPTS[1], 12)
    got = [[], []]
    for _ in range(4):
        for i, s in enumerate((a, b)):
            chunk = next(s)
            got[i].append(chunk.token_ids[0])
    model.generate(PROMPTS[2], 5)  # another call while both streams are paused
    for i, s in enumerate((a, b)):
        got[i] += [c.token_ids[0] for c in s if c.token_ids[0] is not None]
    assert got == want


def test_generation_leaves_the_model_as_it_was(model):
    model.train()
    try:
        out = model.generate(PROMPTS[0], 3)
        assert model.training
    finally:
        model.eval()
    assert torch.equal(out, model.generate(PROMPTS[0], 3))  # eval both times: no dropout


@pytest.mark.parametrize("args, kw, match", [
    ((torch.zeros(0, 3, dtype=torch.long), 3), {}, "no rows"),
    ((torch.tensor([[1, 2]]), 3.0), {}, "max_new_tokens"),
    (([], 3), {}, "no prompt"),
    ((torch.tensor([[1, 2, 0]]), 3), dict(attention_mask=torch.tensor([[1, 1, 0]])), "left padding"),
    ((torch.tensor([[1.0, 2.0]]), 3), {}, "integer tensor"),
])
def test_bad_call_arguments_are_named(model, args, kw, match):
    with pytest.raises(ValueError, match=match):
        model.generate(*args, **kw)


def test_unsigned_ids_as_the_token_cache_stores_them(model):
    ids = torch.tensor([[1, 2, 3]])
    want = model.generate(ids, 4)
    for dtype in (torch.uint16, torch.uint32, torch.int32):
        assert torch.equal(model.generate(ids.to(dtype), 4), want)
