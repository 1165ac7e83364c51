"""Reference generation: static KV cache vs recomputation, EOS, limits."""

import pytest
import torch

from llm import GPT, GPTConfig

from hf_models import TINY_ODD


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(**TINY_ODD)).eval()


def test_cached_equals_recomputed_greedy(model):
    x = torch.randint(0, 1003, (3, 5))
    assert torch.equal(model.generate(x, 30), model.generate(x, 30, use_cache=False))


@pytest.mark.parametrize("kw", [dict(temperature=1.0), dict(temperature=0.7, top_k=20),
                                dict(temperature=1.3, top_p=0.8), dict(temperature=1.0, top_k=50, top_p=0.9)])
def test_cached_equals_recomputed_seeded_sampling(model, kw):
    x = torch.randint(0, 1003, (2, 6))
    a = model.generate(x, 25, generator=torch.Generator().manual_seed(7), **kw)
    b = model.generate(x, 25, generator=torch.Generator().manual_seed(7), use_cache=False, **kw)
    c = model.generate(x, 25, generator=torch.Generator().manual_seed(8), **kw)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)  # the seed matters: this is sampling, not greedy


def test_cached_equals_recomputed_left_padded(model):
    x = torch.randint(1, 1003, (3, 8))
    mask = torch.ones_like(x)
    mask[0, :5] = 0
    mask[2, :2] = 0
    kw = dict(attention_mask=mask, temperature=0.9, top_k=30)
    a = model.generate(x, 20, generator=torch.Generator().manual_seed(3), **kw)
    b = model.generate(x, 20, generator=torch.Generator().manual_seed(3), use_cache=False, **kw)
    assert torch.equal(a, b)
    alone = model.generate(x[:1, 5:], 20)
    padded = model.generate(x, 20, attention_mask=mask)
    assert torch.equal(padded[0, 8:], alone[0, 3:])


def test_prefill_logits_equal_full_forward(model):
    x = torch.randint(0, 1003, (2, 9))
    decoder = model.make_decoder(2, 12)
    with torch.no_grad():
        last = decoder.prefill(x, torch.arange(9), torch.arange(9)[None].expand(2, 9))
        step = decoder.decode_one_token(x[:, :1], torch.tensor([9]), torch.full((2, 1), 9))
        full = model(torch.cat([x, x[:, :1]], dim=1))
    torch.testing.assert_close(last, full[:, 8], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(step, full[:, 9], rtol=1e-5, atol=1e-5)


def test_eos_stops_a_row_and_fills_with_eos(model):
    x = torch.randint(0, 1003, (3, 4))
    free = model.generate(x, 12)
    eos = int(free[1, 4 + 3])  # row 1 makes this token at its 4th step
    out = model.generate(x, 12, eos_token_id=eos)
    for row in range(3):
        gen = out[row, 4:]
        hits = (free[row, 4:] == eos).nonzero()
        if len(hits):
            first = int(hits[0])
            assert torch.equal(gen[:first + 1], free[row, 4:4 + first + 1])
            assert (gen[first:] == eos).all()
        else:
            assert torch.equal(gen, free[row, 4:])


def test_output_shape_dtype_and_prompt_kept(model):
    x = torch.randint(0, 1003, (2, 3))
    out = model.generate(x, 0)
    assert out.shape == (2, 3) and out.dtype == torch.long and torch.equal(out, x)
    out = model.generate(x[0], 4)  # 1-D prompt is a batch of one
    assert out.shape == (1, 7)


def test_bad_generation_arguments(model):
    x = torch.zeros(1, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="n_positions"):
        model.generate(x, 73)
    model.generate(x, 72)  # exactly n_positions is fine
    with pytest.raises(ValueError, match="temperature"):
        model.generate(x, 2, temperature=-1.0)
    with pytest.raises(ValueError, match="top_k"):
        model.generate(x, 2, temperature=1.0, top_k=0)
    with pytest.raises(ValueError, match="top_p"):
        model.generate(x, 2, temperature=1.0, top_p=1.5)
    with pytest.raises(ValueError, match="top_p"):
        model.generate(x, 2, temperature=1.0, top_p=0.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(x, -1)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.generate(torch.tensor([[5000]]), 2)
    with pytest.raises(ValueError, match="eos_token_id"):
        model.generate(x, 2, eos_token_id=1003)


def test_generate_restores_training_mode(model):
    model.train()
    model.generate(torch.zeros(1, 2, dtype=torch.long), 2)
    assert model.training
    model.eval()


def test_chunked_prefill_equals_full_forward(model):
    """A second prefill at later slots attends to the earlier chunk in the cache."""
    x = torch.randint(0, 1003, (2, 9))
    pos = torch.arange(9)[None].expand(2, 9)
    decoder = model.make_decoder(2, 9)
    with torch.no_grad():
        first = decoder.prefill(x[:, :5], torch.arange(5), pos[:, :5])
        second = decoder.prefill(x[:, 5:], torch.arange(5, 9), pos[:, 5:])
        full = model(x)
    torch.testing.assert_close(first, full[:, 4], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(second, full[:, 8], rtol=1e-5, atol=1e-5)
