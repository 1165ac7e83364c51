"""A model whose weights change after it generated (in place through `.data`, by loading
other weights, or built under inference_mode) generates with the new weights on every
backend: nothing packed or cached from the old ones is reused."""

import pytest
import torch

import llm
from llm.ops import BackendUnavailableError


def _native_or_skip():
    try:
        llm.get_ops("native")
    except BackendUnavailableError as e:
        pytest.skip(str(e))


def _pair(seed):
    torch.manual_seed(seed)
    return llm.GPT(llm.GPTConfig.from_preset("tiny")).eval()


@pytest.mark.parametrize("backend", ["torch", "native"])
def test_in_place_data_copy_is_seen(backend):
    if backend == "native":
        _native_or_skip()
    model, other = _pair(0), _pair(1)
    model.set_backend(backend)
    ids = torch.tensor([[5, 6, 7]])
    before = model.generate(ids, 10)
    model(ids)  # the op-table path packs linear weights too
    with torch.no_grad():
        for p, q in zip(model.parameters(), other.parameters()):
            p.data.copy_(q)
    want = other.generate(ids, 10)
    assert not torch.equal(want, before)
    assert torch.equal(model.generate(ids, 10), want)
    torch.testing.assert_close(model(ids), other(ids), rtol=1e-4, atol=1e-4)


def test_model_built_under_inference_mode():
    _native_or_skip()
    other = _pair(1)
    with torch.inference_mode():
        model = _pair(0).set_backend("native")
        ids = torch.tensor([[5, 6, 7]])
        model.generate(ids, 6)
        for p, q in zip(model.parameters(), other.parameters()):
            p.copy_(q)
        assert torch.equal(model.generate(ids, 6), other.generate(ids, 6))
