"""One training step per engine (llm.bench.training): forward and loss, backward, clipping,
AdamW; every engine starts from the same weights, and an llm backend's first loss must
equal the reference's before it is timed."""

import pytest
import torch

from llm.bench import training
from llm.config import GPTConfig

ROUNDS = {"smoke": 1, "quick": 3, "full": 5}


@pytest.fixture(scope="module")
def setup(size, device):
    """(builders, notes, x, y, batch size x context, autocast) of the size's shape."""
    preset, B, T = training.SIZES[size][1 if torch.device(device).type == "cuda" else 0]
    config = GPTConfig.from_preset(preset)
    notes = []
    builders = training.builders(config, device, notes=notes)
    ids = torch.randint(0, config.vocab_size, (B, T + 1), generator=torch.Generator().manual_seed(1)).to(device)
    return builders, notes, ids[:, :-1], ids[:, 1:], f"{preset} B{B} T{T}", torch.device(device).type == "cuda"


def test_train_step(benchmark, train_engine, setup, size, device, synced):
    builders, notes, x, y, shape, amp = setup
    if train_engine not in builders:
        pytest.skip(next((n for n in notes if train_engine in n), f"{train_engine}: not here"))
    model, loss_fn = builders[train_engine]()
    step = training.make_step(model, loss_fn, device, amp)
    first = float(step(x, y))
    if train_engine.startswith("llm["):
        _, ref_loss = builders["llm[torch]"]()
        with torch.no_grad(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp):
            expected = float(ref_loss(x, y))
        assert abs(first - expected) <= 1e-3 * max(1.0, abs(expected)), (train_engine, first, expected)
    benchmark.group = f"train step {shape}"
    benchmark.extra_info.update(engine=train_engine, shape=shape, tokens=x.numel(), first_loss=first)
    benchmark.pedantic(synced(lambda: step(x, y)), rounds=ROUNDS[size], warmup_rounds=1, iterations=1)
    if benchmark.stats is not None:
        benchmark.extra_info["tokens_per_s"] = x.numel() / benchmark.stats.stats.median
