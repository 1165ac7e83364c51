"""The routes of `llm serve` and the shape of their answers (OpenAI's completion, chat
completion, chunk, model list), on the `Server` of app.py."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from .protocol import (ChatRequest, CompletionRequest, chat_logprobs, completion_logprobs, envelope, new_id,
                       usage)


def add_routes(app: FastAPI, srv, auth) -> None:
    @app.post("/v1/completions", dependencies=[auth])
    async def completions(body: CompletionRequest, request: Request):
        job, queue = srv.completion_job(body)
        if body.stream:
            return srv.stream(_completion_stream(srv, body, job, queue))
        choices, finished = await srv.collect(job, queue, request)
        return _completion(srv, body, job, choices, finished)

    @app.post("/v1/chat/completions", dependencies=[auth])
    async def chat_completions(body: ChatRequest, request: Request):
        job, queue = srv.chat_job(body)
        if body.stream:
            return srv.stream(_chat_stream(srv, body, job, queue))
        choices, finished = await srv.collect(job, queue, request)
        return _chat(srv, body, choices, finished)

    @app.get("/v1/models", dependencies=[auth])
    async def models():
        return {"object": "list", "data": [{
            "id": srv.model_name, "object": "model", "created": srv.created, "owned_by": "llm",
            "max_model_len": srv.n_positions, "prompt_template": srv.template.kind,
            "backend": srv.model.backend, "max_batch_size": srv.scheduler.slots.n_slots}]}

    @app.get("/health")
    async def health():
        if srv.scheduler.running:
            return {"status": "ok"}
        return JSONResponse({"status": "stopped"}, status_code=503)

    @app.get("/metrics")
    async def metrics():
        return Response(srv.metrics.render(), media_type=srv.metrics.content_type)


# -- /v1/completions ---------------------------------------------------------------------------


def _prompt_text(srv, job, i: int) -> str:
    return srv.tokenizer.decode(job.prompts[i // job.n])


def _completion(srv, body: CompletionRequest, job, choices, finished) -> dict:
    out = []
    for c in choices:
        text, lp = c.text, None
        if body.echo:
            text = _prompt_text(srv, job, c.index) + text
        if body.logprobs is not None:
            scored = finished.prompt_logprobs[c.index // job.n] if body.echo else []
            lp = completion_logprobs(scored + c.logprobs, srv.names)
        choice = {"index": c.index, "text": text, "logprobs": lp, "finish_reason": c.finish_reason or "length"}
        if body.return_token_ids:
            choice["token_ids"] = c.token_ids
        out.append(choice)
    return envelope("text_completion", new_id("cmpl"), srv.model_name, out,
                    usage(finished.prompt_tokens, finished.completion_tokens))


def _completion_stream(srv, body: CompletionRequest, job, queue):
    rid, name = new_id("cmpl"), srv.model_name
    offsets = [0] * job.rows  # where each choice's next token text begins (logprobs)
    first = []
    if body.echo:
        first.append(envelope("text_completion", rid, name, [
            {"index": i, "text": _prompt_text(srv, job, i), "logprobs": None, "finish_reason": None}
            for i in range(job.rows)]))

    def chunk(deltas):
        out = []
        for d in deltas:
            lp = None
            if body.logprobs is not None:
                lp = completion_logprobs(d.logprobs, srv.names, offsets[d.index])
                offsets[d.index] += sum(len(t) for t in lp["tokens"])
            elif not (d.text or d.finish_reason or body.return_token_ids):
                continue
            choice = {"index": d.index, "text": d.text, "logprobs": lp, "finish_reason": d.finish_reason}
            if body.return_token_ids:
                choice["token_ids"] = d.token_ids
            out.append(choice)
        return envelope("text_completion", rid, name, out) if out else None

    def last(finished):
        if body.stream_options is None or not body.stream_options.include_usage:
            return None
        return envelope("text_completion", rid, name, [], usage(finished.prompt_tokens, finished.completion_tokens))

    return srv.events(job, queue, first, chunk, last)


# -- /v1/chat/completions ----------------------------------------------------------------------


def _chat(srv, body: ChatRequest, choices, finished) -> dict:
    out = []
    for c in choices:
        choice = {"index": c.index, "message": {"role": "assistant", "content": c.text},
                  "logprobs": chat_logprobs(c.logprobs, srv.names) if body.logprobs else None,
                  "finish_reason": c.finish_reason or "length"}
        if body.return_token_ids:
            choice["token_ids"] = c.token_ids
        out.append(choice)
    return envelope("chat.completion", new_id("chatcmpl"), srv.model_name, out,
                    usage(finished.prompt_tokens, finished.completion_tokens))


def _chat_stream(srv, body: ChatRequest, job, queue):
    rid, name = new_id("chatcmpl"), srv.model_name
    first = [envelope("chat.completion.chunk", rid, name, [
        {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        for i in range(job.rows)])]

    def chunk(deltas):
        out = []
        for d in deltas:
            if not (d.text or d.finish_reason or body.logprobs or body.return_token_ids):
                continue
            choice = {"index": d.index, "delta": {"content": d.text} if d.text else {},
                      "logprobs": chat_logprobs(d.logprobs, srv.names) if body.logprobs else None,
                      "finish_reason": d.finish_reason}
            if body.return_token_ids:
                choice["token_ids"] = d.token_ids
            out.append(choice)
        return envelope("chat.completion.chunk", rid, name, out) if out else None

    def last(finished):
        if body.stream_options is None or not body.stream_options.include_usage:
            return None
        return envelope("chat.completion.chunk", rid, name, [],
                        usage(finished.prompt_tokens, finished.completion_tokens))

    return srv.events(job, queue, first, chunk, last)
