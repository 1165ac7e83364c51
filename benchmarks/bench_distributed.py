"""Compiled and distributed training on this machine, in one run.

1. compile: the training step (llm.bench.training.make_step: forward and loss, backward,
   clipping, AdamW) eager against the same step with the loss through torch.compile, fp32,
   for the `small` preset (8 x 256 tokens) and the gpt2 shape (1 x 256), from the same
   weights, timed in interleaved rounds. `compile_s` is the first compiled step less a
   compiled step, in a fresh inductor cache (what a first run pays; later runs of the same
   model find most of it cached); `break_even_tokens` = compile_s / (1/eager - 1/compiled
   tokens/s): how many trained tokens repay it.
2. processes: `llm train` (the product path: data shards, wrappers, the loop) of the small
   preset at one global batch (8 windows of 256 tokens per step), in 1 process with 2
   threads and in 2 processes of 1 thread under `torchrun --nproc_per_node 2` (gloo): DDP,
   FSDP2, FSDP2 with bf16 mixed precision, FSDP2 with activation checkpointing. Launches
   alternate in rounds. tokens/s from the median step (the first step and the last, which
   writes the checkpoint, left out); `comm_ms`: the collectives one step needs (DDP: one
   all-reduce of the gradients; FSDP: two all-gathers of the parameters and a
   reduce-scatter of the gradients), timed alone on the run's process group, median of 3;
   `MB/process`: rank 0's peak resident set during the steps above that before `train`
   (weights, gradients, AdamW state, activations, workspace).

    python benchmarks/bench_distributed.py [--shapes small,gpt2] [--steps 6] [--rounds 2]
        [--modes single,ddp,fsdp,fsdp-bf16,fsdp-ac] [--skip-compile] [--skip-processes]

Results are appended to benchmarks/results/distributed.jsonl with the machine, versions
and commit (and the load average, since a shared machine moves every figure).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from common import RESULTS, environment, markdown_table, set_threads
from llm.bench import PeakMemory, interleaved, make_record, timed, write_record
from llm.bench.training import make_step
from llm.config import GPTConfig
from llm.model import GPT
from llm.training import build_corpus, train
from llm.training.distributed import launch_env

SHAPES = {"small": ("small", 8, 256), "gpt2": ("gpt2", 1, 256)}
GLOBAL_BATCH, CONTEXT = 8, 256  # of the processes part: windows per step, tokens per window
MODES = {  # name: (processes, train() settings)
    "single": (1, {}),
    "ddp": (2, dict(parallel="ddp")),
    "fsdp": (2, dict(parallel="fsdp")),
    "fsdp-bf16": (2, dict(parallel="fsdp", mixed_precision="bf16")),
    "fsdp-ac": (2, dict(parallel="fsdp", activation_checkpointing=True)),
}


# -- 1. eager against compiled -------------------------------------------------------------------


def bench_compile(shape: str, steps: int, rounds: int) -> dict:
    preset, B, T = SHAPES[shape]
    config = GPTConfig.from_preset(preset)
    torch.manual_seed(0)
    x, y = (torch.randint(0, config.vocab_size, (B, T)) for _ in range(2))
    eager, compiled = GPT(config), GPT(config)
    compiled.load_state_dict(eager.state_dict())
    step_e = make_step(eager, eager.loss, "cpu", amp=False)
    step_c = make_step(compiled, torch.compile(compiled.loss), "cpu", amp=False)
    first_c, loss_c = timed(lambda: step_c(x, y))  # compiles
    _, loss_e = timed(lambda: step_e(x, y))
    times = interleaved({"eager": lambda: [step_e(x, y) for _ in range(steps)],
                         "compiled": lambda: [step_c(x, y) for _ in range(steps)]},
                        "cpu", rounds=rounds, warmup=0, budget_s=0.0, max_reps=1)
    per = {k: t.median_ms / steps / 1e3 for k, t in times.items()}
    tps = {k: B * T / s for k, s in per.items()}
    compile_s = first_c - per["compiled"]
    saved = 1 / tps["eager"] - 1 / tps["compiled"]
    return {"shape": shape, "params_M": round(sum(p.numel() for p in eager.parameters()) / 1e6, 1),
            "tokens_per_step": B * T, "eager_tok_s": round(tps["eager"], 1),
            "compiled_tok_s": round(tps["compiled"], 1), "speedup": round(tps["compiled"] / tps["eager"], 3),
            "compile_s": round(compile_s, 1),
            "break_even_tokens": round(compile_s / saved) if saved > 0 else None,
            "first_loss_diff": float(f"{abs(float(loss_c) - float(loss_e)):.2e}"),
            "spread": round(max(t.spread for t in times.values()), 3)}


# -- 2. processes --------------------------------------------------------------------------------


def collective_ms(mode: str, n_params: int) -> float:
    """The collectives one step of `mode` needs, timed alone (median of 3), in ms."""
    world = dist.get_world_size()
    if mode == "single":
        return 0.0
    n = n_params - n_params % world
    if mode == "ddp":
        grads = torch.ones(n)
        calls = [lambda: dist.all_reduce(grads)]
    else:
        dtype = torch.bfloat16 if mode == "fsdp-bf16" else torch.float32
        shard, whole = torch.ones(n // world, dtype=dtype), torch.empty(n, dtype=dtype)
        calls = [lambda: dist.all_gather_single(whole, shard)] * 2
        calls.append(lambda: dist.reduce_scatter_single(shard, torch.ones(n, dtype=dtype)))
    runs = []
    for _ in range(4):
        dist.barrier()
        t0 = time.perf_counter()
        for call in calls:
            call()
        runs.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(runs[1:])


def worker(args) -> None:
    """One process of a launch: measure the collectives, then `llm train`, timing its steps."""
    world = launch_env()
    if world.launched:
        dist.init_process_group("gloo")
    with torch.device("meta"):
        n_params = sum(p.numel() for p in GPT(GPTConfig.from_preset("small")).parameters())
    comm = collective_ms(args.worker, n_params) if world.launched else 0.0
    marks, mem = [], {}
    before = PeakMemory("cpu").__enter__()

    def on_step(step: int, loss: float) -> None:
        marks.append(time.perf_counter())
        if step == 1:
            mem["steps"] = PeakMemory("cpu").__enter__()
        elif step == args.steps - 1:
            mem["steps"].__exit__(None, None, None)

    settings = MODES[args.worker][1]
    train(args.data, args.out, preset="small", steps=args.steps, batch_size=GLOBAL_BATCH // world.size,
          context_length=CONTEXT, val_fraction=0.0, checkpoint_every=args.steps, warmup_steps=0, compile=False,
          progress=False, callback=on_step, **settings)
    steps = mem["steps"]
    peak_mb = (steps.base - before.base + (steps.peak or 0)) / 2**20 if steps.base and before.base else None
    step_s = statistics.median(b - a for a, b in zip(marks[1:-2], marks[2:-1]))
    peaks = [peak_mb]
    if world.launched:
        peaks = [None] * world.size
        dist.all_gather_object(peaks, peak_mb)
        dist.destroy_process_group()
    if world.is_main:
        Path(args.result).write_text(json.dumps({"step_s": step_s, "comm_ms": comm, "peak_mb": peaks}))


def launch(mode: str, data: str, steps: int, folder: Path) -> dict:
    n, _ = MODES[mode]
    out, result = folder / f"{mode}-{time.monotonic_ns()}", folder / "result.json"
    script = [str(Path(__file__).resolve()), "--worker", mode, "--data", data, "--out", str(out),
              "--steps", str(steps), "--result", str(result)]
    if n == 1:
        cmd, threads = [sys.executable, *script], 2
    else:
        cmd, threads = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n),
                        "--master_port", str(_free_port()), *script], 1
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return {**json.loads(result.read_text()), "processes": n}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_processes(modes: list[str], steps: int, rounds: int) -> list[dict]:
    data = str(build_corpus())
    runs = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for mode in (modes if r % 2 == 0 else modes[::-1]):
                runs[mode].append(launch(mode, data, steps, Path(tmp)))
                print(f"round {r + 1}: {mode} {runs[mode][-1]}", flush=True)
    rows, single = [], None
    for mode in modes:
        step_s = statistics.median(x["step_s"] for x in runs[mode])
        tok_s = GLOBAL_BATCH * CONTEXT / step_s
        single = tok_s if mode == "single" else single
        first = runs[mode][0]
        rows.append({"mode": mode, "processes": first["processes"], "tokens_per_s": round(tok_s, 1),
                     "vs_single": round(tok_s / single, 3) if single else None,
                     "step_ms": round(step_s * 1e3, 1),
                     "comm_ms": round(statistics.median(x["comm_ms"] for x in runs[mode]), 1),
                     "MB_per_process": [None if p is None else round(p) for p in first["peak_mb"]]})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="small,gpt2")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per round (compile); steps per launch - 3")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--skip-compile", action="store_true")
    ap.add_argument("--skip-processes", action="store_true")
    # one process of a launch (internal)
    ap.add_argument("--worker", choices=tuple(MODES), help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    load = os.getloadavg()[0]
    record = {}
    if not args.skip_compile:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-cold-")  # a cold compile
        set_threads(2)
        rows = [bench_compile(s, args.steps, args.rounds) for s in args.shapes.split(",")]
        print(markdown_table(rows, list(rows[0])))
        record["compile"] = rows
    if not args.skip_processes:
        rows = bench_processes(args.modes.split(","), args.steps + 3, args.rounds)
        print(markdown_table(rows, list(rows[0])))
        record["processes"] = rows
    env = environment("cpu", load_average=[load, os.getloadavg()[0]])
    path = write_record(RESULTS, make_record("distributed", env, record.get("processes", []),
                                             compile=record.get("compile", []), steps=args.steps,
                                             rounds=args.rounds))
    print("saved", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
