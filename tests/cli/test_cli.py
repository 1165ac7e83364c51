import subprocess
import sys

import torch

from llm import GPT, GPTConfig
from llm.cli import main
from llm.generation.text import TextStreamer
from llm.tokenizer import get_tokenizer


HELP_FLAGS = {
    "generate": ("--model", "--prompt", "--max-new-tokens", "--temperature", "--top-k", "--top-p",
                 "--seed", "--backend", "--batch-file", "--stop"),
    "train": ("--data", "--out", "--preset", "--config", "--steps", "--batch-size", "--grad-accum",
              "--lr", "--backend", "--resume"),
    "eval": ("--model", "--data"),
    "demo": ("--out",),
}


def test_help_on_every_command():
    out = subprocess.run([sys.executable, "-m", "llm", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for command, flags in HELP_FLAGS.items():
        assert command in out.stdout
        sub = subprocess.run([sys.executable, "-m", "llm", command, "--help"], capture_output=True, text=True)
        assert sub.returncode == 0, sub.stderr
        for flag in flags:
            assert flag in sub.stdout, (command, flag)


def test_unavailable_backend_is_a_clear_error_not_a_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    GPT(GPTConfig.from_preset("tiny")).save_pretrained(tmp_path / "m")
    assert main(["generate", "--model", str(tmp_path / "m"), "--backend", "triton"]) == 2
    assert "backend 'triton'" in capsys.readouterr().err


def test_generate_streams_the_greedy_continuation(tmp_path, capsys):
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny"))
    model.save_pretrained(tmp_path / "m")
    enc = get_tokenizer()
    prompt = "Once upon a time"
    rc = main(["generate", "--model", str(tmp_path / "m"), "--prompt", prompt,
               "--max-new-tokens", "9", "--temperature", "0"])
    assert rc == 0
    printed = capsys.readouterr().out
    ids = model.generate(torch.tensor([enc.encode(prompt)]), 9, eos_token_id=50256)[0].tolist()
    expected = enc.decode([t for t in ids if t != 50256])
    assert printed == expected + "\n"


def test_generate_missing_model_is_a_clear_error(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "missing"), "--prompt", "x"]) == 2
    assert "not found" in capsys.readouterr().err


def test_text_streamer_never_splits_a_character():
    enc = get_tokenizer()
    text = "naïve 日本語 🤖 done"
    ids = enc.encode(text)
    streamer = TextStreamer(enc)
    pieces = [streamer.push(t) for t in ids] + [streamer.flush()]
    assert "".join(pieces) == text
    for p in pieces:
        assert "\ufffd" not in p
