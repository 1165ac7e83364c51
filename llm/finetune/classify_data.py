"""Labelled texts for classification: reading, label ids, balancing, splits, batches.

Formats: CSV and TSV with a header row, JSONL (one object per line), and the SMS Spam
Collection's own file (`label<TAB>text` per line, no header). Every example remembers where it
came from (`file:line`), so a bad one is named. Labels are strings ("1" for a JSON 1); their
ids follow the sorted training labels (numerically when all are integers). Texts are GPT-2
tokens (text spelling "<|endoftext|>" stays text), cut to a maximum length; a batch is right
padded with <|endoftext|> and carries an attention mask, from which the model finds each
row's last real token.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from ..tokenizer import EOT_TOKEN, get_tokenizer

FORMATS = ("csv", "tsv", "jsonl", "sms")


@dataclass(frozen=True)
class Example:
    text: str
    label: str
    where: str  # "file:line"


# -- reading ---------------------------------------------------------------------------------


def data_format(path: Path, format: str = "auto") -> str:
    """The format of `path`: given, or by extension (no extension or .txt: the SMS format)."""
    if format != "auto":
        if format not in FORMATS:
            raise ValueError(f"unknown data format {format!r}; choose one of {FORMATS}")
        return format
    suffix = path.suffix.lower()
    by_suffix = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", "": "sms", ".txt": "sms"}
    if suffix not in by_suffix:
        raise ValueError(f"{path}: cannot tell the format from the extension {suffix!r}; "
                         f"pass one of {FORMATS}")
    return by_suffix[suffix]


def read_examples(path, format: str = "auto", text_column: str = "text", label_column: str = "label") -> list[Example]:
    """Every example of a data file; ValueError naming the file and line of a bad one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data not found: {path}")
    fmt = data_format(path, format)
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            if fmt == "sms":
                examples = _read_sms(fh, path)
            elif fmt == "jsonl":
                examples = _read_jsonl(fh, path, text_column, label_column)
            else:
                examples = _read_table(fh, path, "," if fmt == "csv" else "\t", text_column, label_column)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None
    if not examples:
        raise ValueError(f"{path}: holds no examples")
    return examples


def _example(text, label, where: str, text_column="text", label_column="label") -> Example:
    if not isinstance(text, str):
        raise ValueError(f"{where}: {text_column!r} must be a string, got {type(text).__name__}")
    if isinstance(label, bool) or not isinstance(label, (str, int)):
        raise ValueError(f"{where}: {label_column!r} must be a string or an integer, got {label!r}")
    label = str(label).strip()
    if not text.strip():
        raise ValueError(f"{where}: the text is empty")
    if not label:
        raise ValueError(f"{where}: the label is empty")
    return Example(text, label, where)


def _read_sms(fh, path: Path) -> list[Example]:
    examples = []
    for lineno, line in enumerate(fh, 1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        label, tab, text = line.partition("\t")
        if not tab:
            raise ValueError(f"{path}:{lineno}: expected 'label<TAB>text' (the SMS Spam Collection format)")
        examples.append(_example(text, label, f"{path}:{lineno}"))
    return examples


def _read_jsonl(fh, path: Path, text_column: str, label_column: str) -> list[Example]:
    examples = []
    for lineno, line in enumerate(fh, 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected a JSON object")
        for column in (text_column, label_column):
            if column not in record:
                raise ValueError(f"{where}: no field {column!r} (fields: {sorted(record)})")
        examples.append(_example(record[text_column], record[label_column], where, text_column, label_column))
    return examples


def _read_table(fh, path: Path, delimiter: str, text_column: str, label_column: str) -> list[Example]:
    reader = csv.reader(fh, delimiter=delimiter)
    header = next(reader, None)
    if header is None:
        return []
    for column in (text_column, label_column):
        if column not in header:
            raise ValueError(f"{path}:1: no column {column!r} (columns: {header})")
    ti, li = header.index(text_column), header.index(label_column)
    examples = []
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        where = f"{path}:{reader.line_num}"
        if len(row) != len(header):
            raise ValueError(f"{where}: {len(row)} fields, the header has {len(header)}")
        examples.append(_example(row[ti], row[li], where, text_column, label_column))
    return examples


# -- labels ----------------------------------------------------------------------------------


def label_names(examples: list[Example]) -> list[str]:
    """The labels in id order: sorted, numerically when every label is an integer."""
    names = {e.label for e in examples}
    if all(_is_int(n) for n in names):
        return sorted(names, key=int)
    return sorted(names)


def _is_int(s: str) -> bool:
    return s.lstrip("-").isdigit()


def label_ids(examples: list[Example], labels: list[str], split: str) -> list[int]:
    """The id of each example's label; ValueError naming an unknown one and where it is."""
    index = {name: i for i, name in enumerate(labels)}
    for e in examples:
        if e.label not in index:
            raise ValueError(f"{e.where}: label {e.label!r} in the {split} split is not among the "
                             f"training labels {labels}")
    return [index[e.label] for e in examples]


def balance(examples: list[Example], seed: int) -> list[Example]:
    """Every class downsampled (seeded) to the size of the smallest; the file order kept."""
    by_label: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        by_label.setdefault(e.label, []).append(i)
    n = min(len(v) for v in by_label.values())
    rng = random.Random(seed)
    keep = sorted(i for label in sorted(by_label) for i in rng.sample(by_label[label], n))
    return [examples[i] for i in keep]


def stratified_split(examples: list[Example], fractions, seed: int) -> tuple[list, list, list]:
    """(train, validation, test): each class cut in the given fractions after a seeded
    shuffle, so every split has the classes in the same proportions; each split shuffled."""
    rng = random.Random(seed)
    by_label: dict[str, list[Example]] = {}
    for e in examples:
        by_label.setdefault(e.label, []).append(e)
    splits = ([], [], [])
    for label in sorted(by_label):
        items = by_label[label]
        rng.shuffle(items)
        n_train = round(len(items) * fractions[0])
        n_val = round(len(items) * fractions[1])
        if n_train < 1:
            raise ValueError(f"label {label!r} has {len(items)} example(s): none left for training "
                             f"after a {fractions} split")
        splits[0].extend(items[:n_train])
        splits[1].extend(items[n_train:n_train + n_val])
        splits[2].extend(items[n_train + n_val:])
    for s in splits:
        rng.shuffle(s)
    return splits


def class_weights(setting: str, ids: list[int], n_labels: int) -> torch.Tensor | None:
    """Loss weights per class from a `class_weights` setting ('none', 'balanced' or numbers)."""
    if setting == "none":
        return None
    if setting == "balanced":
        counts = torch.bincount(torch.tensor(ids), minlength=n_labels).double()
        if bool((counts == 0).any()):
            raise ValueError("class_weights=balanced: a label has no training example")
        return (len(ids) / (n_labels * counts)).float()
    try:
        weights = [float(x) for x in setting.split(",")]
    except ValueError:
        weights = []
    if len(weights) != n_labels or any(not w >= 0 for w in weights) or not any(weights):
        raise ValueError(f"class_weights must be none, balanced or {n_labels} numbers >= 0 (one per label, "
                         f"in label order), got {setting!r}")
    return torch.tensor(weights)


# -- tokens and batches ----------------------------------------------------------------------


class ClassificationDataset(torch.utils.data.Dataset):
    """Item i: (token ids [n] long, label id) of example i, cut to `max_length` tokens."""

    def __init__(self, examples: list[Example], ids: list[int], max_length: int | None = None):
        self.examples = examples
        self.labels = ids
        self.tokens = encode_texts([e.text for e in examples], max_length)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int):
        return torch.tensor(self.tokens[i], dtype=torch.long), self.labels[i]

    def longest(self) -> int:
        return max((len(t) for t in self.tokens), default=0)

    def truncate(self, max_length: int) -> "ClassificationDataset":
        """Cut every example to its first max_length tokens (in place)."""
        self.tokens = [t[:max_length] for t in self.tokens]
        return self


def encode_texts(texts: list[str], max_length: int | None = None) -> list[list[int]]:
    """GPT-2 token ids of each text, the first `max_length` kept."""
    rows = get_tokenizer().encode_ordinary_batch(texts)
    return [r[:max_length] if max_length else r for r in rows]


def pad_right(rows: list[torch.Tensor], pad_id: int = EOT_TOKEN) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids [B, T], attention_mask [B, T] bool) of rows right padded with `pad_id`."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
        mask[i, :len(r)] = True
    return ids, mask


def collate(batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids [B, T], attention_mask [B, T], labels [B]) of dataset items."""
    ids, mask = pad_right([t for t, _ in batch])
    return ids, mask, torch.tensor([label for _, label in batch], dtype=torch.long)
