"""Compiled training (`compile=True`): the losses and weights of eager training to float
rounding, with the compile reported once. One small model, one run each way: compiling
takes tens of seconds on a CPU."""

import pytest

from dist_helpers import assert_same_run, write_result
from llm.training import train
from llm.training.corpus import build_corpus

RUN = dict(preset="tiny", steps=3, batch_size=2, grad_accum=2, context_length=32, lr=3e-3, warmup_steps=1,
           val_fraction=0.1, eval_every=3, eval_batches=2, seed=7)


@pytest.mark.slow
def test_compiled_training_equals_eager(tmp_path, one_thread, capsys):
    data = build_corpus(tmp_path / "corpus", max_bytes=60_000)
    write_result(train(data, tmp_path / "eager", compile=False, **RUN))
    assert "torch.compile" not in capsys.readouterr().out
    write_result(train(data, tmp_path / "compiled", compile=True, **RUN))
    assert capsys.readouterr().out.count("torch.compile: the first step took") == 1
    assert_same_run(tmp_path / "compiled", tmp_path / "eager", rtol=1e-4, atol=2e-5)
