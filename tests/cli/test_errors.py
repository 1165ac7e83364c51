"""Every user error on the command line: one line on stderr, exit code 2, nothing written."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llm import GPT, GPTConfig
from llm.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny model folder and a short text."""
    root = tmp_path_factory.mktemp("cli_errors")
    GPT(GPTConfig.from_preset("tiny")).save_pretrained(root / "m")
    text = root / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog, and the dog sleeps on. " * 40)
    return root / "m", text


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def one_line_error(capsys, *needles) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize("device, says", [("bogus", "unknown device 'bogus'"), ("cuda", "no CUDA device"),
                                          ("cuda:1", "no CUDA device"), ("meta", "unknown device")])
def test_device_is_checked_up_front(files, tmp_path, capsys, no_cuda, device, says):
    model, text = files
    out = tmp_path / "run"
    commands = [["generate", "--model", str(model), "--max-new-tokens", "2"],
                ["eval", "--model", str(model), "--data", str(text)],
                ["train", "--data", str(text), "--out", str(out), "--preset", "tiny", "--steps", "1",
                 "--context-length", "16"]]
    for command in commands:
        assert main([*command, "--device", device]) == 2, command
        one_line_error(capsys, says)
    assert not out.exists()


@pytest.mark.parametrize("flags, says", [
    (["--batch-size", "-2"], "--batch-size must be >= 1, got -2"),
    (["--max-batches", "0"], "--max-batches must be >= 1, got 0"),
    (["--max-batches", "-1"], "--max-batches must be >= 1, got -1"),
    (["--context-length", "0"], "--context-length must be >= 1, got 0"),
    (["--context-length", "65"], "exceeds the model's n_positions=64"),
])
def test_eval_numeric_flags_are_range_checked(files, capsys, flags, says):
    model, text = files
    assert main(["eval", "--model", str(model), "--data", str(text), *flags]) == 2
    one_line_error(capsys, says)


@pytest.mark.parametrize("flags, says", [
    (["--steps", "0"], "steps must be a positive integer"),
    (["--lr", "5"], "lr must be in (0, 1)"),
    (["--val-fraction", "1"], "val_fraction must be in [0, 1)"),
    (["--warmup-steps", "-1"], "warmup_steps must be an integer >= 0"),
])
def test_train_settings_errors_are_one_line(files, tmp_path, capsys, flags, says):
    _, text = files
    out = tmp_path / "run"
    assert main(["train", "--data", str(text), "--out", str(out), "--preset", "tiny", *flags]) == 2
    one_line_error(capsys, says)
    assert not out.exists()


@pytest.mark.parametrize("config, says", [
    ([1, 2], "expected a JSON object, got list"),
    ({"embd_pdrop": None}, "embd_pdrop must be a number in [0, 1), got None"),
    ({"layer_norm_epsilon": "1e-5"}, "layer_norm_epsilon must be a number in (0, 1), got '1e-5'"),
])
def test_bad_config_json_is_one_line(files, tmp_path, capsys, config, says):
    model, text = files
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes((model / "model.safetensors").read_bytes())
    if isinstance(config, dict):
        config = {**json.loads((model / "config.json").read_text()), **config}
    (bad / "config.json").write_text(json.dumps(config))
    assert main(["generate", "--model", str(bad), "--max-new-tokens", "2"]) == 2
    one_line_error(capsys, str(bad / "config.json"), says)
    assert main(["train", "--data", str(text), "--out", str(tmp_path / "run"), "--config", str(bad / "config.json"),
                 "--steps", "1"]) == 2
    one_line_error(capsys, says)
    assert not (tmp_path / "run").exists()


def test_max_new_tokens_beyond_n_positions_is_refused_with_the_limit(files, capsys):
    model, _ = files
    prompt = "one two three"  # 3 tokens; n_positions 64 leaves 61
    assert main(["generate", "--model", str(model), "--prompt", prompt, "--max-new-tokens", "100000"]) == 2
    one_line_error(capsys, "--max-new-tokens 100000 does not fit", "n_positions is 64", "at most 61")
    assert main(["generate", "--model", str(model), "--prompt", prompt, "--max-new-tokens", "62"]) == 2
    one_line_error(capsys, "at most 61")
    # the default (100) is cut to what fits, as --help says
    assert main(["generate", "--model", str(model), "--prompt", prompt, "--eos-token-id", "0",
                 "--min-new-tokens", "61"]) == 0
    assert "[61 tokens" in capsys.readouterr().err


def test_a_real_process_prints_one_line_and_exits_2(files):
    model, text = files
    cmd = [sys.executable, "-m", "llm", "eval", "--model", str(model), "--data", str(text), "--batch-size", "-2"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr == "error: --batch-size must be >= 1, got -2\n", proc.stderr
