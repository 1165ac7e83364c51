"""Small builders shared by the tests: random-weight GPT-2 models saved the HF way."""

from __future__ import annotations


TINY_ODD = dict(n_embd=96, n_head=3, n_layer=2, n_positions=77, vocab_size=1003)


def hf_model(**kw):
    """A random-weight transformers GPT2LMHeadModel in eval mode."""
    from transformers import GPT2Config, GPT2LMHeadModel

    kw.setdefault("bos_token_id", 0)
    kw.setdefault("eos_token_id", 0)
    return GPT2LMHeadModel(GPT2Config(**kw)).eval()


def hf_checkpoint(tmp_path, name="hf", **kw):
    """Save a random transformers GPT-2 to tmp_path/name; returns (folder, hf_model)."""
    model = hf_model(**kw)
    folder = tmp_path / name
    model.save_pretrained(folder)
    return folder, model
