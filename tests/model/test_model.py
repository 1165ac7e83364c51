import pytest
import torch

import llm
from llm import GPT, GPTConfig
from llm.ops import BackendUnavailableError, available_backends, get_ops, reference

from hf_models import TINY_ODD, hf_checkpoint

CONFIGS = [
    TINY_ODD,
    dict(n_embd=64, n_head=4, n_layer=3, n_positions=64, vocab_size=257),
    dict(n_embd=40, n_head=5, n_layer=1, n_positions=31, vocab_size=50257),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"C{c['n_embd']}h{c['n_head']}V{c['vocab_size']}")
def test_logits_match_transformers(tmp_path, cfg):
    folder, hf = hf_checkpoint(tmp_path, **cfg)
    model = GPT.from_pretrained(folder)
    x = torch.randint(0, cfg["vocab_size"], (3, min(29, cfg["n_positions"])))
    with torch.no_grad():
        ref = hf(x).logits
        out = model(x)
    assert out.shape == ref.shape == (3, x.shape[1], cfg["vocab_size"])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_logits_match_transformers_with_left_padding(tmp_path):
    folder, hf = hf_checkpoint(tmp_path, **TINY_ODD)
    model = GPT.from_pretrained(folder)
    x = torch.randint(0, 1003, (2, 13))
    mask = torch.ones_like(x)
    mask[0, :4] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = hf(x, attention_mask=mask, position_ids=pos).logits
        out = model(x, attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(out[real], ref[real], rtol=1e-5, atol=1e-5)
    # the padded row's real tokens give what the unpadded sequence gives
    with torch.no_grad():
        alone = model(x[:1, 4:])
    torch.testing.assert_close(out[0, 4:], alone[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cfg", CONFIGS[:2], ids=["odd", "small"])
def test_greedy_generate_matches_transformers(tmp_path, cfg):
    folder, hf = hf_checkpoint(tmp_path, **cfg)
    model = GPT.from_pretrained(folder)
    x = torch.randint(0, cfg["vocab_size"], (2, 7))
    ref = hf.generate(x, max_new_tokens=12, do_sample=False, pad_token_id=0,
                      attention_mask=torch.ones_like(x))
    out = model.generate(x, max_new_tokens=12)
    assert out.dtype == torch.long and out.shape == (2, 19)
    assert torch.equal(out, ref)


def test_left_padded_generate_matches_transformers(tmp_path):
    folder, hf = hf_checkpoint(tmp_path, **TINY_ODD)
    model = GPT.from_pretrained(folder)
    x = torch.randint(1, 1003, (3, 9))
    mask = torch.ones_like(x)
    mask[1, :3] = 0
    mask[2, :6] = 0
    x = x.masked_fill(mask == 0, 0)
    ref = hf.generate(x, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0)
    out = model.generate(x, 10, attention_mask=mask)
    assert torch.equal(out, ref)


def test_model_math_is_gpt2(tmp_path):
    """Tied lm_head, learned positions, parameter names as in HF."""
    model = GPT(GPTConfig(**TINY_ODD))
    assert model.lm_head.weight is model.transformer.wte.weight
    names = set(model.state_dict())
    assert "transformer.h.1.attn.c_attn.weight" in names and "transformer.wpe.weight" in names
    assert model.transformer.h[0].attn.c_attn.weight.shape == (3 * 96, 96)  # [out, in]


def test_loss_matches_cross_entropy_of_logits():
    model = GPT(GPTConfig(**TINY_ODD))
    x = torch.randint(0, 1003, (2, 11))
    y = torch.randint(0, 1003, (2, 11))
    y[0, :3] = -100
    logits = model(x)
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, 1003), y.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(model.loss(x, y), ref)


def test_bad_token_ids_raise_value_error():
    model = GPT(GPTConfig(**TINY_ODD))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(torch.tensor([[1, 1003]]))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(torch.tensor([[-1, 2]]))
    with pytest.raises(ValueError, match="integer"):
        model(torch.rand(1, 3))
    with pytest.raises(ValueError, match="n_positions"):
        model(torch.zeros(1, 78, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask shape"):
        model(torch.zeros(1, 5, dtype=torch.long), attention_mask=torch.ones(1, 4))
    with pytest.raises(ValueError, match="only 0 and 1"):
        model(torch.zeros(1, 3, dtype=torch.long), attention_mask=torch.tensor([[0, 2, 1]]))


def test_unknown_backend_lists_valid_ones():
    with pytest.raises(ValueError) as e:
        GPT(GPTConfig(**TINY_ODD), backend="cuda-magic")
    for name in ("torch", "triton", "native", "auto"):
        assert name in str(e.value)
    assert {"torch", "auto"} <= set(available_backends())


def test_auto_backend_takes_the_best_that_runs_here():
    model = GPT(GPTConfig(**TINY_ODD), backend="auto")
    expected = None
    for name in llm.ops.auto_order():
        try:
            get_ops(name)
        except BackendUnavailableError:
            continue
        expected = name
        break
    assert model.backend == expected
    if not torch.cuda.is_available():
        assert model.backend != "triton"  # the interpreter is for tests, never chosen by auto


def test_registered_backend_is_used():
    calls = []

    def counting_layer_norm(x, w, b, eps):
        calls.append(x.shape)
        return reference.layer_norm(x, w, b, eps)

    llm.ops.register_backend("counting", lambda: reference.TORCH_OPS.replace(name="counting", layer_norm=counting_layer_norm))
    try:
        model = GPT(GPTConfig(**TINY_ODD), backend="counting")
        model(torch.zeros(1, 5, dtype=torch.long))
        assert len(calls) == 2 * TINY_ODD["n_layer"] + 1
    finally:
        llm.ops._LOADERS.pop("counting")


def test_unavailable_backend_error_says_why():
    def broken():
        raise BackendUnavailableError("backend 'broken' is not available: needs a CUDA device")

    llm.ops.register_backend("broken", broken)
    try:
        with pytest.raises(BackendUnavailableError, match="needs a CUDA device"):
            get_ops("broken")
    finally:
        llm.ops._LOADERS.pop("broken")


def test_config_presets_and_json_round_trip(tmp_path):
    for name, (C, L, H) in {"gpt2": (768, 12, 12), "gpt2-medium": (1024, 24, 16),
                            "gpt2-large": (1280, 36, 20), "gpt2-xl": (1600, 48, 25)}.items():
        c = GPTConfig.from_preset(name)
        assert (c.n_embd, c.n_layer, c.n_head, c.vocab_size, c.n_positions) == (C, L, H, 50257, 1024)
    c = GPTConfig(**TINY_ODD)
    c.save_json(tmp_path / "config.json")
    assert GPTConfig.from_json(tmp_path) == c
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=100, n_head=3)
    with pytest.raises(ValueError, match="unknown preset"):
        GPTConfig.from_preset("gpt5")


def test_reference_ops_gradcheck_fp64():
    from llm.ops import reference as ops

    torch.manual_seed(0)
    d = dict(dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 3, 7, **d)
    w, b = torch.randn(7, **d), torch.randn(7, **d)
    assert torch.autograd.gradcheck(lambda x, w, b: ops.layer_norm(x, w, b, 1e-5), (x, w, b), fast_mode=True)
    fc_w, fc_b = torch.randn(11, 7, **d), torch.randn(11, **d)
    pr_w, pr_b = torch.randn(7, 11, **d), torch.randn(7, **d)
    assert torch.autograd.gradcheck(ops.mlp, (x, fc_w, fc_b, pr_w, pr_b), fast_mode=True)
    q, k, v = (torch.randn(2, 3, 5, 4, **d) for _ in range(3))
    mask = torch.tensor([[False, True, True, True, True], [True] * 5])
    assert torch.autograd.gradcheck(lambda q, k, v: ops.attention(q, k, v, mask), (q, k, v), fast_mode=True)
    h = torch.randn(6, 7, **d)
    t = torch.tensor([1, 4, -100, 0, 10, 3])
    assert torch.autograd.gradcheck(lambda h, w: ops.lm_head_loss(h, w, t), (h, torch.randn(11, 7, **d)), fast_mode=True)


def test_attention_with_all_true_mask_equals_causal():
    from llm.ops import reference as ops

    q, k, v = (torch.randn(2, 3, 9, 8) for _ in range(3))
    full = torch.ones(2, 9, dtype=torch.bool)
    torch.testing.assert_close(ops.attention(q, k, v, full), ops.attention(q, k, v))
    # the cached form over a longer cache, with the tail unwritten, gives the same
    kc = torch.cat([k, torch.randn(2, 3, 4, 8)], dim=2)
    vc = torch.cat([v, torch.randn(2, 3, 4, 8)], dim=2)
    out = ops.cached_attention(q, kc, vc, torch.arange(9))
    torch.testing.assert_close(out, ops.attention(q, k, v))
