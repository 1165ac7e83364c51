"""Training step throughput and peak memory: this engine on each backend against
transformers' GPT2LMHeadModel, from the same weights.

A step is what `llm train` does: forward and loss (bf16 autocast on CUDA), backward,
gradient clipping, AdamW with decay on the matrices only, zero_grad. Engines are timed
interleaved, one step per call, after two untimed steps (which also allocate AdamW's
state). tokens/s = batch x context / median step; TFLOPS counts 6 FLOPs per parameter per
token (forward and backward, attention left out), so `of_ceiling` against the matmul rate
measured in the run is the model FLOPs utilization. `peak_MB` is what building the engine
and its first two steps add (weights, gradients, AdamW state, activations).

`llm[native]` is not listed: its kernels are inference kernels, and a training step on
the native backend runs the reference ops.
"""

from __future__ import annotations

import tempfile
from contextlib import nullcontext

import torch

from ..config import GPTConfig
from ..model import GPT
from ..ops import BackendUnavailableError, get_ops
from ..training import param_groups
from .ceilings import Ceilings
from .memory import PeakMemory, release_memory
from .timing import interleaved, sync

ENGINES = ("torch", "triton", "transformers")
# preset -> ((model preset, batch, context) on a CPU, the same on a GPU)
SIZES = {
    "smoke": (("tiny", 2, 16), ("tiny", 2, 16)),
    "quick": (("small", 4, 128), ("gpt2", 8, 512)),
    "full": (("small", 8, 256), ("gpt2", 16, 1024)),
}


def make_step(model, loss_fn, device, amp: bool):
    """step(x, y) -> loss: forward and loss, backward, clipping at 1.0, AdamW, zero_grad."""
    cuda = torch.device(device).type == "cuda"
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-4, betas=(0.9, 0.95), fused=True if cuda else None)
    ctx = torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if amp else nullcontext()

    def step(x, y):
        with ctx:
            loss = loss_fn(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def _llm_builder(config, state, backend, device):
    def build():
        model = GPT(config, backend=backend).to(device)
        model.load_state_dict(state)
        return model, model.loss
    return build


def _hf_builder(model: GPT, device):
    """transformers' GPT-2 with the weights of `model` (through a saved folder); its loss
    shifts the labels itself, so it is given the inputs (the same work, a loss over one
    target less)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        hf_config = GPT2Config.from_pretrained(d)
        state = GPT2LMHeadModel.from_pretrained(d).state_dict()

    def build():
        hf = GPT2LMHeadModel(hf_config).to(device)
        hf.load_state_dict(state)
        return hf, lambda x, y: hf(input_ids=x, labels=x).loss
    return build


def builders(config: GPTConfig, device, wanted=ENGINES, notes: list | None = None) -> dict:
    """name -> build() -> (model, loss_fn(x, y)) for each engine in `wanted` that runs here,
    all from the same random weights (seed 0)."""
    notes = [] if notes is None else notes
    torch.manual_seed(0)
    reference = GPT(config, backend="torch")
    state = reference.state_dict()
    out = {"llm[torch]": _llm_builder(config, state, "torch", device)}
    if "triton" in wanted:
        try:
            get_ops("triton")
            if torch.device(device).type != "cuda":
                raise BackendUnavailableError("not timed on a CPU (Triton's interpreter only)")
            out["llm[triton]"] = _llm_builder(config, state, "triton", device)
        except BackendUnavailableError as e:
            notes.append(f"train llm[triton]: skipped ({e})")
    if "transformers" in wanted:
        try:
            out["transformers"] = _hf_builder(reference, device)
        except ImportError as e:
            notes.append(f"train transformers: skipped ({e})")
    return out


def run_training(preset: str = "quick", device="cpu", wanted=ENGINES, ceilings: Ceilings | None = None,
                 notes: list | None = None, progress=None, rounds: int = 3) -> list[dict]:
    """Rows of one training step of every engine in `wanted` at `preset`'s size."""
    device = torch.device(device)
    model_preset, B, T = SIZES[preset][1 if device.type == "cuda" else 0]
    if progress:
        progress(f"train {model_preset} B{B} T{T}")
    config = GPTConfig.from_preset(model_preset)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, config.vocab_size, (B, T + 1), generator=gen).to(device)
    x, y = ids[:, :-1], ids[:, 1:]
    amp = device.type == "cuda"
    steps, peaks, first = {}, {}, {}
    for name, build in builders(config, device, wanted, notes).items():
        with PeakMemory(device) as mem:
            model, loss_fn = build()
            step = make_step(model, loss_fn, device, amp)
            first[name] = float(step(x, y))
            step(x, y)
            sync(device)
        steps[name], peaks[name] = (lambda step=step: step(x, y)), mem.peak_mb
    times = interleaved(steps, device, rounds=rounds, warmup=0, budget_s=0.0, max_reps=1)
    n_params = sum(p.numel() for p in GPT(config, backend="torch").parameters())
    ref = times["llm[torch]"].median_ms
    rows = []
    for name, t in times.items():
        tflops = 6 * n_params * B * T / t.median_ms / 1e9
        rows.append(dict(benchmark="train", op="train", mode="step", shape=f"{model_preset} B{B} T{T}",
                         dtype="bf16 autocast" if amp else "float32", provider=name, **t.summary(),
                         vs_ref=ref / t.median_ms, tokens_per_s=B * T / t.median_ms * 1e3, TFLOPS=tflops,
                         of_ceiling=tflops / ceilings.matmul_tflops if ceilings else None,
                         peak_MB=peaks[name], first_loss=first[name]))
    del steps
    release_memory()
    return rows
