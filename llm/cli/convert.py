"""`llm convert`: a checkpoint of the book's `GPTModel` ("Build a Large Language Model (From
Scratch)") into a model folder that this engine, `llm generate` and transformers load."""

from __future__ import annotations

from ..interop.book import CONFIG_KEYS
from ..model import GPT


def add_parser(sub):
    p = sub.add_parser("convert", help="a book GPTModel checkpoint (.pth) to a model folder")
    p.add_argument("checkpoint", help="the book model's state dict saved with torch.save (weights only are read)")
    p.add_argument("out_dir", help="model folder to write (config.json, model.safetensors, generation_config.json)")
    p.add_argument("--config", required=True,
                   help=f"JSON file of the book's config dict ({', '.join(CONFIG_KEYS)})")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the saved weights (default float32)")
    p.add_argument("--allow-non-finite", action="store_true", help="convert weights holding NaN or inf")
    return p


def run(args) -> int:
    model = GPT.from_pretrained(args.checkpoint, config=args.config, dtype=args.dtype,
                                allow_non_finite=args.allow_non_finite)
    model.save_pretrained(args.out_dir)
    c = model.config
    head = "tied to the embedding" if c.tie_word_embeddings else "untied"
    print(f"wrote {args.out_dir}: {c.num_params() / 1e6:.1f}M parameters, {c.n_layer} layers, "
          f"n_embd {c.n_embd}, lm_head {head}")
    return 0
