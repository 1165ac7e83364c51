"""`python -m llm train` unchanged under torchrun (2 gloo processes on the CPU), and a
stalled process ending the run with a clear error instead of a hang."""

import os
import signal
import subprocess
import sys
import time

import pytest

from dist_helpers import free_port
from llm.model import GPT
from llm.training import list_checkpoints
from llm.training.corpus import build_corpus

SMALL_RUN = ["--preset", "tiny", "--batch-size", "2", "--context-length", "32", "--eval-batches", "2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return str(build_corpus(tmp_path_factory.mktemp("corpus"), max_bytes=60_000))


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def test_torchrun_two_processes_train_and_rank_0_alone_reports(data, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "llm", "train", "--data", data, "--out", str(out), *SMALL_RUN, "--steps", "4", "--grad-accum", "2",
           "--eval-every", "2", "--parallel", "ddp"]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout + done.stderr
    assert printed.count("2 processes (ddp, gloo): global batch 2 x 2 accumulated x 2 = 8 windows = 256 tokens") == 1
    assert printed.count("done: 4 steps") == 1 and printed.count("final validation loss") == 1
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [2, 4]
    assert (out / "loss.png").is_file()
    GPT.from_pretrained(out)  # the final model, whole


def test_a_stalled_process_ends_the_others_within_the_timeout(data, tmp_path):
    out, port = tmp_path / "run", str(free_port())
    cmd = [sys.executable, "-m", "llm", "train", "--data", data, "--out", str(out), *SMALL_RUN, "--steps", "10000",
           "--checkpoint-every", "1", "--eval-every", "10000", "--parallel", "ddp", "--dist-timeout", "5"]
    ranks = [subprocess.Popen(cmd, env=_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                                            MASTER_PORT=port), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for r in range(2)]
    try:
        deadline = time.monotonic() + 120
        while not list_checkpoints(out / "checkpoints"):  # training is under way
            assert time.monotonic() < deadline and ranks[0].poll() is None, "the run did not start"
            time.sleep(0.2)
        ranks[1].send_signal(signal.SIGSTOP)  # alive but stuck: only the timeout can tell
        stopped = time.monotonic()
        _, err = ranks[0].communicate(timeout=90)
        waited = time.monotonic() - stopped
    finally:
        for p in ranks:
            p.kill()
            p.wait()
    assert ranks[0].returncode == 1, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: rank 0: lost the other processes during step "), err[-2000:]
    assert waited < 5 + 60  # the timeout, and the step it stopped in
