"""`llm export`: a model folder in another format: GGUF, for llama.cpp and ollama."""

from __future__ import annotations

import sys

from ..interop.gguf import DTYPES, export_gguf
from ..model import GPT


def add_parser(sub):
    p = sub.add_parser("export", help="write a model as GGUF (llama.cpp, ollama)")
    p.add_argument("--model", required=True, help="model folder (config.json + model.safetensors) or hub name")
    p.add_argument("--format", default="gguf", choices=["gguf"], help="output format (default gguf)")
    p.add_argument("--out", required=True, help="file to write, e.g. model.gguf")
    p.add_argument("--dtype", default="f16", choices=list(DTYPES),
                   help="f32 (exact), f16 (default, as llama.cpp's converter) or q8_0 (8-bit blocks)")
    return p


def run(args) -> int:
    model = GPT.from_pretrained(args.model)
    try:
        path = export_gguf(model, args.out, args.dtype, progress=sys.stderr.isatty())
    except ImportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, {args.dtype})")
    return 0
