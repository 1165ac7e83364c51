"""End-to-end generation per engine (llm.bench.generation): the prefill (a 1-token call)
and a whole n-token call, greedy, same weights; an engine with the reference's precision
must produce the reference's tokens before it is timed."""

import pytest
import torch

from llm.bench import generation

ROUNDS = {"smoke": 1, "quick": 3, "full": 5}


@pytest.fixture(scope="module")
def setup(size, device):
    """(engines, notes, prompt ids, new tokens, the reference's output)."""
    preset, batches, prompts, new, _ = generation.SIZES[size]
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    notes = []
    model, hf = generation.build_models(preset, device, dtype, notes=notes)
    runs = generation.engines(model, hf, notes=notes)
    ids = torch.randint(0, model.config.vocab_size, (batches[-1], prompts[0]),
                        generator=torch.Generator().manual_seed(1)).to(device)
    outputs = generation.warm_up(runs, ids, new, notes)  # drops an engine that raises, with a note
    return runs, notes, ids, new, outputs["llm[torch]"]


def _engine(setup, name):
    """The engine's run(ids, new); skipped when it cannot run here, failed when it broke."""
    runs, notes, *_ = setup
    if name not in runs:
        why = [n for n in notes if n.startswith(name + ":")]
        why = why or [n for n in notes if n.startswith(name.split()[0].split("]")[0] + "]:")]
        if why and ("dropped" in why[0] or "failed" in why[0]):
            pytest.fail(why[0])
        pytest.skip(why[0] if why else f"{name}: not an engine on this device")
    return runs[name][0]


@pytest.mark.parametrize("mode", ["prefill", "generate"])
def test_generate(benchmark, gen_engine, mode, setup, size, synced):
    run = _engine(setup, gen_engine)
    _, _, ids, new, expected = setup
    out = run(ids, new)
    same = generation.same_tokens(out, expected, ids.shape[1])
    if "bf16" not in gen_engine and "int8" not in gen_engine:
        assert same == 1.0, f"{gen_engine}: {same:.0%} of the new tokens equal the reference's"
    n = 1 if mode == "prefill" else new
    B, T = ids.shape
    benchmark.group = f"generate {mode} B{B} T{T}" + ("" if mode == "prefill" else f" +{n}")
    benchmark.extra_info.update(engine=gen_engine, batch=B, prompt=T, new_tokens=n, same_tokens=same)
    benchmark.pedantic(synced(lambda: run(ids, n)), rounds=ROUNDS[size], warmup_rounds=1, iterations=1)
    if benchmark.stats is not None:
        benchmark.extra_info["tokens_per_s"] = B * (T if mode == "prefill" else n) / benchmark.stats.stats.median
