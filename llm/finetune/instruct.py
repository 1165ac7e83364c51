"""Instruction data: prompt templates, Alpaca-format files, the collate function, answers.

Templates (one place): `alpaca` (Stanford Alpaca's, as the book uses it; the "### Input:"
section only when there is an input), `phi3` (the book's Phi-3 style "<|user|> ... <|assistant|>"
as plain text), or a user string with {instruction}, {input} and, at its end, {output}. An
example's text is prompt + output; its tokens end with one <|endoftext|>.

Collate (the book's, by position rather than by token value): rows padded per batch with
<|endoftext|>; targets are the inputs shifted by one; the first end-of-text of each row stays a
target (the model learns to stop) and every padding position after it is IGNORE_INDEX (-100);
with prompt masking the prompt's tokens are IGNORE_INDEX too (the first response token stays a
target); rows are cut to `max_length`.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from ..ops import IGNORE_INDEX
from ..tokenizer import EOT_TOKEN, get_tokenizer

_ALPACA_HEAD = ("Below is an instruction that describes a task. Write a response that appropriately "
                "completes the request.\n\n### Instruction:\n{instruction}")


@dataclass(frozen=True)
class PromptTemplate:
    """The prompt of an example with and without an input; the response follows it directly.
    `stop_strings` end a generated answer (the start of a next turn)."""

    name: str
    with_input: str
    without_input: str
    stop_strings: tuple[str, ...] = ()

    def prompt(self, instruction: str, input: str = "") -> str:
        text = self.with_input if input else self.without_input
        return text.replace("{instruction}", instruction).replace("{input}", input)

    def to_dict(self) -> dict:
        return {"name": self.name, "with_input": self.with_input, "without_input": self.without_input,
                "stop_strings": list(self.stop_strings)}

    @classmethod
    def from_dict(cls, d: dict, source: str = "template") -> "PromptTemplate":
        try:
            return cls(str(d["name"]), str(d["with_input"]), str(d["without_input"]),
                       tuple(str(s) for s in d.get("stop_strings", ())))
        except (KeyError, TypeError) as e:
            raise ValueError(f"{source}: not a prompt template ({e})") from None


TEMPLATES = {
    "alpaca": PromptTemplate("alpaca", _ALPACA_HEAD + "\n\n### Input:\n{input}\n\n### Response:\n",
                             _ALPACA_HEAD + "\n\n### Response:\n", ("\n\n### ",)),
    "phi3": PromptTemplate("phi3", "<|user|>\n{instruction}\n{input}\n<|assistant|>\n",
                           "<|user|>\n{instruction}\n<|assistant|>\n", ("\n<|user|>", "<|user|>\n")),
}


def get_template(spec: str) -> PromptTemplate:
    """A built-in template by name, or a user template string."""
    if spec in TEMPLATES:
        return TEMPLATES[spec]
    if "{instruction}" not in spec or not spec.endswith("{output}") or spec.count("{output}") != 1:
        raise ValueError(f"template must be one of {sorted(TEMPLATES)} or a string holding {{instruction}} "
                         f"(and optionally {{input}}) and ending with {{output}}, got {spec!r}")
    prompt = spec[:-len("{output}")]
    return PromptTemplate("custom", prompt, prompt)


# -- data ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    instruction: str
    input: str
    output: str
    where: str  # "file:line"

    def record(self) -> dict:
        return {"instruction": self.instruction, "input": self.input, "output": self.output}


def read_instructions(path) -> list[Instruction]:
    """The entries of an Alpaca-format file: a JSON array of objects, or JSONL; each with
    `instruction`, optional `input` and `output` strings. ValueError naming the line of a bad one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None
    records = _json_array(text, path) if text.lstrip().startswith("[") else _json_lines(text, path)
    items = [_instruction(r, f"{path}:{line}") for line, r in records]
    if not items:
        raise ValueError(f"{path}: holds no examples")
    return items


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _json_array(text: str, path: Path) -> list[tuple[int, object]]:
    """(line, element) of a JSON array, each element's line where it starts."""
    decoder, out = json.JSONDecoder(), []
    i = text.index("[") + 1
    while True:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        if i >= len(text):
            raise ValueError(f"{path}:{_line_of(text, i)}: the JSON array is not closed")
        if text[i] == "]":
            return out
        try:
            value, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        out.append((_line_of(text, i), value))
        i = end


def _json_lines(text: str, path: Path) -> list[tuple[int, object]]:
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append((lineno, json.loads(line)))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    return out


def _instruction(record, where: str) -> Instruction:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected an object with instruction, input and output")
    for key in ("instruction", "output"):
        if key not in record:
            raise ValueError(f"{where}: no {key!r} field (fields: {sorted(record)})")
    values = {k: record.get(k, "") for k in ("instruction", "input", "output")}
    for k, v in values.items():
        if v is None and k == "input":
            values[k] = ""
        elif not isinstance(v, str):
            raise ValueError(f"{where}: {k!r} must be a string, got {type(v).__name__}")
    if not values["instruction"].strip():
        raise ValueError(f"{where}: the instruction is empty")
    return Instruction(values["instruction"], values["input"], values["output"], where)


def random_split(items: list, fractions, seed: int) -> tuple[list, list, list]:
    """(train, validation, test) after a seeded shuffle, cut in the given fractions."""
    items = list(items)
    random.Random(seed).shuffle(items)
    n_train = round(len(items) * fractions[0])
    n_val = round(len(items) * fractions[1])
    if n_train < 1:
        raise ValueError(f"{len(items)} example(s): none left for training after a {fractions} split")
    return items[:n_train], items[n_train:n_train + n_val], items[n_train + n_val:]


# -- tokens and batches ----------------------------------------------------------------------


@dataclass(frozen=True)
class Encoded:
    ids: list[int]  # prompt + output tokens + <|endoftext|>
    prompt_len: int


def encode_instructions(items: list[Instruction], template: PromptTemplate) -> list[Encoded]:
    enc = get_tokenizer()
    prompts = enc.encode_ordinary_batch([template.prompt(it.instruction, it.input) for it in items])
    outputs = enc.encode_ordinary_batch([it.output for it in items])
    return [Encoded(p + o + [EOT_TOKEN], len(p)) for p, o in zip(prompts, outputs)]


def has_targets(example: Encoded, max_length: int, mask_prompt: bool) -> bool:
    """True when some target survives cutting to max_length (and prompt masking)."""
    n = min(len(example.ids), max_length + 1) - 1  # targets of the cut row
    return n > (example.prompt_len - 1 if mask_prompt else 0)


def collate(batch: list[Encoded], max_length: int | None = None, mask_prompt: bool = False,
            pad_id: int = EOT_TOKEN) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(inputs [B, T], targets [B, T], real tokens) of encoded examples (module docstring)."""
    T = max(len(e.ids) for e in batch) - 1  # inputs drop each row's last token
    inputs = torch.full((len(batch), T), pad_id, dtype=torch.long)
    targets = torch.full((len(batch), T), IGNORE_INDEX, dtype=torch.long)
    for i, e in enumerate(batch):
        row = torch.tensor(e.ids)  # ends with <|endoftext|>: the row's last target
        n = len(row) - 1
        inputs[i, :n], targets[i, :n] = row[:-1], row[1:]
        if mask_prompt:
            targets[i, :e.prompt_len - 1] = IGNORE_INDEX
    if max_length is not None:
        inputs, targets = inputs[:, :max_length], targets[:, :max_length]
    real = sum(min(len(e.ids) - 1, inputs.shape[1]) for e in batch)
    return inputs, targets, real
