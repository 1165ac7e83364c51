"""The HTTP side of `llm serve`: a FastAPI app speaking OpenAI's API over a `Scheduler`.

  POST /v1/completions        text or token-id prompts; stream, logprobs, echo, n, ...
  POST /v1/chat/completions   messages rendered by the model's prompt template
  GET  /v1/models             the served model, its context and its prompt template
  GET  /health                200 while the engine loop runs, else 503
  GET  /metrics               Prometheus text (metrics.py)

Every error is OpenAI's JSON error body: a bad or malformed body 400 naming the field, a
prompt that does not fit the context with max_tokens 400, an unknown model 404, a missing
or wrong API key 401 (when the server has one), a full queue 429 with Retry-After, a
request the engine failed 500 (the other requests go on), shutting down 503. Streams are
server-sent events ending with `data: [DONE]`; a client that goes away (streamed or not)
frees its slots before the next decode step.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..tokenizer import get_tokenizer
from .metrics import Metrics
from .protocol import (COMPLETIONS_DEFAULT_MAX_TOKENS, ApiError, ChatRequest, ChoiceText, CompletionRequest,
                       TokenText, check_lengths, completion_prompts)
from .routes import add_routes
from .scheduler import Failed, Finished, Job, QueueFullError, Scheduler, ShuttingDownError
from .templates import PromptTemplate


class Server:
    """What the routes share: the model, its name and template, the scheduler, the key."""

    def __init__(self, model, model_name: str, template: PromptTemplate, api_key: str | None,
                 scheduler: Scheduler, shutdown_timeout: float):
        self.model, self.model_name, self.template, self.api_key = model, model_name, template, api_key
        self.scheduler, self.metrics = scheduler, scheduler.metrics
        self.tokenizer = scheduler.tokenizer
        self.names = TokenText(self.tokenizer)
        self.n_positions = model.config.n_positions
        self.shutdown_timeout = shutdown_timeout
        self.created = int(time.time())

    # -- requests to jobs ------------------------------------------------------------------
    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise ApiError(404, f"The model '{name}' does not exist; this server serves '{self.model_name}'",
                           "model", "model_not_found")

    def completion_job(self, body: CompletionRequest) -> tuple[Job, asyncio.Queue]:
        self.check_model(body.model)
        prompts = completion_prompts(body, self.tokenizer, self.model.config.vocab_size)
        max_tokens = COMPLETIONS_DEFAULT_MAX_TOKENS if body.max_tokens is None else body.max_tokens
        check_lengths(prompts, max_tokens, self.n_positions)
        if body.echo and body.logprobs is not None and body.stream:
            raise ApiError(400, "echo with logprobs is not supported when streaming", "echo")
        return self.submit(prompts, body, max_tokens, body.logprobs, body.echo and body.logprobs is not None)

    def chat_job(self, body: ChatRequest) -> tuple[Job, asyncio.Queue]:
        self.check_model(body.model)
        try:
            text = self.template.render([{"role": m.role, "content": m.text()} for m in body.messages])
        except ValueError as e:
            raise ApiError(400, f"messages: {e}", "messages") from e
        prompt = self.tokenizer.encode(text, allowed_special={"<|endoftext|>"})
        if not prompt:
            raise ApiError(400, "messages: the rendered conversation is empty", "messages")
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        if max_tokens is None:  # OpenAI: up to the end of the context
            max_tokens = max(self.n_positions - len(prompt), 0)
            if max_tokens == 0:
                raise ApiError(400, f"messages: the conversation has {len(prompt)} tokens and fills the "
                                    f"model's context of {self.n_positions}", "messages")
        check_lengths([prompt], max_tokens, self.n_positions)
        top = (body.top_logprobs or 0) if body.logprobs else None
        return self.submit([prompt], body, max_tokens, top, False)

    def submit(self, prompts, body, max_tokens: int, logprobs, prompt_logprobs: bool):
        cfg = body.config(self.model, max_tokens)
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        job = Job(prompts, body.n, cfg, lambda item: loop.call_soon_threadsafe(queue.put_nowait, item),
                  logprobs, prompt_logprobs)
        try:
            self.scheduler.submit(job)
        except QueueFullError as e:
            raise ApiError(429, str(e), headers={"Retry-After": "1"}) from e
        except ShuttingDownError as e:
            raise ApiError(503, str(e)) from e
        except ValueError as e:
            raise ApiError(400, str(e), "n") from e
        return job, queue

    # -- answers ---------------------------------------------------------------------------
    async def collect(self, job: Job, queue: asyncio.Queue, request: Request):
        """(choices, Finished) of a non-streamed job; the job is cancelled if the client goes."""
        choices = [ChoiceText(i) for i in range(job.rows)]
        gone = asyncio.ensure_future(_disconnected(request))
        done = False
        try:
            while True:
                item = asyncio.ensure_future(queue.get())
                await asyncio.wait({item, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not item.done():
                    item.cancel()  # the client went away: nobody reads the answer
                    raise ApiError(499, "the client closed the request", kind="client_closed_request")
                item = item.result()
                if isinstance(item, Failed):
                    done = True
                    raise ApiError(item.status, item.message)
                if isinstance(item, Finished):
                    done = True
                    return choices, item
                for d in item:
                    choices[d.index].add(d)
        finally:
            gone.cancel()
            if not done:
                self.scheduler.cancel(job)

    async def events(self, job: Job, queue: asyncio.Queue, first: list[dict], chunk, last):
        """Server-sent events of a streamed job: `first` chunks, `chunk(deltas)` per step,
        `last(finished)` (None or a final chunk), then [DONE]."""
        done = False
        try:
            for c in first:
                yield {"data": json.dumps(c)}
            while True:
                item = await queue.get()
                if isinstance(item, Failed):
                    yield {"data": json.dumps(ApiError(item.status, item.message).body())}
                    break
                if isinstance(item, Finished):
                    final = last(item)
                    if final is not None:
                        yield {"data": json.dumps(final)}
                    break
                c = chunk(item)
                if c is not None:
                    yield {"data": json.dumps(c)}
            done = True
            yield {"data": "[DONE]"}
        finally:
            if not done:
                self.scheduler.cancel(job)

    def stream(self, gen) -> EventSourceResponse:
        return EventSourceResponse(gen, ping=15, sep="\n", shutdown_grace_period=self.shutdown_timeout)


async def _disconnected(request: Request) -> None:
    """Returns when the client disconnects (the body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


# -- the app ---------------------------------------------------------------------------------


def create_app(model, model_name: str, *, tokenizer=None, template: PromptTemplate | None = None,
               api_key: str | None = None, max_batch_size: int = 16, max_queue: int = 64,
               prefill_chunk: int = 256, prefix_cache: bool = True, shutdown_timeout: float = 30.0) -> FastAPI:
    """The server's FastAPI app; its lifespan starts the engine loop and stops it (running
    requests get up to `shutdown_timeout` seconds)."""
    scheduler = Scheduler(model, tokenizer or get_tokenizer(), max_batch_size, max_queue, prefill_chunk,
                          prefix_cache, Metrics(max_batch_size))
    srv = Server(model, model_name, template or PromptTemplate(), api_key, scheduler, shutdown_timeout)

    @asynccontextmanager
    async def lifespan(app):
        scheduler.start()
        try:
            yield
        finally:
            await asyncio.to_thread(scheduler.stop, shutdown_timeout)

    app = FastAPI(title="llm", lifespan=lifespan)
    app.state.server = srv
    _add_error_handlers(app, srv)
    add_routes(app, srv, _auth(api_key))
    return app


def _auth(api_key: str | None):
    async def check(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'",
                           kind="invalid_api_key")

    return Depends(check)


def _add_error_handlers(app: FastAPI, srv: Server) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_body(request, e: RequestValidationError):
        return _json_error(ApiError(400, *_describe(e.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, e: StarletteHTTPException):
        return _json_error(ApiError(e.status_code, str(e.detail)))

    @app.exception_handler(Exception)
    async def internal(request, e: Exception):
        return _json_error(ApiError(500, f"internal error: {e!r}"))

    app.add_middleware(_CountRequests, metrics=srv.metrics)


class _CountRequests:
    """ASGI middleware: counts each /v1/ request by path and HTTP status (streams pass through
    untouched)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            return await self.app(scope, receive, send)

        async def counting_send(message):
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(scope["path"], str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)


def _json_error(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def _describe(errors) -> tuple[str, str | None]:
    """(message, param) of the first validation error: the field and what is wrong."""
    if not errors:
        return "invalid request body", None
    err = errors[0]
    if err.get("type") == "json_invalid":
        return f"malformed JSON in the request body: {err.get('ctx', {}).get('error', err.get('msg'))}", None
    loc = [str(x) for x in err.get("loc", ()) if x != "body"]
    field = ".".join(loc) if loc else None
    if field is None:
        return f"the request body must be a JSON object: {err.get('msg')}", None
    # unions report each alternative; the field name and the first reason say enough
    field = ".".join(x for x in loc if not any(c in x for c in "[]()") and not x.startswith("function-"))
    return f"{field}: {err.get('msg')}", field.split(".")[0]
