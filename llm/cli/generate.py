"""`llm generate`: stream one prompt's continuation as it is made, or generate for a file
of prompts in batches (each result printed, in file order, as soon as it is complete).

Sampling flags default to "not given": the model's `generation_config.json` decides
(greedy when it has none), and a flag overrides only its own setting.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from ..cpu import set_threads
from ..generation import encode_prompts
from ..model import GPT
from ..tokenizer import get_tokenizer
from .checks import check_at_least, check_device

DEFAULT_MAX_NEW_TOKENS = 100


def add_parser(sub):
    p = sub.add_parser("generate", help="generate text from a prompt (or a file of prompts), streaming it")
    p.add_argument("--model", required=True, help="model folder (config.json + model.safetensors) or hub name")
    p.add_argument("--prompt", default="\n", help="prompt text (default: a newline)")
    p.add_argument("--batch-file", default=None,
                   help="a text file with one prompt per line; generates for them in batches")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per batch with --batch-file (default 8)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="new tokens per prompt; more than fit in the model's n_positions after the "
                        "longest prompt is an error that says the limit (default: the model's "
                        f"generation config, else {DEFAULT_MAX_NEW_TOKENS}, cut to what fits)")
    p.add_argument("--min-new-tokens", type=int, default=None, help="no EOS before this many tokens")
    p.add_argument("--temperature", type=float, default=None,
                   help="0 is greedy (default: the model's generation config, else greedy)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--min-p", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=None, help="CTRL's penalty, 1 is off")
    p.add_argument("--presence-penalty", type=float, default=None)
    p.add_argument("--frequency-penalty", type=float, default=None)
    p.add_argument("--stop", action="append", default=None, metavar="TEXT",
                   help="stop when the text contains TEXT (repeatable; cut from the output; \\n is a newline)")
    p.add_argument("--eos-token-id", type=int, action="append", default=None, metavar="ID",
                   help="end-of-sequence id (repeatable; default: the model's generation config)")
    p.add_argument("--seed", type=int, default=None, help="seed for sampling (reproducible output)")
    p.add_argument("--backend", default=None, help="op backend: torch, triton, native or auto")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:<index>")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    p.add_argument("--no-cuda-graph", action="store_true", help="on CUDA, do not capture the decode step")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: $LLM_NUM_THREADS, else one per core)")
    return p



def _sampling_kwargs(args) -> dict:
    kw = {
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "min_p": args.min_p,
        "min_new_tokens": args.min_new_tokens,
        "repetition_penalty": args.repetition_penalty,
        "presence_penalty": args.presence_penalty,
        "frequency_penalty": args.frequency_penalty,
        "stop_strings": [_unescape(x) for x in args.stop] if args.stop else None,
        "eos_token_id": args.eos_token_id,
    }
    return {k: v for k, v in kw.items() if v is not None}


def _unescape(text: str) -> str:
    """`\\n` and `\\t` typed on a command line stand for a newline and a tab."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


def read_prompts(path) -> list[str]:
    """One prompt per non-empty line; a literal `\\n` in a line stands for a newline."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"batch file not found: {p}")
    prompts = [line.replace("\\n", "\n") for line in p.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{p}: holds no prompts")
    return prompts


def run(args) -> int:
    check_at_least("--batch-size", args.batch_size, 1)
    check_at_least("--max-new-tokens", args.max_new_tokens, 0)
    check_device(args.device)
    set_threads(args.threads)
    prompts = read_prompts(args.batch_file) if args.batch_file else [args.prompt]
    dtype = getattr(torch, args.dtype) if args.dtype else None
    model = GPT.from_pretrained(args.model, backend=args.backend, dtype=dtype, device=args.device)
    enc = get_tokenizer()
    batches = [(start, prompts[start:start + args.batch_size]) for start in range(0, len(prompts), args.batch_size)]
    encoded = [encode_prompts(batch, enc) for _, batch in batches]
    wanted = _max_new_tokens(args, model, max(ids.shape[1] for ids, _ in encoded))
    generator = None
    if args.seed is not None:
        generator = torch.Generator(device=args.device).manual_seed(args.seed)
    kw = _sampling_kwargs(args)
    cuda_graph = False if args.no_cuda_graph else None
    n_tokens, t0 = 0, time.perf_counter()
    for (start, batch), (ids, mask) in zip(batches, encoded):
        max_new = min(wanted, model.config.n_positions - ids.shape[1])  # a default is cut to fit
        chunks = model.stream(ids, max_new, attention_mask=mask, generator=generator, tokenizer=enc,
                              cuda_graph=cuda_graph, **kw)
        if len(prompts) == 1:
            n_tokens += _print_streaming(batch[0], chunks)
        else:
            n_tokens += _print_rows(batch, start, chunks)
    dt = time.perf_counter() - t0
    print(f"[{n_tokens} tokens in {dt:.2f}s, {n_tokens / max(dt, 1e-9):.1f} tokens/s, backend {model.backend}]",
          file=sys.stderr)
    return 0


def _max_new_tokens(args, model, longest: int) -> int:
    """New tokens per prompt: --max-new-tokens, which must fit after the longest prompt (of
    `longest` tokens) in n_positions; else the generation config's or the default."""
    n_positions = model.config.n_positions
    if longest > n_positions:
        raise ValueError(f"a prompt of {longest} tokens exceeds the model's n_positions={n_positions}")
    if args.max_new_tokens is not None:
        room = n_positions - longest
        if args.max_new_tokens > room:
            raise ValueError(f"--max-new-tokens {args.max_new_tokens} does not fit: the model's n_positions is "
                             f"{n_positions} and the longest prompt has {longest} tokens, so at most {room}")
        return args.max_new_tokens
    wanted = model.generation_config.max_new_tokens
    return wanted if isinstance(wanted, int) else DEFAULT_MAX_NEW_TOKENS


def _print_streaming(prompt: str, chunks) -> int:
    sys.stdout.write(prompt)
    sys.stdout.flush()
    n = 0
    for chunk in chunks:
        n += chunk.token_ids[0] is not None
        if chunk.texts[0]:
            sys.stdout.write(chunk.texts[0])
            sys.stdout.flush()
    sys.stdout.write("\n")
    return n


def _print_rows(batch: list[str], offset: int, chunks) -> int:
    texts = [""] * len(batch)
    printed, n = 0, 0
    for chunk in chunks:
        for i, (tok, delta) in enumerate(zip(chunk.token_ids, chunk.texts)):
            n += tok is not None
            texts[i] += delta
        while printed < len(batch) and chunk.finished[printed]:
            sys.stdout.write(f"=== prompt {offset + printed + 1} ===\n{batch[printed]}{texts[printed]}\n")
            sys.stdout.flush()
            printed += 1
    for i in range(printed, len(batch)):
        sys.stdout.write(f"=== prompt {offset + i + 1} ===\n{batch[i]}{texts[i]}\n")
    return n
