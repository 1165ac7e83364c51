"""The native backend at model level: the C++ decoder and the op table against `torch`
(greedy tokens, logits, padding, cache vs recomputation, bf16 and int8 weights, dropping and
reordering batch rows), what happens when the extension is not built, and a bad
$LLM_NATIVE_ISA."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import llm
from llm import GPT, BackendUnavailableError, GPTConfig, get_ops
from llm.native.decoder import NativeDecoder

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
    decoder (`model.make_decoder`) or `decoder` (an object with prefill / decode_one_token)."""
    B, T = ids.shape
    run = decoder if decoder is not None else model.make_decoder(B, T + steps)
    pos = torch.arange(T + steps)[None].expand(B, -1)
    out = [run.prefill(ids, torch.arange(T), pos[:, :T])]
    for t in range(T, T + steps):
        tok = out[-1].argmax(-1, keepdim=True)
        out.append(run.decode_one_token(tok, torch.tensor([t]), pos[:, t:t + 1]))
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


def forced_logits(decoder, ids, toks):
    """Logits of the prefill of `ids` and of decoding the teacher-forced `toks` (one column
    per step), in float64: every decoder sees the same inputs."""
    B, T = ids.shape
    pos = torch.arange(T + toks.shape[1])[None].expand(B, -1)
    outs = [decoder.prefill(ids, torch.arange(T), pos[:, :T])]
    for i in range(toks.shape[1]):
        t = T + i
        outs.append(decoder.decode_one_token(toks[:, i:i + 1], torch.tensor([t]), pos[:, t:t + 1]))
    return torch.stack([o.double() for o in outs], 1)


@needs_native
@torch.inference_mode()
def test_bf16_decoder_within_bf16_error():
    ref, nat = pair()
    ids = torch.randint(0, ref.config.vocab_size, (2, 6))
    ref_bf16 = GPT(ref.config, backend="torch").eval()
    ref_bf16.load_state_dict(nat.state_dict())
    ref_bf16.to(torch.bfloat16)
    nat.to(torch.bfloat16)
    ref.double()
    toks = decode_logits(ref, ids, 3).argmax(-1)[:, :3]  # the exact model's tokens
    exact = forced_logits(ref.make_decoder(2, 9), ids, toks)
    torch_err = (forced_logits(ref_bf16.make_decoder(2, 9), ids, toks) - exact).abs().max().item()
    native_err = (forced_logits(nat.make_decoder(2, 9), ids, toks) - exact).abs().max().item()
    assert native_err <= 2 * torch_err


def quantized_rows(x):
    """x with each row rounded to int8 steps of its own scale (max |x| / 127)."""
    amax = x.abs().amax(-1, keepdim=True)
    return torch.round(x * (127 / amax)).clamp(-127, 127) * (amax / 127)


def int8_reference(model):
    """`model` in float64, computing as the native int8 decoder does: weights rounded to int8
    per output channel, and every linear layer's input rows to int8 per row (embeddings stay
    in full precision; the tied lm_head reads an int8 copy)."""
    q = GPT(model.config, backend="torch").eval()
    q.load_state_dict(model.state_dict())
    q.double()
    for name, p in q.named_parameters():
        if p.dim() == 2 and ".h." in name:
            p.copy_(quantized_rows(p))
    head = quantized_rows(q.lm_head.weight.detach())

    def linear(x, w, b=None):
        return F.linear(quantized_rows(x), head if w is q.lm_head.weight else w, b)

    def mlp(x, fc_w, fc_b, proj_w, proj_b):
        return linear(F.gelu(linear(x, fc_w, fc_b), approximate="tanh"), proj_w, proj_b)

    for m in q.modules():
        if hasattr(m, "ops"):
            m.ops = m.ops.replace(linear=linear, mlp=mlp)
    return q


@needs_native
@torch.inference_mode()
def test_int8_decoder_within_2x_of_int8_reference():
    ref, nat = pair()
    ids = torch.randint(0, ref.config.vocab_size, (2, 6))
    q = int8_reference(ref)
    ref.double()
    toks = decode_logits(ref, ids, 3).argmax(-1)[:, :3]
    exact = forced_logits(ref.make_decoder(2, 9), ids, toks)
    torch_err = (forced_logits(q.make_decoder(2, 9), ids, toks) - exact).abs().max().item()
    native_err = (forced_logits(NativeDecoder(nat, 2, 9, weight_format="int8"), ids, toks) - exact).abs().max().item()
    assert 0 < native_err <= 2 * torch_err


def run_with_selects(decoder, ids, mask, toks, rows, selects):
    """Prefill `ids[rows]` (left padding in `mask`), then decode the teacher-forced `toks`
    one column per step, calling `decoder.select_rows(selects[i])` before step i. Returns,
    per call, (the batch rows it computed, logits)."""
    T, n = ids.shape[1], toks.shape[1]
    full = torch.cat([mask, torch.ones_like(toks)], 1)
    key_valid, positions = full.bool(), GPT.position_ids_from_mask(full)
    cur = torch.as_tensor(rows)
    out = [(cur, decoder.prefill(ids[cur], torch.arange(T), positions[cur, :T], key_valid[cur]))]
    for i in range(n):
        if i in selects:
            decoder.select_rows(selects[i])
            cur = cur[selects[i]]
        t = T + i
        logits = decoder.decode_one_token(toks[cur, i:i + 1], torch.tensor([t]), positions[cur, t:t + 1],
                                          key_valid[cur])
        out.append((cur, logits))
    return out


@needs_native
@torch.inference_mode()
@pytest.mark.parametrize("weight_format", ["float32", "bfloat16", "int8"])
def test_select_rows_matches_decoding_only_those_rows(weight_format):
    ref, nat = pair()
    V, B, T = ref.config.vocab_size, 4, 7
    ids, toks = torch.randint(0, V, (B, T)), torch.randint(0, V, (B, 5))
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, :3] = 0  # left padding in rows that stay
    mask[3, :5] = 0
    mask[2, :1] = 0
    S = T + toks.shape[1]
    # drop rows 0 and 2 and swap the other two, later keep only (original) row 1
    selects = {2: torch.tensor([3, 1]), 4: torch.tensor([1])}
    got = run_with_selects(NativeDecoder(nat, B, S, weight_format), ids, mask, toks, range(B), selects)
    assert [tuple(rows.tolist()) for rows, _ in got] == [(0, 1, 2, 3)] * 3 + [(3, 1)] * 2 + [(1,)]
    # a decoder that never drops a row: each row's logits are that row's alone
    every = run_with_selects(NativeDecoder(nat, B, S, weight_format), ids, mask, toks, range(B), {})
    # a decoder that holds only rows 3 and 1 from the start
    alone = run_with_selects(NativeDecoder(nat, 2, S, weight_format), ids, mask, toks, [3, 1], {4: torch.tensor([1])})
    # every row is computed on its own (same sums in the same order), so the logits are equal
    for (rows, logits), (_, e), (a_rows, a) in zip(got, every, alone):
        assert logits.shape == (len(rows), V)
        assert torch.equal(logits, e[rows])
        keep = [i for i, r in enumerate(rows.tolist()) if r in a_rows.tolist()]
        assert torch.equal(logits[keep], a[[a_rows.tolist().index(rows[i]) for i in keep]])
    if weight_format != "float32":
        return
    # the torch backend's decoder, and recomputing the whole sequence, agree
    module = run_with_selects(ref.make_decoder(B, S), ids, mask, toks, range(B), selects)
    full = torch.cat([mask, torch.ones_like(toks)], 1)
    seq = torch.cat([ids, toks], 1)
    for i, ((rows, logits), (m_rows, m)) in enumerate(zip(got, module)):
        assert torch.equal(rows, m_rows)
        torch.testing.assert_close(logits, m.float(), rtol=1e-4, atol=1e-4)
        n = T + i  # tokens seen so far: the prompt and i decoded ones
        again = ref.last_token_logits(seq[rows, :n], GPT.position_ids_from_mask(full[rows, :n]), full[rows, :n].bool())
        torch.testing.assert_close(logits, again.float(), rtol=1e-4, atol=1e-4)


@needs_native
@torch.inference_mode()
def test_select_rows_bf16_model_matches_decoding_only_those_rows():
    _, nat = pair()
    nat.to(torch.bfloat16)
    V, B, T = nat.config.vocab_size, 3, 6
    ids, toks = torch.randint(0, V, (B, T)), torch.randint(0, V, (B, 3))
    mask = torch.ones(B, T, dtype=torch.long)
    mask[2, :4] = 0
    S = T + 3
    dec = nat.make_decoder(B, S)
    assert isinstance(dec, NativeDecoder) and dec.weights.format() == "bfloat16"
    got = run_with_selects(dec, ids, mask, toks, range(B), {1: torch.tensor([2, 0])})
    alone = run_with_selects(nat.make_decoder(2, S), ids, mask, toks, [2, 0], {})
    for (rows, logits), (a_rows, a) in zip(got[2:], alone[2:]):
        assert torch.equal(rows, a_rows)
        assert torch.equal(logits, a)


@needs_native
@torch.inference_mode()
def test_select_rows_rejects_bad_index():
    _, nat = pair()
    dec = NativeDecoder(nat, 3, 8)._decoder
    pos = torch.arange(4)[None].expand(3, -1)
    dec.prefill(torch.zeros(3, 4, dtype=torch.long), torch.arange(4), pos, None)
    for bad in (torch.tensor([0.0]), torch.tensor([[0]]), torch.tensor([], dtype=torch.long)):
        with pytest.raises(RuntimeError, match=r"select_rows: index must be int64 \[b >= 1\]"):
            dec.select_rows(bad)
    with pytest.raises(RuntimeError, match=r"index\[1\] = 3 is outside the batch \[0, 3\)"):
        dec.select_rows(torch.tensor([0, 3]))
    with pytest.raises(RuntimeError, match=r"index\[0\] = -1 is outside the batch \[0, 3\)"):
        dec.select_rows(torch.tensor([-1]))
    assert dec.batch_size() == 3  # a rejected index changes nothing
    dec.select_rows(torch.tensor([2, 0]))
    assert dec.batch_size() == 2 and dec.k_cache().shape[1] == 2
    with pytest.raises(RuntimeError, match=r"tokens must be int64 \[2, T >= 1\]"):
        dec.decode_one_token(torch.zeros(3, 1, dtype=torch.long), torch.tensor([4]), pos[:, :1], None)
    with pytest.raises(RuntimeError, match=r"key_valid must be bool \[2, >= 8\]"):
        dec.decode_one_token(torch.zeros(2, 1, dtype=torch.long), torch.tensor([4]), pos[:2, :1],
                             torch.ones(3, 8, dtype=torch.bool))
    assert dec.decode_one_token(torch.zeros(2, 1, dtype=torch.long), torch.tensor([4]), pos[:2, :1], None).shape == (
        2, nat.config.vocab_size)


@needs_native
def test_bad_isa_variable_is_a_clean_error(tmp_path):
    """$LLM_NATIVE_ISA naming no instruction set: a ValueError saying so, not an abort."""
    env = {**os.environ, "LLM_NATIVE_ISA": "bogus"}
    forward = ("import torch, llm\n"
               "model = llm.GPT(llm.GPTConfig.from_preset('tiny'), backend='native')\n"
               "model(torch.tensor([[1, 2, 3]]))\n")
    r = subprocess.run([sys.executable, "-c", forward], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, (r.returncode, r.stderr)  # an uncaught Python exception, not SIGABRT (134)
    assert "terminate called" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError: ") and "LLM_NATIVE_ISA" in last, r.stderr
    assert "'portable', 'avx2', " in last and "'neon_bf16'" in last
    GPT(GPTConfig.from_preset("tiny")).save_pretrained(tmp_path)
    r = subprocess.run([sys.executable, "-m", "llm", "generate", "--model", str(tmp_path), "--prompt", "Hi",
                        "--max-new-tokens", "2", "--backend", "native"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "terminate called" not in r.stderr
    assert "error: " in r.stderr and "LLM_NATIVE_ISA" in r.stderr and "'avx512_bf16'" in r.stderr


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
    _, nat = pair()
    dec = NativeDecoder(nat, 1, 8)
    with pytest.raises(RuntimeError, match=r"tokens must be int64 \[1, T >= 1\]"):
        dec._decoder.prefill(torch.zeros(2, 3, dtype=torch.long), torch.arange(3), torch.arange(3)[None], None)
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
    from llm.native.packing import pack_model

    _, nat = pair()
    with torch.no_grad():
        nat.transformer.ln_f.weight = torch.nn.Parameter(torch.ones(7))
    with pytest.raises(RuntimeError, match="ln_f parameters must have 64 elements, got 7"):
        pack_model(nat)
    _, nat = pair()
    nat.transformer.h[1].attn.c_attn.bias = torch.nn.Parameter(torch.zeros(5))
    with pytest.raises(RuntimeError, match="bias of 192 features has 5 elements"):
        pack_model(nat)
