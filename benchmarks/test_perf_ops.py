"""Each op on each provider against the torch reference (llm.bench.ops): checked first by
llm.testing's rule, then timed. extra_info holds the work per call (bytes or FLOPs) and,
when timed, the achieved GB/s or TFLOPS."""

import torch

from llm.bench import ops


def test_op(benchmark, op_case, op_tables, device, synced):
    op, size, provider, mode = op_case
    table = op_tables[provider]
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    check = ops.make_case(op, ops.CHECK_SIZES["small"][op][0], dtype, device, seed=1)
    failed = [c.message() for c in ops.check_case(provider, table, check) if not c.ok]
    assert not failed, "\n".join(failed)
    case = ops.make_case(op, size, dtype, device)
    benchmark.group = f"{op} {mode} {case.shape}"
    benchmark.extra_info.update(op=op, mode=mode, shape=case.shape, provider=provider,
                                bytes=case.bytes.get(mode), flops=case.flops.get(mode))
    benchmark(synced(ops.mode_fn(case, table, mode)))
    if benchmark.stats is not None:
        benchmark.extra_info.update(ops.rates(case, mode, benchmark.stats.stats.median * 1e3, None))
