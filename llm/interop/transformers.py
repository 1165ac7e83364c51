"""A drop-in backend for transformers' GPT-2, and transformers models into this engine.

`patch_transformers(model, backend="auto")` makes a `GPT2LMHeadModel` (or `GPT2Model`,
`GPT2ForSequenceClassification`, any model built on `GPT2Model`) run its layernorms,
attention and MLPs through llm's op table (`llm/ops`). Each `nn.LayerNorm`, `GPT2Attention`
and `GPT2MLP` inside the model changes class in place to a subclass whose `forward` calls
the ops: the same instances with the same parameters and names, so state dicts, optimizers
already holding the parameters, `save_pretrained`, `generate`, gradient checkpointing and
`Trainer` (which finds LayerNorms by class) all keep working. `unpatch_transformers`
changes the classes back. Nothing outside the model changes: no function or class of
transformers is replaced, so other models stay as they were.

Weights: HF's Conv1D stores [in, out] and the op table takes [out, in], so the patched
modules pass transposed views (no copy). Without autograd they pass the same view object
while the parameter is unchanged, so the native backend packs each weight once.

Attention takes transformers' 4-D mask (bool for 'sdpa', additive float for 'eager') apart:
no mask, or a mask that is exactly causal attention over a set of valid keys (padding) on
every real query, runs `ops.attention` / `ops.cached_attention`; any other mask (a static
cache, a custom mask, dropout while decoding) runs the model's own attention function on
that mask, so the result is never approximated. Padding queries' outputs are not defined
(transformers' own attention functions disagree there too).

Handled: `scale_attn_by_inverse_layer_idx` and `scale_attn_weights=False` (queries are
rescaled). Refused, naming the option: cross-attention (`add_cross_attention`), an
activation other than GPT-2's tanh GELU, `reorder_and_upcast_attn`, an attention
implementation other than 'sdpa' / 'eager' (their masks come in other forms), and
transformers older than 5. Attention weights (`output_attentions`) are not computed; the
loss stays transformers' own.
"""

from __future__ import annotations

import importlib
import math
import threading

import torch
import torch.nn as nn
from torch.utils.weak import WeakIdKeyDictionary

from ..config import GPTConfig
from ..generation.config import GenerationConfig
from ..ops import OpTable, get_ops
from ..ops.reference import causal_mask
from ..weights import hf_to_state_dict

SUPPORTED_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")
SUPPORTED_ATTENTION = ("sdpa", "eager")
_HF_GPT2 = "transformers.models.gpt2.modeling_gpt2"


def _hf_gpt2():
    """transformers' GPT-2 module, imported on first use (transformers is optional)."""
    try:
        return importlib.import_module(_HF_GPT2)
    except ImportError as e:
        raise ImportError(f"this needs transformers (pip install 'transformers>=5'): {e}") from e


# -- the patched forwards ----------------------------------------------------------------------


class _LayerNormForward:
    def forward(self, x):
        return self._llm_ops.layer_norm(x, self.weight, self.bias, self.eps)


class _MLPForward:
    def forward(self, hidden_states):
        ops = self._llm_ops
        y = ops.mlp(hidden_states, _weight_t(self, "c_fc"), self.c_fc.bias, _weight_t(self, "c_proj"),
                    self.c_proj.bias)
        return self.dropout(y)


class _AttentionForward:
    def forward(self, hidden_states, cache=None, attention_mask=None, encoder_hidden_states=None,
                encoder_attention_mask=None, output_attentions=False, **kwargs):
        if encoder_hidden_states is not None:
            raise ValueError("patched GPT-2 attention has no cross-attention (unpatch_transformers first)")
        cache = kwargs.pop("past_key_values", cache)
        ops = self._llm_ops
        B, T, C = hidden_states.shape
        qkv = ops.linear(hidden_states, _weight_t(self, "c_attn"), self.c_attn.bias)  # (B, T, 3C)
        q, k, v = (t.view(B, T, -1, self.head_dim).transpose(1, 2) for t in qkv.split(C, dim=2))  # (B, nh, T, hs)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx, kwargs=kwargs)  # (B, nh, S, hs)
        dropout_p = self.attn_dropout.p if self.training else 0.0
        y = _op_attention(self, ops, q, k, v, attention_mask, dropout_p)
        if y is None:  # a mask the ops do not express: the model's own attention function
            y = _hf_attention(self, q, k, v, attention_mask, dropout_p, kwargs)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        y = ops.linear(y, _weight_t(self, "c_proj"), self.c_proj.bias)
        return self.resid_dropout(y), None


def _op_attention(module, ops: OpTable, q, k, v, attention_mask, dropout_p):
    """The attention through the op table [B, nh, T, hs], or None when the mask is not one
    the ops express."""
    T, S = q.shape[-2], k.shape[-2]
    if attention_mask is None:
        # transformers leaves the mask out for plain causal attention (T == S) and for a
        # single query that sees every key (T == 1)
        if T != S and T != 1:
            return None
        key_valid = None
    else:
        key_valid = _mask_as_key_valid(attention_mask, T, S)
        if key_valid is None:
            return None
    factor = module.scaling * math.sqrt(module.head_dim)  # 1 unless the scale is not GPT-2's
    if factor != 1.0:
        q = q * factor
    if T == S:
        return ops.attention(q, k, v, key_valid, dropout_p)
    if dropout_p > 0.0:
        return None
    return ops.cached_attention(q, k, v, torch.arange(S - T, S, device=q.device), key_valid)


def _hf_attention(module, q, k, v, attention_mask, dropout_p, kwargs):
    hf = _hf_gpt2()
    attend = hf.ALL_ATTENTION_FUNCTIONS.get_interface(module.config._attn_implementation, hf.eager_attention_forward)
    y, _ = attend(module, q, k, v, attention_mask, dropout=dropout_p, scaling=module.scaling, **kwargs)
    return y.transpose(1, 2)  # (B, nh, T, hs)


_mask_cache = WeakIdKeyDictionary()  # one mask serves every layer of a forward
_mask_lock = threading.Lock()


def _mask_as_key_valid(mask: torch.Tensor, T: int, S: int):
    """key_valid [B, S] when transformers' mask [B, 1, T, S] is exactly causal attention
    (query i at slot S - T + i) over the valid keys on every query that is itself a valid
    key; else None. Computed once per mask object."""
    with _mask_lock:
        hit = _mask_cache.get(mask)
    if hit is not None and hit[0] == (T, S):
        return hit[1]
    key_valid = _key_valid_of(mask, T, S)
    with _mask_lock:
        _mask_cache[mask] = ((T, S), key_valid)
    return key_valid


def _key_valid_of(mask, T, S):
    if not isinstance(mask, torch.Tensor) or mask.dim() != 4 or tuple(mask.shape[1:]) != (1, T, S):
        return None
    if mask.dtype == torch.bool:
        allowed = mask[:, 0]  # (B, T, S)
    else:  # additive: 0 where allowed, a large negative number where not
        allowed = mask[:, 0] == 0
        if not bool((allowed | (mask[:, 0] <= torch.finfo(mask.dtype).min / 2)).all()):
            return None
    key_valid = allowed[:, -1]  # the last query sees every valid key
    q_pos = torch.arange(S - T, S, device=mask.device)
    expected = causal_mask(q_pos, S, key_valid)[:, 0]  # (B, T, S)
    real_query = key_valid[:, q_pos]  # (B, T)
    if not bool(((expected == allowed) | ~real_query[..., None]).all()):
        return None
    return key_valid


def _weight_t(module, name: str) -> torch.Tensor:
    """Conv1D `module.<name>.weight` [in, out] as [out, in], a view. Without autograd the
    same view object comes back while the parameter is unchanged (native packs it once)."""
    w = getattr(module, name).weight
    if torch.is_grad_enabled() and w.requires_grad:
        return w.t()
    hit = module._llm_views.get(name)
    if hit is not None and hit[0] is w and hit[1].data_ptr() == w.data_ptr() and hit[1].dtype == w.dtype \
            and hit[1].device == w.device:
        return hit[1]
    view = w.detach().t()
    module._llm_views[name] = (w, view)
    return view


# -- patch and unpatch -------------------------------------------------------------------------

_FORWARDS = {"LayerNorm": _LayerNormForward, "GPT2MLP": _MLPForward, "GPT2Attention": _AttentionForward}
_patched_classes: dict[type, type] = {}
_classes_lock = threading.Lock()


def _patched_class(original: type) -> type:
    """`original` with the op-table forward in front (one class per original class)."""
    with _classes_lock:
        if original not in _patched_classes:
            forward = _FORWARDS[original.__name__]
            _patched_classes[original] = type(f"Llm{original.__name__}", (forward, original),
                                              {"_llm_original": original, "__module__": __name__})
        return _patched_classes[original]


def _patchable_modules(model: nn.Module) -> list[nn.Module]:
    """The layernorms, attentions and MLPs of `model` (patched or not)."""
    hf = _hf_gpt2()
    classes = (nn.LayerNorm, hf.GPT2Attention, hf.GPT2MLP)
    return [m for m in model.modules() if type(m) in classes or hasattr(type(m), "_llm_original")]


def check_supported(config) -> None:
    """Raise ValueError naming the first option of a transformers GPT-2 config that the
    patched modules do not run exactly."""
    if getattr(config, "model_type", None) != "gpt2":
        raise ValueError(f"not a transformers GPT-2 model (model_type {getattr(config, 'model_type', None)!r})")
    version = importlib.import_module("transformers").__version__
    if int(version.split(".")[0]) < 5:
        raise ValueError(f"patch_transformers needs transformers >= 5, found {version}")
    if config.add_cross_attention:
        raise ValueError("add_cross_attention=True (cross-attention) is not supported")
    if config.activation_function not in SUPPORTED_ACTIVATIONS:
        raise ValueError(f"activation_function={config.activation_function!r} is not supported "
                         f"(only GPT-2's tanh GELU: {', '.join(SUPPORTED_ACTIVATIONS)})")
    if config.reorder_and_upcast_attn:
        raise ValueError("reorder_and_upcast_attn=True is not supported")
    if config._attn_implementation not in SUPPORTED_ATTENTION:
        raise ValueError(f"attn_implementation={config._attn_implementation!r} is not supported "
                         f"(use one of {', '.join(SUPPORTED_ATTENTION)})")


def patch_transformers(model: nn.Module, backend: str | None = "auto") -> nn.Module:
    """Run `model`'s (a transformers GPT-2) layernorms, attention and MLPs through `backend`'s
    op table (see the module docstring); returns `model`. Patching a patched model switches
    its backend. Raises ValueError naming an unsupported option, before changing anything."""
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError(f"{type(model).__name__} is not a transformers model (no .config)")
    check_supported(config)
    ops = get_ops(backend)
    modules = _patchable_modules(model)
    for module in modules:
        if isinstance(module, nn.LayerNorm) and (len(module.normalized_shape) != 1 or module.weight is None):
            raise ValueError(f"a LayerNorm over {tuple(module.normalized_shape)} with elementwise_affine="
                             f"{module.weight is not None} is not supported (GPT-2's are affine, over one dim)")
    for module in modules:
        original = getattr(type(module), "_llm_original", type(module))
        module.__class__ = _patched_class(original)
        module._llm_ops = ops
        module._llm_views = {}
    return model


def unpatch_transformers(model: nn.Module) -> nn.Module:
    """Give every module `patch_transformers` changed its own class back; returns `model`."""
    for module in model.modules():
        original = getattr(type(module), "_llm_original", None)
        if original is not None:
            module.__class__ = original
            del module._llm_ops, module._llm_views
    return model


def patched_backend(model: nn.Module) -> str | None:
    """The backend a patched model runs, or None when it is not patched."""
    for module in model.modules():
        if hasattr(type(module), "_llm_original"):
            return module._llm_ops.name
    return None


# -- transformers model -> this engine ---------------------------------------------------------


def read_model(hf_model) -> tuple[GPTConfig, dict[str, torch.Tensor], GenerationConfig]:
    """(config, checked state dict (copies), generation config) of a transformers
    `GPT2LMHeadModel` or `GPT2Model`, for `GPT.from_transformers`."""
    name = type(hf_model).__name__
    if name not in ("GPT2LMHeadModel", "GPT2Model") or getattr(hf_model, "config", None) is None:
        raise ValueError(f"GPT.from_transformers takes a transformers GPT2LMHeadModel or GPT2Model, got {name}")
    config = GPTConfig.from_hf_dict(hf_model.config.to_dict(), source=name)
    hf_state = hf_model.state_dict()
    if not config.tie_word_embeddings and "lm_head.weight" not in hf_state:
        raise ValueError(f"{name} has no lm_head and its config says tie_word_embeddings=False")
    if config.tie_word_embeddings:
        hf_state.pop("lm_head.weight", None)
    # copies: the two models must not share storage
    state = {k: v.detach().clone() for k, v in hf_to_state_dict(hf_state, config, source=name).items()}
    generation_config = GenerationConfig(eos_token_id=config.eos_token_id)
    hf_generation = getattr(hf_model, "generation_config", None)
    if hf_generation is not None:
        generation_config = GenerationConfig.from_hf_dict(hf_generation.to_diff_dict(), source=f"{name}.generation_config")
        if generation_config.eos_token_id is None:
            generation_config = generation_config.replace(eos_token_id=config.eos_token_id)
    return config, state, generation_config
