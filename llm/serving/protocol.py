"""OpenAI's request and response bodies: the fields `llm serve` reads, checked, and the
JSON it answers with, shaped as OpenAI's API reference says so that its clients parse it.

Requests: `CompletionRequest` (/v1/completions) and `ChatRequest` (/v1/chat/completions).
Fields left out take the model's generation config (`generation_config.json`; greedy when
it has none), as `generate` does. Extensions beyond OpenAI's fields (as other servers name
them): top_k, min_p, repetition_penalty, min_tokens, return_token_ids (the choices then
carry `token_ids`, the generated ids). `user` and unknown fields are ignored.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from ..generation import resolve_config
from .scheduler import Delta, TokenLogprob

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
# the request's names of GenerationConfig's fields, where they differ
_REQUEST_FIELD = {"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens", "stop_strings": "stop"}


class ApiError(Exception):
    """An OpenAI-style error answer: HTTP `status`, a message, the field it is about."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers
        self.kind = kind or {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                             429: "rate_limit_error", 503: "service_unavailable"}.get(status, "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}}


# -- requests --------------------------------------------------------------------------------


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: StrictStr
    max_tokens: StrictInt | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    top_k: StrictInt | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    presence_penalty: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False)
    frequency_penalty: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False)
    repetition_penalty: float | None = Field(None, gt=0, allow_inf_nan=False)
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = None
    n: StrictInt = Field(1, ge=1, le=128)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    min_tokens: StrictInt = Field(0, ge=0)
    return_token_ids: StrictBool = False
    user: StrictStr | None = None

    def config(self, model, max_tokens: int):
        """The GenerationConfig of this request; ApiError 400 naming a bad field."""
        stop = [self.stop] if isinstance(self.stop, str) else self.stop
        if stop is not None and any(not s for s in stop):
            raise ApiError(400, "stop: stop strings must not be empty", "stop")
        top_k = None if self.top_k in (None, -1, 0) else self.top_k
        cfg = resolve_config(model, None, max_new_tokens=max_tokens, temperature=self.temperature, top_k=top_k,
                             top_p=self.top_p, min_p=self.min_p, presence_penalty=self.presence_penalty,
                             frequency_penalty=self.frequency_penalty,
                             repetition_penalty=self.repetition_penalty, stop_strings=stop or None,
                             seed=self.seed, min_new_tokens=self.min_tokens or None)
        try:
            cfg.validate(vocab_size=model.config.vocab_size, batch_size=1)
        except ValueError as e:
            field = str(e).split(" ", 1)[0]
            raise ApiError(400, str(e), _REQUEST_FIELD.get(field, field)) from e
        return cfg



class CompletionRequest(_Sampling):
    prompt: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    logprobs: StrictInt | None = Field(None, ge=0, le=20)
    echo: StrictBool = False


class TextPart(BaseModel):
    type: Literal["text"]
    text: StrictStr


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: StrictStr
    content: StrictStr | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    logprobs: StrictBool = False
    top_logprobs: StrictInt | None = Field(None, ge=0, le=20)
    max_completion_tokens: StrictInt | None = Field(None, ge=0)


def completion_prompts(body: CompletionRequest, tokenizer, vocab_size: int) -> list[list[int]]:
    """The prompts of a completion request as token ids (text, ids, or lists of either)."""
    p = body.prompt
    if isinstance(p, str):
        prompts = [p]
    elif p and all(isinstance(x, int) for x in p):
        prompts = [p]
    else:
        prompts = list(p)
    if not prompts:
        raise ApiError(400, "prompt: no prompt given", "prompt")
    out = []
    for i, x in enumerate(prompts):
        ids = tokenizer.encode(x, allowed_special={"<|endoftext|>"}) if isinstance(x, str) else list(x)
        if not ids:
            raise ApiError(400, f"prompt {i} is empty (no tokens)", "prompt")
        bad = [t for t in ids if not 0 <= t < vocab_size]
        if bad:
            raise ApiError(400, f"prompt {i}: token id {bad[0]} is outside the vocabulary [0, {vocab_size})",
                           "prompt")
        out.append(ids)
    return out


def check_lengths(prompts: list[list[int]], max_tokens: int, n_positions: int) -> None:
    for i, p in enumerate(prompts):
        if len(p) + max_tokens > n_positions:
            raise ApiError(400, f"prompt {i} has {len(p)} tokens and max_tokens is {max_tokens}: "
                                f"{len(p) + max_tokens} exceeds the model's context of {n_positions} tokens",
                           "max_tokens")


# -- responses -------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def envelope(kind: str, rid: str, model: str, choices: list, usage: dict | None = None) -> dict:
    out = {"id": rid, "object": kind, "created": int(time.time()), "model": model, "choices": choices}
    if usage is not None:
        out["usage"] = usage
    return out


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


class TokenText:
    """A token id's text and bytes, for logprobs."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def bytes(self, token: int) -> bytes:
        return self.tokenizer.decode_single_token_bytes(token)

    def text(self, token: int) -> str:
        return self.bytes(token).decode("utf-8", errors="replace")


def completion_logprobs(items: list[TokenLogprob], names: TokenText, offset: int = 0) -> dict:
    """/v1/completions' logprobs object; `offset`: where the first token's text begins."""
    tokens, lps, tops, offsets = [], [], [], []
    for it in items:
        text = names.text(it.token)
        tokens.append(text)
        lps.append(it.logprob)
        tops.append(None if it.logprob is None else {names.text(t): lp for t, lp in it.top})
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


def chat_logprobs(items: list[TokenLogprob], names: TokenText) -> dict:
    """/v1/chat/completions' logprobs object."""

    def entry(token: int, lp: float) -> dict:
        return {"token": names.text(token), "logprob": lp, "bytes": list(names.bytes(token))}

    return {"content": [{**entry(it.token, it.logprob), "top_logprobs": [entry(t, lp) for t, lp in it.top]}
                        for it in items]}


class ChoiceText:
    """One choice of a non-streamed answer, gathered from its deltas."""

    def __init__(self, index: int):
        self.index, self.text, self.token_ids, self.logprobs, self.finish_reason = index, "", [], [], None

    def add(self, d: Delta) -> None:
        self.text += d.text
        self.token_ids += d.token_ids
        self.logprobs += d.logprobs
        self.finish_reason = d.finish_reason or self.finish_reason

