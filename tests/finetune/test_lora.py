"""LoRA: the adapted op table against an independent formula and on every backend (outputs and
the adapters' gradients, the unfused MLP path included), merge / unmerge, only adapters
train, generation, adapter files (round trip, bad files), and PEFT loading what we save and
the other way round."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from llm import GPT, GPTConfig
from llm.finetune.lora import (LoRAConfig, LoRALinear, inject_lora, load_adapter, lora_layers, merge_lora,
                               remove_lora, save_adapter, unmerge_lora)
from llm.ops import BackendUnavailableError, get_ops
from llm.testing import assert_ok, check

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest

ODD = GPTConfig(vocab_size=101, n_positions=32, n_embd=48, n_layer=2, n_head=3)
ALL_TARGETS = LoRAConfig(r=4, alpha=8, targets=("c_attn", "c_proj", "c_fc"))


def adapted(config=ODD, lora=ALL_TARGETS, seed=0, backend="torch"):
    """A random GPT with adapters whose B is random too (a fresh B is zero: no term)."""
    torch.manual_seed(seed)
    model = GPT(config, backend=backend)
    inject_lora(model, lora)
    for layer in lora_layers(model).values():
        torch.nn.init.normal_(layer.lora_B.weight, std=0.2)
    return model


def inputs(B=3, T=11, V=ODD.vocab_size):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(1))


def lora_grads(model, x, g):
    model.zero_grad(set_to_none=True)
    (model(x) * g).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if "lora_" in n}


def test_adapted_ops_equal_the_merged_weight_formula():
    """torch backend, float64: logits of x W^T + b + s B A x equal a plain model holding
    W + s B A, and the adapters' gradients equal the chain rule through that weight
    (dA = s B^T G, dB = s G A^T)."""
    model, x = adapted().double(), inputs()
    plain = GPT(ODD, backend="torch").double()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if "lora_" not in k}, strict=False)
    layers = lora_layers(model)
    with torch.no_grad():
        for name, layer in layers.items():
            plain.get_submodule(name).weight.copy_(layer.weight + layer.delta_weight())
    g = torch.randn(3, 11, ODD.vocab_size, dtype=torch.float64)
    grads = lora_grads(model, x, g)
    weights = {name: plain.get_submodule(name).weight for name in layers}
    for w in weights.values():
        w.requires_grad_(True)
    logits = plain(x)
    G = torch.autograd.grad((logits * g).sum(), list(weights.values()))
    assert_ok(check("logits", model(x), logits))
    for (name, layer), gw in zip(layers.items(), G):
        s, A, B = layer.scaling, layer.lora_A.weight, layer.lora_B.weight
        assert_ok(check(f"{name} dA", grads[f"{name}.lora_A.weight"], s * B.T @ gw),
                  check(f"{name} dB", grads[f"{name}.lora_B.weight"], s * gw @ A.T))


@pytest.mark.parametrize("backend", ["torch", "native", "triton"])
@pytest.mark.parametrize("targets", [("c_attn", "mlp.c_proj"), ("c_fc",)])
def test_each_backend_matches_the_reference(backend, targets):
    """Logits (with and without gradients: native's kernels run only without) and the
    adapters' gradients against the torch model in float64, by llm.testing's fp32 rule."""
    try:
        get_ops(backend)
    except BackendUnavailableError as e:
        pytest.skip(str(e))
    lora = LoRAConfig(r=3, alpha=6, targets=targets)
    model, x = adapted(lora=lora, backend=backend), inputs()
    ref = copy.deepcopy(model).double().set_backend("torch")
    g = torch.randn(3, 11, ODD.vocab_size)
    grads, ref_grads = lora_grads(model, x, g), lora_grads(ref, x, g.double())
    checks = [check(f"{backend} d{n}", grads[n], ref_grads[n]) for n in grads]
    with torch.no_grad():
        checks.append(check(f"{backend} logits", model(x), ref(x)))
    assert_ok(*checks)
    assert all(g.abs().max() > 0 for g in grads.values())


def test_merge_unmerge_and_remove():
    model, x = adapted(), inputs()
    before = {n: p.clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        y = model(x)
        merge_lora(model)
        assert not model.has_adapted_ops()  # the plain tables again: fused MLP, own decoder
        assert_ok(check("merged logits", model(x), y))
        unmerge_lora(model)
        assert model.has_adapted_ops()
        assert_ok(check("unmerged logits", model(x), y))
        for n, p in model.named_parameters():
            assert_ok(check(f"unmerged {n}", p, before[n]))
        remove_lora(model)
        assert not lora_layers(model) and not model.has_adapted_ops()
        assert_ok(check("removed (merged) logits", model(x), y))
    assert set(model.state_dict()) == set(GPT(ODD).state_dict())


def test_only_the_adapters_train_and_set_backend_keeps_them():
    model, x = adapted(), inputs()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.lora_{ab}.weight" for n in lora_layers(model) for ab in "AB"}
    assert len(trainable) == 2 * 2 * 4  # 2 blocks x (c_attn, attn.c_proj, c_fc, mlp.c_proj) x (A, B)
    before = {n: p.clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        F.cross_entropy(model(x).flatten(0, 1), x.roll(-1, 1).flatten()).backward()
        opt.step()
        opt.zero_grad()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trainable
    y = model(x)
    model.set_backend("torch")  # a new table: the adapters stay
    assert torch.equal(model(x), y)


def test_generation_with_unmerged_adapters_runs_the_modules():
    """A backend's own decoder runs the weights, not the modules: with adapters the model
    generates through its modules, and merged (own decoder again) makes the same tokens."""
    model = adapted()
    prompt = inputs(2, 5)
    with torch.no_grad():
        tokens = model.generate(prompt, 6)
        full = prompt
        for _ in range(6):  # recomputation, greedy
            full = torch.cat([full, model(full)[:, -1].argmax(-1, keepdim=True)], 1)
        assert torch.equal(tokens, full)
        try:
            model.set_backend("native")
        except BackendUnavailableError:
            return
        assert torch.equal(model.generate(prompt, 6), tokens)
        merge_lora(model)
        assert torch.equal(model.generate(prompt, 6), tokens)


def test_adapter_save_load_round_trip(tmp_path):
    model, x = adapted(), inputs()
    lora = ALL_TARGETS
    save_adapter(tmp_path / "adapter", model, lora, base_model="somewhere")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["r"] == 4 and saved["lora_alpha"] == 8 and saved["target_modules"] == list(lora.targets)
    assert saved["peft_type"] == "LORA" and saved["fan_in_fan_out"] is True
    fresh = GPT(ODD)
    fresh.load_state_dict({k: v for k, v in model.state_dict().items() if "lora_" not in k}, strict=False)
    load_adapter(fresh, tmp_path / "adapter")
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    with pytest.raises(ValueError, match="already holds LoRA adapters"):
        load_adapter(fresh, tmp_path / "adapter")
    merge_lora(model)
    with pytest.raises(ValueError, match="merged"):
        save_adapter(tmp_path / "again", model, lora)


def test_bad_adapter_files_are_named(tmp_path):
    from safetensors.torch import load_file, save_file

    model = adapted()
    save_adapter(tmp_path / "a", model, ALL_TARGETS)
    path = tmp_path / "a" / "adapter_model.safetensors"
    tensors = load_file(str(path))
    name = "base_model.model.transformer.h.1.mlp.c_fc.lora_B.weight"
    other = GPT(GPTConfig(vocab_size=101, n_positions=32, n_embd=24, n_layer=2, n_head=3))
    with pytest.raises(ValueError, match=r"adapter_model.safetensors: tensor .*lora_A.weight' has shape"):
        load_adapter(other, tmp_path / "a")
    assert not lora_layers(other)  # nothing half-loaded
    save_file({k: v for k, v in tensors.items() if k != name}, str(path))
    with pytest.raises(ValueError, match="missing tensor 'transformer.h.1.mlp.c_fc.lora_B.weight'"):
        load_adapter(GPT(ODD), tmp_path / "a")
    cfg = tmp_path / "a" / "adapter_config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "use_dora": True}))
    with pytest.raises(ValueError, match="adapter_config.json: use_dora=True is not supported"):
        load_adapter(GPT(ODD), tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="adapter_config.json is missing"):
        load_adapter(GPT(ODD), tmp_path)
    with pytest.raises(ValueError, match="LoRA targets must be some of"):
        LoRAConfig(targets=("q_proj",))
    with pytest.raises(ValueError, match="rank r must be a positive integer"):
        LoRAConfig(r=0)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers' own deprecation, inside peft
def test_peft_loads_our_adapter_and_we_load_peft_s(tmp_path):
    """Our adapter on transformers' GPT-2 through peft equals our model; an adapter peft
    trained (random B) loads here and equals peft's model."""
    peft = pytest.importorskip("peft")
    from transformers import GPT2LMHeadModel

    model, x = adapted(), inputs()
    base = copy.deepcopy(model)
    remove_lora(base, merge=False)
    base.save_pretrained(tmp_path / "base")
    save_adapter(tmp_path / "adapter", model, ALL_TARGETS, base_model=str(tmp_path / "base"))
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "base").eval()
    peft_model = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    with torch.no_grad():
        assert_ok(check("peft logits", model(x), peft_model(x).logits))

    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "base").eval()
    cfg = peft.LoraConfig(r=2, lora_alpha=5, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True)
    theirs = peft.get_peft_model(hf, cfg)
    for n, p in theirs.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.2)
    theirs.save_pretrained(tmp_path / "theirs")
    ours = GPT.from_pretrained(tmp_path / "base")
    load_adapter(ours, tmp_path / "theirs")
    assert {n.split(".")[-1] for n in lora_layers(ours)} == {"c_attn", "c_fc"}
    assert isinstance(ours.transformer.h[0].attn.c_attn, LoRALinear)
    with torch.no_grad():
        assert_ok(check("our logits of peft's adapter", ours(x), theirs.eval()(x).logits))
