"""Instruction tuning: the collate function token for token, templates, Alpaca-format files and
their errors, the loss falling on a copy task with the answers written, the loss on every
backend, LoRA through the CLI and `llm chat` (history within the context window)."""

import copy
import io
import json

import pytest
import torch

from finetune_helpers import SMALL, base_model, copy_task, write_json
from llm import GPT
from llm.cli import main
from llm.cli.chat import Conversation
from llm.finetune import finetune_instruct, get_template, read_instructions
from llm.finetune.instruct import Encoded, Instruction, collate, encode_instructions
from llm.ops import BackendUnavailableError
from llm.testing import assert_ok, check

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest
EOT, X = 50256, -100


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return base_model(tmp_path_factory.mktemp("base") / "gpt")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_json(tmp_path_factory.mktemp("data") / "copy.json", copy_task(80))


def test_collate_token_for_token():
    rows = [Encoded([0, 1, 2, 3, 4, EOT], 3), Encoded([5, 6, EOT], 1), Encoded([7, 8, 9, EOT], 2)]
    x, y, real = collate(rows)
    assert x.tolist() == [[0, 1, 2, 3, 4], [5, 6, EOT, EOT, EOT], [7, 8, 9, EOT, EOT]]
    assert y.tolist() == [[1, 2, 3, 4, EOT], [6, EOT, X, X, X], [8, 9, EOT, X, X]]  # first EOT kept
    assert real == 10
    x, y, _ = collate(rows, mask_prompt=True)  # prompts: 3, 1, 2 tokens; first response token kept
    assert y.tolist() == [[X, X, 3, 4, EOT], [6, EOT, X, X, X], [X, 9, EOT, X, X]]
    x, y, real = collate(rows, max_length=3)
    assert x.tolist() == [[0, 1, 2], [5, 6, EOT], [7, 8, 9]] and y.tolist() == [[1, 2, 3], [6, EOT, X], [8, 9, EOT]]
    assert real == 8


def test_templates():
    alpaca = get_template("alpaca")
    head = ("Below is an instruction that describes a task. Write a response that appropriately completes "
            "the request.\n\n### Instruction:\nName a color.")
    assert alpaca.prompt("Name a color.") == head + "\n\n### Response:\n"
    assert alpaca.prompt("Name a color.", "sky") == head + "\n\n### Input:\nsky\n\n### Response:\n"
    assert get_template("phi3").prompt("Hi", "there") == "<|user|>\nHi\nthere\n<|assistant|>\n"
    custom = get_template("Q: {instruction} {input}\nA: {output}")
    assert custom.prompt("2+2?", "{not a field}") == "Q: 2+2? {not a field}\nA: "
    with pytest.raises(ValueError, match="ending with {output}"):
        get_template("Q: {instruction} {output} thanks")
    encoded = encode_instructions([Instruction("Hi", "", "Yo", "here")], alpaca)[0]
    assert encoded.ids[-1] == EOT and encoded.prompt_len == len(encoded.ids) - 2  # "Yo" is one token


def test_alpaca_files_and_their_errors(tmp_path):
    entries = [{"instruction": "a", "input": "", "output": "b"}, {"instruction": "c", "input": None, "output": "d"}]
    assert [i.output for i in read_instructions(write_json(tmp_path / "ok.json", entries))] == ["b", "d"]
    (tmp_path / "ok.jsonl").write_text("\n".join(json.dumps(e) for e in entries) + "\n")
    assert [i.instruction for i in read_instructions(tmp_path / "ok.jsonl")] == ["a", "c"]
    (tmp_path / "no_output.jsonl").write_text('{"instruction": "a", "output": "b"}\n\n{"instruction": "c"}\n')
    with pytest.raises(ValueError, match=r"no_output.jsonl:3: no 'output' field"):
        read_instructions(tmp_path / "no_output.jsonl")
    (tmp_path / "array.json").write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c",\n'
                                         '   "input": "x"}\n]\n')
    with pytest.raises(ValueError, match=r"array.json:3: no 'output' field"):
        read_instructions(tmp_path / "array.json")
    (tmp_path / "broken.json").write_text('[{"instruction": "a", "output": "b"},\n {"instruction": }]')
    with pytest.raises(ValueError, match=r"broken.json:2: not valid JSON"):
        read_instructions(tmp_path / "broken.json")
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(ValueError, match="empty.json: holds no examples"):
        read_instructions(tmp_path / "empty.json")
    with pytest.raises(ValueError, match="no_output.jsonl:3"):
        finetune_instruct(tmp_path, tmp_path / "no_output.jsonl", tmp_path / "out", progress=False)


def test_loss_falls_on_a_copy_task_and_the_answers_are_written(base, data, tmp_path):
    result = finetune_instruct(base, data, tmp_path / "out", train="all", steps=20, batch_size=8, lr=1e-2,
                               eval_every=20, prompt_loss="mask", batch_order="by-length", max_new_tokens=6,
                               template="Q: {instruction} {input}\nA: {output}", progress=False)
    losses = [loss for _, loss in result.training.train_losses]
    assert losses[0] > 9  # ~ln(50257) at the start
    assert sum(losses[-5:]) / 5 < losses[0] - 5, losses
    assert result.val_loss < losses[0] - 5
    answers = json.loads(result.answers.read_text())
    assert len(answers) == 8  # 10% of 80
    assert all(set(a) == {"instruction", "input", "output", "model_response"} for a in answers)
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["prompt_template"]["with_input"] == "Q: {instruction} {input}\nA: "


@pytest.mark.parametrize("backend", ["native", "triton"])
def test_the_masked_loss_on_each_backend(backend):
    """GPT.loss of a collated batch (padding and prompts at -100) equals the torch backend's."""
    torch.manual_seed(0)
    model = GPT(SMALL)
    x, y, _ = collate([Encoded([5, 6, 7, 8, EOT], 2), Encoded([9, 10, EOT], 1)], mask_prompt=True)
    ref = copy.deepcopy(model).double()
    try:
        model.set_backend(backend)
    except BackendUnavailableError as e:
        pytest.skip(str(e))
    assert_ok(check(f"{backend} loss", model.loss(x, y), ref.loss(x, y)))


def test_lora_through_the_cli_and_chat(base, data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert main(["finetune", "instruct", "--model", str(base), "--data", str(data), "--out", str(out),
                 "--train", "lora", "--lora-r", "2", "--steps", "3", "--lr", "1e-2", "--max-new-tokens", "4",
                 "--template", "phi3"]) == 0
    assert "test answers in" in capsys.readouterr().out
    assert (out / "adapter" / "adapter_config.json").is_file()
    chats = []
    for args in (["--model", str(out)], ["--model", str(base), "--adapter", str(out / "adapter"),
                                         "--template", "phi3"]):
        monkeypatch.setattr("sys.stdin", io.StringIO("Repeat.\n/reset\nRepeat.\n/exit\nnever read\n"))
        assert main(["chat", *args, "--max-new-tokens", "5"]) == 0
        captured = capsys.readouterr()
        assert "template phi3" in captured.err and "[conversation reset]" in captured.err
        chats.append(captured.out)
    assert chats[0] == chats[1]  # the merged model = the base with the adapter merged in
    assert len(chats[0].splitlines()) >= 2


def test_chat_history_stays_within_the_budget():
    template = get_template("alpaca")
    one = len(Conversation(template, 10_000).prompt_ids("first"))
    chat = Conversation(template, 2 * one + 20)
    chat.turns = [("old", "answer one"), ("newer", "answer two")]
    ids = chat.prompt_ids("first")
    assert len(ids) <= 2 * one + 20 and chat.turns == [("newer", "answer two")]  # the oldest went first
    with pytest.raises(ValueError, match="the instruction takes"):
        Conversation(template, 5).prompt_ids("first")

