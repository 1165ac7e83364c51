"""The benchmark harness (llm.bench): timing statistics, the results format, the environment
record, tables and charts, the correctness gate before timing, and `llm bench` end to end
at tiny sizes. Nothing here asserts a time."""

import json
import subprocess
import sys

import pytest
import torch

from llm.bench import (FORMAT, Timing, append_record, environment, interleaved, make_record, read_records,
                       text_table)
from llm.bench import ops, suite
from llm.bench.chart import write_chart
from llm.bench.results import file_stamp, results_dir
from llm.cli import main as cli_main
from llm.ops import reference


def test_timing_median_spread_and_summary():
    t = Timing((4.0, 1.0, 3.0, 2.0, 100.0))
    assert t.median_ms == 3.0 and t.min_ms == 1.0 and t.runs == 5
    assert t.spread == pytest.approx((4.0 - 2.0) / 2 / 3.0)  # half the interquartile range / median
    assert t.summary() == dict(ms=3.0, ms_min=1.0, spread=t.spread, runs=5)


def test_interleaved_warms_up_then_alternates_rounds():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = interleaved(fns, rounds=3, warmup=2, budget_s=0.0, max_reps=1)
    assert calls == ["a", "a", "b", "b"] + ["a", "b", "b", "a", "a", "b"]  # warm-up untimed, then ABBA
    assert {k: t.runs for k, t in times.items()} == {"a": 3, "b": 3}
    assert all(ms >= 0 for t in times.values() for ms in t.times_ms)


def test_results_round_trip_and_bad_lines_name_the_line(tmp_path):
    env = environment("cpu")
    path = tmp_path / "x.jsonl"
    append_record(path, make_record("x", env, [dict(a=1.5)], settings=dict(n=1)))
    append_record(path, make_record("x", env, [dict(a=2.5)], notes=["n"]))
    records = read_records(path)
    assert [r["rows"][0]["a"] for r in records] == [1.5, 2.5]
    assert records[0]["format"] == FORMAT and records[0]["settings"] == {"n": 1} and records[1]["notes"] == ["n"]
    assert list(tmp_path.iterdir()) == [path]  # appended through a temporary file, none left
    with open(path, "a") as f:
        f.write('{"rows": []}\n')
    with pytest.raises(ValueError, match=r"x\.jsonl:3: not a llm-bench/1 record"):
        read_records(path)
    path.write_text("{not json\n")
    with pytest.raises(ValueError, match=r"x\.jsonl:1: not JSON"):
        read_records(path)


def test_environment_records_machine_versions_commit_and_path_without_importing_triton():
    code = ("import sys, json; from llm.bench import environment; before = 'triton' in sys.modules; "
            "e = environment('cpu'); print(json.dumps([e, before, 'triton' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    env, before, after = json.loads(out.stdout)
    assert after == before  # versions come from package metadata
    for key in ("time", "commit", "dirty", "cpu", "threads", "device", "llm", "python", "torch", "native"):
        assert key in env, key
    assert env["time"].endswith("Z") and len(env["time"]) == 20  # 2026-11-28T16:43:47Z
    assert file_stamp(env) == env["time"].replace("-", "").replace(":", "")
    assert env["commit"]  # the tests run in a checkout
    if env["native"]["built"]:
        assert env["native"]["cpu_isa"] in ("portable", "avx512", "avx512_bf16")


def test_results_dir_in_a_checkout_and_elsewhere(tmp_path):
    assert results_dir().parts[-2:] == ("benchmarks", "results")
    assert results_dir(tmp_path) == tmp_path


def test_text_table_and_chart(tmp_path):
    rows = [dict(op="mlp", mode="fwd", shape="8x16", provider="torch", vs_ref=1.0, of_ceiling=0.2, ms=None),
            dict(op="mlp", mode="fwd", shape="8x16", provider="native", vs_ref=2.5, of_ceiling=0.5, ms=0.001234)]
    table = text_table(rows, ["provider", "vs_ref", "ms"])
    assert table.splitlines()[2].split() == ["native", "2.5", "0.00123"] and " - " in table.splitlines()[1] + " "
    path = write_chart(tmp_path / "c.png", rows, "title")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["c.png"]


def test_every_op_case_runs_on_the_reference_in_each_mode():
    for op in ops.OPS:
        case = ops.make_case(op, ops.SIZES["smoke"][op][0])
        assert case.bytes or case.flops
        for mode in case.modes:
            assert ops.mode_fn(case, reference.TORCH_OPS, mode)() is not None


def test_a_wrong_provider_is_reported_and_not_timed():
    def off_by_a_little(x, w, b, eps):
        return reference.layer_norm(x, w, b, eps) * 1.001

    wrong = reference.TORCH_OPS.replace(name="wrong", layer_norm=off_by_a_little)
    checks, notes = [], []
    usable = ops.checked_providers("layer_norm", {"torch": reference.TORCH_OPS, "wrong": wrong}, "cpu",
                                   torch.float32, checks, notes)
    assert list(usable) == ["torch"]
    assert any(c["status"] == "FAIL" for c in checks)
    assert notes and "wrong against the reference" in notes[0]


def test_plan_checks_names_and_always_keeps_the_reference():
    plan = suite.make_plan(quick=True, parts=["mlp,attention"], providers=["native"], device="cpu")
    assert plan.parts == ["mlp", "attention"] and plan.providers == ["torch", "native"] and plan.dtype == "float32"
    assert "compile" not in suite.make_plan(quick=True).providers
    assert "compile" in suite.make_plan(quick=False, device="cpu").providers
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        suite.make_plan(providers=["cuda"])


def test_smoke_run_records_every_part_and_saves(tmp_path):
    plan = suite.Plan(preset="smoke", device="cpu", parts=["layer_norm", "cached_attention", "generate", "train"],
                      providers=["torch", "native", "transformers"])
    record = suite.run(plan, show_progress=False)
    parts = {r["benchmark"] for r in record["rows"]}
    assert parts == {"op", "generate", "train"}
    for r in record["rows"]:
        assert r["ms"] > 0 and r["runs"] >= 1 and r["vs_ref"] > 0
    refs = [r for r in record["rows"] if r["provider"] in ("torch", "llm[torch]")]
    assert refs and all(r["vs_ref"] == 1.0 for r in refs)
    assert all(c["status"] == "ok" for c in record["checks"])
    assert record["ceilings"]["read_gbs"] > 0 and record["ceilings"]["matmul_tflops"] > 0
    report = suite.format_report(record)
    assert "== ops" in report and "== generation" in report and "== training step" in report
    paths = suite.save(record, tmp_path)
    assert sorted(p.suffix for p in paths) == [".jsonl", ".md", ".png"]
    assert read_records(tmp_path / "bench.jsonl")[0]["rows"] == json.loads(json.dumps(record["rows"]))


def test_cli_bench_prints_the_table_and_writes_results(tmp_path, capsys):
    assert cli_main(["bench", "--quick", "--op", "cached_attention", "--backend", "native", "--out", str(tmp_path),
                     "--no-chart", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "cached_attention" in out and "wrote" in out
    record = read_records(tmp_path / "bench.jsonl")[0]
    command = record["settings"]["command"]
    assert command == "python -m llm bench --quick --op cached_attention --backend native --threads 1"
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize("argv,message", [
    (["--op", "softmax"], "unknown op 'softmax'"),
    (["--backend", "jax"], "unknown backend 'jax'"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--device", "tpu"], "unknown device 'tpu'"),
])
def test_cli_bench_bad_flags_are_one_line_errors(argv, message, tmp_path, capsys):
    assert cli_main(["bench", "--out", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())
