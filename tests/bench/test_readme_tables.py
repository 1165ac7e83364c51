"""README's measured tables are generated from benchmarks/results by
benchmarks/readme_tables.py: each marked table equals what the script makes of the latest
record it selects, so a number in the README always comes from a recorded run."""

import importlib.util
import sys
from pathlib import Path

import pytest

from llm.bench import make_record, write_record

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tables():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("_readme_tables", ROOT / "benchmarks" / "readme_tables.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
        sys.modules.pop("common", None)


def test_readme_tables_are_up_to_date(tables):
    text = (ROOT / "README.md").read_text()
    marked = tables.MARK.findall(text)
    assert {m[1] for m in marked} >= {"generate-cpu", "native-decode-cpu", "train-cpu", "bench-cpu-quick"}
    assert tables.update(text) == text, "run: python benchmarks/readme_tables.py"


def test_the_latest_selected_record_wins(tables, tmp_path):
    env = dict(time="2030-01-01T00:00:00Z", commit="abc1234", cpu="test cpu", threads=2, torch="9", device="cpu")
    row = dict(benchmark="train", shape="gpt2", dtype="float32", impl="llm torch", tokens_per_s=12.5, step_ms=80.0,
               peak_mem_MB=1.0)
    write_record(tmp_path, make_record("train", dict(env, time="2029-01-01T00:00:00Z"), [dict(row, tokens_per_s=1.0)]))
    write_record(tmp_path, make_record("train", env, [row], settings=dict(command="python benchmarks/bench_train.py")))
    write_record(tmp_path, make_record("train", dict(env, time="2031-01-01T00:00:00Z", device="cuda"), [row]))
    text = "a\n<!-- results: train-cpu -->\nold\n<!-- /results -->\nb\n"
    new = tables.update(text, tmp_path)
    assert "| gpt2 | float32 | llm torch | 12.5 | 80 | 1 |" in new and "commit abc1234" in new
    assert "2030-01-01T00:00:00Z" in new and new.startswith("a\n") and new.endswith("<!-- /results -->\nb\n")


def test_an_unknown_view_or_missing_record_is_an_error(tables, tmp_path):
    with pytest.raises(ValueError, match="unknown results view 'nope'"):
        tables.update("<!-- results: nope -->\n<!-- /results -->", tmp_path)
    write_record(tmp_path, make_record("train", dict(time="2030-01-01T00:00:00Z", device="cuda"), []))
    with pytest.raises(ValueError, match="no record .* for the README table 'train-cpu'"):
        tables.update("<!-- results: train-cpu -->\n<!-- /results -->", tmp_path)
