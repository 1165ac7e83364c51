"""`llm serve`: an OpenAI-compatible HTTP server with continuous batching (`llm.serving`).

Binds to loopback unless told otherwise. SIGTERM (or Ctrl-C) shuts down gracefully: no new
connections, running requests get --shutdown-timeout seconds to finish, then are cancelled,
and the process exits 0 (130 after Ctrl-C).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path

import torch

from ..model import GPT
from ..weights import resolve_model_dir


def add_parser(sub):
    p = sub.add_parser("serve", help="serve a model over OpenAI's HTTP API, batching requests continuously")
    p.add_argument("--model", required=True, help="model folder (config.json + model.safetensors) or hub name")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--backend", default="auto", help="op backend: torch, triton, native or auto (default)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    p.add_argument("--max-batch-size", type=int, default=16, help="KV-cache slots: rows decoded at once (default 16)")
    p.add_argument("--max-queue", type=int, default=64, help="requests that may wait for a slot; more get 429")
    p.add_argument("--prefill-chunk", type=int, default=256,
                   help="prompt tokens prefilled between two decode steps (default 256)")
    p.add_argument("--no-prefix-cache", action="store_true", help="never reuse the tokens a free slot holds")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' (default: $LLM_API_KEY, else no key)")
    p.add_argument("--served-model-name", default=None, help="the model's name in the API (default: the folder's)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the model (default: torch's)")
    p.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="seconds running requests get to finish on shutdown (default 30)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return p


def _check(args) -> None:
    for flag, value, lo in (("--max-batch-size", args.max_batch_size, 1), ("--max-queue", args.max_queue, 1),
                            ("--prefill-chunk", args.prefill_chunk, 1), ("--port", args.port, 0)):
        if value < lo:
            raise ValueError(f"{flag} must be >= {lo}, got {value}")
    if args.port > 65535:
        raise ValueError(f"--port must be <= 65535, got {args.port}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.shutdown_timeout < 0:
        raise ValueError(f"--shutdown-timeout must be >= 0, got {args.shutdown_timeout}")


def run(args) -> int:
    _check(args)
    try:
        import uvicorn

        from ..serving import PromptTemplate, create_app
    except ImportError as e:
        raise ValueError(f"llm serve needs the serve extra (pip install 'llm[serve]'): {e}") from e
    if args.threads:
        torch.set_num_threads(args.threads)
    model = GPT.from_pretrained(args.model, backend=args.backend, dtype=args.dtype, device=args.device)
    name = args.served_model_name or (Path(args.model).name if Path(args.model).is_dir() else args.model)
    app = create_app(model, name, template=PromptTemplate.from_model_dir(resolve_model_dir(args.model)),
                     api_key=args.api_key or os.environ.get("LLM_API_KEY") or None,
                     max_batch_size=args.max_batch_size, max_queue=args.max_queue,
                     prefill_chunk=args.prefill_chunk, prefix_cache=not args.no_prefix_cache,
                     shutdown_timeout=args.shutdown_timeout)
    config = uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=max(1, round(args.shutdown_timeout)))
    sock = _bind(args.host, args.port)
    host, port = sock.getsockname()[:2]
    print(f"llm serve: {name!r} ({model.backend} backend, {args.max_batch_size} slots) running on "
          f"http://{host if ':' not in host else f'[{host}]'}:{port}/v1", file=sys.stderr, flush=True)
    # uvicorn shuts down gracefully on SIGTERM and then raises the signal again under the
    # handler that was there before it: a handler that does nothing lets the process exit 0.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
    return 0


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); port 0 takes a free one (printed above)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    sock.listen(2048)
    return sock
