"""Training: learning, exact resume, checkpoints, failure handling, CLI."""

import copy
import math
import os
import signal
import time

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

import llm
from llm.cli import main
from llm.config import GPTConfig
from llm.model import GPT
from llm.training import checkpoint as ckpt_mod
from llm.training import (NonFiniteLossError, TrainingInterrupted, lr_factor, param_groups, train)
from llm.training.checkpoint import (CheckpointError, list_checkpoints, load_checkpoint, save_checkpoint)
from llm.training.corpus import build_corpus

# A tiny GPT with dropout, so exact resume also depends on the restored RNG state.
TINY = GPTConfig.from_preset("tiny", resid_pdrop=0.1, attn_pdrop=0.1, embd_pdrop=0.1)
FAST = dict(steps=6, batch_size=2, grad_accum=2, context_length=32, lr=3e-3, warmup_steps=2,
            val_fraction=0.1, eval_every=3, eval_batches=2, checkpoint_every=3, seed=7)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """The first ~150 kB of the built-in corpus."""
    return build_corpus(tmp_path_factory.mktemp("corpus"), max_bytes=150_000)


@pytest.fixture(scope="module")
def full_run(corpus, tmp_path_factory):
    """An uninterrupted run of FAST: the reference for the resume tests."""
    out = tmp_path_factory.mktemp("full")
    return train(corpus, out, config=TINY, progress=False, **FAST), out


def _weights(folder):
    return GPT.from_pretrained(folder).state_dict()


def test_loss_falls_on_the_builtin_corpus(corpus, tmp_path):
    result = train(corpus, tmp_path, preset="tiny", steps=30, batch_size=4, context_length=32,
                   lr=3e-3, warmup_steps=3, val_fraction=0.05, eval_every=10, eval_batches=2,
                   checkpoint_every=30, progress=False)
    losses = [l for _, l in result.train_losses]
    assert len(losses) == 30 and losses[0] > 10.0  # ~ln(50257) at the start
    assert sum(losses[-5:]) / 5 < losses[0] - 2.5, losses
    vals = [v for _, v in result.val_losses]
    assert [s for s, _ in result.val_losses] == [10, 20, 30]
    assert vals[-1] < vals[0] - 0.75, vals
    assert (tmp_path / "loss.png").stat().st_size > 1000
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [30]


def test_resume_after_ctrl_c_equals_uninterrupted_run(corpus, full_run, tmp_path):
    full, full_dir = full_run

    def ctrl_c_at_step_4(step, loss):
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C
            time.sleep(0.2)  # let the main thread run the handler

    with pytest.raises(TrainingInterrupted) as info:
        train(corpus, tmp_path / "cut", config=TINY, progress=False, callback=ctrl_c_at_step_4, **FAST)
    assert info.value.step == 4 and info.value.checkpoint.name == "ckpt-00000004.pt"
    assert [s for s, _ in list_checkpoints(tmp_path / "cut" / "checkpoints")] == [3, 4]

    resumed = train(corpus, tmp_path / "cut", resume=True, progress=False)
    assert resumed.step == 6
    assert resumed.train_losses == full.train_losses  # bit-exact, step for step
    assert resumed.val_losses == full.val_losses
    a, b = _weights(full_dir), _weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_interrupt_mid_step_saves_the_last_completed_step(corpus, full_run, tmp_path, monkeypatch):
    """A KeyboardInterrupt inside a forward pass (not at a step boundary) still resumes exactly."""
    full, _ = full_run
    real_loss, calls = GPT.loss, []

    def loss_interrupted_on_call_10(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 10:  # step 5's second micro-batch: the first one's backward is done
            raise KeyboardInterrupt
        return real_loss(self, *args, **kwargs)

    monkeypatch.setattr(GPT, "loss", loss_interrupted_on_call_10)
    with pytest.raises(TrainingInterrupted) as info:
        train(corpus, tmp_path / "cut", config=TINY, progress=False, **{**FAST, "eval_every": 100})
    monkeypatch.setattr(GPT, "loss", real_loss)
    assert info.value.step == 4 and info.value.checkpoint.name == "ckpt-00000004.pt"
    resumed = train(corpus, tmp_path / "cut", resume=True, progress=False)
    assert resumed.train_losses == full.train_losses


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(corpus, tmp_path, monkeypatch):
    real_loss, calls = GPT.loss, []

    def nan_on_step_3(self, *args, **kwargs):
        calls.append(1)
        loss = real_loss(self, *args, **kwargs)
        return loss * float("nan") if len(calls) == 5 else loss  # step 3, first micro-batch

    monkeypatch.setattr(GPT, "loss", nan_on_step_3)
    with pytest.raises(NonFiniteLossError, match=r"the loss is nan at step 3.*ckpt-00000002\.pt") as info:
        train(corpus, tmp_path, config=TINY, progress=False, **{**FAST, "checkpoint_every": 1})
    assert info.value.step == 3
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [1, 2]
    assert load_checkpoint(info.value.last_checkpoint)["step"] == 2
    assert not (tmp_path / "model.safetensors").exists()


def test_atomic_write_survives_an_interrupted_save(tmp_path, monkeypatch):
    path = tmp_path / "ckpt-00000001.pt"
    save_checkpoint({"step": 1, "w": torch.arange(5.0)}, path)
    real_save = torch.save

    def save_then_die(obj, fh):
        fh.write(b"PK\x03\x04 half a checkpoint")  # some bytes reach the disk, then a crash
        raise OSError("disk went away")

    monkeypatch.setattr(ckpt_mod.torch, "save", save_then_die)
    with pytest.raises(OSError, match="disk went away"):
        save_checkpoint({"step": 1, "w": torch.zeros(5)}, path)  # overwrite the same name
    with pytest.raises(OSError):
        save_checkpoint({"step": 2}, tmp_path / "ckpt-00000002.pt")
    monkeypatch.setattr(ckpt_mod.torch, "save", real_save)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-00000001.pt"]  # no debris
    state = load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.arange(5.0))
    # a crash that kills the process leaves a temporary file: never taken for a checkpoint
    (tmp_path / ".ckpt-00000003.pt.x1y2.tmp").write_bytes(b"partial")
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1]


def test_checkpoint_is_weights_only_and_holds_the_run(corpus, tmp_path):
    train(corpus, tmp_path, config=TINY, progress=False, **{**FAST, "steps": 3})
    (step, path), = list_checkpoints(tmp_path / "checkpoints")
    state = torch.load(path, weights_only=True)  # only tensors and plain values
    assert step == state["step"] == 3 and state["samples_seen"] == 3 * 2 * 2
    assert {"model", "optimizer", "scheduler", "rng", "train_config", "model_config", "data",
            "history"} <= set(state)
    assert isinstance(state["rng"]["torch"], torch.Tensor)


def test_time_limit_stops_saves_and_resumes(corpus, full_run, tmp_path):
    full, full_dir = full_run
    cut = train(corpus, tmp_path, config=TINY, progress=False, max_seconds=1e-9, **FAST)
    assert cut.step == 1 and [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [1]
    assert GPT.from_pretrained(tmp_path).config.n_embd == TINY.n_embd
    # evaluated where it stopped, but step 1 is off the schedule: reported, not in the history
    assert cut.val_losses == [] and math.isfinite(cut.final_val_loss)
    done = train(corpus, tmp_path, resume=True, progress=False)
    assert done.step == 6
    assert done.train_losses == full.train_losses and done.val_losses == full.val_losses
    assert done.final_val_loss == full.final_val_loss == full.val_losses[-1][1]
    a, b = _weights(full_dir), _weights(tmp_path)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_more_steps_follows_the_new_schedule(corpus, tmp_path):
    """From the first resumed step the cosine decay runs to the new total; the warmup keeps
    the length resolved at the start (default: steps // 20 of the first run's steps)."""
    train(corpus, tmp_path, config=TINY, progress=False, **{**FAST, "steps": 4, "warmup_steps": None})
    lrs = []
    hook = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: lrs.append([g["lr"] for g in opt.param_groups]))
    try:  # steps=60 would give 3 warmup steps; the time limit stops it after one step
        longer = train(corpus, tmp_path, resume=True, progress=False, steps=60, max_seconds=1e-9)
    finally:
        hook.remove()
    assert longer.step == 5
    # not lr_factor(4, 0, 4, 0.1), where the 4-step schedule ended, nor lr_factor(4, 3, 60, 0.1)
    assert lrs == [[FAST["lr"] * lr_factor(4, 0, 60, 0.1)] * 2]
    state = load_checkpoint(list_checkpoints(tmp_path / "checkpoints")[-1][1])
    assert state["train_config"]["steps"] == 60 and state["train_config"]["warmup_steps"] == 0


def test_corrupt_or_missing_checkpoint_is_a_clear_error(corpus, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(corpus, tmp_path, resume=True, progress=False)
    train(corpus, tmp_path, config=TINY, progress=False, **{**FAST, "steps": 3, "checkpoint_every": 2})
    (_, older), (_, newest) = list_checkpoints(tmp_path / "checkpoints")
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated
    with pytest.raises(CheckpointError, match=rf"{newest.name}.*corrupt.*delete it to resume from {older.name}"):
        train(corpus, tmp_path, resume=True, progress=False)
    with pytest.raises(ValueError, match="already holds checkpoints"):  # never silently from scratch
        train(corpus, tmp_path, config=TINY, progress=False, **FAST)
    assert main(["train", "--data", str(corpus), "--out", str(tmp_path), "--resume"]) == 2
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="holds no text"):  # a failed start keeps the old run
        train(empty, tmp_path, config=TINY, overwrite=True, progress=False, **FAST)
    assert len(list_checkpoints(tmp_path / "checkpoints")) == 2
    train(corpus, tmp_path, config=TINY, overwrite=True, progress=False, **{**FAST, "steps": 1})
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [1]


def test_resume_refuses_other_settings_or_data(corpus, tmp_path):
    train(corpus, tmp_path, config=TINY, progress=False, **{**FAST, "steps": 3})
    with pytest.raises(ValueError, match="cannot resume with lr=0.1"):
        train(corpus, tmp_path, resume=True, progress=False, lr=0.1)
    with pytest.raises(ValueError, match="cannot resume with eval_batches=5"):  # another estimate
        train(corpus, tmp_path, resume=True, progress=False, eval_batches=5)
    with pytest.raises(ValueError, match="cannot resume with steps=2: .* already at step 3"):
        train(corpus, tmp_path, resume=True, progress=False, steps=2)
    other = tmp_path / "other.txt"
    other.write_text("Different text. " * 500)
    with pytest.raises(ValueError, match="is not the data"):
        train(other, tmp_path, resume=True, progress=False)


def test_empty_and_too_short_data_are_clear_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="holds no text"):
        train(tmp_path / "empty.txt", tmp_path / "a", preset="tiny", progress=False)
    (tmp_path / "short.txt").write_text("Only a few words here.")
    with pytest.raises(ValueError, match=r"fewer than one training window.*context_length 64"):
        train(tmp_path / "short.txt", tmp_path / "b", preset="tiny", progress=False)
    (tmp_path / "val.txt").write_text("word " * 100)  # long enough to train, not to validate
    with pytest.raises(ValueError, match="validation split"):
        train(tmp_path / "val.txt", tmp_path / "c", preset="tiny", context_length=32,
              val_fraction=0.1, progress=False)


def test_final_model_loads_in_transformers(corpus, tmp_path):
    transformers = pytest.importorskip("transformers")
    train(corpus, tmp_path, preset="tiny", progress=False, **{**FAST, "steps": 2})
    ours = GPT.from_pretrained(tmp_path)
    theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    x = torch.randint(0, ours.config.vocab_size, (2, 17))
    with torch.no_grad():
        torch.testing.assert_close(theirs(x).logits, ours(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_bf16_autocast_trains(corpus, tmp_path, monkeypatch, backend):
    """The first bf16 step's loss against the same model and batch in fp32 and under torch's
    own autocast. Rounding the logits z to bf16 moves the mean cross-entropy by at most
    2 * max|dz| <= 2 * 2**-8 * max|z| = eps * max|z| (eps = 2**-7, bf16's machine epsilon);
    a backend may err by twice torch's autocast error plus that."""
    if backend == "triton":
        pytest.importorskip("triton")
    real_loss, seen = GPT.loss, []

    def loss_recording_the_first_call(self, x, y, *args, **kwargs):
        if not seen:
            seen.append((copy.deepcopy(self.state_dict()), x.clone(), y.clone()))
        return real_loss(self, x, y, *args, **kwargs)

    monkeypatch.setattr(GPT, "loss", loss_recording_the_first_call)
    # small, so that Triton's CPU interpreter runs it in seconds
    r16 = train(corpus, tmp_path, preset="tiny", backend=backend, dtype="bfloat16", progress=False,
                steps=1, batch_size=1, context_length=16, val_fraction=0.0, seed=7)
    monkeypatch.setattr(GPT, "loss", real_loss)
    l16 = r16.train_losses[0][1]
    weights, x, y = seen[0]
    ref = GPT(GPTConfig.from_preset("tiny"), backend="torch")
    ref.load_state_dict(weights)
    with torch.no_grad():
        l32, max_z = float(ref.loss(x, y)), float(ref(x).abs().max())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ref16 = float(ref.loss(x, y))
    eps = torch.finfo(torch.bfloat16).eps
    assert ref16 != l32 and abs(ref16 - l32) <= eps * max_z  # autocast is on, and that precise
    if backend == "torch":
        assert l16 == ref16  # train() runs exactly torch's autocast
    else:
        assert abs(l16 - l32) <= 2 * abs(ref16 - l32) + eps * max_z, (l16, ref16, l32, max_z)


def test_weight_decay_groups_and_schedule():
    model = GPT(GPTConfig.from_preset("tiny"))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decayed and all(n.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")) for n in decayed)
    undecayed = {names[id(p)] for p in no_decay["params"]}
    assert {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight",
            "transformer.h.0.attn.c_attn.bias"} <= undecayed
    assert len(decayed) + len(undecayed) == len(list(model.parameters()))  # each once (lm_head tied)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0

    f = [lr_factor(s, 10, 100, 0.1) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)  # linear warmup
    assert all(a >= b for a, b in zip(f[9:], f[10:]))  # then cosine decay
    assert lr_factor(100, 10, 100, 0.1) == pytest.approx(0.1)


def test_cli_train_then_eval(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(corpus), "--out", str(out), "--preset", "tiny", "--steps", "2",
                 "--batch-size", "2", "--context-length", "32", "--eval-every", "2",
                 "--eval-batches", "1"]) == 0
    assert "final validation loss" in capsys.readouterr().out
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 3)
    assert main(["eval", "--model", str(out), "--data", str(text)]) == 0
    line = capsys.readouterr().out
    loss, ppl = float(line.split()[1]), float(line.split()[3])
    assert ppl == pytest.approx(math.exp(loss), rel=1e-3) and loss > 0
    assert main(["eval", "--model", str(tmp_path / "missing"), "--data", str(text)]) == 2
    assert llm.train is train
