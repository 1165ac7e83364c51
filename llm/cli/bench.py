"""`llm bench`: every path (torch reference, triton, native, torch.compile, transformers)
timed against the reference on this machine; a table, a JSON record and a PNG chart."""

from __future__ import annotations

from ..bench import results_dir, suite
from .checks import check_at_least, check_device


def add_parser(sub):
    p = sub.add_parser("bench", help="time every path against the torch reference on this machine",
                       description=suite.__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a short run, sized for about a minute on 2 quiet CPU cores (default: the full run)")
    p.add_argument("--op", action="append", default=[], metavar="OP",
                   help=f"only these (repeat, or comma-separate): {', '.join(suite.PARTS)}")
    p.add_argument("--backend", action="append", default=[], metavar="NAME",
                   help=f"only these providers besides the torch reference: {', '.join(suite.PROVIDERS)}")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:<index> (default: cuda when visible)")
    p.add_argument("--dtype", default=None, choices=list(suite.DTYPES),
                   help="op dtype (default: float32 on a CPU, bfloat16 on CUDA)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    p.add_argument("--out", default=None,
                   help="results folder (default: benchmarks/results in a source checkout, else ./llm-bench-results)")
    p.add_argument("--no-chart", action="store_true", help="skip the PNG chart")
    return p


def run(args) -> int:
    check_at_least("--threads", args.threads, 1)
    if args.device is not None:
        check_device(args.device)
    plan = suite.make_plan(args.quick, args.op, args.backend, args.device, args.dtype, args.threads)
    record = suite.run(plan)
    print(suite.format_report(record), end="")
    for path in suite.save(record, results_dir(args.out), chart=not args.no_chart):
        print(f"wrote {path}")
    return 0
