"""transformers' GPT-2 patched onto llm's op table against the same model unpatched: logits,
loss, every gradient, generate, training; patch / unpatch; refused and handled options."""

import copy

import pytest
import torch

pytest.importorskip("transformers", reason="the patch works on transformers models")
from transformers import (GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, GPT2Model,  # noqa: E402
                          Trainer, TrainingArguments)
from transformers.models.gpt2 import modeling_gpt2  # noqa: E402

import llm  # noqa: E402
from llm.interop import transformers as interop  # noqa: E402
from llm.ops import BackendUnavailableError, get_ops  # noqa: E402

# model-level comparisons use the tolerance of the model tests (tests/model)
TOL = dict(rtol=1e-5, atol=1e-5)
SIZES = {
    "C96h3L2V1003": dict(n_embd=96, n_head=3, n_layer=2, n_positions=77, vocab_size=1003),
    "C64h4L3V257": dict(n_embd=64, n_head=4, n_layer=3, n_positions=64, vocab_size=257),
    "C40h5L1V515": dict(n_embd=40, n_head=5, n_layer=1, n_positions=31, vocab_size=515, n_inner=72),
}


def config(**kw):
    kw = {**SIZES["C96h3L2V1003"], **kw}
    kw.setdefault("resid_pdrop", 0.0)
    kw.setdefault("embd_pdrop", 0.0)
    kw.setdefault("attn_pdrop", 0.0)
    return GPT2Config(bos_token_id=0, eos_token_id=0, pad_token_id=0, **kw)


def pair(cls=GPT2LMHeadModel, backend="torch", attn_implementation=None, **kw):
    """(unpatched, patched) copies of one random-weight model."""
    a = cls(config(**kw)).eval()
    if attn_implementation is not None:
        a.set_attn_implementation(attn_implementation)
    b = copy.deepcopy(a)
    assert llm.patch_transformers(b, backend) is b
    return a, b


def backend_or_skip(name):
    try:
        get_ops(name)
    except BackendUnavailableError as e:
        pytest.skip(f"backend {name} cannot run here: {e}")
    return name


def padded_batch(vocab, B=3, T=13):
    ids = torch.randint(1, vocab, (B, T))
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, :4] = 0  # left padding
    return ids, mask


@pytest.fixture
def op_path_only(monkeypatch):
    """Fail if any attention call falls back to transformers' own attention function."""
    def refuse(*args, **kwargs):
        raise AssertionError("the attention fell back to transformers' function")
    monkeypatch.setattr(interop, "_hf_attention", refuse)


def grads_by_name(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# The Triton kernels run in Triton's CPU interpreter here (slow): the smallest size covers them.
@pytest.mark.parametrize("size, backend", [(s, b) for b in ("torch", "native") for s in SIZES]
                         + [("C40h5L1V515", "triton")])
def test_logits_loss_and_every_gradient_match(size, backend, op_path_only):
    a, b = pair(backend=backend_or_skip(backend), **SIZES[size])
    ids, mask = padded_batch(a.config.vocab_size, T=min(13, a.config.n_positions))
    # a label counts only where the position predicting it (the one before) is a real token:
    # outputs at padding positions are not defined
    labels = ids.clone()
    labels[:, 0] = -100
    labels[:, 1:][mask[:, :-1] == 0] = -100
    out_a = a(ids, attention_mask=mask, labels=labels)
    out_b = b(ids, attention_mask=mask, labels=labels)
    real = mask.bool()
    torch.testing.assert_close(out_b.logits[real], out_a.logits[real], **TOL)
    torch.testing.assert_close(out_b.loss, out_a.loss, **TOL)
    out_a.loss.backward()
    out_b.loss.backward()
    ga, gb = grads_by_name(a), grads_by_name(b)
    assert ga.keys() == gb.keys() and len(ga) == len(list(a.parameters()))
    for name in ga:
        torch.testing.assert_close(gb[name], ga[name], **TOL, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("backend", ["torch", "native"])
def test_inference_without_padding_matches(backend, op_path_only):
    a, b = pair(backend=backend_or_skip(backend))
    ids = torch.randint(0, 1003, (2, 17))
    with torch.inference_mode():
        torch.testing.assert_close(b(ids).logits, a(ids).logits, **TOL)


def test_eager_attention_float_mask(op_path_only):
    a, b = pair(attn_implementation="eager")
    ids, mask = padded_batch(1003)
    with torch.no_grad():
        la, lb = a(ids, attention_mask=mask).logits, b(ids, attention_mask=mask).logits
    torch.testing.assert_close(lb[mask.bool()], la[mask.bool()], **TOL)


@pytest.mark.parametrize("backend", ["torch", "native"])
def test_generate_greedy_and_seeded(backend, op_path_only):
    a, b = pair(backend=backend_or_skip(backend))
    ids, mask = padded_batch(1003, B=2, T=9)
    kw = dict(attention_mask=mask, max_new_tokens=12, min_new_tokens=12, pad_token_id=0)
    with torch.no_grad():
        assert torch.equal(b.generate(ids, do_sample=False, **kw), a.generate(ids, do_sample=False, **kw))
        outs = []
        for model in (a, b):
            torch.manual_seed(7)
            outs.append(model.generate(ids, do_sample=True, top_k=20, temperature=1.3, **kw))
    assert torch.equal(outs[0], outs[1])


def test_static_cache_falls_back_to_the_models_attention(monkeypatch):
    """A static cache's mask is not one the ops express: transformers' function runs it."""
    calls = []
    fallback = interop._hf_attention
    monkeypatch.setattr(interop, "_hf_attention", lambda *a, **k: calls.append(1) or fallback(*a, **k))
    a, b = pair()
    ids = torch.randint(0, 1003, (1, 6))
    kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=0, cache_implementation="static")
    with torch.no_grad():
        assert torch.equal(b.generate(ids, **kw), a.generate(ids, **kw))
    assert calls


def test_a_few_training_steps_give_the_same_losses():
    a, b = pair()
    a.train(), b.train()
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1) for m in (a, b)]
    losses = {0: [], 1: []}
    ids = torch.randint(0, 1003, (4, 16))
    for step in range(4):
        for i, (model, opt) in enumerate(zip((a, b), opts)):
            loss = model(ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses[i].append(loss.item())
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), **TOL)
    assert losses[0][-1] < losses[0][0]


def test_trainer_sees_the_same_model(tmp_path):
    """HF Trainer: LayerNorms still found by class (no weight decay), same losses."""
    a, b = pair()
    data = [{"input_ids": torch.randint(0, 1003, (16,))} for _ in range(8)]
    for d in data:
        d["labels"] = d["input_ids"]
    losses = []
    for name, model in (("a", a), ("b", b)):
        args = TrainingArguments(output_dir=str(tmp_path / name), per_device_train_batch_size=4, max_steps=3,
                                 learning_rate=1e-2, weight_decay=0.1, logging_steps=1, report_to=[],
                                 save_strategy="no", use_cpu=True, seed=0, data_seed=0, dataloader_num_workers=0)
        trainer = Trainer(model=model, args=args, train_dataset=data)
        assert not any("ln_" in n for n in trainer.get_decay_parameter_names(model)), "LayerNorms decayed"
        trainer.train()
        losses.append([r["loss"] for r in trainer.state.log_history if "loss" in r])
    assert len(losses[0]) == 3
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), **TOL)


def test_patch_unpatch_patch_again(tmp_path):
    a, b = pair()
    ids = torch.randint(0, 1003, (2, 11))
    with torch.no_grad():
        ref = a(ids).logits
        assert llm.unpatch_transformers(b) is b
        assert type(b.transformer.h[0].attn) is modeling_gpt2.GPT2Attention
        assert type(b.transformer.ln_f) is torch.nn.LayerNorm and type(b.transformer.h[1].mlp) is modeling_gpt2.GPT2MLP
        assert interop.patched_backend(b) is None
        torch.testing.assert_close(b(ids).logits, ref, rtol=0, atol=0)
        llm.patch_transformers(b, "torch")
        assert interop.patched_backend(b) == "torch"
        torch.testing.assert_close(b(ids).logits, ref, **TOL)
        assert b.state_dict().keys() == a.state_dict().keys()
        b.save_pretrained(tmp_path)  # a patched model saves as a plain transformers model
        loaded = GPT2LMHeadModel.from_pretrained(tmp_path).eval()
        assert type(loaded.transformer.h[0].attn) is modeling_gpt2.GPT2Attention
        torch.testing.assert_close(loaded(ids).logits, ref, rtol=0, atol=0)


def test_patching_one_model_leaves_others_and_transformers_untouched():
    forward = modeling_gpt2.GPT2Attention.forward
    a, b = pair()
    assert modeling_gpt2.GPT2Attention.forward is forward
    assert interop.patched_backend(a) is None
    assert all(type(m) in (torch.nn.LayerNorm, modeling_gpt2.GPT2Attention, modeling_gpt2.GPT2MLP)
               for m in a.modules() if isinstance(m, (torch.nn.LayerNorm, modeling_gpt2.GPT2Attention,
                                                      modeling_gpt2.GPT2MLP)))
    fresh = GPT2LMHeadModel(config())
    assert type(fresh.transformer.h[0].attn) is modeling_gpt2.GPT2Attention


def test_patching_a_patched_model_switches_its_backend():
    _, b = pair(backend="torch")
    llm.patch_transformers(b, backend_or_skip("native"))
    assert interop.patched_backend(b) == "native"
    assert type(type(b.transformer.h[0].attn).__mro__[2]) is type  # one level of subclassing, not two
    assert type(b.transformer.h[0].attn).__mro__[2] is modeling_gpt2.GPT2Attention


@pytest.mark.parametrize("cls", [GPT2Model, GPT2ForSequenceClassification])
def test_other_gpt2_models(cls, op_path_only):
    a, b = pair(cls)
    ids = torch.randint(1, 1003, (2, 10))
    with torch.no_grad():
        out_a, out_b = a(ids), b(ids)
    key = "last_hidden_state" if cls is GPT2Model else "logits"
    torch.testing.assert_close(out_b[key], out_a[key], **TOL)


@pytest.mark.parametrize("option", [dict(scale_attn_by_inverse_layer_idx=True), dict(scale_attn_weights=False),
                                    dict(activation_function="gelu_pytorch_tanh")])
def test_handled_options_match(option, op_path_only):
    a, b = pair(**option)
    ids, mask = padded_batch(1003)
    with torch.no_grad():
        la, lb = a(ids, attention_mask=mask).logits, b(ids, attention_mask=mask).logits
    torch.testing.assert_close(lb[mask.bool()], la[mask.bool()], **TOL)


@pytest.mark.parametrize("option, match", [
    (dict(add_cross_attention=True), "add_cross_attention"),
    (dict(activation_function="relu"), "activation_function='relu'"),
    (dict(reorder_and_upcast_attn=True), "reorder_and_upcast_attn"),
])
def test_unsupported_options_are_refused_before_anything_changes(option, match):
    model = GPT2LMHeadModel(config(**option))
    with pytest.raises(ValueError, match=match):
        llm.patch_transformers(model)
    assert interop.patched_backend(model) is None


def test_unsupported_attention_implementation_is_refused():
    model = GPT2LMHeadModel(config())
    model.config._attn_implementation = "flex_attention"
    with pytest.raises(ValueError, match="attn_implementation='flex_attention'"):
        llm.patch_transformers(model)


def test_a_model_that_is_not_gpt2_is_refused():
    with pytest.raises(ValueError, match="not a transformers model"):
        llm.patch_transformers(torch.nn.Linear(2, 2))
    model = GPT2LMHeadModel(config())
    model.config.model_type = "llama"
    with pytest.raises(ValueError, match="not a transformers GPT-2"):
        llm.patch_transformers(model)


def test_from_transformers_matches_and_owns_its_weights():
    hf = GPT2LMHeadModel(config()).eval()
    model = llm.GPT.from_transformers(hf)
    ids = torch.randint(0, 1003, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, **TOL)
        hf.transformer.wte.weight.add_(1.0)
    assert not torch.equal(model.transformer.wte.weight, hf.transformer.wte.weight)
    assert model.lm_head.weight is model.transformer.wte.weight


def test_from_transformers_untied_head_and_base_model():
    hf = GPT2LMHeadModel(config(tie_word_embeddings=False)).eval()
    with torch.no_grad():
        hf.lm_head.weight.normal_()
    model = llm.GPT.from_transformers(hf, backend="torch")
    assert not model.config.tie_word_embeddings
    ids = torch.randint(0, 1003, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, **TOL)
    base = llm.GPT.from_transformers(GPT2Model(config()).eval())
    assert base.lm_head.weight is base.transformer.wte.weight
    with pytest.raises(ValueError, match="GPT2LMHeadModel or GPT2Model"):
        llm.GPT.from_transformers(GPT2ForSequenceClassification(config()))


@pytest.mark.parametrize("backend", ["torch", "native"])
def test_weight_changes_after_patching_are_seen(backend):
    """Inference reuses one transposed view per weight (native packs it once): an optimizer
    step and a load_state_dict on the patched model must both reach the next forward."""
    a, b = pair(backend=backend_or_skip(backend))
    ids = torch.randint(0, 1003, (2, 9))
    with torch.inference_mode():
        b(ids)  # views made, weights packed
    for model in (a, b):
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        model(ids, labels=ids).loss.backward()
        opt.step()
        model.eval()
    with torch.inference_mode():
        torch.testing.assert_close(b(ids).logits, a(ids).logits, **TOL)
    fresh = GPT2LMHeadModel(config()).eval()
    b.load_state_dict(fresh.state_dict())
    with torch.inference_mode():
        torch.testing.assert_close(b(ids).logits, fresh(ids).logits, **TOL)
