"""A GPT whose lm_head is its own (`tie_word_embeddings=False`, as the book's model and
transformers allow): loading, saving, training, and every backend's decoder."""

import json

import pytest
import torch

from llm import GPT, GPTConfig
from llm.ops import BackendUnavailableError, get_ops
from llm.training import param_groups, train
from llm.training.corpus import build_corpus

from hf_models import TINY_ODD, hf_checkpoint

TOL = dict(rtol=1e-5, atol=1e-5)  # as the model tests (tests/model)
UNTIED = GPTConfig(**TINY_ODD, tie_word_embeddings=False)


def untied_model(**kw):
    model = GPT(GPTConfig(**{**TINY_ODD, "tie_word_embeddings": False, **kw})).eval()
    with torch.no_grad():
        model.lm_head.weight.normal_()  # far from wte: a head read from wte shows
    return model


def test_head_is_its_own_parameter_and_counted():
    model = untied_model()
    assert model.lm_head.weight is not model.transformer.wte.weight
    assert sum(p.numel() for p in model.parameters()) == model.config.num_params()
    ids = torch.randint(0, 1003, (2, 9))
    with torch.no_grad():
        h = model.hidden_states(ids, torch.arange(9)[None])
        torch.testing.assert_close(model(ids), h @ model.lm_head.weight.T, **TOL)
        targets = torch.randint(0, 1003, (2, 9))
        ref = torch.nn.functional.cross_entropy((h @ model.lm_head.weight.T).flatten(0, 1), targets.flatten())
        torch.testing.assert_close(model.loss(ids, targets), ref, **TOL)


def test_save_load_and_transformers_round_trip(tmp_path):
    transformers = pytest.importorskip("transformers", reason="the check reads the folder with transformers")
    model = untied_model()
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["tie_word_embeddings"] is False
    loaded = GPT.from_pretrained(tmp_path)
    assert not loaded.config.tie_word_embeddings
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 1003, (2, 13))
    with torch.no_grad():
        ref = model(ids)
        torch.testing.assert_close(loaded(ids), ref, rtol=0, atol=0)
        torch.testing.assert_close(hf(ids).logits, ref, **TOL)


def test_transformers_untied_checkpoint_loads(tmp_path):
    folder, hf = hf_checkpoint(tmp_path, tie_word_embeddings=False, **TINY_ODD)
    with torch.no_grad():
        hf.lm_head.weight.normal_()
    hf.save_pretrained(folder)
    model = GPT.from_pretrained(folder)
    ids = torch.randint(0, 1003, (2, 13))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, **TOL)


def test_untied_checkpoint_without_its_head_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    untied_model().save_pretrained(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    del sd["lm_head.weight"]
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="missing tensor 'lm_head.weight'"):
        GPT.from_pretrained(tmp_path)


def test_training_updates_head_and_embedding_apart(tmp_path):
    model = untied_model().train()
    decay, no_decay = param_groups(model, 0.1)
    assert any(p is model.lm_head.weight for p in decay["params"])
    assert any(p is model.transformer.wte.weight for p in no_decay["params"])
    head, wte = model.lm_head.weight.detach().clone(), model.transformer.wte.weight.detach().clone()
    opt = torch.optim.AdamW([decay, no_decay], lr=1e-2)
    ids = torch.randint(0, 1003, (4, 16))
    losses = []
    for _ in range(3):
        loss = model.loss(ids[:, :-1], ids[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert not torch.equal(model.lm_head.weight, head) and not torch.equal(model.transformer.wte.weight, wte)
    assert model.lm_head.weight is not model.transformer.wte.weight


def test_train_command_trains_and_saves_an_untied_model(tmp_path):
    corpus = build_corpus(tmp_path / "corpus", max_bytes=20_000)
    config = GPTConfig.from_preset("tiny", tie_word_embeddings=False)
    train(corpus, tmp_path / "run", config=config, progress=False, steps=2, batch_size=2, context_length=16,
          warmup_steps=1, val_fraction=0.1, eval_every=2, eval_batches=1, checkpoint_every=2)
    loaded = GPT.from_pretrained(tmp_path / "run")
    assert not loaded.config.tie_word_embeddings
    assert not torch.equal(loaded.lm_head.weight, loaded.transformer.wte.weight)


@pytest.mark.parametrize("backend", ["torch", "native", "triton"])
def test_every_backends_decoder_uses_the_head(backend):
    try:
        get_ops(backend)
    except BackendUnavailableError as e:
        pytest.skip(f"backend {backend} cannot run here: {e}")
    model = untied_model(n_layer=1).set_backend(backend)
    ids = torch.randint(0, 1003, (2, 7))
    with torch.no_grad():
        decoder = model.make_decoder(2, 12)
        if backend == "native":  # the C++ decoder, with the head packed apart from wte
            assert type(decoder).__name__ == "NativeDecoder"
        logits = decoder.prefill(ids, torch.arange(7), torch.arange(7)[None].expand(2, 7))
        ref = model.set_backend("torch")(ids)[:, -1]
        torch.testing.assert_close(logits.float(), ref, **TOL)
        model.set_backend(backend)
        out = model.generate(ids, 5)
        # greedy continuation by recomputation on the reference
        seq = ids
        for _ in range(5):
            seq = torch.cat([seq, model.set_backend("torch")(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)


def test_cpp_decoder_weights_check_the_head():
    try:
        get_ops("native")
    except BackendUnavailableError as e:
        pytest.skip(f"backend native cannot run here: {e}")
    C, V = 8, 11
    layer = [torch.ones(C), torch.zeros(C), torch.randn(3 * C, C), torch.zeros(3 * C), torch.randn(C, C),
             torch.zeros(C), torch.ones(C), torch.zeros(C), torch.randn(4 * C, C), torch.zeros(4 * C),
             torch.randn(C, 4 * C), torch.zeros(C)]
    args = (2, 1e-5, torch.randn(V, C), torch.randn(5, C), layer, torch.ones(C), torch.zeros(C), "float32")
    with pytest.raises(RuntimeError, match=r"expected a weight of shape \[11, 8\]"):
        torch.classes.llm.GPTWeights(*args, torch.randn(V + 1, C))
    tied, untied = torch.classes.llm.GPTWeights(*args), torch.classes.llm.GPTWeights(*args, torch.randn(V, C))
    assert tied.streamed_bytes() == untied.streamed_bytes()  # the same packed sizes, other values
