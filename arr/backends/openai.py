"""Judge through any OpenAI-compatible chat server: vLLM, SGLang, `transformers serve`, hosted APIs.

    judge = RubricJudge(load_backend("openai", model="Qwen/Qwen3-VL-8B-Instruct",
                                     base_url="http://127.0.0.1:8000/v1"))

Requests go out in parallel (at most `max_concurrency` at once) over one httpx connection pool. Each request is
retried with exponential backoff and jitter on HTTP 429, 5xx, timeouts and connection errors; other 4xx answers
fail at once with the server's message. A request that still fails becomes a verdict with `prob=None` and an
`error` (RubricJudge masks it), so one bad request never sinks a batch; a batch in which *every* request failed to
reach the server raises `JudgeUnavailableError`, so training can tell "server down" from "noisy answers".

`base_url` may name several servers of the same model (a list, URLs separated by commas, or a file of URLs, one per
line): requests are spread over them, and a server that looks down (connection refused or cut, HTTP 502-504) is taken out
of the pool while the request moves to another at once (arr/backends/pool.py); when all are out, the retries above apply as for one server that is down.

Probabilities: the backend asks for `logprobs` with 20 `top_logprobs`. Where the server returns them (vLLM,
SGLang, OpenAI), the verdict is P(first choice) at the answer token (the rank digit after `"rank": [`, or the first
yes/no/unknown token), summed over spelling variants; for an ordinal criterion it is the expected credit
(level - 1) / (N - 1) over the digits "1".."N" at the leading rating token; a criterion is "cannot assess" where
"unknown" outweighs the other answers there. Where the server gives no log-probabilities (`transformers serve`
ignores the field), the answer text is parsed instead, giving 0, 0.5 or 1 (a rating's credit for ordinal criteria),
or "cannot assess" for a leading "unknown".

The API key is read from the environment variable named by `api_key_env` (absent is fine for local servers); it is
kept out of reprs, fingerprints, logs and error messages.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import os
import random
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from PIL import Image

from arr.backends.chat import (
    CANNOT_ASSESS_ANSWER,
    LEADING_RATING,
    TEMPLATE_VERSION,
    ChatBackend,
    ChatRequest,
    ChatResult,
    normalize_token,
    sum_choice_probs,
)
from arr.backends.pool import ServerPool, parse_base_urls

logger = logging.getLogger(__name__)

TOP_LOGPROBS = 20
# Where the answer token sits in the answer text: the first rank digit, a leading yes/no, or a leading rating
# (the text parser's own pattern, so that both read the same number, or none).
_RANK_DIGIT = re.compile(r"""rank["']?\s*[:=]\s*\[\s*["']?(\d)""")
_LEADING_YES_NO = re.compile(rf"^[\s\W]*(yes|no|{CANNOT_ASSESS_ANSWER})\b", re.IGNORECASE)
_ANSWER_TOKEN = {"pair": _RANK_DIGIT, "criterion": _LEADING_YES_NO, "ordinal": LEADING_RATING}
# A server's Retry-After is honoured up to this many seconds (or the request timeout, if smaller).
_MAX_RETRY_AFTER = 30.0
# A health check of a server that was taken out of the pool waits at most this long (or the request timeout).
_PROBE_TIMEOUT = 5.0
# Server messages quoted in errors are shortened to this many characters (after redaction).
_MESSAGE_CHARS = 300
# Answers that say the server, not the request, is in trouble (a proxy without a backend, overloaded, gateway timeout):
# such a server is taken out of a pool of several.
_SERVER_DOWN_STATUSES = (502, 503, 504)


def image_data_url(image: Image.Image) -> str:
    """A PIL image as a base64 PNG data URL (lossless, so the judge sees exactly the pixels the policy made)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _server_message(resp: httpx.Response) -> str:
    """The error text a server sent back (OpenAI `error.message`, FastAPI `detail`, or the body), whole: callers
    redact it and then shorten it to `_MESSAGE_CHARS`, never the other way round (a cut can split a key)."""
    try:
        data = resp.json()
    except ValueError:
        return resp.text
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if data.get("detail"):
            return str(data["detail"])
        if err:
            return str(err)
    return json.dumps(data)


def answer_choice_probs(
    tokens: Sequence[dict[str, Any]], kind: str, choices: tuple[str, ...]
) -> tuple[float, ...] | None:
    """Choice probabilities at the answer token of an OpenAI `logprobs.content` list, or None if not found.

    `kind` is "pair", "criterion" (yes/no) or "ordinal" (a 1..N rating). The answer token is the first rank digit
    after `"rank": [` (pairs), the leading yes/no or the leading rating number. Only a token that is exactly that
    answer (up to whitespace and case) is used: if the server's tokenizer merged it with other characters, its
    alternatives are not comparable and the caller falls back to parsing the text.
    """
    if kind not in _ANSWER_TOKEN:
        raise ValueError(f"answer_choice_probs: kind must be one of {sorted(_ANSWER_TOKEN)}, got {kind!r}")
    texts = [str(t.get("token", "")) for t in tokens]
    full = "".join(texts)
    m = _ANSWER_TOKEN[kind].search(full)
    if m is None:
        return None
    target = m.start(1)
    pos = 0
    for tok, text in zip(tokens, texts, strict=True):
        if pos <= target < pos + len(text):
            if normalize_token(text) != m.group(1).lower():
                return None
            alternatives = [
                (str(alt.get("token", "")), math.exp(float(alt["logprob"])))
                for alt in tok.get("top_logprobs") or []
                if alt.get("logprob") is not None
            ]
            if tok.get("logprob") is not None and all(a[0] != text for a in alternatives):
                alternatives.append((text, math.exp(float(tok["logprob"]))))
            probs = sum_choice_probs(alternatives, choices)
            return probs if sum(probs) > 0 else None
        pos += len(text)
    return None


class OpenAIBackend(ChatBackend):
    """A judge behind an OpenAI-compatible `/chat/completions` endpoint.

    Args:
        model: the model name the server knows (for `transformers serve`, the model folder).
        base_url: the API root, ending in `/v1`; or several servers of the same model (a list, URLs separated by
            commas, or the path of a text file with one URL per line), which share the requests.
        api_key_env: the environment variable holding the API key; unset means no Authorization header.
        max_concurrency: requests in flight at once (over all servers together).
        timeout: seconds per HTTP attempt (connect, read, write and pool wait each).
        max_retries: retries after the first attempt on 429, 5xx, timeouts and connection errors.
        backoff: the first retry waits `backoff` seconds, doubling each time, times a random 1-1.5 (jitter).
        temperature, max_tokens: decoding settings sent with every request.
        logprobs: ask for token log-probabilities (verdicts become probabilities where the server gives them).
        extra_body: extra JSON fields merged into every request (e.g. `{"logit_bias": {...}}`, `{"seed": 0}`).
        transport: an httpx transport to use instead of the network (tests, proxies).
    """

    name = "openai"
    remote = True  # requests wait on the network: the RPO trainer overlaps them with sampling

    def __init__(
        self,
        model: str,
        base_url: str | Sequence[str] = "http://127.0.0.1:8000/v1",
        api_key_env: str = "OPENAI_API_KEY",
        max_concurrency: int = 8,
        timeout: float = 60.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        temperature: float = 0.0,
        max_tokens: int = 256,
        logprobs: bool = True,
        extra_body: dict[str, Any] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not model:
            raise ValueError("OpenAIBackend needs model= (the model name the server serves)")
        if max_concurrency < 1:
            raise ValueError(f"OpenAIBackend max_concurrency must be >= 1, got {max_concurrency}")
        if timeout <= 0:
            raise ValueError(f"OpenAIBackend timeout must be > 0 seconds, got {timeout}")
        if max_retries < 0 or backoff < 0:
            raise ValueError(
                f"OpenAIBackend max_retries and backoff must be >= 0, got {max_retries}, {backoff}"
            )
        if max_tokens < 1:
            raise ValueError(f"OpenAIBackend max_tokens must be >= 1, got {max_tokens}")
        if extra_body is not None and not isinstance(extra_body, dict):
            raise TypeError(f"OpenAIBackend extra_body must be a dict, got {type(extra_body).__name__}")
        self.model = model
        self.base_urls = parse_base_urls(base_url)
        self.base_url = ",".join(self.base_urls)
        # Which server each request goes to; `pool.stats()` counts requests and failures per server.
        self.pool = ServerPool(self.base_urls, probe=self._alive)
        self.api_key_env = api_key_env
        self.max_concurrency = max_concurrency
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.backoff = float(backoff)
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.logprobs = logprobs
        self.extra_body = dict(extra_body or {})
        # Kept private and only ever placed in the Authorization header.
        self._api_key = os.environ.get(api_key_env) or None
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(self.timeout),
            limits=httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency),
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"OpenAIBackend(model={self.model!r}, base_url={self.base_url!r}, api_key_env={self.api_key_env!r})"

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def __enter__(self) -> OpenAIBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fingerprint(self) -> str:
        # The server address is left out on purpose: replicas of one model behind different URLs share a cache.
        parts = [
            "openai",
            self.model,
            f"temperature={self.temperature}",
            f"max_tokens={self.max_tokens}",
            f"logprobs={self.logprobs}",
            f"template={TEMPLATE_VERSION}",
        ]
        if self.extra_body:
            parts.append("extra=" + json.dumps(self.extra_body, sort_keys=True, default=str))
        return "|".join(parts)

    # ---- transport ----------------------------------------------------------------------------------------------

    def _secret(self) -> str | None:
        return self._api_key

    def _body(self, request: ChatRequest, urls: dict[int, str]) -> dict[str, Any]:
        messages = []
        for msg in request.messages:
            parts = []
            for part in msg["content"]:
                if part["type"] == "image":
                    image = part["image"]
                    if id(image) not in urls:
                        urls[id(image)] = image_data_url(image)
                    parts.append({"type": "image_url", "image_url": {"url": urls[id(image)]}})
                else:
                    parts.append({"type": "text", "text": part["text"]})
            if msg["role"] == "system" and all(p["type"] == "text" for p in parts):
                # Plain-string system content is what every server's chat template accepts.
                messages.append({"role": "system", "content": "".join(p["text"] for p in parts)})
            else:
                messages.append({"role": msg["role"], "content": parts})
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": request.max_new_tokens or self.max_tokens,
        }
        if self.logprobs and request.kind != "text":  # free text has no answer token to read
            body["logprobs"] = True
            body["top_logprobs"] = TOP_LOGPROBS
        body.update(self.extra_body)
        return body

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        delay = self.backoff * (2 ** (attempt - 1)) * random.uniform(1.0, 1.5)
        if retry_after is not None:
            delay = max(delay, min(retry_after, _MAX_RETRY_AFTER, self.timeout))
        return delay

    def _alive(self, server: str) -> bool:
        """The pool's health check: the server answers `GET /models` (any answer below HTTP 500)."""
        try:
            resp = self._client.get(f"{server}/models", timeout=min(self.timeout, _PROBE_TIMEOUT))
        except httpx.HTTPError:
            return False
        return resp.status_code < 500

    def _post(self, server: str, body: dict[str, Any]) -> tuple[httpx.Response | None, str, bool]:
        """One attempt at `server`: (the response, "", False), or (None, why no response came, whether the server
        looks down: it refused or cut the connection, or did not accept it in time; a slow answer does not count)."""
        url = f"{server}/chat/completions"
        try:
            return self._client.post(url, json=body), "", False
        except httpx.TimeoutException as e:
            down = isinstance(e, httpx.ConnectTimeout)
            return None, f"timed out after {self.timeout:g} s ({type(e).__name__}) at {url}", down
        except httpx.TransportError as e:
            return None, f"cannot reach {url}: {type(e).__name__}: {self._redact(str(e))}", True

    def _send(self, body: dict[str, Any], request: ChatRequest) -> ChatResult:
        """One request with retries; never raises for HTTP or network failures.

        A server that looks down (connection refused, cut or not accepted in time; HTTP 502, 503 or 504) is taken
        out of the pool; where another server is up, the request moves there at once and that try is not counted
        against `max_retries` (at most one move per server). A slow answer (read timeout), HTTP 500 or 429 is
        retried as before without taking the server out: one bad request, or a busy server, must not empty the
        pool."""
        error = "no attempt made"
        unreachable = False
        retry_after: float | None = None
        attempts = self.max_retries + 1
        attempt = moves = 0
        while attempt < attempts:
            lease = self.pool.acquire()
            failure: str | None = None
            resp = None
            try:
                resp, error, down = self._post(lease.url, body)
                unreachable = resp is None
                url = f"{lease.url}/chat/completions"
                if resp is not None and (resp.status_code == 429 or resp.status_code >= 500):
                    error = self._http_error(resp, url)
                    try:
                        retry_after = float(resp.headers["retry-after"])
                    except (KeyError, ValueError):
                        retry_after = None
                    down = resp.status_code in _SERVER_DOWN_STATUSES
                failure = error if down else None
            finally:  # every lease is released, whatever is raised above
                move = self.pool.release(lease, failure)
            if move and moves < len(self.pool):
                moves += 1
                retry_after = None
                continue
            if resp is not None and resp.status_code != 429 and resp.status_code < 500:
                if resp.status_code >= 400:
                    return ChatResult(error=self._http_error(resp, url))
                return self._read(resp, request, url)
            attempt += 1
            if attempt < attempts:
                time.sleep(self._delay(attempt, retry_after))
                retry_after = None
        logger.warning("judge request failed after %d attempts: %s", attempt + moves, error)
        return ChatResult(error=f"{error} (gave up after {attempts} attempts)", unreachable=unreachable)

    def _http_error(self, resp: httpx.Response, url: str) -> str:
        """An HTTP error answer, for the verdict's error: the status and the server's message, redacted, then cut."""
        return f"HTTP {resp.status_code} from {url}: {self._redact(_server_message(resp))[:_MESSAGE_CHARS]}"

    def _read(self, resp: httpx.Response, request: ChatRequest, url: str) -> ChatResult:
        try:
            data = resp.json()
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            return ChatResult(
                error=f"unexpected response from {url} (expected choices[0].message.content): "
                f"{self._redact(resp.text)[:200]!r}"
            )
        probs = None
        logprobs = choice.get("logprobs")
        content = logprobs.get("content") if isinstance(logprobs, dict) else None
        if isinstance(content, list) and content and request.kind != "text":
            kind = "ordinal" if request.levels is not None else request.kind
            probs = answer_choice_probs(content, kind, request.choices)
        usage = data.get("usage") if isinstance(data, dict) else None
        tokens = [
            usage.get(k) if isinstance(usage, dict) else None for k in ("prompt_tokens", "completion_tokens")
        ]
        return ChatResult(
            text=text,
            choice_probs=probs,
            prompt_tokens=tokens[0] if isinstance(tokens[0], int) else None,
            completion_tokens=tokens[1] if isinstance(tokens[1], int) else None,
        )

    def _chat(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        urls: dict[
            int, str
        ] = {}  # each distinct image is encoded once per batch (swapped pairs share images)
        bodies = [self._body(r, urls) for r in requests]
        workers = min(self.max_concurrency, len(requests))
        if workers <= 1:
            return [self._send(b, r) for b, r in zip(bodies, requests, strict=True)]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="arr-judge") as pool:
            return list(pool.map(self._send, bodies, requests))
