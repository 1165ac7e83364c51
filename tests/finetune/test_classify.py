"""Classification fine-tuning: a task a small model learns, the last-real-token pick under
padding, what each --train choice trains, labels and saved folders (ours and transformers'),
exact resume, the CLI, and bad input named by file and line."""

import json
import os
import signal
import time

import pytest
import torch

from finetune_helpers import SMALL, base_model, spam_rows, write_csv, write_sms
from llm import GPT
from llm.cli import main
from llm.finetune import ClassifyConfig, GPTForSequenceClassification, finetune_classifier
from llm.finetune.classify_data import balance, class_weights, label_names, read_examples, stratified_split
from llm.finetune.runs import select_trainable
from llm.testing import assert_ok, check
from llm.training import TrainingInterrupted, list_checkpoints, load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest

FAST = dict(steps=30, batch_size=16, lr=3e-3, eval_every=30, checkpoint_every=30, train="all")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return base_model(tmp_path_factory.mktemp("base") / "gpt")


@pytest.fixture(scope="module")
def sms(tmp_path_factory):
    return write_sms(tmp_path_factory.mktemp("data") / "SMSSpamCollection", spam_rows(200))


@pytest.fixture(scope="module")
def trained(base, sms, tmp_path_factory):
    """`llm finetune classify` on the SMS-format file: the output folder."""
    out = tmp_path_factory.mktemp("run") / "out"
    args = ["finetune", "classify", "--model", str(base), "--data", str(sms), "--out", str(out)]
    for k, v in FAST.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    assert main(args) == 0
    return out


def test_a_small_model_learns_the_task(trained, capsys):
    metrics = json.loads((trained / "metrics.json").read_text())
    assert set(metrics) == {"train", "validation", "test"}
    assert metrics["test"]["n"] == 40 and metrics["validation"]["n"] == 20  # 70/10/20, stratified
    assert metrics["test"]["accuracy"] >= 0.85, metrics["test"]  # chance: 0.5
    assert [r["label"] for r in metrics["test"]["per_class"]] == ["ham", "spam"]
    assert sum(map(sum, metrics["test"]["confusion"])) == 40
    for name in ("loss.png", "confusion_test.png", "confusion_validation.png", "metrics_validation.json"):
        assert (trained / name).stat().st_size > 100
    config = json.loads((trained / "config.json").read_text())
    assert config["id2label"] == {"0": "ham", "1": "spam"} and config["label2id"] == {"ham": 0, "spam": 1}
    assert config["architectures"] == ["GPT2ForSequenceClassification"] and config["pad_token_id"] == 50256


def test_saved_classifier_reloads_and_predicts_the_same(trained, capsys, tmp_path):
    model = GPTForSequenceClassification.from_pretrained(trained)
    texts = ["apple offer river", "green stone paper", "offer"]
    probs = model.predict_proba(texts)
    model.save_pretrained(tmp_path / "again")
    again = GPTForSequenceClassification.from_pretrained(tmp_path / "again")
    assert again.labels == ["ham", "spam"] and torch.equal(again.predict_proba(texts), probs)
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n")
    capsys.readouterr()
    assert main(["classify", "--model", str(trained), "--file", str(tmp_path / "texts.txt")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    for line, (label, p), text in zip(lines, model.predict(texts), texts):
        assert line == f"{label}\t{p:.4f}\t{text}"


@pytest.mark.filterwarnings("ignore::UserWarning")  # transformers' notes on the loaded config
def test_transformers_loads_the_classifier(trained):
    from transformers import GPT2ForSequenceClassification

    ours = GPTForSequenceClassification.from_pretrained(trained)
    hf = GPT2ForSequenceClassification.from_pretrained(trained).eval()
    ids = torch.tensor([[10, 20, 30, 40], [50, 60, 50256, 50256]])
    mask = ids != 50256
    with torch.no_grad():
        assert_ok(check("logits vs transformers", ours(ids, mask), hf(ids, attention_mask=mask).logits))


def test_last_real_token_under_left_and_right_padding():
    torch.manual_seed(0)
    model = GPTForSequenceClassification(GPT(SMALL), ["a", "b", "c"]).eval()
    rows = [torch.randint(0, 50257, (n,)) for n in (5, 9, 1)]
    with torch.no_grad():
        alone = torch.cat([model(r[None]) for r in rows])
        T = 9
        for side in ("right", "left"):
            ids = torch.full((3, T), 50256)
            mask = torch.zeros(3, T, dtype=torch.bool)
            for i, r in enumerate(rows):
                s = slice(0, len(r)) if side == "right" else slice(T - len(r), T)
                ids[i, s], mask[i, s] = r, True
            assert_ok(check(f"{side} padded", model(ids, mask), alone))
    with pytest.raises(ValueError, match="a row with no real token"):
        model(ids, torch.zeros_like(mask))


@pytest.mark.parametrize("train,expected", [
    ("head", {"score.weight"}),
    ("last-k", {"score.weight", "gpt.transformer.ln_f.weight", "gpt.transformer.ln_f.bias"}),
    ("all", None),
    ("lora", {"score.weight"}),
])
def test_each_train_choice_changes_exactly_its_parameters(train, expected):
    torch.manual_seed(0)
    gpt = GPT(SMALL)
    model = GPTForSequenceClassification(gpt, ["no", "yes"])
    select_trainable(gpt, model.score, ClassifyConfig(train=train, k=1, lora_r=2))
    names = {n for n, _ in model.named_parameters()}
    if train == "last-k":
        expected |= {n for n in names if n.startswith("gpt.transformer.h.1.")}
    elif train == "lora":
        expected |= {n for n in names if ".lora_" in n}
        assert len(expected) == 1 + 2 * 2 * 4
    elif train == "all":
        expected = names
    before = {n: p.clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    ids = torch.randint(0, 50257, (4, 7))
    for _ in range(2):
        model.loss(ids, torch.tensor([0, 1, 1, 0])).backward()
        opt.step()
        opt.zero_grad()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == expected


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")  # transformers' and peft's notes
def test_resume_after_ctrl_c_equals_the_uninterrupted_run(base, sms, tmp_path):
    """LoRA (with dropout): the checkpoints hold only what trains; resumed losses are bit-exact;
    peft loads the adapter folder onto transformers' classifier."""
    run = dict(train="lora", lora_r=4, lora_dropout=0.1, dropout=0.1, steps=6, batch_size=8, lr=1e-3,
               eval_every=3, checkpoint_every=3, progress=False)
    full = finetune_classifier(base, sms, tmp_path / "full", **run)

    def ctrl_c_at_step_4(step, loss):
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)

    with pytest.raises(TrainingInterrupted):
        finetune_classifier(base, sms, tmp_path / "cut", callback=ctrl_c_at_step_4, **run)
    state = load_checkpoint(list_checkpoints(tmp_path / "cut" / "checkpoints")[-1][1])
    assert state["step"] == 4 and state["task"] == "classify"
    assert set(state["model"]) == {"score.weight"} | {n for n in state["model"] if ".lora_" in n}
    resumed = finetune_classifier(base, sms, tmp_path / "cut", resume=True, progress=False)
    assert resumed.training.train_losses == full.training.train_losses
    assert resumed.training.val_losses == full.training.val_losses
    a = GPTForSequenceClassification.from_pretrained(tmp_path / "full").state_dict()
    b = GPTForSequenceClassification.from_pretrained(tmp_path / "cut").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="cannot resume with lr=0.1"):
        finetune_classifier(base, sms, tmp_path / "cut", resume=True, lr=0.1, progress=False)
    peft_classifier_equals_ours(base, tmp_path / "cut")


def peft_classifier_equals_ours(base, out):
    """The LoRA run's adapter/ (adapters + score head, PEFT's SEQ_CLS layout) on transformers'
    classifier of the base, through peft, gives the logits of the merged classifier in `out`."""
    peft = pytest.importorskip("peft")
    from transformers import GPT2ForSequenceClassification

    hf = GPT2ForSequenceClassification.from_pretrained(base, num_labels=2, pad_token_id=50256)
    theirs = peft.PeftModel.from_pretrained(hf, out / "adapter").eval()
    ours = GPTForSequenceClassification.from_pretrained(out)
    ids = torch.tensor([[11, 22, 33, 44, 55], [66, 77, 50256, 50256, 50256]])
    with torch.no_grad():
        mask = ids != 50256
        assert_ok(check("peft classifier logits", ours(ids, mask), theirs(ids, attention_mask=mask).logits))


def test_bad_input_is_named_by_file_and_line(base, tmp_path):
    rows = spam_rows(20)
    with pytest.raises(ValueError, match=r"data.csv:1: no column 'text'"):
        read_examples(write_csv(tmp_path / "data.csv", rows, header=("message", "label")))
    with pytest.raises(ValueError, match="holds no examples"):
        read_examples(write_csv(tmp_path / "empty.csv", []))
    (tmp_path / "bad.jsonl").write_text('{"text": "hi", "label": "a"}\n{"text": "yo"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: no field 'label'"):
        read_examples(tmp_path / "bad.jsonl")
    (tmp_path / "SMS").write_text("ham\tfine\nspam no tab here\n")
    with pytest.raises(ValueError, match=r"SMS:2: expected 'label<TAB>text'"):
        read_examples(tmp_path / "SMS")
    train, val = write_csv(tmp_path / "train.csv", rows), write_csv(tmp_path / "val.csv", rows[:4])
    test = write_csv(tmp_path / "test.csv", rows[:2] + [("what now", "maybe")])
    with pytest.raises(ValueError, match=r"test.csv:4: label 'maybe' in the test split is not among .*'ham', 'spam'"):
        finetune_classifier(base, train, tmp_path / "out", val_data=val, test_data=test, progress=False)
    with pytest.raises(ValueError, match=r"k=5 is more than the model's 2 blocks"):
        finetune_classifier(base, train, tmp_path / "out", k=5, progress=False)
    assert main(["finetune", "classify", "--model", str(base), "--data", str(train), "--out",
                 str(tmp_path / "out"), "--split", "0.5,0.6,0.1"]) == 2


@pytest.mark.parametrize("command,flags", [
    (["finetune", "classify"], ["--train", "--k", "--lora-r", "--epochs", "--balance", "--split", "--class-weights",
                                "--val-data", "--resume"]),
    (["finetune", "instruct"], ["--template", "--prompt-loss", "--batch-order", "--max-new-tokens", "--lora-targets"]),
    (["classify"], ["--model", "--text", "--file"]),
    (["chat"], ["--model", "--adapter", "--template", "--max-new-tokens"]),
])
def test_help_of_the_fine_tuning_commands(command, flags, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(flag in out for flag in flags), out


def test_labels_balance_splits_and_class_weights(tmp_path):
    (tmp_path / "d.jsonl").write_text("".join(
        f'{{"text": "t{i}", "label": {label}}}\n' for i, label in enumerate([10, 2, 2, 1, 10, 2, 2, 2])))
    examples = read_examples(tmp_path / "d.jsonl")
    assert label_names(examples) == ["1", "2", "10"]  # integers sort as numbers, kept as strings
    kept = balance(examples, seed=0)
    assert sorted(e.label for e in kept) == ["1", "10", "2"]  # one of each: the smallest class has one
    rows = [(f"text {i}", "a" if i % 4 else "b") for i in range(40)]  # 30 a, 10 b
    train, val, test = stratified_split(read_examples(write_csv(tmp_path / "s.csv", rows)), (0.7, 0.1, 0.2), 3)
    assert [sum(e.label == "b" for e in s) for s in (train, val, test)] == [7, 1, 2]
    assert [len(s) for s in (train, val, test)] == [28, 4, 8]
    ids = [0] * 30 + [1] * 10
    assert class_weights("balanced", ids, 2).tolist() == pytest.approx([40 / 60, 40 / 20])
    assert class_weights("1,3", ids, 2).tolist() == [1.0, 3.0] and class_weights("none", ids, 2) is None
    with pytest.raises(ValueError, match="class_weights must be none, balanced or 2 numbers"):
        class_weights("1,2,3", ids, 2)
