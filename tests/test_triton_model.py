"""GPT(config, backend="triton") against backend "torch" on a tiny odd-sized GPT-2."""

import copy

import pytest
import torch

pytest.importorskip("triton")

from llm import GPT  # noqa: E402
from llm.config import GPTConfig  # noqa: E402
from llm.ops import IGNORE_INDEX  # noqa: E402
from llm.testing import assert_ok, within_tolerance  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CONFIG = GPTConfig(vocab_size=101, n_positions=48, n_embd=60, n_layer=2, n_head=3, n_inner=97)


def _pair():
    torch.manual_seed(0)
    ref = GPT(CONFIG, backend="torch").to(DEVICE)
    tri = copy.deepcopy(ref).set_backend("triton")
    return ref, tri


def _close(a, b, rtol=2e-5):
    assert_ok(within_tolerance("triton vs torch model", a, b, rtol))


def _batch(B=3, T=29):
    ids = torch.randint(0, CONFIG.vocab_size, (B, T), device=DEVICE)
    targets = torch.roll(ids, -1, dims=1)
    targets[:, -1] = IGNORE_INDEX
    return ids, targets


def test_logits_loss_and_every_gradient_match():
    ref, tri = _pair()
    ids, targets = _batch()
    _close(tri(ids), ref(ids))
    losses = []
    for model in (ref, tri):
        loss = model.loss(ids, targets)
        loss.backward()
        losses.append(loss)
    _close(losses[1], losses[0])
    ref_grads = dict(ref.named_parameters())
    for name, p in tri.named_parameters():
        assert p.grad is not None, name
        _close(p.grad, ref_grads[name].grad)


def test_left_padded_batch_matches():
    ref, tri = _pair()
    ids, targets = _batch(B=2, T=17)
    mask = torch.ones_like(ids)
    mask[1, :6] = 0
    targets[1, :6] = IGNORE_INDEX
    real = mask.bool()
    _close(tri(ids, mask)[real], ref(ids, mask)[real])
    loss_ref, loss_tri = ref.loss(ids, targets, mask), tri.loss(ids, targets, mask)
    _close(loss_tri, loss_ref)
    loss_ref.backward()
    loss_tri.backward()
    for (name, p), q in zip(tri.named_parameters(), ref.parameters()):
        _close(p.grad, q.grad)


def test_adamw_steps_give_the_same_losses():
    ref, tri = _pair()
    ids, targets = _batch()
    curves = []
    for model in (ref, tri):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        curve = []
        for _ in range(4):
            opt.zero_grad(set_to_none=True)
            loss = model.loss(ids, targets)
            loss.backward()
            opt.step()
            curve.append(loss.item())
        curves.append(curve)
    assert curves[0][-1] < curves[0][0]
    for a, b in zip(curves[1], curves[0]):
        assert abs(a - b) <= 1e-4 * max(1.0, abs(b)), (curves[1], curves[0])


def test_greedy_generation_gives_the_same_tokens():
    ref, tri = _pair()
    prompt = torch.randint(0, CONFIG.vocab_size, (2, 9), device=DEVICE)
    out_ref = ref.generate(prompt, max_new_tokens=12)
    out_tri = tri.generate(prompt, max_new_tokens=12)
    assert torch.equal(out_tri, out_ref)
    mask = torch.ones_like(prompt)
    mask[0, :4] = 0  # left padding
    out_ref = ref.generate(prompt, max_new_tokens=8, attention_mask=mask)
    out_tri = tri.generate(prompt, max_new_tokens=8, attention_mask=mask)
    assert torch.equal(out_tri, out_ref)
    # cached decoding through the kernels equals recomputation through the kernels
    assert torch.equal(tri.generate(prompt, max_new_tokens=8, attention_mask=mask, use_cache=False), out_tri)
