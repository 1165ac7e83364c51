"""TrainConfig is the one definition of the training settings: `llm train`'s flags come from it."""

import argparse
import dataclasses
import typing

import pytest

import llm.training
from llm.cli import build_parser, main
from llm.training import TrainConfig

# flags of `llm train` that are not TrainConfig settings
OTHER_FLAGS = {"data", "out", "preset", "config", "backend", "resume", "overwrite"}


def _train_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


def _actions() -> dict:
    return {a.dest: a for a in _train_parser()._actions if not isinstance(a, argparse._HelpAction)}


def test_train_flags_are_the_config_fields():
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert not fields & OTHER_FLAGS
    assert set(_actions()) == fields | OTHER_FLAGS


def test_flag_names_types_defaults_and_help_come_from_the_dataclass():
    actions, hints = _actions(), typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        action = actions[f.name]
        assert action.option_strings[0] == "--" + f.name.replace("_", "-")
        assert action.default is None  # "not given": a resume keeps the checkpoint's setting
        assert f.metadata["help"] in action.help
        if f.default is not None:
            assert f"(default {f.default})" in action.help
        wanted = [t for t in typing.get_args(hints[f.name]) if t is not type(None)] or [hints[f.name]]
        if wanted[0] is bool:  # --x / --no-x
            assert action.option_strings[1] == "--no-" + f.name.replace("_", "-"), f.name
        else:
            assert action.type is wanted[0], f.name
    assert actions["dtype"].choices == ("float32", "bfloat16", "auto")
    assert actions["keep_checkpoints"].option_strings == ["--keep-checkpoints", "--keep"]
    assert actions["warmup_steps"].type is int and actions["max_seconds"].type is float


def test_every_setting_has_help():
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata.get("help"), f.name


def test_given_flags_reach_train_and_no_others(monkeypatch, tmp_path):
    calls = []

    def fake_train(data, out, **kwargs):
        calls.append((data, out, kwargs))
        return llm.training.TrainResult(out, 0)

    monkeypatch.setattr(llm.training, "train", fake_train)
    assert main(["train", "--data", "d.txt", "--out", str(tmp_path), "--keep", "2", "--lr", "1e-3",
                 "--warmup-steps", "0", "--dtype", "bfloat16", "--resume"]) == 0
    (data, out, kwargs), = calls
    assert (data, out) == ("d.txt", str(tmp_path))
    assert kwargs == {"preset": None, "config": None, "backend": None, "resume": True, "overwrite": False,
                      "keep_checkpoints": 2, "lr": 1e-3, "warmup_steps": 0, "dtype": "bfloat16"}
    calls.clear()
    assert main(["train", "--data", "d.txt", "--out", str(tmp_path), "--keep-checkpoints", "5"]) == 0
    assert calls[0][2]["keep_checkpoints"] == 5
    calls.clear()
    assert main(["train", "--data", "d.txt", "--out", str(tmp_path), "--no-compile", "--parallel", "fsdp",
                 "--activation-checkpointing", "--dist-timeout", "30"]) == 0
    assert {k: calls[0][2][k] for k in ("compile", "parallel", "activation_checkpointing", "dist_timeout")} == {
        "compile": False, "parallel": "fsdp", "activation_checkpointing": True, "dist_timeout": 30.0}


def test_bad_flag_values_are_refused_by_the_parser():
    with pytest.raises(SystemExit):
        _train_parser().parse_args(["--data", "d", "--out", "o", "--dtype", "float16"])
    with pytest.raises(SystemExit):
        _train_parser().parse_args(["--data", "d", "--out", "o", "--steps", "1.5"])
