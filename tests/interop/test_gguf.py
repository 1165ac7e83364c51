"""GGUF export read back with the gguf package's reader: every tensor and key, values equal to
the model's (f32 exact, f16 as float16 rounds, q8_0 within its block rounding), and logits
computed from the file the way llama.cpp's `gpt2` graph does equal the model's."""

import filecmp
import math

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf", reason="GGUF export needs the gguf package (the export extra)")

from llm import GPT, GPTConfig  # noqa: E402
from llm.cli import main  # noqa: E402
from llm.interop.gguf import export_gguf, gguf_tensors, read_gguf_tensors  # noqa: E402
from llm.tokenizer import bpe_vocab_and_merges  # noqa: E402

# n_inner=72: ffn_down's rows (72) are not a multiple of q8_0's block of 32, so it falls back
CONFIG = dict(vocab_size=50257, n_positions=48, n_embd=64, n_layer=2, n_head=4, n_inner=72)


def model_with(**kw):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**CONFIG, **kw})).eval()
    with torch.no_grad():  # biases and norms off their init values, so a mixup shows
        for name, p in model.named_parameters():
            if not name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight", "wte.weight", "wpe.weight")):
                p.normal_(0, 0.1)
    return model


@pytest.fixture(scope="module")
def tied():
    return model_with()


@pytest.fixture(scope="module")
def exported(tied, tmp_path_factory):
    """dtype -> (path, GGUFReader) of the tied model exported in that dtype."""
    folder = tmp_path_factory.mktemp("gguf")
    return {dtype: (p := export_gguf(tied, folder / f"m-{dtype}.gguf", dtype), gguf.GGUFReader(str(p)))
            for dtype in ("f32", "f16", "q8_0")}


def field(reader, key):
    return reader.fields[key].contents()


def test_every_key(exported):
    path, reader = exported["q8_0"]
    tokens, merges = bpe_vocab_and_merges()
    expected = {"general.architecture": "gpt2", "general.name": "m-q8_0", "gpt2.context_length": 48,
                "gpt2.embedding_length": 64, "gpt2.feed_forward_length": 72, "gpt2.block_count": 2,
                "gpt2.attention.head_count": 4, "general.file_type": gguf.LlamaFileType.MOSTLY_Q8_0,
                "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2", "tokenizer.ggml.bos_token_id": 50256,
                "tokenizer.ggml.eos_token_id": 50256, "tokenizer.ggml.add_bos_token": False,
                "general.quantization_version": gguf.GGML_QUANT_VERSION}
    for key, value in expected.items():
        assert field(reader, key) == value, key
    assert math.isclose(field(reader, "gpt2.attention.layer_norm_epsilon"), 1e-5, rel_tol=1e-6)
    assert field(reader, "tokenizer.ggml.tokens") == list(tokens)
    assert field(reader, "tokenizer.ggml.merges") == list(merges)
    types = field(reader, "tokenizer.ggml.token_type")
    assert types[50256] == gguf.TokenType.CONTROL and set(types[:50256]) == {gguf.TokenType.NORMAL}


def test_every_tensor_f32_exact_f16_rounded(tied, exported):
    ours = gguf_tensors(tied)
    assert len(ours) == 2 + 12 * 2 + 2 and "output.weight" not in ours  # tied: llama.cpp uses token_embd
    for dtype in ("f32", "f16"):
        path, reader = exported[dtype]
        back = read_gguf_tensors(reader)
        assert list(back) == list(ours)
        for name, t in ours.items():
            kept = dtype == "f32" or t.dim() == 1 or name == "position_embd.weight"
            want = t if kept else t.half().float()
            assert np.array_equal(back[name], want.numpy()), f"{dtype} {name}"
        types = {t.name: t.tensor_type for t in reader.tensors}
        assert types["blk.0.attn_qkv.weight"] == (gguf.GGMLQuantizationType.F32 if dtype == "f32"
                                                  else gguf.GGMLQuantizationType.F16)


def test_q8_0_within_its_rounding(tied, exported):
    path, reader = exported["q8_0"]
    back, ours = read_gguf_tensors(reader), gguf_tensors(tied)
    types = {t.name: t.tensor_type for t in reader.tensors}
    Q8 = gguf.GGMLQuantizationType
    assert types["token_embd.weight"] == types["blk.1.ffn_up.weight"] == Q8.Q8_0
    assert types["blk.1.ffn_down.weight"] == Q8.F16  # rows of 72: not a multiple of 32
    assert types["position_embd.weight"] == types["blk.0.attn_norm.bias"] == Q8.F32
    for name, t in ours.items():
        if types[name] != Q8.Q8_0:
            continue
        blocks = t.numpy().reshape(-1, 32)
        err = np.abs(back[name].reshape(-1, 32) - blocks)
        # scale d = max|x| / 127 stored as float16; values round to the nearest multiple of d
        d = np.abs(blocks).max(axis=1, keepdims=True) / 127
        bound = d * (0.5 + 127 * 2.0 ** -11) + 1e-12
        assert (err <= bound).all(), f"{name}: q8_0 error {float((err - bound).max()):.3g} over its bound"


def llama_cpp_gpt2_logits(tensors: dict, config: GPTConfig, ids: torch.Tensor) -> torch.Tensor:
    """Logits [T, vocab] of one sequence, computed from GGUF tensors as llama.cpp's `gpt2`
    graph does: layernorm, fused qkv (q, k, v at offsets 0, C, 2C), causal attention with
    1/sqrt(hs), output projection, residual, layernorm, up + GELU + down, residual; output
    norm; `output` or else `token_embd` as the head."""
    t = {k: torch.from_numpy(v).double() for k, v in tensors.items()}
    C, nh, T = config.n_embd, config.n_head, ids.shape[0]

    def norm(x, name):
        return torch.nn.functional.layer_norm(x, (C,), t[f"{name}.weight"], t[f"{name}.bias"], config.layer_norm_epsilon)

    def mul_mat(x, name):
        return x @ t[f"{name}.weight"].T + t[f"{name}.bias"]

    x = t["token_embd.weight"][ids] + t["position_embd.weight"][:T]
    for i in range(config.n_layer):
        b = f"blk.{i}."
        qkv = mul_mat(norm(x, b + "attn_norm"), b + "attn_qkv")
        q, k, v = (qkv[:, j * C:(j + 1) * C].view(T, nh, -1).transpose(0, 1) for j in range(3))
        scores = q @ k.transpose(1, 2) / math.sqrt(C // nh)
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), -math.inf)
        y = (scores.softmax(-1) @ v).transpose(0, 1).reshape(T, C)
        x = x + mul_mat(y, b + "attn_output")
        h = torch.nn.functional.gelu(mul_mat(norm(x, b + "ffn_norm"), b + "ffn_up"), approximate="tanh")
        x = x + mul_mat(h, b + "ffn_down")
    head = t.get("output.weight", t["token_embd.weight"])
    return norm(x, "output_norm") @ head.T


@pytest.mark.parametrize("untied_no_bias", [False, True], ids=["tied", "untied-no-bias"])
def test_logits_from_the_file_as_llama_cpp_computes_them(tmp_path, tied, exported, untied_no_bias):
    if untied_no_bias:  # output.weight written, and zero biases where the model has none
        model = model_with(tie_word_embeddings=False, bias=False)
        tensors = read_gguf_tensors(export_gguf(model, tmp_path / "m.gguf", "f32"))
    else:
        model, tensors = tied, read_gguf_tensors(exported["f32"][1])
    assert ("output.weight" in tensors) == untied_no_bias
    ids = torch.randint(0, 50257, (21,))
    with torch.no_grad():
        ours = model(ids[None])[0].double()
    theirs = llama_cpp_gpt2_logits(tensors, model.config, ids)
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)


def test_padded_vocabulary_gets_unused_tokens_and_a_small_one_is_refused(tmp_path):
    path = export_gguf(model_with(vocab_size=50304, n_layer=1), tmp_path / "padded.gguf", "f16")
    reader = gguf.GGUFReader(str(path))
    tokens = field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == 50304 and tokens[50257] == "[PAD50257]"
    assert field(reader, "tokenizer.ggml.token_type")[-1] == gguf.TokenType.UNUSED
    with pytest.raises(ValueError, match="vocab_size=1003 is smaller than GPT-2's tokenizer"):
        export_gguf(model_with(vocab_size=1003), tmp_path / "small.gguf")
    assert not list(tmp_path.glob("*small*"))  # nothing half-written
    with pytest.raises(ValueError, match="unknown GGUF dtype 'q4_0'"):
        export_gguf(model_with(n_layer=1), tmp_path / "x.gguf", "q4_0")


def test_cli_export(tmp_path, tied, exported, capsys):
    tied.save_pretrained(tmp_path / "model")
    out = tmp_path / "m-q8_0.gguf"  # the name the library export used: the same bytes
    assert main(["export", "--model", str(tmp_path / "model"), "--format", "gguf", "--out", str(out),
                 "--dtype", "q8_0"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert filecmp.cmp(out, exported["q8_0"][0], shallow=False)
    assert main(["export", "--model", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "model folder not found" in capsys.readouterr().err


def test_llama_cpp_runs_the_file_with_our_logits(tmp_path):
    llama_cpp = pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed (the package index has no wheel for this "
                            "platform, and it is not built from source here)")
    model = model_with()
    path = export_gguf(model, tmp_path / "m.gguf", "f32")
    llm_ = llama_cpp.Llama(model_path=str(path), n_ctx=48, logits_all=True, verbose=False)
    ids = torch.randint(0, 50257, (16,))
    llm_.eval(ids.tolist())
    theirs = torch.tensor(np.array(llm_.scores[:16]), dtype=torch.float32)
    with torch.no_grad():
        ours = model(ids[None])[0]
    torch.testing.assert_close(theirs, ours, rtol=1e-3, atol=1e-3)
