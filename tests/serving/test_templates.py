"""Chat messages to a prompt: the model folder's chat template, else plain concatenation."""

import json

import pytest

from llm.serving import PromptTemplate

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_plain_without_a_template(tmp_path):
    t = PromptTemplate.from_model_dir(tmp_path)
    assert t.kind == "plain"
    assert t.render(MESSAGES) == "Be brief.\nHi\n"


def test_tokenizer_config_template(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML}))
    t = PromptTemplate.from_model_dir(tmp_path)
    assert t.kind == "chat_template"
    assert t.render(MESSAGES) == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                                  "<|im_start|>assistant\n")


def test_template_file_wins_and_may_refuse(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML}))
    (tmp_path / "chat_template.jinja").write_text(
        "{% if messages[0].role != 'user' %}{{ raise_exception('start with a user message') }}{% endif %}"
        "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}")
    t = PromptTemplate.from_model_dir(tmp_path)
    assert t.render(MESSAGES[1:]) == "<|endoftext|>Hi"
    with pytest.raises(ValueError, match="refused the messages: start with a user message"):
        t.render(MESSAGES)


def test_bad_template_files(tmp_path):
    (tmp_path / "chat_template.jinja").write_text("{% for %}")
    with pytest.raises(ValueError, match="chat_template.jinja: the chat template does not parse"):
        PromptTemplate.from_model_dir(tmp_path)
    (tmp_path / "chat_template.jinja").unlink()
    (tmp_path / "tokenizer_config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="tokenizer_config.json: not a JSON object"):
        PromptTemplate.from_model_dir(tmp_path)
