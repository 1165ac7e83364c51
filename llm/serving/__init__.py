"""`llm serve`: an OpenAI-compatible HTTP server with continuous batching and streaming.

  scheduler.py  the engine loop: a queue, a fixed pool of KV-cache slots
                (`llm.generation.slots`), chunked prefill, one decode step for all rows
  app.py        the FastAPI app: requests to jobs, streams, errors, API key, lifespan
  routes.py     the routes and the shape of their answers
  protocol.py   OpenAI's request fields (checked) and response bodies
  templates.py  chat messages to a prompt (the model's chat template, or plain)
  metrics.py    Prometheus metrics

Needs the `serve` extra (`pip install 'llm[serve]'`: FastAPI, uvicorn, sse-starlette,
prometheus-client). The command is `python -m llm serve` (llm/cli/serve.py).
"""

from .app import Server, create_app
from .scheduler import Delta, Failed, Finished, Job, QueueFullError, Scheduler, ShuttingDownError
from .templates import PromptTemplate

__all__ = ["Delta", "Failed", "Finished", "Job", "PromptTemplate", "QueueFullError", "Scheduler", "Server",
           "ShuttingDownError", "create_app"]
