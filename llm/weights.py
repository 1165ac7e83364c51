"""Hugging Face GPT-2 weights in and out.

Reads a folder with `config.json` and `model.safetensors` (or `pytorch_model.bin`, loaded
with `weights_only=True`), or a hub name (`gpt2`, `gpt2-medium`, ...) through
`huggingface_hub`'s cache. HF's GPT-2 stores its linear layers as Conv1D, weight [in, out];
this model stores [out, in], so those four weights are transposed on the way in and out.
Every tensor is checked (present, shape, finite dtype) before any is copied into a model:
a bad file never yields a half-loaded model.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from .config import GPTConfig
from .fileio import atomic_path
from .generation.config import GenerationConfig

# Linear layers that HF keeps in Conv1D layout [in, out].
CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Buffers that old checkpoints carry and that hold no weights.
IGNORED_SUFFIXES = ("attn.bias", "attn.masked_bias")

HUB_NAMES = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
}


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """A local folder as is; a hub name through huggingface_hub's cache (offline first)."""
    p = Path(path).expanduser()
    if p.is_dir():
        return p
    name = str(path)
    # "owner/repo" is a hub id unless it looks like a local path ("runs/mine" with ./runs there)
    looks_like_hub = name in HUB_NAMES or (
        name.count("/") == 1 and not p.is_absolute() and not name.startswith((".", "~"))
        and not p.parent.exists())
    if not looks_like_hub:
        raise FileNotFoundError(f"model folder not found: {p}")
    repo_id = HUB_NAMES.get(name, name)
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise FileNotFoundError(
            f"{name!r} is not a local folder, and fetching it from the Hugging Face hub needs "
            f"huggingface_hub (pip install 'llm[hub]'); or pass a local folder with config.json "
            f"and model.safetensors"
        ) from e
    patterns = ["config.json", "model.safetensors", "generation_config.json"]
    try:  # the cache first: works offline
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        offline_reason = "HF_HUB_OFFLINE is set"
    else:
        try:
            return Path(snapshot_download(repo_id, allow_patterns=patterns))
        except Exception as e:  # no network, no such repo, ...
            offline_reason = f"{type(e).__name__}: {e}"
    raise FileNotFoundError(
        f"{name!r} ({repo_id}) is not in the Hugging Face cache and could not be fetched "
        f"({offline_reason}). Download it where there is a network, or pass a local folder "
        f"holding config.json and model.safetensors, e.g. GPT.from_pretrained('/path/to/gpt2')."
    )


def _read_state_dict(folder: Path) -> tuple[dict[str, torch.Tensor], Path]:
    st = folder / "model.safetensors"
    pt = folder / "pytorch_model.bin"
    if st.is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(st)), st
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise ValueError(f"{st}: corrupt or truncated safetensors file ({e})") from e
    if pt.is_file():
        try:
            sd = torch.load(str(pt), map_location="cpu", weights_only=True)
        except Exception as e:  # pickle errors, truncated zip, disallowed globals
            raise ValueError(f"{pt}: cannot be read as a weights-only checkpoint ({e})") from e
        if not isinstance(sd, dict):
            raise ValueError(f"{pt}: expected a dict of tensors, got {type(sd).__name__}")
        return sd, pt
    raise FileNotFoundError(f"{folder}: no model.safetensors or pytorch_model.bin")


def hf_to_state_dict(hf: dict[str, torch.Tensor], model, source: str) -> dict[str, torch.Tensor]:
    """Map and check an HF GPT-2 state dict onto `model`'s names and shapes."""
    # Original GPT-2 checkpoints name keys without the "transformer." prefix.
    hf = {k if k.startswith(("transformer.", "lm_head.")) else f"transformer.{k}": v for k, v in hf.items()}
    expected = model.state_dict()
    out = {}
    for name, ref in expected.items():
        if name == "lm_head.weight":
            continue  # tied to transformer.wte.weight
        if name not in hf:
            raise ValueError(f"{source}: missing tensor {name!r}")
        t = hf[name]
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{source}: {name!r} is not a tensor")
        if name.endswith(CONV1D_SUFFIXES):
            t = t.t().contiguous()
        if tuple(t.shape) != tuple(ref.shape):
            what = " (Conv1D layout, transposed)" if name.endswith(CONV1D_SUFFIXES) else ""
            raise ValueError(
                f"{source}: tensor {name!r} has shape {tuple(t.shape)}{what}, "
                f"the config expects {tuple(ref.shape)}"
            )
        if not t.is_floating_point():
            raise ValueError(f"{source}: tensor {name!r} has dtype {t.dtype}, expected floating point")
        out[name] = t
    unexpected = [k for k in hf if k not in expected and not k.endswith(IGNORED_SUFFIXES)]
    if unexpected:
        raise ValueError(f"{source}: unexpected tensors {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    return out


def load_weights(model, folder: Path) -> None:
    """Give `model` (built for `folder`'s config, on any device incl. meta) the folder's
    checked tensors as its parameters and its generation config. Nothing is assigned
    unless every tensor checks out."""
    hf, source = _read_state_dict(folder)
    sd = hf_to_state_dict(hf, model, str(source))
    config = model.config
    generation_config = GenerationConfig.from_pretrained(folder)
    bad = [t for t in generation_config.eos_token_ids() if not 0 <= t < config.vocab_size]
    if bad:
        warnings.warn(f"{folder}: eos_token_id {bad} outside the vocabulary [0, {config.vocab_size}) "
                      "is ignored", stacklevel=3)
        kept = [t for t in generation_config.eos_token_ids() if t not in bad]
        generation_config = generation_config.replace(eos_token_id=kept or None)
    # The checked tensors become the parameters (no random init of a second model); the
    # tie is restored after the assignment replaced wte's parameter.
    model.load_state_dict(sd, strict=False, assign=True)
    model.lm_head.weight = model.transformer.wte.weight
    model.generation_config = generation_config


def state_dict_to_hf(model) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied; transformers re-ties it from wte
        if name.endswith(CONV1D_SUFFIXES):
            t = t.t()
        out[name] = t.detach().contiguous().cpu()
    return out


def save_pretrained(model, path) -> None:
    """Write `model.safetensors`, `config.json` and `generation_config.json` into folder
    `path`, each atomically (a crash leaves every file either old or new, never torn)."""
    from safetensors.torch import save_file

    folder = Path(path)
    sd = state_dict_to_hf(model)
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file(sd, str(tmp), metadata={"format": "pt"})
    model.config.save_json(folder / "config.json")
    generation_config = model.generation_config
    if generation_config.eos_token_id is None:  # a new model: config.json's EOS id
        generation_config = generation_config.replace(eos_token_id=model.config.eos_token_id)
    generation_config.save_pretrained(folder)
