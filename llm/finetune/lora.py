"""LoRA: low-rank adapters on a GPT's linear layers, the base weights frozen.

Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models" (2021). An adapted linear
layer y = x W^T + b gains the trainable term (alpha / r) * B(A(dropout(x))), A [r, in]
(Kaiming-uniform, as nn.Linear) and B [out, r] (zeros: training starts from the base model).
Only A and B (and whatever the caller unfreezes, e.g. a classification head) train.

The base matmuls still run through the backend's op table. A module holding adapted layers
(a block's `attn` or `mlp`) gets an `adapt_ops` function, which `GPT.set_backend` applies to
the backend's table: the adapted `linear` adds the low-rank term to the backend's output. The
fused MLP op cannot take a term inside it (the c_fc term changes GELU's input), so a module
whose MLP layers are adapted runs linear, the reference GELU, linear: the backend's linears,
unfused. For full-speed inference `merge_lora` folds B A into the weights (the model then runs
the fused ops and its backend's own decoder again) and `unmerge_lora` takes it out.

Names and files follow PEFT: the adapter of `transformer.h.0.attn.c_attn` is
`transformer.h.0.attn.c_attn.lora_A.weight` / `lora_B.weight`; `save_adapter` writes
`adapter_model.safetensors` (keys prefixed `base_model.model.`) and `adapter_config.json`, which
`peft.PeftModel.from_pretrained` loads onto transformers' GPT-2 (Conv1D: fan_in_fan_out), and
`load_adapter` reads PEFT's LoRA adapters of GPT-2. Targets match as in PEFT: a layer whose
name equals the target or ends in "." + target, so `c_proj` is both attn.c_proj and mlp.c_proj.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..fileio import replace_folder
from ..ops import OpTable
from ..ops.reference import gelu_tanh
from ..weights import checked_tensor

TARGETS = ("c_attn", "c_proj", "c_fc", "attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class LoRAConfig:
    """Rank r, alpha (the term is scaled by alpha / r), dropout on the adapter's input, and
    the target layers (names from TARGETS)."""

    r: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("c_attn", "c_proj", "c_fc")

    def __post_init__(self):
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"LoRA rank r must be a positive integer, got {self.r!r}")
        if not isinstance(self.alpha, (int, float)) or not 0 < self.alpha < math.inf:
            raise ValueError(f"LoRA alpha must be a positive number, got {self.alpha!r}")
        if not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
        unknown = [t for t in targets if t not in TARGETS]
        if not targets or unknown:
            raise ValueError(f"LoRA targets must be some of {list(TARGETS)}, got {list(targets)}")
        object.__setattr__(self, "targets", targets)

    @property
    def scaling(self) -> float:
        return self.alpha / self.r

    @classmethod
    def parse_targets(cls, text: str) -> tuple[str, ...]:
        """"c_attn,c_proj" -> ("c_attn", "c_proj")."""
        return tuple(t.strip() for t in text.split(",") if t.strip())

    def to_peft(self, task_type: str, base_model: str | None, modules_to_save=None) -> dict:
        """adapter_config.json as PEFT writes it for transformers' GPT-2."""
        return {"peft_type": "LORA", "task_type": task_type, "r": self.r, "lora_alpha": self.alpha,
                "lora_dropout": self.dropout, "target_modules": list(self.targets), "fan_in_fan_out": True,
                "bias": "none", "use_rslora": False, "use_dora": False, "modules_to_save": modules_to_save,
                "base_model_name_or_path": base_model, "inference_mode": True}

    @classmethod
    def from_peft(cls, d: dict, source: str) -> "LoRAConfig":
        """The settings of a PEFT LoRA adapter_config.json; ValueError for what this engine
        does not run (other PEFT methods, DoRA, rsLoRA, trained biases, per-layer ranks)."""
        if d.get("peft_type") != "LORA":
            raise ValueError(f"{source}: peft_type {d.get('peft_type')!r}, only LORA adapters load here")
        for key, off in (("use_dora", False), ("use_rslora", False), ("bias", "none"), ("rank_pattern", {}),
                         ("alpha_pattern", {}), ("layers_to_transform", None)):
            if d.get(key, off) not in (off, None):
                raise ValueError(f"{source}: {key}={d[key]!r} is not supported (only {off!r})")
        targets = d.get("target_modules")
        if isinstance(targets, str):
            raise ValueError(f"{source}: target_modules as a regular expression is not supported")
        try:
            return cls(d["r"], d["lora_alpha"], d.get("lora_dropout", 0.0), tuple(targets or ()))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{source}: {e}") from None


class LoRALinear(nn.Linear):
    """A linear layer's weight and bias (the very tensors it had, frozen) with a low-rank term:
    y = x W^T + b + scaling * lora_B(lora_A(lora_dropout(x))). While `merged`, W holds the term."""

    def __init__(self, base: nn.Linear, config: LoRAConfig):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        kw = dict(bias=False, device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Linear(base.in_features, config.r, **kw)  # Kaiming-uniform, as PEFT
        self.lora_B = nn.Linear(config.r, base.out_features, **kw)
        nn.init.zeros_(self.lora_B.weight)
        self.lora_dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.scaling = config.scaling
        self.merged = False

    def lora_term(self, x: torch.Tensor) -> torch.Tensor:
        """[..., out] of x [..., in]; scaled at rank r, the narrowest point."""
        return self.lora_B(self.lora_A(self.lora_dropout(x)) * self.scaling)

    def delta_weight(self) -> torch.Tensor:
        """scaling * B A, [out, in]: what merging adds to the weight."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def forward(self, x):
        y = F.linear(x, self.weight, self.bias)
        return y if self.merged else y + self.lora_term(x)


class AdaptedOps:
    """A module's `adapt_ops`: the backend's table with each of `layers`' low-rank terms
    added to its linear, and the MLP unfused (linear, reference GELU, linear)."""

    def __init__(self, layers: tuple[LoRALinear, ...]):
        self.layers = layers

    def __call__(self, base: OpTable) -> OpTable:
        layers = self.layers

        def linear(x, weight, bias=None):
            y = base.linear(x, weight, bias)
            for layer in layers:  # two per module: found by identity, no lookup table to go stale
                if weight is layer.weight:
                    return y + layer.lora_term(x)
            return y

        def mlp(x, fc_w, fc_b, proj_w, proj_b):
            return linear(gelu_tanh(linear(x, fc_w, fc_b)), proj_w, proj_b)

        return base.replace(linear=linear, mlp=mlp)


# -- putting adapters in and taking them out -------------------------------------------------


def _blocks_linears(gpt) -> dict[str, tuple[nn.Module, str, nn.Linear]]:
    """name -> (parent, attribute, layer) of every linear layer inside the blocks."""
    found = {}
    for i, block in enumerate(gpt.transformer.h):
        for part in ("attn", "mlp"):
            parent = getattr(block, part)
            for attr, layer in parent.named_children():
                if isinstance(layer, nn.Linear):
                    found[f"transformer.h.{i}.{part}.{attr}"] = (parent, attr, layer)
    return found


def _matches(name: str, targets) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def lora_layers(gpt) -> dict[str, LoRALinear]:
    """name -> LoRALinear of the adapted layers (names as in the model: transformer.h.0...)."""
    return {name: layer for name, (_, _, layer) in _blocks_linears(gpt).items() if isinstance(layer, LoRALinear)}


def _set_adapt_ops(gpt) -> None:
    """Give each module that holds unmerged adapters its `adapt_ops`, take it from the rest,
    and rebuild the op tables."""
    parents = {}
    for parent, _, layer in _blocks_linears(gpt).values():
        parents.setdefault(parent, [])
        if isinstance(layer, LoRALinear) and not layer.merged:
            parents[parent].append(layer)
    for parent, layers in parents.items():
        if layers:
            parent.adapt_ops = AdaptedOps(tuple(layers))
        elif "adapt_ops" in parent.__dict__:
            del parent.adapt_ops
    gpt.set_backend(gpt.backend)


def inject_lora(gpt, config: LoRAConfig) -> dict[str, LoRALinear]:
    """Freeze every parameter of `gpt` and put adapters on the target layers (random A, zero
    B, drawn from torch's global generator); returns them by name."""
    if lora_layers(gpt):
        raise ValueError("the model already holds LoRA adapters")
    for p in gpt.parameters():
        p.requires_grad_(False)
    added = {}
    for name, (parent, attr, layer) in _blocks_linears(gpt).items():
        if _matches(name, config.targets):
            added[name] = LoRALinear(layer, config)
            setattr(parent, attr, added[name])
    _set_adapt_ops(gpt)
    return added


def merge_lora(gpt) -> None:
    """Fold every adapter into its weight (W += scaling B A): the same outputs, at the speed
    of the plain model (fused MLP, the backend's decoder)."""
    with torch.no_grad():
        for layer in lora_layers(gpt).values():
            if not layer.merged:
                layer.weight.add_(layer.delta_weight().to(layer.weight.dtype))
                layer.merged = True
    _set_adapt_ops(gpt)


def unmerge_lora(gpt) -> None:
    """Undo `merge_lora` (W -= scaling B A; equal to the weights before up to rounding)."""
    with torch.no_grad():
        for layer in lora_layers(gpt).values():
            if layer.merged:
                layer.weight.sub_(layer.delta_weight().to(layer.weight.dtype))
                layer.merged = False
    _set_adapt_ops(gpt)


def remove_lora(gpt, merge: bool = True) -> None:
    """Take the adapters out, merged into the weights first (or dropped: merge=False leaves
    the base model); the layers are plain nn.Linear again, holding the same tensors."""
    if merge:
        merge_lora(gpt)
    else:
        unmerge_lora(gpt)
    for name, (parent, attr, layer) in _blocks_linears(gpt).items():
        if isinstance(layer, LoRALinear):
            plain = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
            plain.weight, plain.bias = layer.weight, layer.bias
            setattr(parent, attr, plain)
    _set_adapt_ops(gpt)


def lora_state_dict(gpt) -> dict[str, torch.Tensor]:
    """The adapters' tensors, named as in PEFT without its prefix (...c_attn.lora_A.weight)."""
    out = {}
    for name, layer in lora_layers(gpt).items():
        out[f"{name}.lora_A.weight"] = layer.lora_A.weight
        out[f"{name}.lora_B.weight"] = layer.lora_B.weight
    return out


# -- files -----------------------------------------------------------------------------------


def save_adapter(folder, gpt, config: LoRAConfig, task_type: str = "CAUSAL_LM", base_model: str | None = None,
                 extra: dict[str, torch.Tensor] | None = None) -> None:
    """Write the adapters (and `extra` trained tensors, e.g. {"score.weight": ...} of a
    classifier, listed as PEFT's modules_to_save) as a PEFT adapter folder, atomically."""
    from safetensors.torch import save_file

    if any(layer.merged for layer in lora_layers(gpt).values()):
        raise ValueError("the adapters are merged into the weights; unmerge_lora first")
    extra = extra or {}
    tensors = {PEFT_PREFIX + k: v.detach().contiguous().cpu() for k, v in {**lora_state_dict(gpt), **extra}.items()}
    if not tensors:
        raise ValueError("the model holds no LoRA adapters")
    modules = sorted({k.rsplit(".", 1)[0] for k in extra}) or None
    settings = config.to_peft(task_type, base_model, modules)

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")

    replace_folder(folder, write, {ADAPTER_CONFIG, ADAPTER_WEIGHTS})


def read_adapter_config(folder) -> tuple[LoRAConfig, dict]:
    """(settings, adapter_config.json as read) of an adapter folder."""
    path = Path(folder) / ADAPTER_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"not a LoRA adapter folder: {path} is missing")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return LoRAConfig.from_peft(raw, str(path)), raw


def read_adapter(folder) -> tuple[LoRAConfig, dict[str, torch.Tensor]]:
    """(settings, tensors named without PEFT's prefix) of an adapter folder."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config, _ = read_adapter_config(folder)
    path = Path(folder) / ADAPTER_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"not a LoRA adapter folder: {path} is missing")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path}: corrupt or truncated safetensors file ({e})") from e
    return config, {k.removeprefix(PEFT_PREFIX): v for k, v in tensors.items()}


def load_adapter(gpt, folder, extra: dict[str, tuple] | None = None) -> dict[str, torch.Tensor]:
    """Put the adapter saved in `folder` on `gpt` (which must hold none): its settings, its
    tensors checked (every one present, shaped for this model, finite). `extra` names the
    other tensors the folder may hold ({"score.weight": shape}); they are returned."""
    config, tensors = read_adapter(folder)
    source = str(Path(folder) / ADAPTER_WEIGHTS)
    extra = extra or {}
    layers = inject_lora(gpt, config)
    expected = {}
    for name, layer in layers.items():
        expected[f"{name}.lora_A.weight"] = (layer.lora_A, (config.r, layer.in_features))
        expected[f"{name}.lora_B.weight"] = (layer.lora_B, (layer.out_features, config.r))
    unexpected = sorted(set(tensors) - set(expected) - set(extra))
    if unexpected:
        remove_lora(gpt, merge=False)
        raise ValueError(f"{source}: tensors this model has no place for: {unexpected[:4]}")
    out = {}
    try:
        for name, (module, shape) in expected.items():
            if name not in tensors:
                raise ValueError(f"{source}: missing tensor {name!r}")
            t = checked_tensor(tensors[name], name, shape, source, False)
            with torch.no_grad():
                module.weight.copy_(t)
        for name, shape in extra.items():
            if name in tensors:
                out[name] = checked_tensor(tensors[name], name, shape, source, False)
    except ValueError:
        remove_lora(gpt, merge=False)
        raise
    return out


def adapter_base_model(folder) -> str | None:
    """base_model_name_or_path of an adapter folder (None when it does not say)."""
    base = read_adapter_config(folder)[1].get("base_model_name_or_path")
    return os.fspath(base) if base else None
