"""Hugging Face GPT-2 weights in and out.

Reads a folder with `config.json` and `model.safetensors` (or `pytorch_model.bin`, loaded
with `weights_only=True`), or a hub name (`gpt2`, `gpt2-medium`, ...) through
`huggingface_hub`'s cache. HF's GPT-2 stores its linear layers as Conv1D, weight [in, out];
this model stores [out, in], so those four weights are transposed on the way in and out.
Every tensor is checked (present, shape, floating dtype, finite values) against the config
before any module is built: a bad file never yields a half-loaded model.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from .config import GPTConfig
from .fileio import file_mode, replace_folder
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


def read_state_dict(folder: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """(tensors as stored, the file read) of a model folder: model.safetensors, else
    pytorch_model.bin (weights only); nothing checked yet."""
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


def expected_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of a GPT with `config` (linear weights [out, in]; a
    tied lm_head is not listed, an untied one is). Computed from the config alone, so a file
    can be checked before any module is built."""
    C, H, V, P = config.n_embd, config.inner_dim, config.vocab_size, config.n_positions
    shapes = {"transformer.wte.weight": (V, C), "transformer.wpe.weight": (P, C)}
    layer = {"ln_1.weight": (C,), "ln_1.bias": (C,), "attn.c_attn.weight": (3 * C, C), "attn.c_attn.bias": (3 * C,),
             "attn.c_proj.weight": (C, C), "attn.c_proj.bias": (C,), "ln_2.weight": (C,), "ln_2.bias": (C,),
             "mlp.c_fc.weight": (H, C), "mlp.c_fc.bias": (H,), "mlp.c_proj.weight": (C, H), "mlp.c_proj.bias": (C,)}
    for i in range(config.n_layer):
        for name, shape in layer.items():
            if config.bias or not name.endswith(".bias"):
                shapes[f"transformer.h.{i}.{name}"] = shape
    shapes["transformer.ln_f.weight"] = (C,)
    if config.bias:
        shapes["transformer.ln_f.bias"] = (C,)
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (V, C)
    return shapes


def _layers_in(names) -> int:
    layers = {int(n.split(".")[2]) for n in names if n.startswith("transformer.h.") and n.split(".")[2].isdigit()}
    return max(layers) + 1 if layers else 0


def hf_to_state_dict(hf: dict[str, torch.Tensor], config: GPTConfig, source: str,
                     allow_non_finite: bool = False) -> dict[str, torch.Tensor]:
    """Map and check an HF GPT-2 state dict onto this engine's names and shapes for `config`:
    every tensor present, of the right shape, floating point and (unless allowed) finite."""
    # Original GPT-2 checkpoints name keys without the "transformer." prefix.
    hf = {k if k.startswith(("transformer.", "lm_head.")) else f"transformer.{k}": v for k, v in hf.items()}
    if _layers_in(hf) != config.n_layer:  # before listing the config's tensors: it may be huge
        raise ValueError(f"{source}: holds {_layers_in(hf)} layers, config.json says n_layer={config.n_layer}")
    expected = expected_shapes(config)
    out = {}
    for name, shape in expected.items():
        if name not in hf:
            raise ValueError(f"{source}: missing tensor {name!r}")
        out[name] = checked_tensor(hf[name], name, shape, source, allow_non_finite)
    unexpected = [k for k in hf if k not in expected and k != "lm_head.weight" and not k.endswith(IGNORED_SUFFIXES)]
    if unexpected:
        raise ValueError(f"{source}: unexpected tensors {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    return out


def checked_tensor(t, name: str, shape: tuple, source: str, allow_non_finite: bool) -> torch.Tensor:
    """`t` as this engine stores it (an HF Conv1D weight transposed), after checking that it
    is a floating tensor of `shape` (and finite unless allowed); ValueError naming `name`."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{source}: {name!r} is not a tensor")
    if name.endswith(CONV1D_SUFFIXES):
        t = t.t().contiguous()
    if tuple(t.shape) != shape:
        what = " (Conv1D layout, transposed)" if name.endswith(CONV1D_SUFFIXES) else ""
        raise ValueError(f"{source}: tensor {name!r} has shape {tuple(t.shape)}{what}, the config expects {shape}")
    if not t.is_floating_point():
        raise ValueError(f"{source}: tensor {name!r} has dtype {t.dtype}, expected floating point")
    if not allow_non_finite and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{source}: tensor {name!r} holds NaN or infinite values "
                         f"(pass allow_non_finite=True to load it anyway)")
    return t


def read_weights(folder: Path, config: GPTConfig, allow_non_finite: bool = False):
    """(state dict, generation config) of a model folder, every tensor checked against
    `config`; raises before anything is built when the file does not fit."""
    hf, source = read_state_dict(folder)
    sd = hf_to_state_dict(hf, config, str(source), allow_non_finite)
    generation_config = GenerationConfig.from_pretrained(folder)
    bad = [t for t in generation_config.eos_token_ids() if not 0 <= t < config.vocab_size]
    if bad:
        warnings.warn(f"{folder}: eos_token_id {bad} outside the vocabulary [0, {config.vocab_size}) "
                      "is ignored", stacklevel=3)
        kept = [t for t in generation_config.eos_token_ids() if t not in bad]
        generation_config = generation_config.replace(eos_token_id=kept or None)
    return sd, generation_config


def assign_weights(model, state_dict: dict[str, torch.Tensor]) -> None:
    """Make the checked tensors `model`'s parameters (no copy into a random init; `model`
    may live on the meta device), then restore the lm_head tie the assignment broke."""
    model.load_state_dict(state_dict, strict=False, assign=True)
    if model.config.tie_word_embeddings:
        model.lm_head.weight = model.transformer.wte.weight


def state_dict_to_hf(model) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue  # tied; transformers re-ties it from wte
        if name.endswith(CONV1D_SUFFIXES):
            t = t.t()
        out[name] = t.detach().contiguous().cpu()
    return out


# What a model folder's save replaces; anything else in the folder is kept.
MODEL_FILES = {"model.safetensors", "pytorch_model.bin", "config.json", "generation_config.json"}


def save_pretrained(model, path) -> None:
    """Write `model.safetensors`, `config.json` and `generation_config.json` into folder
    `path`, replacing the folder's model as a whole (`llm.fileio.replace_folder`): a crash
    at any moment leaves either the old model or the new one, never a mix; other files in
    the folder (a training run's checkpoints, ...) are kept."""
    from safetensors.torch import save_file

    sd = state_dict_to_hf(model)
    generation_config = model.generation_config
    if generation_config.eos_token_id is None:  # a new model: config.json's EOS id
        generation_config = generation_config.replace(eos_token_id=model.config.eos_token_id)

    def write(folder: Path) -> None:
        save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
        os.chmod(folder / "model.safetensors", file_mode())
        model.config.save_json(folder / "config.json")
        generation_config.save_pretrained(folder)

    replace_folder(path, write, MODEL_FILES)
