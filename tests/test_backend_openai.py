"""OpenAIBackend against a real `transformers serve` process (tiny Qwen2-VL), plus fast fake-transport unit tests."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import socket
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

import arr
from arr.backends.base import CriterionQuery, JudgeBackend, PairQuery
from arr.backends.chat import TEMPLATE_VERSION, JudgeUnavailableError
from arr.backends.openai import OpenAIBackend, answer_choice_probs
from arr.rubrics import Criterion, Rubric
from arr.testing.serve import transformers_cli
from tests.conftest import alive_server, random_image

IMAGES = [random_image(i) for i in range(4)]
RUBRIC = Rubric("a red circle", [Criterion("c1", "there is a red circle"), Criterion("c2", "it is centred")])
EDIT = Rubric("make the circle green", [Criterion("e1", "the circle is green")], task="edit")


def _criteria(n: int) -> list[CriterionQuery]:
    return [CriterionQuery(RUBRIC.prompt, IMAGES[i % 4], RUBRIC, RUBRIC.criteria[i % 2]) for i in range(n)]


def _pairs() -> list[PairQuery]:
    return [
        PairQuery(RUBRIC.prompt, (IMAGES[0], IMAGES[1]), RUBRIC),
        PairQuery(RUBRIC.prompt, (IMAGES[1], IMAGES[0]), RUBRIC),
        PairQuery(EDIT.prompt, (IMAGES[2], IMAGES[3]), EDIT, source=IMAGES[0]),
    ]


def _completion(text: str, logprobs: list | None = None) -> dict:
    return {
        "id": "x",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": logprobs}],
    }


def _fake(handler, **kwargs) -> OpenAIBackend:
    kwargs = {"max_retries": 3, "backoff": 0.001, "timeout": 2.0, **kwargs}
    return OpenAIBackend(
        "judge-model", base_url="http://judge.test/v1", transport=httpx.MockTransport(handler), **kwargs
    )


# ---- fast unit tests with a fake transport ----------------------------------------------------------------------


def test_request_body_images_and_settings():
    bodies = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json=_completion('{"rank": [2, 1], "reason": "r"}'))

    backend = _fake(handler, temperature=0.0, max_tokens=77, extra_body={"seed": 3, "logit_bias": {"5": 1.5}})
    v = backend.judge_pairs([_pairs()[2]])[0]
    assert v.prob_first == 0.0 and v.reason == "r"
    (body,) = bodies
    assert body["model"] == "judge-model" and body["temperature"] == 0.0 and body["max_tokens"] == 77
    assert body["logprobs"] is True and body["top_logprobs"] == 20
    assert body["seed"] == 3 and body["logit_bias"] == {"5": 1.5}
    system, user = body["messages"]
    assert system["role"] == "system" and isinstance(system["content"], str)
    urls = [p["image_url"]["url"] for p in user["content"] if p["type"] == "image_url"]
    assert len(urls) == 3  # Image BASE, Image 1, Image 2
    for url, expected in zip(urls, [IMAGES[0], IMAGES[2], IMAGES[3]], strict=True):
        assert url.startswith("data:image/png;base64,")
        decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        assert np.array_equal(np.asarray(decoded), np.asarray(expected))  # lossless


def test_retries_429_then_succeeds():
    calls = []

    def handler(request):
        calls.append(time.monotonic())
        if len(calls) < 3:
            return httpx.Response(429, json={"error": {"message": "slow down"}}, headers={"retry-after": "0"})
        return httpx.Response(200, json=_completion("yes: round and red"))

    v = _fake(handler).judge_criteria(_criteria(1))[0]
    assert len(calls) == 3 and v.prob_yes == 1.0 and v.reason == "round and red" and v.error is None


def test_4xx_fails_at_once_with_server_message():
    calls = []

    def handler(request):
        calls.append(1)
        return httpx.Response(400, json={"error": {"message": "image too large for this model"}})

    v = _fake(handler).judge_criteria(_criteria(1))[0]
    assert len(calls) == 1  # no retry
    assert v.prob_yes is None and "HTTP 400" in v.error and "image too large for this model" in v.error


def test_5xx_exhausts_retries_then_masks_without_raising():
    calls = []

    def handler(request):
        calls.append(1)
        return httpx.Response(503, text="overloaded")

    verdicts = _fake(handler, max_retries=2, max_concurrency=1).judge_pairs(_pairs()[:2])
    assert len(calls) == 6  # 2 requests x (1 + 2 retries)
    assert all(
        v.prob_first is None and "HTTP 503" in v.error and "gave up after 3 attempts" in v.error
        for v in verdicts
    )


def test_all_connection_errors_raise_unavailable_but_one_bad_request_does_not():
    def down(request):
        raise httpx.ConnectError("connection refused")

    with pytest.raises(JudgeUnavailableError, match="unreachable: all 3 requests failed"):
        _fake(down, max_retries=1).judge_criteria(_criteria(3))

    def flaky(request):
        if b"centred" in request.content:
            raise httpx.ConnectError("connection refused")
        return httpx.Response(200, json=_completion("no: it is blue"))

    verdicts = _fake(flaky, max_retries=1).judge_criteria(_criteria(4))
    assert [v.prob_yes for v in verdicts] == [0.0, None, 0.0, None]
    assert "cannot reach http://judge.test/v1/chat/completions" in verdicts[1].error


def _tok(token: str, prob: float, top: dict[str, float] | None = None) -> dict:
    return {
        "token": token,
        "logprob": math.log(prob),
        "top_logprobs": [{"token": t, "logprob": math.log(p)} for t, p in (top or {token: prob}).items()],
    }


def test_logprobs_give_probabilities_at_the_answer_token():
    pair_tokens = [
        _tok('{"', 0.99), _tok("rank", 0.99), _tok('":', 0.99), _tok(" [", 0.99),
        _tok("2", 0.6, {"2": 0.6, "1": 0.25, " 1": 0.05, "3": 0.05}),
        _tok(",", 0.9), _tok(" ", 0.9), _tok("1", 0.9, {"1": 0.9, "2": 0.1}), _tok("]", 0.99),
    ]  # fmt: skip
    text = "".join(t["token"] for t in pair_tokens) + ', "reason": "r"}'
    yes_tokens = [_tok("Yes", 0.5, {"Yes": 0.5, "yes": 0.2, "No": 0.2, " no": 0.05}), _tok(":", 0.9)]
    replies = iter(
        [_completion(text, {"content": pair_tokens}), _completion("Yes: fine", {"content": yes_tokens})]
    )
    backend = _fake(lambda request: httpx.Response(200, json=next(replies)), max_concurrency=1)
    pair = backend.judge_pairs(_pairs()[:1])[0]
    assert pair.prob_first == pytest.approx(0.30 / 0.90)  # P("1") = 0.25 + 0.05 against P("2") = 0.6
    assert pair.reason == "r"
    crit = backend.judge_criteria(_criteria(1))[0]
    assert crit.prob_yes == pytest.approx(0.7 / 0.95) and crit.reason == "fine"


def test_answer_token_must_be_exactly_the_choice():
    # A tokenizer that merged "[1" into one token gives alternatives that are not comparable: fall back to text.
    merged = [_tok('{"rank": ', 0.9), _tok("[1", 0.8, {"[1": 0.8, "[2": 0.2})]
    assert answer_choice_probs(merged, "pair", ("1", "2")) is None
    assert answer_choice_probs([_tok("Maybe", 0.9)], "criterion", ("yes", "no")) is None
    assert answer_choice_probs([_tok(" no", 0.7, {" no": 0.7, " yes": 0.1})], "criterion", ("yes", "no")) == (
        pytest.approx(0.1),
        pytest.approx(0.7),
    )


def test_api_key_only_from_env_and_never_shown(monkeypatch):
    secret = "sk-test-DO-NOT-LEAK-123"
    monkeypatch.setenv("ARR_TEST_KEY", secret)
    seen = []

    def handler(request):
        seen.append(request.headers.get("authorization"))
        return httpx.Response(401, json={"error": {"message": f"invalid key {secret}"}})

    backend = _fake(handler, api_key_env="ARR_TEST_KEY")
    v = backend.judge_criteria(_criteria(1))[0]
    assert seen == [f"Bearer {secret}"]
    assert v.prob_yes is None and "HTTP 401" in v.error
    for shown in (v.error, repr(backend), backend.fingerprint(), str(vars(backend).get("extra_body"))):
        assert secret not in shown

    monkeypatch.delenv("ARR_TEST_KEY")
    seen.clear()
    _fake(handler, api_key_env="ARR_TEST_KEY").judge_criteria(_criteria(1))
    assert seen == [None]  # no key, no header: fine for local servers


def test_fingerprint_and_registry():
    b = arr.load_backend("openai", model="m", base_url="http://localhost:1/v1", extra_body={"seed": 1})
    assert isinstance(b, OpenAIBackend) and isinstance(b, JudgeBackend)
    fp = b.fingerprint()
    assert (
        "m" in fp and f"template={TEMPLATE_VERSION}" in fp and '"seed": 1' in fp and "temperature=0.0" in fp
    )
    assert OpenAIBackend("m", temperature=0.7).fingerprint() != OpenAIBackend("m").fingerprint()
    with pytest.raises(ValueError, match="max_concurrency"):
        OpenAIBackend("m", max_concurrency=0)


def test_silent_server_times_out_within_bound():
    """A server that accepts connections but never answers: timeouts, retries, then JudgeUnavailableError."""
    timeout, max_retries = 0.5, 1
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)  # the kernel completes the handshakes; nobody ever reads or answers
        port = listener.getsockname()[1]
        backend = OpenAIBackend(
            "m",
            base_url=f"http://127.0.0.1:{port}/v1",
            timeout=timeout,
            max_retries=max_retries,
            backoff=0.01,
        )
        start = time.monotonic()
        with pytest.raises(JudgeUnavailableError, match="timed out after 0.5 s"):
            backend.judge_criteria(_criteria(2))
        elapsed = time.monotonic() - start
        # The bound is in attempts, each cut off by its timeout: every attempt opened one connection (they wait,
        # unaccepted, in the listener's backlog), and each question's attempts ran one after another.
        listener.setblocking(False)
        attempts = 0
        with contextlib.suppress(BlockingIOError):
            while True:
                listener.accept()[0].close()
                attempts += 1
    assert attempts == 2 * (1 + max_retries)
    assert elapsed >= (1 + max_retries) * timeout
    assert elapsed < 60, "a silent server hung the backend"  # only a hang fails this, not a loaded machine


# ---- a real server ----------------------------------------------------------------------------------------------

needs_cli = pytest.mark.skipif(transformers_cli() is None, reason="needs pip install 'transformers[serving]'")
# The real-server tests take 30-40 s of CPU (server start-up is mostly imports) and 80-100 s of wall time on a busy
# 2-core machine, so they run with `pytest -m slow`; the fake-transport tests above cover the logic by default.


def _backend(server, tiny_vlm_path, **kwargs) -> OpenAIBackend:
    kwargs = {"max_tokens": 24, "timeout": 30.0, **kwargs}
    return OpenAIBackend(str(tiny_vlm_path), base_url=alive_server(server).base_url, **kwargs)


@needs_cli
@pytest.mark.slow
def test_real_server_pairs_and_criteria_are_deterministic(transformers_server, tiny_vlm_path):
    backend = _backend(transformers_server, tiny_vlm_path)
    pairs = backend.judge_pairs(_pairs())
    crits = backend.judge_criteria(_criteria(3))
    # The random model's text is whatever it is; each verdict is parsed or carries an error, never raises.
    for v in pairs:
        assert v.raw and ((v.prob_first in (0.0, 0.5, 1.0) and v.error is None) or "unparseable" in v.error)
    for v in crits:
        assert v.raw and ((v.prob_yes in (0.0, 1.0) and v.error is None) or "unparseable" in v.error)
    # temperature 0: the same answers again.
    assert [v.raw for v in backend.judge_pairs(_pairs())] == [v.raw for v in pairs]
    assert [v.raw for v in backend.judge_criteria(_criteria(3))] == [v.raw for v in crits]


@needs_cli
@pytest.mark.slow
def test_real_server_logit_bias_forces_a_known_answer(transformers_server, tiny_vlm_path):
    """`transformers serve` gives no logprobs, so the forced text answer is what gets parsed."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_vlm_path)
    for word, expected in ((" yes", 1.0), (" no", 0.0)):
        (token_id,) = tok.encode(word, add_special_tokens=False)
        backend = _backend(
            transformers_server,
            tiny_vlm_path,
            max_tokens=4,
            extra_body={"logit_bias": {str(token_id): 100.0}},
        )
        verdicts = backend.judge_criteria(_criteria(2))
        assert [v.prob_yes for v in verdicts] == [expected, expected], [v.raw for v in verdicts]
        assert all(v.raw.split() == [word.strip()] * 4 for v in verdicts)
    # Forcing a digit gives "1111": not a {"rank": ...} answer, so an error verdict, not an exception.
    (one,) = tok.encode("1", add_special_tokens=False)
    backend = _backend(
        transformers_server, tiny_vlm_path, max_tokens=4, extra_body={"logit_bias": {str(one): 100.0}}
    )
    (v,) = backend.judge_pairs(_pairs()[:1])
    assert v.prob_first is None and v.raw == "1111" and "unparseable" in v.error


class _CountingTransport(httpx.HTTPTransport):
    """The real network transport, counting requests in flight and finished, with a hook after each response."""

    def __init__(self, after=None) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.done = 0
        self.after = after

    def handle_request(self, request):
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            response = super().handle_request(request)
            response.read()
            return response
        finally:
            with self.lock:
                self.in_flight -= 1
                self.done += 1
                done = self.done
            if self.after is not None:
                self.after(done)


@needs_cli
@pytest.mark.slow
def test_real_server_concurrency(transformers_server, tiny_vlm_path):
    queries = _criteria(8)
    counting = _CountingTransport()
    parallel = _backend(
        transformers_server, tiny_vlm_path, max_concurrency=4, transport=counting, max_tokens=8
    )
    sequential = _backend(transformers_server, tiny_vlm_path, max_concurrency=1, max_tokens=8)
    got = parallel.judge_criteria(queries)
    assert 2 <= counting.max_in_flight <= 4 and counting.done == 8
    assert [v.raw for v in got] == [v.raw for v in sequential.judge_criteria(queries)]  # order kept


@needs_cli
@pytest.mark.slow
def test_real_server_stopped_mid_run(transformers_server, tiny_vlm_path):
    killed_at: list[float] = []

    def after(done: int) -> None:
        if done == 2:
            transformers_server.kill()  # SIGKILL: what a crashed server looks like
            killed_at.append(time.monotonic())

    # A long timeout: a request that failed at once (connection refused) is then told apart from one that waited
    # its timeout out by the elapsed times below, on a loaded machine too.
    timeout = 60.0
    backend = _backend(
        transformers_server, tiny_vlm_path, max_concurrency=2, timeout=timeout, max_retries=2, backoff=0.05, max_tokens=4,
        transport=_CountingTransport(after),
    )  # fmt: skip
    verdicts = backend.judge_criteria(_criteria(10))
    finished = time.monotonic()
    assert killed_at, "the server was never killed"
    answered = [v for v in verdicts if v.raw]
    failed = [v for v in verdicts if not v.raw]
    assert len(answered) >= 2 and len(failed) >= 6
    for v in failed:
        assert v.prob_yes is None and "gave up after 3 attempts" in v.error
        assert "cannot reach" in v.error or "timed out" in v.error
    # Refused connections fail fast: the rest of the batch took well under one request timeout.
    assert finished - killed_at[0] < timeout

    # Once every request of a batch fails to connect, training gets a clear exception, again without hanging.
    start = time.monotonic()
    with pytest.raises(JudgeUnavailableError, match="unreachable"):
        backend.judge_pairs(_pairs())
    assert time.monotonic() - start < timeout
