"""`python -m llm serve` as a process: it answers, and SIGTERM lets a running stream finish
and exits 0. Also the command's one-line errors."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import torch

import llm
from llm.cli import main


def _start(folder, *flags):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "llm", "serve", "--model", str(folder), "--port", "0",
                             "--backend", "torch", "--threads", "1", *flags],
                            stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        m = re.search(r"running on (http://127\.0\.0\.1:\d+)", line)
        if m:
            # keep draining stderr so the server never blocks on a full pipe
            threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
            return proc, m.group(1), lines
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError("the server did not start:\n" + "".join(lines))


def test_sigterm_finishes_the_running_stream_and_exits_0(tmp_path):
    torch.manual_seed(0)
    model = llm.GPT(llm.GPTConfig(vocab_size=50257, n_positions=512, n_embd=32, n_layer=1, n_head=2))
    model.save_pretrained(tmp_path / "tiny")
    proc, url, lines = _start(tmp_path / "tiny", "--max-batch-size", "2", "--shutdown-timeout", "20")
    try:
        assert httpx.get(url + "/v1/models").json()["data"][0]["id"] == "tiny"
        body = {"model": "tiny", "prompt": "Once", "max_tokens": 500, "stream": True}
        texts, done = [], False
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as s:
            for line in s.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    break
                texts.append(json.loads(line[6:])["choices"][0])
                if len(texts) == 3:
                    proc.send_signal(signal.SIGTERM)  # mid-stream
        assert done and texts[-1]["finish_reason"] == "length"
        assert proc.wait(timeout=30) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_command_errors(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "missing")]) == 2
    assert "model folder not found" in capsys.readouterr().err
    assert main(["serve", "--model", str(tmp_path), "--max-batch-size", "0"]) == 2
    assert "--max-batch-size must be >= 1, got 0" in capsys.readouterr().err
    assert main(["serve", "--model", str(tmp_path), "--max-queue", "0"]) == 2
    assert "--max-queue must be >= 1, got 0" in capsys.readouterr().err
