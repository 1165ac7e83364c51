"""`llm classify`: label texts with a fine-tuned classifier folder, printing each text's most
likely label and its probability."""

from __future__ import annotations

from pathlib import Path


def add_parser(sub):
    p = sub.add_parser("classify", help="label texts with a classifier made by `llm finetune classify`")
    p.add_argument("--model", required=True, help="classifier folder (config.json with id2label + model.safetensors)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", action="append", default=None, metavar="TEXT", help="a text (repeatable)")
    src.add_argument("--file", default=None, help="a text file, one text per line")
    p.add_argument("--batch-size", type=int, default=32, help="texts per batch (default 32)")
    p.add_argument("--backend", default=None, help="op backend: torch, triton, native or auto")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    return p


def read_texts(path) -> list[str]:
    """The non-empty lines of a text file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"text file not found: {p}")
    try:
        texts = [line for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as e:
        raise ValueError(f"{p}: not UTF-8 text ({e})") from None
    if not texts:
        raise ValueError(f"{p}: holds no texts")
    return texts


def run(args) -> int:
    from ..finetune import GPTForSequenceClassification

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    texts = args.text if args.text else read_texts(args.file)
    model = GPTForSequenceClassification.from_pretrained(args.model, backend=args.backend, device=args.device)
    for text, (label, prob) in zip(texts, model.predict(texts, args.batch_size)):
        print(f"{label}\t{prob:.4f}\t{text}")
    return 0
