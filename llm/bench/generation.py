"""End-to-end generation: this engine on each backend against transformers' `generate`, the
same weights and settings, greedy, no early stop.

Engines: `llm[torch]` (the reference: other rows are ratios to it), `llm[native]` (the C++
decoder; on a CPU also with bfloat16 and int8 weights: `llm[native bf16]`,
`llm[native int8]`), `llm[triton]` (CUDA), each on CUDA with its decode step captured in a
CUDA graph and, as `... no graph`, without; `transformers`. Every engine runs a 1-token
call (the prefill: time to first token) and an n-token call, interleaved with the other
engines round after round; then

  prefill    ms of the 1-token call; tokens/s = prompt tokens / that time
  decode     ms/token = (n-token call - 1-token call) / (n - 1); tokens/s = batch / that;
             GB/s = weight bytes one step reads / ms per token, against the read bandwidth
             measured in the run (a decode step streams every weight once)

`same_tokens` is the fraction of new tokens equal to the reference's (1.0 expected where
the weights are the reference's own precision). `peak_MB`: what one n-token call adds.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

import torch

from ..config import GPTConfig
from ..model import GPT
from ..native.packing import pack_model
from ..ops import BackendUnavailableError, get_ops
from .ceilings import Ceilings
from .memory import PeakMemory
from .timing import interleaved, timed

ENGINES = ("torch", "native", "triton", "transformers")  # the names --backend filters by
NATIVE_FORMATS = ("bfloat16", "int8")  # besides the model's own dtype, on a CPU
SHORT = {"bfloat16": "bf16", "int8": "int8", "float32": "fp32"}

# preset -> (model preset, batches, prompt lengths, new tokens, rounds)
SIZES = {
    "smoke": ("tiny", (2,), (5,), 4, 1),
    "quick": ("gpt2", (1,), (16,), 32, 2),
    "full": ("gpt2", (1, 8), (16, 512), 128, 3),
}


@contextlib.contextmanager
def native_weights(fmt: str | None):
    """The native decoder's weight format for the block ($LLM_NATIVE_WEIGHTS, restored after)."""
    old = os.environ.get("LLM_NATIVE_WEIGHTS")
    if fmt is not None:
        os.environ["LLM_NATIVE_WEIGHTS"] = fmt
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LLM_NATIVE_WEIGHTS", None)
        else:
            os.environ["LLM_NATIVE_WEIGHTS"] = old


def dense_weight_bytes(model: GPT) -> int:
    """Bytes of the matrices one decode step reads: every linear weight and the tied lm_head
    (the position table is read a row at a time)."""
    return sum(p.numel() * p.element_size() for name, p in model.named_parameters()
               if p.dim() == 2 and "wpe" not in name)


def _llm_engine(model, backend: str, graph: bool | None, fmt: str | None):
    def run(ids, new):
        model.set_backend(backend)
        with native_weights(fmt):
            return model.generate(ids, new, attention_mask=torch.ones_like(ids), cuda_graph=graph)
    return run


def _hf_engine(hf):
    def run(ids, new):
        with torch.inference_mode():
            return hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                               min_new_tokens=new, do_sample=False, pad_token_id=50256)
    return run


def engines(model: GPT, hf, wanted=ENGINES, notes: list | None = None) -> dict:
    """name -> (run(ids, new), weight bytes per decode step) for each engine in `wanted`
    that runs here; the reference first. Why any other cannot goes to `notes`."""
    notes = [] if notes is None else notes
    cuda = model.transformer.wte.weight.device.type == "cuda"
    dense = dense_weight_bytes(model)
    out = {"llm[torch]": (_llm_engine(model, "torch", False if cuda else None, None), dense)}
    for backend in ("native", "triton"):
        if backend not in wanted:
            continue
        try:
            get_ops(backend)
        except BackendUnavailableError as e:
            notes.append(f"llm[{backend}]: skipped ({e})")
            continue
        if backend == "triton" and not cuda:
            notes.append("llm[triton]: not timed on a CPU (Triton's interpreter only)")
            continue
        graphs = [(True, ""), (False, " no graph")] if cuda else [(None, "")]
        for graph, suffix in graphs:
            out[f"llm[{backend}]{suffix}"] = (_llm_engine(model, backend, graph, None), dense)
        if backend == "native" and not cuda:
            for fmt in NATIVE_FORMATS:
                if fmt != str(model.transformer.wte.weight.dtype).removeprefix("torch."):
                    name = f"llm[native {SHORT[fmt]}]"
                    try:
                        nbytes = int(pack_model(model, fmt).streamed_bytes())
                    except RuntimeError as e:  # a broken build is reported, the run goes on
                        notes.append(f"{name}: skipped (packing failed: {str(e).splitlines()[0]})")
                        continue
                    out[name] = (_llm_engine(model, "native", None, fmt), nbytes)
    if hf is not None and "transformers" in wanted:
        out["transformers"] = (_hf_engine(hf), dense)
    return out


def build_models(preset: str, device, dtype, with_transformers: bool = True, notes=None):
    """llm.GPT of `preset` with random weights (seed 0), and transformers' GPT2LMHeadModel
    loaded from the same saved folder (None without transformers)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset(preset), backend="torch").to(device=device, dtype=dtype).eval()
    if not with_transformers:
        return model, None
    try:
        from transformers import GPT2LMHeadModel
    except ImportError as e:
        if notes is not None:
            notes.append(f"transformers: skipped ({e})")
        return model, None
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        hf = GPT2LMHeadModel.from_pretrained(d, dtype=dtype).to(device).eval()
    return model, hf


def same_tokens(out: torch.Tensor, ref: torch.Tensor, T: int) -> float:
    """The fraction of new tokens (after the T prompt tokens) of `out` equal to `ref`'s."""
    return (out[:, T:] == ref[:, T:]).float().mean().item()


def time_engines(runs: dict, ids: torch.Tensor, new: int, device, rounds: int) -> dict:
    """name -> (prefill Timing, n-token Timing): both calls of every engine, interleaved,
    one call each per round (warm up the engines first)."""
    fns = {}
    for name, (run, _) in runs.items():
        fns[(name, 1)] = lambda run=run: run(ids, 1)
        fns[(name, new)] = lambda run=run: run(ids, new)
    t = interleaved(fns, device, rounds=rounds, warmup=0, budget_s=0.0, max_reps=1)
    return {name: (t[(name, 1)], t[(name, new)]) for name in runs}


def warm_up(runs: dict, ids: torch.Tensor, new: int, notes: list) -> dict:
    """name -> the tokens of one n-token call of each engine (also its warm-up); an engine
    other than the reference that raises is dropped from `runs`, with a note."""
    outputs = {}
    for name, (run, _) in list(runs.items()):
        try:
            outputs[name] = run(ids, new)
        except RuntimeError as e:
            if name == "llm[torch]":
                raise
            notes.append(f"{name}: dropped ({type(e).__name__}: {str(e).splitlines()[0]})")
            del runs[name]
    return outputs


def case_rows(runs: dict, ids: torch.Tensor, new: int, device, rounds: int,
              ceilings: Ceilings | None, notes: list | None = None) -> list[dict]:
    """The prefill and decode rows of every engine on one (batch, prompt) case."""
    B, T = ids.shape
    outputs = warm_up(runs, ids, new, [] if notes is None else notes)
    ref_out = outputs["llm[torch]"]
    times = time_engines(runs, ids, new, device, rounds)
    decode_ms = {name: max(n.median_ms - p.median_ms, 1e-6) / max(new - 1, 1) for name, (p, n) in times.items()}
    rows = []
    for name, (run, nbytes) in runs.items():
        prefill, full = times[name]
        with PeakMemory(device) as mem:
            timed(lambda: run(ids, new), device)
        base = dict(benchmark="generate", op="generate", shape=f"B{B} T{T} +{new}", provider=name,
                    same_tokens=same_tokens(outputs[name], ref_out, T), peak_MB=mem.peak_mb)
        rows.append(dict(base, mode="prefill", **prefill.summary(), tokens_per_s=B * T / prefill.median_ms * 1e3,
                         vs_ref=times["llm[torch]"][0].median_ms / prefill.median_ms))
        ms = decode_ms[name]
        gbs = nbytes / ms / 1e6
        rows.append(dict(base, mode="decode", ms=ms, spread=full.spread, runs=full.runs,
                         tokens_per_s=B / ms * 1e3, vs_ref=decode_ms["llm[torch]"] / ms, GBps=gbs,
                         of_ceiling=gbs / ceilings.read_gbs if ceilings else None, weight_MB=nbytes / 1e6))
    return rows


def run_generation(preset: str = "quick", device="cpu", dtype=None, wanted=ENGINES,
                   ceilings: Ceilings | None = None, notes: list | None = None, progress=None,
                   batches=None, prompts=None, new: int | None = None, rounds: int | None = None) -> list[dict]:
    """Rows of every engine in `wanted` on each (batch, prompt) of `preset` (or the given
    batches / prompts / new / rounds). dtype: default float32 on a CPU, bfloat16 on CUDA."""
    notes = [] if notes is None else notes
    device = torch.device(device)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    model_preset, p_batches, p_prompts, p_new, p_rounds = SIZES[preset]
    batches, prompts = batches or p_batches, prompts or p_prompts
    new, rounds = new or p_new, rounds or p_rounds
    model, hf = build_models(model_preset, device, dtype, "transformers" in wanted, notes)
    runs = engines(model, hf, wanted, notes)
    gen = torch.Generator().manual_seed(1)
    rows = []
    for B in batches:
        for T in prompts:
            if progress:
                progress(f"generate B{B} T{T} +{new}")
            ids = torch.randint(0, model.config.vocab_size, (B, T), generator=gen).to(device)
            rows += case_rows(runs, ids, new, device, rounds, ceilings, notes)
    for r in rows:
        r.update(dtype=str(dtype).removeprefix("torch."), model=model_preset)
    return rows



def per_engine(rows: list[dict]) -> list[dict]:
    """One line per (case, engine) from the prefill and decode rows: batch, prompt, engine,
    prefill_ms, decode_ms (per token), tokens_per_s (decode), GBps, of_ceiling, vs_ref
    (decode), same_tokens, peak_MB."""
    out = {}
    for r in rows:
        if r.get("benchmark") != "generate":
            continue
        line = out.setdefault((r["shape"], r["provider"]), dict(shape=r["shape"], engine=r["provider"]))
        if r["mode"] == "prefill":
            line["prefill_ms"] = r["ms"]
        else:
            line.update(decode_ms=r["ms"], tokens_per_s=r["tokens_per_s"], GBps=r.get("GBps"),
                        of_ceiling=r.get("of_ceiling"), vs_ref=r["vs_ref"], same_tokens=r.get("same_tokens"),
                        peak_MB=r.get("peak_MB"))
    return list(out.values())
