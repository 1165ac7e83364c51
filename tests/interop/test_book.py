"""The book's `GPTModel` ("Build a Large Language Model (From Scratch)", chapter 4), written
here in its layout with random weights: its saved state dict loads with the same logits."""

import json

import pytest
import torch
import torch.nn as nn

from llm import GPT
from llm.cli import main
from llm.interop.book import GPT_CONFIG_124M

TOL = dict(rtol=1e-5, atol=1e-5)  # as the model tests (tests/model)


# -- the book's model, as its chapter 4 writes it ------------------------------------------------

class MultiHeadAttention(nn.Module):
    def __init__(self, d_in, d_out, context_length, dropout, num_heads, qkv_bias=False):
        super().__init__()
        self.d_out, self.num_heads, self.head_dim = d_out, num_heads, d_out // num_heads
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("mask", torch.triu(torch.ones(context_length, context_length), diagonal=1))

    def forward(self, x):
        b, num_tokens, _ = x.shape
        keys = self.W_key(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        queries = self.W_query(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        values = self.W_value(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        attn_scores = queries @ keys.transpose(2, 3)
        attn_scores.masked_fill_(self.mask.bool()[:num_tokens, :num_tokens], -torch.inf)
        attn_weights = self.dropout(torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1))
        context = (attn_weights @ values).transpose(1, 2).contiguous().view(b, num_tokens, self.d_out)
        return self.out_proj(context)


class LayerNorm(nn.Module):
    def __init__(self, emb_dim):
        super().__init__()
        self.eps = 1e-5
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x):
        mean = x.mean(dim=-1, keepdim=True)
        var = x.var(dim=-1, keepdim=True, unbiased=False)
        return self.scale * (x - mean) / torch.sqrt(var + self.eps) + self.shift


class GELU(nn.Module):
    def forward(self, x):
        return 0.5 * x * (1 + torch.tanh(torch.sqrt(torch.tensor(2.0 / torch.pi)) * (x + 0.044715 * torch.pow(x, 3))))


class FeedForward(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(cfg["emb_dim"], 4 * cfg["emb_dim"]), GELU(),
                                    nn.Linear(4 * cfg["emb_dim"], cfg["emb_dim"]))

    def forward(self, x):
        return self.layers(x)


class TransformerBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.att = MultiHeadAttention(cfg["emb_dim"], cfg["emb_dim"], cfg["context_length"], cfg["drop_rate"],
                                      cfg["n_heads"], cfg["qkv_bias"])
        self.ff = FeedForward(cfg)
        self.norm1, self.norm2 = LayerNorm(cfg["emb_dim"]), LayerNorm(cfg["emb_dim"])
        self.drop_shortcut = nn.Dropout(cfg["drop_rate"])

    def forward(self, x):
        x = x + self.drop_shortcut(self.att(self.norm1(x)))
        return x + self.drop_shortcut(self.ff(self.norm2(x)))


class GPTModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.pos_emb = nn.Embedding(cfg["context_length"], cfg["emb_dim"])
        self.drop_emb = nn.Dropout(cfg["drop_rate"])
        self.trf_blocks = nn.Sequential(*[TransformerBlock(cfg) for _ in range(cfg["n_layers"])])
        self.final_norm = LayerNorm(cfg["emb_dim"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)

    def forward(self, in_idx):
        x = self.tok_emb(in_idx) + self.pos_emb(torch.arange(in_idx.shape[1], device=in_idx.device))
        return self.out_head(self.final_norm(self.trf_blocks(self.drop_emb(x))))


# -- tests ------------------------------------------------------------------------------------

SMALL = dict(vocab_size=1003, context_length=40, emb_dim=48, n_heads=3, n_layers=2, drop_rate=0.1, qkv_bias=False)


def book_model(tied=False, **kw):
    cfg = {**SMALL, **kw}
    model = GPTModel(cfg).eval()
    with torch.no_grad():  # LayerNorms and biases off their init values, so a mixup shows
        for name, p in model.named_parameters():
            if not name.endswith("weight"):
                p.normal_(0, 0.1)
        if tied:
            model.out_head.weight.copy_(model.tok_emb.weight)  # as the book loads OpenAI's weights
    return model, cfg


@pytest.mark.parametrize("qkv_bias", [False, True])
@pytest.mark.parametrize("tied", [False, True])
def test_book_checkpoint_gives_the_books_logits(tmp_path, qkv_bias, tied):
    book, cfg = book_model(tied, qkv_bias=qkv_bias)
    torch.save(book.state_dict(), tmp_path / "model.pth")
    model = GPT.from_pretrained(tmp_path / "model.pth", config=cfg)
    assert model.config.tie_word_embeddings == tied
    assert (model.lm_head.weight is model.transformer.wte.weight) == tied
    if not qkv_bias:
        assert not model.transformer.h[0].attn.c_attn.bias.any()  # zero biases
    ids = torch.randint(0, cfg["vocab_size"], (3, 17))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), book(ids), **TOL)


def test_saved_folder_loads_in_transformers_with_the_same_logits(tmp_path):
    transformers = pytest.importorskip("transformers", reason="the check reads the folder with transformers")
    book, cfg = book_model(tied=False, qkv_bias=True)
    torch.save(book.state_dict(), tmp_path / "model.pth")
    GPT.from_pretrained(tmp_path / "model.pth", config=cfg).save_pretrained(tmp_path / "hf")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    assert hf.config.tie_word_embeddings is False
    ids = torch.randint(0, cfg["vocab_size"], (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, book(ids), **TOL)


def test_model_and_optimizer_checkpoint_and_config_file(tmp_path):
    book, cfg = book_model()
    optimizer = torch.optim.AdamW(book.parameters())
    torch.save({"model_state_dict": book.state_dict(), "optimizer_state_dict": optimizer.state_dict()},
               tmp_path / "model_and_optimizer.pth")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    model = GPT.from_pretrained(tmp_path / "model_and_optimizer.pth", config=tmp_path / "config.json")
    ids = torch.randint(0, cfg["vocab_size"], (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), book(ids), **TOL)


def test_cli_convert_writes_a_model_folder(tmp_path, capsys):
    book, cfg = book_model(tied=True)
    torch.save(book.state_dict(), tmp_path / "model.pth")
    (tmp_path / "book_config.json").write_text(json.dumps(cfg))
    assert main(["convert", str(tmp_path / "model.pth"), str(tmp_path / "out"),
                 "--config", str(tmp_path / "book_config.json")]) == 0
    assert "lm_head tied" in capsys.readouterr().out
    model = GPT.from_pretrained(tmp_path / "out")
    ids = torch.randint(0, cfg["vocab_size"], (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), book(ids), **TOL)
    assert main(["convert", str(tmp_path / "model.pth"), str(tmp_path / "out2"), "--config",
                 str(tmp_path / "missing.json")]) == 2
    assert "book config file not found" in capsys.readouterr().err


def test_books_own_config_is_checked():
    assert set(GPT_CONFIG_124M) == set(SMALL)


@pytest.mark.parametrize("change, match", [
    (dict(qkv_bias=True), r"missing tensor 'trf_blocks\.0\.att\.W_query\.bias' \(is qkv_bias right\?\)"),
    (dict(emb_dim=96), r"'tok_emb\.weight' has shape \(1003, 48\), the config expects \(1003, 96\)"),
    (dict(n_layers=3), "holds 2 transformer blocks, the config says n_layers=3"),
    (dict(n_heads="3"), "n_heads must be a positive integer"),
    (dict(drop_rate=1.5), r"drop_rate must be a number in \[0, 1\)"),
    (dict(emb_dim=50), r"emb_dim \(50\) must be divisible by n_heads \(3\)"),
    (dict(n_head=3), r"unknown keys \['n_head'\]"),
])
def test_bad_config_or_checkpoint_is_named(tmp_path, change, match):
    book, cfg = book_model()
    torch.save(book.state_dict(), tmp_path / "model.pth")
    with pytest.raises(ValueError, match=match):
        GPT.from_pretrained(tmp_path / "model.pth", config={**cfg, **change})


def test_unexpected_tensor_and_unreadable_file(tmp_path):
    book, cfg = book_model(qkv_bias=True)
    torch.save(book.state_dict(), tmp_path / "model.pth")
    with pytest.raises(ValueError, match=r"unexpected tensors \['trf_blocks\.0\.att\.W_query\.bias'.*qkv_bias right"):
        GPT.from_pretrained(tmp_path / "model.pth", config={**cfg, "qkv_bias": False})
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pth: cannot be read as a weights-only checkpoint"):
        GPT.from_pretrained(tmp_path / "bad.pth", config=cfg)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        GPT.from_pretrained(tmp_path / "none.pth", config=cfg)


def test_a_pickled_object_is_not_run(tmp_path):
    book, cfg = book_model()
    torch.save(book, tmp_path / "whole_model.pth")  # the module itself: loading would unpickle code
    with pytest.raises(ValueError, match="weights-only"):
        GPT.from_pretrained(tmp_path / "whole_model.pth", config=cfg)
