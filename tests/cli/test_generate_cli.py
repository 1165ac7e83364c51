"""`llm generate`: streamed single prompt, --batch-file in batches, flags, errors."""

import pytest
import torch

import llm
from llm.cli import main


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny")
    llm.GPT(llm.GPTConfig.from_preset("tiny")).save_pretrained(path)
    return path


def test_single_prompt_streams_the_generated_text(model_dir, capsys):
    args = ["generate", "--model", str(model_dir), "--prompt", "Hello", "--max-new-tokens", "12",
            "--temperature", "0.9", "--top-k", "50", "--top-p", "0.95", "--min-p", "0.01",
            "--repetition-penalty", "1.1", "--presence-penalty", "0.1", "--frequency-penalty", "0.1",
            "--min-new-tokens", "2", "--stop", "zz", "--seed", "3"]
    assert main(args) == 0
    out = capsys.readouterr()
    model = llm.GPT.from_pretrained(model_dir)
    want = model.generate("Hello", 12, temperature=0.9, top_k=50, top_p=0.95, min_p=0.01,
                          repetition_penalty=1.1, presence_penalty=0.1, frequency_penalty=0.1,
                          min_new_tokens=2, stop_strings=["zz"], seed=3, return_dict=True)
    assert out.out == "Hello" + want.texts[0] + "\n"
    assert "tokens/s" in out.err


def test_batch_file(model_dir, tmp_path, capsys):
    prompts = ["The cat", "A much longer prompt than the others", "Hi"]
    f = tmp_path / "prompts.txt"
    f.write_text("\n".join(prompts[:2]) + "\n\n" + prompts[2] + "\n")
    assert main(["generate", "--model", str(model_dir), "--batch-file", str(f), "--batch-size", "2",
                 "--max-new-tokens", "6", "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    model = llm.GPT.from_pretrained(model_dir)
    want = "".join(f"=== prompt {i + 1} ===\n{p}{model.generate(p, 6, return_dict=True).texts[0]}\n"
                   for i, p in enumerate(prompts))
    assert out == want


def test_errors(model_dir, tmp_path, capsys):
    assert main(["generate", "--model", str(model_dir), "--batch-file", str(tmp_path / "none.txt")]) == 2
    assert "batch file not found" in capsys.readouterr().err
    assert main(["generate", "--model", str(model_dir), "--top-p", "2", "--max-new-tokens", "2"]) == 2
    assert "top_p" in capsys.readouterr().err


def test_stop_escapes():
    from llm.cli.generate import _unescape

    assert _unescape(r"a\n\nb\tc") == "a\n\nb\tc"
