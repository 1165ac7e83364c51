import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from llm import GPT, GPTConfig

from hf_models import TINY_ODD, hf_checkpoint


def test_hf_to_llm_to_hf_round_trip(tmp_path):
    from transformers import GPT2LMHeadModel

    folder, hf = hf_checkpoint(tmp_path, **TINY_ODD)
    model = GPT.from_pretrained(folder)
    model.save_pretrained(tmp_path / "ours")
    back = GPT2LMHeadModel.from_pretrained(tmp_path / "ours").eval()
    x = torch.randint(0, 1003, (2, 17))
    with torch.no_grad():
        torch.testing.assert_close(back(x).logits, hf(x).logits, rtol=0, atol=0)
        torch.testing.assert_close(model(x), hf(x).logits, rtol=1e-5, atol=1e-5)


def test_llm_to_hf_round_trip_identical_logits(tmp_path):
    from transformers import GPT2LMHeadModel

    model = GPT(GPTConfig(**TINY_ODD)).eval()
    model.save_pretrained(tmp_path / "m")
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "m").eval()
    again = GPT.from_pretrained(tmp_path / "m")
    x = torch.randint(0, 1003, (3, 21))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k


def test_pytorch_model_bin_loads_weights_only(tmp_path):
    folder, hf = hf_checkpoint(tmp_path, **TINY_ODD)
    sd = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(sd, folder / "pytorch_model.bin")
    model = GPT.from_pretrained(folder)
    x = torch.randint(0, 1003, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(x).logits, rtol=1e-5, atol=1e-5)


def test_keys_without_transformer_prefix(tmp_path):
    """The original GPT-2 checkpoints name tensors 'h.0.attn...' with no prefix."""
    folder, hf = hf_checkpoint(tmp_path, **TINY_ODD)
    sd = load_file(folder / "model.safetensors")
    save_file({k.removeprefix("transformer."): v for k, v in sd.items()}, folder / "model.safetensors")
    model = GPT.from_pretrained(folder)
    x = torch.randint(0, 1003, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(x).logits, rtol=1e-5, atol=1e-5)


def test_dtype_argument(tmp_path):
    folder, _ = hf_checkpoint(tmp_path, **TINY_ODD)
    model = GPT.from_pretrained(folder, dtype=torch.bfloat16)
    assert model.transformer.wte.weight.dtype == torch.bfloat16
    assert model(torch.zeros(1, 4, dtype=torch.long)).dtype == torch.bfloat16


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        GPT.from_pretrained(tmp_path / "nope")


def test_missing_weights_file(tmp_path):
    folder, _ = hf_checkpoint(tmp_path, **TINY_ODD)
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        GPT.from_pretrained(folder)


def test_missing_relative_folder_is_not_taken_for_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(FileNotFoundError, match="model folder not found: runs/mine"):
        GPT.from_pretrained("runs/mine")


def test_uncached_hub_name_offline_says_how(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="local folder"):
        GPT.from_pretrained("gpt2-xl")


def test_truncated_safetensors_names_the_file(tmp_path):
    folder, _ = hf_checkpoint(tmp_path, **TINY_ODD)
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors"):
        GPT.from_pretrained(folder)


def test_garbage_pytorch_bin_names_the_file(tmp_path):
    folder, _ = hf_checkpoint(tmp_path, **TINY_ODD)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(ValueError, match="pytorch_model.bin"):
        GPT.from_pretrained(folder)


def test_missing_tensor_is_named(tmp_path):
    folder, _ = hf_checkpoint(tmp_path, **TINY_ODD)
    sd = load_file(folder / "model.safetensors")
    del sd["transformer.h.1.mlp.c_fc.bias"]
    save_file(sd, folder / "model.safetensors")
    with pytest.raises(ValueError, match=r"model\.safetensors.*missing tensor 'transformer\.h\.1\.mlp\.c_fc\.bias'"):
        GPT.from_pretrained(folder)


def test_shape_mismatch_names_tensor_and_both_shapes(tmp_path):
    folder, _ = hf_checkpoint(tmp_path, **TINY_ODD)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["n_embd"] = 48  # the weights are 96 wide
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError) as e:
        GPT.from_pretrained(folder)
    msg = str(e.value)
    assert "model.safetensors" in msg and "transformer.wte.weight" in msg
    assert "(1003, 96)" in msg and "(1003, 48)" in msg


def test_unsupported_config_is_refused(tmp_path):
    folder, _ = hf_checkpoint(tmp_path, **TINY_ODD)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["activation_function"] = "relu"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="activation_function"):
        GPT.from_pretrained(folder)


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    import safetensors.torch

    old = GPT(GPTConfig(**TINY_ODD))
    old.save_pretrained(tmp_path / "m")
    real_save = safetensors.torch.save_file

    def save_half_then_crash(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as f:
            f.truncate(1000)
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", save_half_then_crash)
    with pytest.raises(OSError, match="disk full"):
        GPT(GPTConfig(**TINY_ODD)).save_pretrained(tmp_path / "m")
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors"]
    again = GPT.from_pretrained(tmp_path / "m")  # the previous save, intact
    for k, v in old.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k


def test_small_vocabulary_model_round_trips_and_generates(tmp_path):
    """GPT-2's <|endoftext|> (50256) is no token of a 1003-entry vocabulary: no EOS there."""
    model = GPT(GPTConfig(**TINY_ODD))
    assert model.config.eos_token_id is None and model.config.bos_token_id is None
    model.save_pretrained(tmp_path / "m")
    again = GPT.from_pretrained(tmp_path / "m")
    x = torch.randint(0, 1003, (1, 5))
    assert torch.equal(again.generate(x, 6), model.generate(x, 6))


def test_out_of_vocabulary_eos_in_generation_config_is_dropped_with_a_warning(tmp_path):
    folder, hf = hf_checkpoint(tmp_path, **TINY_ODD)
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [5, 50256]}))
    with pytest.warns(UserWarning, match="50256"):
        model = GPT.from_pretrained(folder)
    assert model.generation_config.eos_token_ids() == [5]


def test_loaded_parameters_are_contiguous_and_tied(tmp_path):
    folder, _ = hf_checkpoint(tmp_path, **TINY_ODD)
    model = GPT.from_pretrained(folder)
    assert all(p.is_contiguous() and p.device.type == "cpu" for p in model.parameters())
    assert model.lm_head.weight is model.transformer.wte.weight


def test_hub_name_is_served_from_the_local_cache_offline(tmp_path, monkeypatch):
    """A name found in the Hugging Face cache loads without a network."""
    folder, hf = hf_checkpoint(tmp_path, **TINY_ODD)
    cache = tmp_path / "hub"
    revision = "0" * 40
    snapshot = cache / "models--openai-community--gpt2" / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for f in folder.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (cache / "models--openai-community--gpt2" / "refs").mkdir()
    (cache / "models--openai-community--gpt2" / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    model = GPT.from_pretrained("gpt2")
    x = torch.randint(0, 1003, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(x).logits, rtol=1e-5, atol=1e-5)


# -- saves are whole, files readable, bad configs and weights refused before building ------

_KILL_SCRIPT = r"""
import os, signal, sys, torch
import safetensors.torch
import llm, llm.fileio as f
folder, mode, point = sys.argv[1], sys.argv[2], int(sys.argv[3])
calls = {"n": 0}
real_rename = os.rename

def rename(a, b):
    calls["n"] += 1
    if calls["n"] == point:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_rename(a, b)

def save_file(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

f.os.rename = rename
if mode == "fallback":  # where the OS has no atomic exchange of two folders
    f._exchange = lambda a, b: False
if mode == "write":
    safetensors.torch.save_file = save_file
torch.manual_seed(1)
llm.GPT(llm.GPTConfig.from_preset("tiny")).save_pretrained(folder)
"""


def _kill_during_save(folder, mode, point):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, str(folder), mode, str(point)],
                       capture_output=True, text=True)
    assert r.returncode in (0, -9), r.stderr
    return r.returncode == -9


# exchange: renames 1-2 move the extras, then one atomic exchange; fallback: renames 3-4
# move the old folder aside and the new one in
@pytest.mark.parametrize("mode, point", [("write", 0), ("exchange", 1), ("exchange", 2),
                                         ("fallback", 2), ("fallback", 3), ("fallback", 4)])
def test_save_killed_midway_loses_nothing(tmp_path, mode, point):
    folder = tmp_path / "m"
    torch.manual_seed(0)
    old = GPT(GPTConfig.from_preset("tiny"))
    old.save_pretrained(folder)
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "ckpt-1.pt").write_bytes(b"state")
    (folder / "loss.png").write_bytes(b"png")
    assert _kill_during_save(folder, mode, point)
    torch.manual_seed(1)
    new = GPT(GPTConfig.from_preset("tiny"))
    if not (mode == "fallback" and point == 4):  # the one instant between two renames
        w = GPT.from_pretrained(folder).transformer.wte.weight  # the old model or the new one, whole
        assert torch.equal(w, old.transformer.wte.weight) or torch.equal(w, new.transformer.wte.weight)
    new.save_pretrained(folder)  # the next save puts back whatever the killed one moved aside
    assert torch.equal(GPT.from_pretrained(folder).transformer.wte.weight, new.transformer.wte.weight)
    assert (folder / "checkpoints" / "ckpt-1.pt").read_bytes() == b"state"
    assert (folder / "loss.png").read_bytes() == b"png"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.lock", "m"]


def _umask():
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_saved_files_are_readable_by_others(tmp_path):
    GPT(GPTConfig.from_preset("tiny")).save_pretrained(tmp_path / "m")
    for name in ("model.safetensors", "config.json", "generation_config.json"):
        assert (tmp_path / "m" / name).stat().st_mode & 0o777 == 0o666 & ~_umask(), name


def test_save_into_a_file_path_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"):
        GPT(GPTConfig.from_preset("tiny")).save_pretrained(tmp_path / "f")
    assert (tmp_path / "f").read_text() == "x"


def test_non_finite_weights_are_refused_unless_allowed(tmp_path):
    model = GPT(GPTConfig.from_preset("tiny"))
    with torch.no_grad():
        model.transformer.h[1].mlp.c_fc.weight[3, 4] = float("nan")
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"transformer\.h\.1\.mlp\.c_fc\.weight.*NaN"):
        GPT.from_pretrained(tmp_path)
    assert GPT.from_pretrained(tmp_path, allow_non_finite=True).transformer.h[1].mlp.c_fc.weight.isnan().any()


def test_config_that_does_not_fit_the_file_fails_before_building(tmp_path):
    import json
    import time

    GPT(GPTConfig.from_preset("tiny")).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["n_layer"] = 10_000_000
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="n_layer=10000000"):
        GPT.from_pretrained(tmp_path)
    assert time.perf_counter() - t0 < 30  # refused from the file's names, no module built


@pytest.mark.parametrize("field, value, match", [
    ("layer_norm_epsilon", -1, "layer_norm_epsilon"),
    ("layer_norm_epsilon", "1e-5", "layer_norm_epsilon"),
    ("embd_pdrop", None, "embd_pdrop"),
    ("n_layer", True, "n_layer"),
    ("n_inner", 0, "n_inner"),
])
def test_config_values_are_checked(tmp_path, field, value, match):
    with pytest.raises(ValueError, match=match):
        GPTConfig(**{field: value})
    import json

    GPT(GPTConfig.from_preset("tiny")).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg[field] = value
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=f"config.json.*{match}"):
        GPT.from_pretrained(tmp_path)


def test_config_json_that_is_not_an_object(tmp_path):
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        GPTConfig.from_json(tmp_path)


def test_dtype_by_name(tmp_path):
    GPT(GPTConfig.from_preset("tiny")).save_pretrained(tmp_path)
    assert GPT.from_pretrained(tmp_path, dtype="bfloat16").transformer.wte.weight.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        GPT.from_pretrained(tmp_path, dtype="float8")
