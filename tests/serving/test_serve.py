"""`llm serve` end to end: a real uvicorn server on a free loopback port (in a thread),
called with the official `openai` client and raw HTTP. Continuous batching must give each
request exactly what `model.generate` gives for it alone."""

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch
import uvicorn

import llm
from llm.native import extension
from llm.ops import BackendUnavailableError
from llm.serving import create_app
from llm.tokenizer import get_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = llm.GPTConfig(vocab_size=50257, n_positions=128, n_embd=64, n_layer=2, n_head=4)
POISON = 666  # a prompt holding this token makes the faulty decoder raise
KEY = "sekret"
EXTENSIONS = ("top_k", "min_p", "repetition_penalty", "min_tokens")  # fields beyond OpenAI's


def _native_ok() -> bool:
    try:
        extension()
        return True
    except BackendUnavailableError:
        return False


needs_native = pytest.mark.skipif(not _native_ok(), reason="llm._C is not built")


class Running:
    """A uvicorn server in a thread on a free port; `client` is an openai.OpenAI on it."""

    def __init__(self, app, api_key: str = "none"):
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, timeout=30)

    def metric(self, name: str) -> float:
        for line in httpx.get(self.url + "/metrics").text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        raise KeyError(name)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(30)


def _model(backend: str):
    torch.manual_seed(0)
    return llm.GPT(CONFIG, backend=backend).eval()


@pytest.fixture(scope="module", params=["torch", pytest.param("native", marks=needs_native)])
def served(request):
    """(model, Running): 6 slots; native prefills in chunks of 16 tokens (bitwise equal to
    whole prompts there), torch whole prompts (BLAS may round chunks differently)."""
    model = _model(request.param)
    chunk = 16 if request.param == "native" else 512
    run = Running(create_app(model, "tiny", max_batch_size=6, prefill_chunk=chunk))
    yield model, run
    run.stop()


def _prompts(n: int, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 60, (n,), generator=g).tolist()
    # distinct first tokens: no request reuses another's prompt (prefix-cache tests do that)
    return [[1000 + i] + torch.randint(0, 50000, (m - 1,), generator=g).tolist() for i, m in enumerate(lengths)]


def _alone(model, prompt, max_tokens, **kw) -> list[int]:
    out = model.generate(torch.tensor([prompt]), max_tokens, return_dict=True, **kw)
    return out.new_tokens[0]


def test_continuous_batching_equals_each_request_alone(served):
    model, run = served
    prompts = _prompts(12)
    settings = [dict(max_tokens=5 + 3 * i) for i in range(12)]
    settings[3].update(temperature=0.9, top_k=40, seed=7)
    settings[8].update(temperature=1.2, top_p=0.9, seed=11, presence_penalty=0.5)
    settings[5].update(repetition_penalty=1.3, frequency_penalty=0.4)

    def call(i):
        time.sleep(0.004 * i)  # staggered: requests join a batch that is already running
        known = {k: v for k, v in settings[i].items() if k not in EXTENSIONS}
        extra = {k: v for k, v in settings[i].items() if k in EXTENSIONS}
        r = run.client.completions.create(model="tiny", prompt=prompts[i],
                                          extra_body={"return_token_ids": True, **extra}, **known)
        return r.choices[0].model_extra["token_ids"], r.choices[0].finish_reason, r.usage

    steps_before = run.metric("llm_batch_occupancy_count")
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(call, range(12)))
    for i, (ids, finish, use) in enumerate(results):
        kw = {k: v for k, v in settings[i].items() if k != "max_tokens"}
        assert ids == _alone(model, prompts[i], settings[i]["max_tokens"], **kw), f"request {i}"
        assert finish == "length" and use.completion_tokens == settings[i]["max_tokens"]
        assert use.prompt_tokens == len(prompts[i])
    # the requests did share decode steps
    steps = run.metric("llm_batch_occupancy_count") - steps_before
    assert steps < sum(s["max_tokens"] for s in settings) - 12


def test_openai_client_completion_and_chat(served):
    model, run = served
    c, enc = run.client, get_tokenizer()
    prompt = "The quick brown fox"
    ids = enc.encode(prompt)
    r = c.completions.create(model="tiny", prompt=prompt, max_tokens=9)
    want = model.generate(prompt, 9, return_dict=True)
    assert r.object == "text_completion" and r.model == "tiny"
    assert r.choices[0].text == want.texts[0] and r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (len(ids), 9, len(ids) + 9)
    # streamed deltas concatenate to the same text; the usage comes last when asked for
    chunks = list(c.completions.create(model="tiny", prompt=prompt, max_tokens=9, stream=True,
                                       stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == r.choices[0].text
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 9
    # a stop string ends the text before it, with finish_reason "stop"
    stop = r.choices[0].text[4:7]
    cut = c.completions.create(model="tiny", prompt=prompt, max_tokens=9, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == model.generate(prompt, 9, return_dict=True, stop_strings=stop).texts[0]
    # chat: plain concatenation of the contents for a model without a chat template
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    chat = c.chat.completions.create(model="tiny", messages=msgs, max_tokens=6)
    assert chat.choices[0].message.role == "assistant" and chat.choices[0].finish_reason == "length"
    assert chat.choices[0].message.content == model.generate("Be brief.\nHello\n", 6, return_dict=True).texts[0]
    assert chat.usage.prompt_tokens == len(enc.encode("Be brief.\nHello\n"))
    deltas = [ch.choices[0].delta.content or "" for ch in
              c.chat.completions.create(model="tiny", messages=msgs, max_tokens=6, stream=True) if ch.choices]
    assert "".join(deltas) == chat.choices[0].message.content
    # n choices with a seed: the rows of generate(prompt repeated n times, seed)
    two = c.completions.create(model="tiny", prompt=prompt, max_tokens=7, n=2, temperature=1.0, seed=3)
    assert [ch.text for ch in two.choices] == model.generate([prompt, prompt], 7, temperature=1.0, seed=3,
                                                             return_dict=True).texts
    assert two.usage.prompt_tokens == 2 * len(ids) and two.usage.completion_tokens == 14


def test_logprobs_echo_and_models(served):
    model, run = served
    c = run.client
    r = c.completions.create(model="tiny", prompt="One two three", max_tokens=4, logprobs=3, echo=True)
    ch = r.choices[0]
    assert ch.text.startswith("One two three")
    lp = ch.logprobs
    n_prompt = len(get_tokenizer().encode("One two three"))
    assert len(lp.tokens) == n_prompt + 4 and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert "".join(lp.tokens) == ch.text and lp.text_offset[1] == len(lp.tokens[0])
    with torch.inference_mode():
        ids = torch.tensor([get_tokenizer().encode(ch.text)])
        want = torch.log_softmax(model(ids)[0, :-1].float(), -1).gather(1, ids[0, 1:, None])[:, 0]
    torch.testing.assert_close(torch.tensor(lp.token_logprobs[1:]), want, atol=1e-4, rtol=1e-4)
    assert all(len(t) == 3 and max(t.values()) >= v - 1e-6 for t, v in zip(lp.top_logprobs[1:], lp.token_logprobs[1:]))
    chat = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=3,
                                     logprobs=True, top_logprobs=2)
    content = chat.choices[0].logprobs.content
    assert len(content) == 3 and all(len(t.top_logprobs) == 2 for t in content)
    assert "".join(t.token for t in content) == chat.choices[0].message.content
    # scoring only (max_tokens 0, echo): prompt logprobs and nothing generated
    score = c.completions.create(model="tiny", prompt="One two three", max_tokens=0, logprobs=0, echo=True)
    assert score.choices[0].text == "One two three" and score.usage.completion_tokens == 0
    assert score.choices[0].logprobs.token_logprobs[1:] == lp.token_logprobs[1:n_prompt]
    models = c.models.list().data
    assert [m.id for m in models] == ["tiny"]
    assert models[0].model_extra["prompt_template"] == "plain" and models[0].model_extra["max_model_len"] == 128
    assert httpx.get(run.url + "/health").json() == {"status": "ok"}


@needs_native
def test_prefix_cache_reuses_a_free_slot():
    model = _model("native")
    run = Running(create_app(model, "tiny", max_batch_size=2))
    try:
        system = "You are a terse assistant. Answer in one word. "
        first = run.client.completions.create(model="tiny", prompt=system + "Sky?", max_tokens=5)
        assert run.metric("llm_prefix_cache_hits_total") == 0
        second = run.client.completions.create(model="tiny", prompt=system + "Grass?", max_tokens=5)
        assert run.metric("llm_prefix_cache_hits_total") == 1
        assert run.metric("llm_prefix_cache_tokens_total") >= len(get_tokenizer().encode(system)) - 1
        assert second.choices[0].text == model.generate(system + "Grass?", 5, return_dict=True).texts[0]
        assert first.choices[0].text == model.generate(system + "Sky?", 5, return_dict=True).texts[0]
    finally:
        run.stop()


# -- limits and failures ---------------------------------------------------------------------


class SlowFaultyDecoder:
    """A decoder that takes `delay` seconds per decode step and raises on a POISON prompt."""

    supports_cuda_graph = False

    def __init__(self, inner, delay: float):
        self.inner, self.delay = inner, delay

    def prefill(self, input_ids, *args, **kwargs):
        if bool((input_ids == POISON).any()):
            raise RuntimeError("poisoned prompt")
        return self.inner.prefill(input_ids, *args, **kwargs)

    def decode_one_token(self, *args, **kwargs):
        time.sleep(self.delay)
        return self.inner.decode_one_token(*args, **kwargs)

    def select_rows(self, index):
        self.inner.select_rows(index)


@pytest.fixture(scope="module")
def limited():
    """One slot, one waiting request at most, an API key, 20 ms per decode step."""
    model = _model("torch")
    make = model.make_decoder
    model.make_decoder = lambda batch_size, max_seq_len: SlowFaultyDecoder(make(batch_size, max_seq_len), 0.02)
    run = Running(create_app(model, "tiny", api_key=KEY, max_batch_size=1, max_queue=1), api_key=KEY)
    yield run
    run.stop()


def _post(run, path, body, key=KEY, **kw):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    content = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return httpx.post(run.url + path, content=content, headers={"Content-Type": "application/json", **headers},
                      timeout=30, **kw)


def test_api_key(limited):
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 1}
    for key in (None, "wrong"):
        r = _post(limited, "/v1/completions", body, key=key)
        assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_api_key"
    assert httpx.get(limited.url + "/v1/models").status_code == 401
    assert _post(limited, "/v1/completions", body).status_code == 200
    assert httpx.get(limited.url + "/health").status_code == 200  # health and metrics need no key
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=limited.url + "/v1", api_key="wrong", max_retries=0).models.list()


@pytest.mark.parametrize("body, status, param", [
    ('{"model": "tiny", "prompt": ', 400, None),
    ("[1, 2]", 400, None),
    ({"model": "tiny"}, 400, "prompt"),
    ({"model": "tiny", "prompt": "hi", "temperature": 5}, 400, "temperature"),
    ({"model": "tiny", "prompt": "hi", "n": 0}, 400, "n"),
    ({"model": "tiny", "prompt": "hi", "max_tokens": "many"}, 400, "max_tokens"),
    ({"model": "tiny", "prompt": "hi", "stop": [""]}, 400, "stop"),
    ({"model": "tiny", "prompt": [], "max_tokens": 1}, 400, "prompt"),
    ({"model": "tiny", "prompt": [[5, 99999]], "max_tokens": 1}, 400, "prompt"),
    ({"model": "tiny", "prompt": "hi", "max_tokens": 200}, 400, "max_tokens"),
    ({"model": "tiny", "prompt": "hi", "n": 2}, 400, "n"),  # more rows than the server's one slot
    ({"model": "gpt-4", "prompt": "hi"}, 404, "model"),
])
def test_bad_requests(limited, body, status, param):
    r = _post(limited, "/v1/completions", body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"]
    if param:
        assert param in err["message"] or status == 404


def test_bad_chat_requests(limited):
    r = _post(limited, "/v1/chat/completions", {"model": "tiny", "messages": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = _post(limited, "/v1/chat/completions", {"model": "tiny", "messages": [{"content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    assert _post(limited, "/v1/nowhere", {}).json()["error"]["message"] == "Not Found"


def test_disconnect_frees_the_slot_and_a_full_queue_answers_429(limited):
    cancelled = limited.metric("llm_requests_cancelled_total")
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", limited.url + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                         json={"model": "tiny", "prompt": "a long one", "max_tokens": 120, "stream": True}) as s:
            lines = s.iter_lines()
            assert next(line for line in lines if line.startswith("data:"))  # running: the one slot is taken
            with ThreadPoolExecutor(1) as pool:
                waiting = pool.submit(_post, limited, "/v1/completions",
                                      {"model": "tiny", "prompt": "next", "max_tokens": 3})
                deadline = time.monotonic() + 10
                while limited.metric("llm_queue_depth") < 1:
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
                full = _post(limited, "/v1/completions", {"model": "tiny", "prompt": "more", "max_tokens": 3})
                assert full.status_code == 429 and full.headers["retry-after"] == "1"
                assert full.json()["error"]["type"] == "rate_limit_error"
                s.close()  # the client goes away mid-stream: its slot is freed, the waiting request runs
                done = waiting.result(timeout=20)
    assert done.status_code == 200 and done.json()["usage"]["completion_tokens"] == 3
    assert limited.metric("llm_requests_cancelled_total") == cancelled + 1
    assert limited.metric("llm_active_slots") == 0


def test_an_engine_failure_fails_only_its_request(limited):
    with ThreadPoolExecutor(2) as pool:
        ok = pool.submit(_post, limited, "/v1/completions", {"model": "tiny", "prompt": "fine", "max_tokens": 5})
        time.sleep(0.05)
        bad = _post(limited, "/v1/completions", {"model": "tiny", "prompt": [[1, POISON, 2]], "max_tokens": 5})
        assert bad.status_code == 500 and "poisoned prompt" in bad.json()["error"]["message"]
        assert ok.result(timeout=20).status_code == 200
    assert httpx.get(limited.url + "/health").status_code == 200
    again = _post(limited, "/v1/completions", {"model": "tiny", "prompt": "still here", "max_tokens": 2})
    assert again.status_code == 200


def _wait_for(run, name, value, timeout=10.0):
    deadline = time.monotonic() + timeout
    while run.metric(name) != value:
        assert time.monotonic() < deadline, f"{name} never reached {value}"
        time.sleep(0.01)


def test_a_client_that_goes_before_its_answer_frees_the_slot(limited):
    cancelled = limited.metric("llm_requests_cancelled_total")
    body = json.dumps({"model": "tiny", "prompt": "x", "max_tokens": 100}).encode()
    port = int(limited.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer " + KEY.encode() +
                  b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        _wait_for(limited, "llm_active_slots", 1)
    _wait_for(limited, "llm_requests_cancelled_total", cancelled + 1)
    _wait_for(limited, "llm_active_slots", 0)
