"""The native backend at model level: the C++ decoder and the op table against `torch`
(greedy tokens, logits, padding, cache vs recomputation, bf16 and int8 weights), and what
happens when the extension is not built."""

import os
import sys

import pytest
import torch

import llm
from llm import GPT, BackendUnavailableError, GPTConfig, get_ops

NATIVE_SKIPPED = os.environ.get("LLM_SKIP_NATIVE", "0") not in ("", "0")
needs_native = pytest.mark.skipif(NATIVE_SKIPPED, reason="llm._C was not built (LLM_SKIP_NATIVE is set)")


def pair(preset="tiny", **overrides):
    """(torch model, native model) with the same random weights."""
    cfg = GPTConfig.from_preset(preset, **overrides)
    ref = GPT(cfg, backend="torch").eval()
    nat = GPT(cfg, backend="native").eval()
    nat.load_state_dict(ref.state_dict())
    return ref, nat


def decode_logits(model, ids, steps, decoder=None):
    """Logits of the prefill and of `steps` greedy decode steps, through the model's own
    cache path or `decoder` (an object with prefill / decode_one_token)."""
    B, T = ids.shape
    run = decoder or model
    if decoder is None:
        model.setup_caches(B, T + steps)
    pos = torch.arange(T + steps)[None].expand(B, -1)
    out = [run.prefill(ids, torch.arange(T), pos[:, :T])]
    for t in range(T, T + steps):
        tok = out[-1].argmax(-1, keepdim=True)
        out.append(run.decode_one_token(tok, torch.tensor([t]), pos[:, t:t + 1]))
    if decoder is None:
        model.clear_caches()
    return torch.stack([o.float() for o in out], 1)  # (B, steps + 1, V)


@needs_native
@torch.inference_mode()
def test_tiny_greedy_and_logits_match_torch():
    ref, nat = pair()
    ids = torch.randint(0, ref.config.vocab_size, (3, 7))
    assert torch.equal(nat.generate(ids, 10), ref.generate(ids, 10))
    torch.testing.assert_close(decode_logits(nat, ids, 5), decode_logits(ref, ids, 5), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(nat(ids), ref(ids), rtol=1e-4, atol=1e-4)  # op-table path


@needs_native
@torch.inference_mode()
def test_gpt2_shape_greedy_and_logits_match_torch():
    ref, nat = pair("gpt2")
    ids = torch.randint(0, ref.config.vocab_size, (1, 8))
    assert torch.equal(nat.generate(ids, 6), ref.generate(ids, 6))
    torch.testing.assert_close(decode_logits(nat, ids, 2), decode_logits(ref, ids, 2), rtol=1e-4, atol=1e-4)


@needs_native
@torch.inference_mode()
def test_left_padded_batch_matches_torch():
    ref, nat = pair()
    ids = torch.randint(0, ref.config.vocab_size, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, :4] = 0
    mask[2, :8] = 0
    out = nat.generate(ids, 8, attention_mask=mask)
    assert torch.equal(out, ref.generate(ids, 8, attention_mask=mask))
    # a padded row gives what it gives alone
    alone = nat.generate(ids[1:2, 4:], 8)
    assert torch.equal(out[1, 9:], alone[0, 5:])


@needs_native
@torch.inference_mode()
def test_cache_equals_recomputation_and_seeded_sampling():
    _, nat = pair(n_layer=3)
    ids = torch.randint(0, nat.config.vocab_size, (2, 5))
    assert torch.equal(nat.generate(ids, 9), nat.generate(ids, 9, use_cache=False))
    a = nat.generate(ids, 9, temperature=0.9, top_k=50, generator=torch.Generator().manual_seed(3))
    b = nat.generate(ids, 9, temperature=0.9, top_k=50, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@needs_native
@torch.inference_mode()
def test_no_bias_model_matches_torch():
    ref, nat = pair(bias=False, n_embd=48, n_head=3, n_inner=100)  # odd MLP width too
    ids = torch.randint(0, ref.config.vocab_size, (2, 6))
    torch.testing.assert_close(decode_logits(nat, ids, 4), decode_logits(ref, ids, 4), rtol=1e-4, atol=1e-4)


@needs_native
@torch.inference_mode()
def test_bf16_decoder_within_bf16_error():
    ref, nat = pair()
    ids = torch.randint(0, ref.config.vocab_size, (2, 6))
    exact = decode_logits(ref.double(), ids, 3)
    ref_bf16 = GPT(ref.config, backend="torch").eval()
    ref_bf16.load_state_dict(nat.state_dict())
    ref_bf16.to(torch.bfloat16)
    nat.to(torch.bfloat16)
    # teacher-forced on the exact model's tokens, so all three see the same inputs
    toks = exact.argmax(-1)
    def forced(model):
        model.setup_caches(2, 6 + 3)
        pos = torch.arange(9)[None].expand(2, -1)
        outs = [model.prefill(ids, torch.arange(6), pos[:, :6])]
        for i, t in enumerate(range(6, 9)):
            outs.append(model.decode_one_token(toks[:, i:i + 1], torch.tensor([t]), pos[:, t:t + 1]))
        model.clear_caches()
        return torch.stack([o.double() for o in outs], 1)
    exact = forced(ref.double())
    torch_err = (forced(ref_bf16) - exact).abs().max().item()
    native_err = (forced(nat) - exact).abs().max().item()
    assert native_err <= 2 * torch_err


@needs_native
@torch.inference_mode()
def test_int8_decoder_matches_dequantized_reference():
    from llm.native_ops import NativeDecoder

    ref, nat = pair()
    ids = torch.randint(0, ref.config.vocab_size, (2, 5))
    dec = NativeDecoder(nat, 2, 8, weight_format="int8")
    got = decode_logits(nat, ids, 3, decoder=dec)

    def dequant(w):  # symmetric per output channel: q = round(w * 127 / amax), w ~ q * amax / 127
        amax = w.abs().amax(1, keepdim=True)
        inv = torch.full_like(amax, 127) / amax  # (127 / amax would be 127 * reciprocal(amax))
        return torch.round(w * inv).clamp(-127, 127) * (amax / 127)

    q = GPT(ref.config, backend="torch").eval()
    q.load_state_dict(ref.state_dict())
    for name, p in q.named_parameters():
        if p.dim() == 2 and ".h." in name:
            p.copy_(dequant(p))
    head = dequant(q.lm_head.weight.detach().clone())  # embeddings stay full precision

    def reference():
        q.setup_caches(2, 8)
        pos = torch.arange(8)[None].expand(2, -1)
        h = q.hidden_states(ids, None, pos[:, :5], torch.arange(5))[:, -1]
        outs = [h @ head.T]
        for i, t in enumerate(range(5, 8)):
            tok = got[:, i].argmax(-1, keepdim=True)
            h = q.hidden_states(tok, None, pos[:, t:t + 1], torch.tensor([t]))[:, -1]
            outs.append(h @ head.T)
        q.clear_caches()
        return torch.stack(outs, 1)

    torch.testing.assert_close(got, reference(), rtol=1e-4, atol=1e-4)


@needs_native
def test_training_on_native_backend_uses_reference_gradients():
    ref, nat = pair()
    ids = torch.randint(0, ref.config.vocab_size, (2, 7))
    ref.train()
    nat.train()
    ref.loss(ids, ids).backward()
    nat.loss(ids, ids).backward()
    for (name, a), (_, b) in zip(ref.named_parameters(), nat.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=name)


@needs_native
@torch.inference_mode()
def test_decoder_rejects_bad_inputs():
    from llm.native_ops import NativeDecoder

    _, nat = pair()
    dec = NativeDecoder(nat, 1, 8)
    with pytest.raises(RuntimeError, match=r"tokens must be int64 \[1, T >= 1\]"):
        dec.decoder.prefill(torch.zeros(2, 3, dtype=torch.long), torch.arange(3), torch.arange(3)[None], None)
    with pytest.raises(RuntimeError, match=r"input_pos\[0\] = 8 is outside the cache"):
        dec.decode_one_token(torch.zeros(1, 1), torch.tensor([8]), torch.tensor([[0]]))
    with pytest.raises(RuntimeError, match="token id 50257 is outside the vocabulary"):
        dec.decode_one_token(torch.tensor([[50257]]), torch.tensor([1]), torch.tensor([[1]]))
    with pytest.raises(RuntimeError, match="max_seq_len must be in"):
        NativeDecoder(nat, 1, 10_000)
    with pytest.raises(ValueError, match="unknown native weight format 'fp4'"):
        NativeDecoder(nat, 1, 8, weight_format="fp4")


def test_unbuilt_extension(monkeypatch):
    """Without llm._C: `import llm` works, 'native' says why it cannot run, 'auto' falls back."""
    monkeypatch.setitem(sys.modules, "llm._C", None)  # makes `import llm._C` fail
    if hasattr(llm, "_C"):
        monkeypatch.delattr(llm, "_C")
    with pytest.raises(BackendUnavailableError, match=r"llm\._C .*not built"):
        get_ops("native")
    with pytest.raises(BackendUnavailableError):
        GPT(GPTConfig.from_preset("tiny"), backend="native")
    assert get_ops("auto").name in ("torch", "triton")
    model = GPT(GPTConfig.from_preset("tiny"), backend="auto")
    assert model.generate(torch.tensor([[1, 2, 3]]), 2).shape == (1, 5)


@needs_native
def test_decoder_repacks_after_weights_change():
    ref, nat = pair()
    ids = torch.randint(0, ref.config.vocab_size, (1, 5))
    nat.generate(ids, 3)  # packs
    with torch.no_grad():
        for model in (ref, nat):
            model.transformer.h[0].mlp.c_fc.weight.mul_(-3.0)
            model.lm_head.weight.add_(0.05)
    torch.testing.assert_close(decode_logits(nat, ids, 2), decode_logits(ref, ids, 2), rtol=1e-4, atol=1e-4)


@needs_native
def test_packing_rejects_mismatched_weights():
    from llm.native_ops import pack_model

    _, nat = pair()
    with torch.no_grad():
        nat.transformer.ln_f.weight = torch.nn.Parameter(torch.ones(7))
    with pytest.raises(RuntimeError, match="ln_f parameters must have 64 elements, got 7"):
        pack_model(nat)
    _, nat = pair()
    nat.transformer.h[1].attn.c_attn.bias = torch.nn.Parameter(torch.zeros(5))
    with pytest.raises(RuntimeError, match="bias of 192 features has 5 elements"):
        pack_model(nat)
