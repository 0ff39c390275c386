"""A reward server: arr's rubric judge over HTTP for trainers that live elsewhere (flow_grpo, DanceGRPO, ...).

    arr serve --backend pixel --port 8765 --cache runs/judge.sqlite
    arr serve --backend openai --model Qwen/Qwen3-VL-8B --base-url http://127.0.0.1:8000/v1 --port 8765

flow_grpo keeps each reward model in its own process behind a small HTTP server (its GenEval and OCR rewards post
a batch of images plus per-image metadata and read back per-image `scores`); DanceGRPO's reward functions take a
batch of images and prompts and return a tensor. This server speaks that shape in JSON, with images as base64
(PNG/JPEG bytes, optionally as a data URL), and every request is a batch:

- `POST /score` (also `POST /`): {"images": [b64, ...], "rubrics": [rubric, ...] | "rubric": rubric,
  "prompts"?: [...], "sources"?: [b64 | null, ...], "meta_datas"?: [{"prompt", "rubric"}, ...]}
  -> {"scores": [float | null], "rewards": (same), "criteria": [{id: prob}], "errors": [str | null]}
- `POST /compare`: {"images_a": [...], "images_b": [...], rubric(s), prompts?, sources?}
  -> {"preferred": [0 | 1 | null], "prob_a": [...], "consistent": [...], "reasons": [[...]], "errors": [...]}
- `POST /group` (RPO's pairwise group reward): {"groups": [[b64, ...], ...], rubric(s), prompts?, sources?,
  "win"?: 1.0, "lose"?: -0.1} -> {"rewards": [[float | null, ...], ...], "info": {...}}
- `GET /health` -> {"status": "ok", "backend", "fingerprint", "judge": {calls, cached, failures, seconds}, ...}

The stack is an ASGI application (`RewardApp`, on starlette) under uvicorn (`RewardServer`). One judge serves
every connection, so judging runs on one worker thread, off the event loop: `/health` answers while a long batch is
judged. Every request is bounded before any work is done (`ServeLimits`: body bytes, items, criteria per rubric,
pixels per request, group size, JSON depth), at most `max_queue` requests are in the server at once (more get 503
with Retry-After), and a request that is not answered within `request_timeout` gets 504 and stops being judged at
the next chunk of its batch. Bad input gets HTTP 400 with {"error": "..."} naming the field and index; malformed
HTTP (a bad Content-Length, broken chunked framing) gets a one-line JSON 400 from the HTTP layer; a client that
sends its request too slowly is disconnected after `read_timeout`. With a token, every request must carry
`Authorization: Bearer <token>`. `shutdown()` stops accepting connections, gives the requests in flight
`shutdown_timeout` seconds, and closes the cache. docs/serve.md has client examples and the limits.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import io
import ipaddress
import json
import logging
import math
import queue
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import h11
import uvicorn
from PIL import Image, UnidentifiedImageError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from arr.backends.chat import JudgeUnavailableError
from arr.images import MAX_PIXELS, to_rgb
from arr.judge import PairItem, RubricJudge, ScoreItem
from arr.rewards import RubricPairwiseReward
from arr.rubrics import Rubric, RubricParseError
from arr.serve_limits import ServeLimits

__all__ = [
    "RequestError",
    "RewardApp",
    "RewardServer",
    "ServeLimits",
    "decode_image",
    "encode_image",
    "is_loopback",
]

logger = logging.getLogger(__name__)

BACKLOG = 2048  # pending TCP connections the kernel queues (capped by net.core.somaxconn); the stdlib's 5 reset them
# A batch is judged in chunks of about this many backend questions, so that a request that timed out or whose client
# went away stops using the judge at the next chunk instead of finishing a huge batch nobody reads.
CHUNK_QUESTIONS = 256


class RequestError(ValueError):
    """A request the server cannot answer: HTTP 400 with this message."""


# ---- images ---------------------------------------------------------------------------------------------------------


def encode_image(image: Image.Image, format: str = "PNG") -> str:
    """base64 of the image's bytes in `format` (PNG is lossless, so the server judges the exact pixels)."""
    buf = io.BytesIO()
    image.save(buf, format=format)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _open_image(data: Any, where: str) -> Image.Image:
    """A lazily opened image (header read, pixels not yet decoded), so sizes can be checked before decoding."""
    if not isinstance(data, str):
        raise RequestError(f"{where}: expected a base64 string, got {type(data).__name__}")
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{where}: not valid base64") from None
    try:
        im = Image.open(io.BytesIO(raw))
    except UnidentifiedImageError:
        raise RequestError(f"{where}: not a readable image (send PNG or JPEG bytes in base64)") from None
    except Image.DecompressionBombError:
        raise RequestError(f"{where}: too many pixels to open safely") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise RequestError(f"{where}: corrupt or truncated image ({e})") from None
    if im.size[0] * im.size[1] > MAX_PIXELS:
        raise RequestError(f"{where}: {im.size[0]}x{im.size[1]} pixels is over the limit")
    return im


def _load_image(im: Image.Image, where: str) -> Image.Image:
    try:
        im.load()
        return to_rgb(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise RequestError(f"{where}: corrupt or truncated image ({e})") from None


def decode_image(data: Any, where: str) -> Image.Image:
    """An RGB image from base64 (or a data URL); `where` names the field for the error message."""
    return _load_image(_open_image(data, where), where)


class _Images:
    """The images of one request: opened as they are named, counted against the pixel budget, decoded together."""

    def __init__(self, limits: ServeLimits) -> None:
        self.limits = limits
        self.pixels = 0
        self._opened: list[tuple[Image.Image, str]] = []

    def add(self, data: Any, where: str) -> int:
        im = _open_image(data, where)
        self.pixels += im.size[0] * im.size[1]
        if self.pixels > self.limits.max_pixels:
            raise RequestError(
                f"{where}: the request's images hold more than {self.limits.max_pixels:,} pixels (max_pixels); "
                "send fewer or smaller images per request"
            )
        self._opened.append((im, where))
        return len(self._opened) - 1

    def decode(self) -> list[Image.Image]:
        return [_load_image(im, where) for im, where in self._opened]


# ---- request bodies -------------------------------------------------------------------------------------------------


def _reject_constant(name: str) -> float:
    raise RequestError(f"body holds {name}, which is not a number in JSON; send finite numbers")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise RequestError(f"body holds {text[:40]}, which is not a finite number")
    return value


def _parse_body(raw: bytes, max_depth: int) -> dict[str, Any]:
    """A request body as a JSON object; NaN, infinities and nesting deeper than `max_depth` are refused."""
    try:
        body = json.loads(raw or b"null", parse_constant=_reject_constant, parse_float=_finite_float)
    except RequestError:
        raise
    except RecursionError:
        raise RequestError(f"body nests deeper than {max_depth} levels (max_json_depth)") from None
    except json.JSONDecodeError as e:
        raise RequestError(f"body is not JSON: {e}") from None
    except ValueError as e:  # not UTF-8, or an integer of thousands of digits
        raise RequestError(f"body is not usable JSON: {str(e)[:200]}") from None
    if not isinstance(body, dict):
        raise RequestError(f"expected a JSON object, got {type(body).__name__}")
    stack: list[tuple[Any, int]] = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > max_depth:
            raise RequestError(f"body nests deeper than {max_depth} levels (max_json_depth)")
        children = value.values() if isinstance(value, dict) else value
        stack.extend((v, depth + 1) for v in children if isinstance(v, (dict, list)))
    return body


def _list(body: dict[str, Any], key: str, n: int | None = None) -> list[Any] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        raise RequestError(f"{key}: expected a list, got {type(value).__name__}")
    if n is not None and len(value) != n:
        raise RequestError(f"{key}: expected {n} entries (one per item), got {len(value)}")
    return value


def _items(body: dict[str, Any], key: str, limits: ServeLimits) -> list[Any]:
    raw = _list(body, key)
    if raw is None:
        raise RequestError(f"missing {key!r}: a list of base64 images")
    if len(raw) > limits.max_items:
        raise RequestError(
            f"{key}: {len(raw)} items is over the per-request limit of {limits.max_items} (max_items); "
            "split the batch"
        )
    return raw


def _rubric(raw: Any, where: str, limits: ServeLimits) -> Rubric:
    try:
        rubric = Rubric.from_dict(raw) if isinstance(raw, dict) else Rubric.from_json(str(raw))
    except RubricParseError as e:
        raise RequestError(f"{where}: {e}") from None
    if len(rubric.criteria) > limits.max_criteria:
        raise RequestError(
            f"{where}: {len(rubric.criteria)} criteria is over the limit of {limits.max_criteria} per rubric "
            "(max_criteria)"
        )
    return rubric


def _rubrics_and_prompts(body: dict[str, Any], n: int, limits: ServeLimits) -> tuple[list[Rubric], list[str]]:
    """One rubric and one judge prompt per item, from rubrics / rubric / meta_datas, and prompts."""
    metas = _list(body, "meta_datas", n)
    raw = _list(body, "rubrics", n)
    if raw is None and "rubric" in body:
        raw = [body["rubric"]] * n
    if raw is None and metas is not None:
        if not all(isinstance(m, dict) and "rubric" in m for m in metas):
            raise RequestError(
                "meta_datas: every entry needs a 'rubric' when no rubrics/rubric field is given"
            )
        raw = [m["rubric"] for m in metas]
    if raw is None:
        raise RequestError(
            "no rubric: give 'rubrics' (one per item), 'rubric' (shared) or meta_datas[i].rubric"
        )
    parsed: dict[int, Rubric] = {}  # a shared rubric is parsed (and later hashed) once
    rubrics = []
    for i, r in enumerate(raw):
        if id(r) not in parsed:
            parsed[id(r)] = _rubric(r, f"rubrics[{i}]", limits)
        rubrics.append(parsed[id(r)])
    prompts = _list(body, "prompts", n)
    if prompts is None and metas is not None and all(isinstance(m, dict) and "prompt" in m for m in metas):
        prompts = [m["prompt"] for m in metas]
    if prompts is None:
        prompts = [r.prompt for r in rubrics]
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise RequestError(f"prompts[{i}]: expected a string, got {type(p).__name__}")
    return rubrics, prompts


def _sources(body: dict[str, Any], n: int, images: _Images) -> list[int | None]:
    raw = _list(body, "sources", n)
    if raw is None:
        return [None] * n
    return [None if s is None else images.add(s, f"sources[{i}]") for i, s in enumerate(raw)]


def _number(body: dict[str, Any], key: str, default: float) -> float:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"{key}: expected a number, got {json.dumps(value)[:40]}")
    try:
        value = float(value)
    except OverflowError:
        raise RequestError(f"{key}: {str(body[key])[:20]}... is too large") from None
    if not math.isfinite(value):
        raise RequestError(f"{key}: expected a finite number, got {value}")
    return value


def _chunks(sizes: Sequence[int], target: int) -> list[slice]:
    """Consecutive slices of items whose sizes (backend questions) add up to about `target` each."""
    out, start, total = [], 0, 0
    for i, size in enumerate(sizes):
        total += size
        if total >= target:
            out.append(slice(start, i + 1))
            start, total = i + 1, 0
    if start < len(sizes) or not out:
        out.append(slice(start, len(sizes)))
    return out


@dataclass
class _Plan:
    """A checked request, ready to judge. On the judge thread, `prepare()` decodes its images into a list of items
    (so a request waiting in the queue holds compressed bytes, not pixels), `judge(items[part])` runs for each part in
    turn (the job may be cancelled between parts: timeout, client gone, shutdown), and `finish` turns the parts'
    results into the response."""

    prepare: Callable[[], list[Any]]
    parts: list[slice]
    judge: Callable[[list[Any]], Any]
    finish: Callable[[list[Any]], dict[str, Any]]


def _finish_scores(chunks: list[Any]) -> dict[str, Any]:
    results = [r for chunk in chunks for r in chunk]
    scores = [r.score for r in results]
    return {
        "scores": scores,
        "rewards": scores,
        "criteria": [r.criteria for r in results],
        "errors": ["; ".join(f"{k}: {v}" for k, v in r.errors.items()) or None for r in results],
    }


def _plan_score(judge: RubricJudge, body: dict[str, Any], limits: ServeLimits) -> _Plan:
    raw = _items(body, "images", limits)
    images = _Images(limits)
    for i, d in enumerate(raw):
        images.add(d, f"images[{i}]")
    rubrics, prompts = _rubrics_and_prompts(body, len(raw), limits)
    sources = _sources(body, len(raw), images)

    def prepare() -> list[Any]:
        decoded = images.decode()
        return [
            ScoreItem(p, decoded[i], r, None if s is None else decoded[s])
            for i, (p, r, s) in enumerate(zip(prompts, rubrics, sources, strict=True))
        ]

    parts = _chunks([len(r.criteria) for r in rubrics], CHUNK_QUESTIONS)
    return _Plan(prepare, parts, judge.score_many, _finish_scores)


def _finish_pairs(chunks: list[Any]) -> dict[str, Any]:
    results = [r for chunk in chunks for r in chunk]
    return {
        "preferred": [r.preferred for r in results],
        "prob_a": [r.prob_a for r in results],
        "consistent": [r.consistent for r in results],
        "reasons": [r.reasons for r in results],
        "errors": [r.error for r in results],
    }


def _plan_compare(judge: RubricJudge, body: dict[str, Any], limits: ServeLimits) -> _Plan:
    raw_a, raw_b = _items(body, "images_a", limits), _items(body, "images_b", limits)
    if len(raw_a) != len(raw_b):
        raise RequestError(f"images_a has {len(raw_a)} images but images_b has {len(raw_b)}")
    images = _Images(limits)
    for key, raw in (("images_a", raw_a), ("images_b", raw_b)):
        for i, d in enumerate(raw):
            images.add(d, f"{key}[{i}]")
    n = len(raw_a)
    rubrics, prompts = _rubrics_and_prompts(body, n, limits)
    sources = _sources(body, n, images)

    def prepare() -> list[Any]:
        decoded = images.decode()
        return [
            PairItem(prompts[i], decoded[i], decoded[n + i], rubrics[i], None if s is None else decoded[s])
            for i, s in enumerate(sources)
        ]

    return _Plan(prepare, _chunks([2] * n, CHUNK_QUESTIONS), judge.compare_many, _finish_pairs)


def _finish_groups(chunks: list[Any]) -> dict[str, Any]:
    pairs = [c.info.get("pairs", 0) for c in chunks]
    info: dict[str, Any] = {"pairs": sum(pairs)}
    for key in chunks[0].info:
        if key != "pairs":  # the rates are per pair: weigh each chunk's by its pairs
            info[key] = sum(c.info[key] * p for c, p in zip(chunks, pairs, strict=True)) / max(sum(pairs), 1)
    return {"rewards": [r for c in chunks for r in c.rewards], "info": info}


def _groups(body: dict[str, Any], limits: ServeLimits) -> list[list[Any]]:
    groups = _list(body, "groups")
    if not groups or not all(isinstance(g, list) and len(g) >= 2 for g in groups):
        raise RequestError("groups: expected a list of groups, each a list of >= 2 base64 images")
    for i, g in enumerate(groups):
        if len(g) > limits.max_group_size:
            raise RequestError(
                f"groups[{i}]: {len(g)} images is over the group-size limit of {limits.max_group_size} "
                f"(max_group_size): every pair in a group is judged, {len(g) * (len(g) - 1)} questions here"
            )
    total = sum(len(g) for g in groups)
    if total > limits.max_items:
        raise RequestError(
            f"groups: {total} images is over the per-request limit of {limits.max_items} (max_items); "
            "split the batch"
        )
    return groups


def _plan_group(judge: RubricJudge, body: dict[str, Any], limits: ServeLimits) -> _Plan:
    groups = _groups(body, limits)
    images = _Images(limits)
    index = [[images.add(d, f"groups[{i}][{k}]") for k, d in enumerate(g)] for i, g in enumerate(groups)]
    rubrics, prompts = _rubrics_and_prompts(body, len(groups), limits)
    sources = _sources(body, len(groups), images)
    reward = RubricPairwiseReward(
        judge, win_reward=_number(body, "win", 1.0), lose_reward=_number(body, "lose", -0.1)
    )

    def prepare() -> list[Any]:
        decoded = images.decode()
        return [
            (p, [decoded[k] for k in g], r, None if s is None else decoded[s])
            for p, g, r, s in zip(prompts, index, rubrics, sources, strict=True)
        ]

    def judge_groups(items: list[Any]) -> Any:
        p, imgs, r, s = (list(column) for column in zip(*items, strict=True))
        return reward(prompts=p, images=imgs, rubrics=r, source_images=s)

    parts = _chunks([len(g) * (len(g) - 1) for g in groups], CHUNK_QUESTIONS)
    return _Plan(prepare, parts, judge_groups, _finish_groups)


# ---- the judge thread -----------------------------------------------------------------------------------------------


class _Cancelled(Exception):
    """A job stopped between parts: its request timed out, its client went away, or the server is stopping."""


@dataclass
class _Job:
    plan: _Plan
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    cancelled: threading.Event = field(default_factory=threading.Event)


class _JudgeWorker:
    """One thread that runs jobs in arrival order: backends hold one model and are not thread-safe, and judging
    must stay off the event loop so that /health and new connections are answered while a batch runs."""

    def __init__(self, on_start: Callable[[], None]) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._on_start = on_start
        self.busy = False
        self.job_seconds = 0.0  # a running mean, for Retry-After
        # A daemon thread: a batch still running past the shutdown deadline must not keep the process alive.
        self._thread = threading.Thread(target=self._run, name="arr-judge", daemon=True)
        self._thread.start()

    def submit(self, job: _Job) -> None:
        self._jobs.put(job)

    def stop(self, timeout: float) -> bool:
        """Finish the job in hand (cancelled jobs stop at their next part), then exit; True if it exited in time."""
        self._jobs.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            if job.cancelled.is_set():
                continue
            self.busy = True
            self._on_start()
            start = time.perf_counter()
            try:
                items = job.plan.prepare()
                results = []
                for part in job.plan.parts:
                    if job.cancelled.is_set():
                        raise _Cancelled()
                    results.append(job.plan.judge(items[part]))
                outcome: Any = job.plan.finish(results)
            except Exception as e:  # noqa: BLE001 - handed to the request, which answers with it
                outcome = e
            finally:
                self.busy = False
                self.job_seconds = 0.8 * self.job_seconds + 0.2 * (time.perf_counter() - start)
            job.loop.call_soon_threadsafe(_resolve, job.future, outcome)


def _resolve(future: asyncio.Future, outcome: Any) -> None:
    if future.done():  # the request was answered already (timeout, disconnect)
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


# ---- the ASGI application -------------------------------------------------------------------------------------------


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.headers = status, headers or {}


def _finite(value: Any) -> Any:
    """JSON-safe: a NaN or infinite number (which JSON cannot carry) becomes null, "no judgment"."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _json(status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    data = json.dumps(_finite(payload), allow_nan=False, separators=(",", ":")).encode()
    return Response(data, status, headers=headers, media_type="application/json")


class RewardApp:
    """The reward server as an ASGI application around one `RubricJudge` (see the module docstring for the API).

    `RewardServer` runs it under uvicorn with the HTTP-level protections (read timeout, JSON errors for malformed
    HTTP); it can also be mounted in any ASGI server. `token`: when set, every request must send
    `Authorization: Bearer <token>`. Call `close()` when done: it stops the judge thread and closes the cache.
    """

    def __init__(
        self, judge: RubricJudge, limits: ServeLimits | None = None, token: str | None = None
    ) -> None:
        self.judge = judge
        self.limits = limits or ServeLimits()
        self._token = token.encode() if token else None
        self.started = time.time()
        self.requests = 0  # requests that reached the judge
        # Requests not answered with a judgment: queue full, over request_timeout, client gone, server stopping,
        # bad input, no token.
        self.rejected = dict.fromkeys(
            ("busy", "timeout", "gone", "stopped", "bad_request", "unauthorized"), 0
        )
        self._in_flight = 0
        self._stop_at = math.inf  # monotonic time by which every request must be answered (set on shutdown)
        self._count = threading.Lock()
        self._fingerprint = judge.backend.fingerprint()
        self._worker = _JudgeWorker(on_start=self._job_started)
        # Bodies are parsed and images decoded on a few threads beside the judge: parsing a large batch must not
        # stall the event loop, and a small pool bounds the CPU that uploads can take from judging.
        self._parsers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="arr-parse")
        self._routes: dict[tuple[str, str], Callable[[Request], Any]] = {
            ("GET", "/health"): self._health,
            ("POST", ""): self._score,
            ("POST", "/score"): self._score,
            ("POST", "/compare"): self._compare,
            ("POST", "/group"): self._group,
        }

    @property
    def has_token(self) -> bool:
        return self._token is not None

    def __repr__(self) -> str:  # the token stays out of reprs and logs
        return f"RewardApp(backend={self.judge.backend.name!r}, token={'set' if self._token else 'none'})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan and websockets: nothing to do
            return
        request = Request(scope, receive)
        path = scope["path"].rstrip("/")  # query strings are not part of the path, and are ignored
        handler = self._routes.get((request.method, path))
        try:
            self._authorize(request)
            if handler is None:
                methods = sorted(m for m, p in self._routes if p == path)
                if methods:
                    raise _HTTPError(
                        405, f"{request.method} {scope['path']} is not served; use {' or '.join(methods)}"
                    )
                raise _HTTPError(404, f"no {request.method} {scope['path']}; try GET /health or POST /score, "
                                 "/compare, /group")  # fmt: skip
            response = await handler(request)
        except _HTTPError as e:
            response = _json(e.status, {"error": str(e)}, e.headers)
        await response(scope, receive, send)

    def _authorize(self, request: Request) -> None:
        if self._token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self._token):
            with self._count:
                self.rejected["unauthorized"] += 1
            raise _HTTPError(
                401, "missing or wrong bearer token: send 'Authorization: Bearer <token>'",
                {"WWW-Authenticate": "Bearer"},
            )  # fmt: skip

    # ---- endpoints --------------------------------------------------------------------------------------------------

    async def _health(self, request: Request) -> Response:
        return _json(200, self.health())

    def health(self) -> dict[str, Any]:
        """Status and counters; reads no lock the judge holds, so it answers while a batch is judged."""
        cache = self.judge.cache
        return {
            "status": "ok" if self._stop_at == math.inf else "stopping",
            "backend": self.judge.backend.name,
            "fingerprint": self._fingerprint,
            "swap": self.judge.swap,
            "judge": self.judge.stats.to_dict(),
            "cache": None if cache is None else str(getattr(cache, "path", cache)),
            "requests": self.requests,
            "queue": {
                "in_flight": self._in_flight,
                "judging": self._worker.busy,
                "max": self.limits.max_queue,
            },
            "rejected": dict(self.rejected),
            "limits": asdict(self.limits),
            "uptime_s": round(time.time() - self.started, 3),
        }

    async def _score(self, request: Request) -> Response:
        return await self._judge(request, _plan_score)

    async def _compare(self, request: Request) -> Response:
        return await self._judge(request, _plan_compare)

    async def _group(self, request: Request) -> Response:
        return await self._judge(request, _plan_group)

    # ---- one judged request -----------------------------------------------------------------------------------------

    async def _judge(self, request: Request, plan_of: Callable[..., _Plan]) -> Response:
        deadline = time.monotonic() + self.limits.request_timeout
        self._admit()
        try:
            loop = asyncio.get_running_loop()
            try:
                # The body is only referenced for the parse: a request waiting for the judge holds its checked plan
                # (compressed images), not the JSON text as well.
                plan = await loop.run_in_executor(
                    self._parsers, self._parse, await self._read_body(request), plan_of
                )
            except RequestError as e:
                with self._count:
                    self.rejected["bad_request"] += 1
                return _json(400, {"error": str(e)})
            return await self._run(plan, request, deadline)
        finally:
            with self._count:
                self._in_flight -= 1

    def _admit(self) -> None:
        with self._count:
            if self._stop_at < math.inf:
                self.rejected["stopped"] += 1
                raise _HTTPError(
                    503, "the server is shutting down; retry on its replacement", {"Retry-After": "5"}
                )
            if self._in_flight >= self.limits.max_queue:
                self.rejected["busy"] += 1
                wait = math.ceil(self._worker.job_seconds * self._in_flight)
                raise _HTTPError(
                    503,
                    f"busy: {self._in_flight} requests in the server (max_queue {self.limits.max_queue}); "
                    "retry after the Retry-After seconds",
                    {"Retry-After": str(min(max(wait, 1), 60))},
                )
            self._in_flight += 1

    def _job_started(self) -> None:
        with self._count:
            self.requests += 1

    async def _read_body(self, request: Request) -> bytes:
        limit = self.limits.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _HTTPError(
                413, f"body of {int(declared):,} bytes is over the {limit:,}-byte limit (max_body_bytes)"
            )
        chunks, size = [], 0
        try:
            async for chunk in request.stream():  # chunked bodies arrive decoded, whatever their framing
                size += len(chunk)
                if size > limit:
                    raise _HTTPError(413, f"body is over the {limit:,}-byte limit (max_body_bytes)")
                chunks.append(chunk)
        except ClientDisconnect:
            raise _HTTPError(400, "the client closed the connection before sending its whole body") from None
        return b"".join(chunks)

    def _parse(self, raw: bytes, plan_of: Callable[..., _Plan]) -> _Plan:
        return plan_of(self.judge, _parse_body(raw, self.limits.max_json_depth), self.limits)

    async def _run(self, plan: _Plan, request: Request, deadline: float) -> Response:
        loop = asyncio.get_running_loop()
        job = _Job(plan, loop, loop.create_future())
        self._worker.submit(job)
        gone = asyncio.ensure_future(_disconnected(request.receive))
        done: set[asyncio.Future] = set()
        try:
            # Wake up at least every half second: shutdown() may move the deadline forward from another thread.
            while not done and time.monotonic() < min(deadline, self._stop_at):
                wait = min(deadline, self._stop_at) - time.monotonic()
                done, _ = await asyncio.wait(
                    {job.future, gone}, timeout=min(max(wait, 0), 0.5), return_when=asyncio.FIRST_COMPLETED
                )
        finally:
            # Answered, timed out, client gone or server stopping: a job still running stops at its next part.
            job.cancelled.set()
            gone.cancel()
        if job.future in done:
            return self._answer(job.future)
        with self._count:
            self.rejected[
                "gone" if gone in done else "stopped" if deadline > self._stop_at else "timeout"
            ] += 1
        if deadline > self._stop_at:
            return _json(
                503, {"error": "the server is shutting down; retry on its replacement"}, {"Retry-After": "5"}
            )
        return _json(504, {"error": f"not answered within {self.limits.request_timeout:g} s (request_timeout); "
                           "send smaller batches or raise the limit"})  # fmt: skip

    @staticmethod
    def _answer(future: asyncio.Future) -> Response:
        try:
            return _json(200, future.result())
        # Bad input found while judging (e.g. an editing rubric without its source image): the judge's one line.
        except (RequestError, ValueError) as e:
            return _json(400, {"error": str(e)})
        except JudgeUnavailableError as e:
            return _json(503, {"error": f"the judge is unreachable: {e}"}, {"Retry-After": "10"})
        except Exception as e:  # noqa: BLE001 - a bug or a broken backend: one line to the client, the trace to the log
            logger.error("judging failed", exc_info=e)
            return _json(500, {"error": f"internal error while judging: {type(e).__name__}: {str(e)[:300]}"})

    def begin_shutdown(self, grace: float) -> None:
        """Refuse new requests (503) and answer those in flight within `grace` seconds: with their judgment if it
        is ready by then, else with 503, so that no client waits on a server that is going away."""
        self._stop_at = time.monotonic() + grace

    def close(self, timeout: float | None = None) -> bool:
        """Stop the judge thread (after its current step) and close the cache; False if the thread was still
        judging after `timeout` seconds (the cache is then left open for it)."""
        self._parsers.shutdown(wait=False, cancel_futures=True)
        stopped = self._worker.stop(self.limits.shutdown_timeout if timeout is None else timeout)
        if stopped and self.judge.cache is not None:
            self.judge.cache.close()
        return stopped


async def _disconnected(receive: Receive) -> None:
    """Return when the client goes away (after its body was read, the ASGI server reports only a disconnect)."""
    while (await receive())["type"] != "http.disconnect":
        pass


# ---- HTTP -----------------------------------------------------------------------------------------------------------


class _Protocol(H11Protocol):
    """uvicorn's h11 protocol with a read deadline and JSON errors.

    A client has `read_timeout` seconds from the first byte of a request (or from connecting) to its last byte; a
    slow client (slowloris) is then answered 408 and disconnected, instead of holding a connection forever. Malformed
    HTTP gets the server's one-line JSON error instead of plain text.
    """

    read_timeout = 60.0  # set per server by `_protocol_class`

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._read_timer: asyncio.TimerHandle | None = None
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state in (h11.IDLE, h11.SEND_BODY):
            self._arm()  # a request is arriving: it must be complete in time
        else:
            self._disarm()  # complete (or the connection is closing): judging time is the app's business

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._read_timer is None:
            self._read_timer = self.loop.call_later(self.read_timeout, self._read_timed_out)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if self.transport.is_closing() or self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
            return
        if self.cycle is None or not self.cycle.response_started:
            self.transport.write(_raw_response(408, f"request not received within {self.read_timeout:g} s"))
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        self.transport.write(
            _raw_response(
                400, "malformed HTTP request (request line, headers, Content-Length or chunked framing)"
            )
        )
        self.transport.close()


def _raw_response(status: int, error: str) -> bytes:
    body = json.dumps({"error": error}).encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


_REASONS = {400: "Bad Request", 408: "Request Timeout"}


def _protocol_class(read_timeout: float) -> type[_Protocol]:
    return type("ArrH11Protocol", (_Protocol,), {"read_timeout": read_timeout})


def is_loopback(host: str) -> bool:
    """True when `host` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RewardServer:
    """The reward server: a `RewardApp` under uvicorn, on its own thread and event loop.

    `port=0` picks a free port (read it back from `.port`). `serve_forever()` blocks until `shutdown()` is called
    from another thread (or Ctrl-C when it runs on the main thread); `start()` returns once it accepts connections.
    """

    def __init__(
        self,
        judge: RubricJudge,
        host: str = "127.0.0.1",
        port: int = 8765,
        *,
        limits: ServeLimits | None = None,
        token: str | None = None,
    ) -> None:
        self.limits = limits or ServeLimits()
        # Bind now, so that a taken port fails here and `.port` is known before serving.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._socket.bind((host, port))
            self._socket.listen(BACKLOG)  # clients that connect before start() wait in the backlog
        except OSError:
            self._socket.close()
            raise
        self.host, self.port = self._socket.getsockname()[:2]
        self.app = RewardApp(judge, self.limits, token)
        self.judge = judge
        self._server = uvicorn.Server(
            uvicorn.Config(
                self.app,
                http=_protocol_class(self.limits.read_timeout),
                lifespan="off",
                log_config=None,  # the embedding program owns logging
                access_log=False,  # one line per request would drown the trainer's logs; /health has counters
                backlog=BACKLOG,
                limit_concurrency=self.limits.max_connections,
                timeout_graceful_shutdown=math.ceil(self.limits.shutdown_timeout),
            )
        )
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._shutdown_lock = threading.Lock()

    @property
    def requests(self) -> int:
        return self.app.requests

    def health(self) -> dict[str, Any]:
        return self.app.health()

    def start(self) -> None:
        """Serve on a background thread; returns once connections are accepted."""
        if self._thread is not None:
            return
        if not is_loopback(self.host) and not self.app.has_token:
            logger.warning(
                "arr serve: listening on %s without a token: anyone who can reach port %d can use the judge "
                "(set one with --token-env)",
                self.host,
                self.port,
            )
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._server.serve(sockets=[self._socket])),
            name="arr-serve",
            daemon=True,
        )
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the reward server on {self.host}:{self.port} failed to start")
            time.sleep(0.01)

    def serve_forever(self) -> None:
        """Serve until `shutdown()`; Ctrl-C (KeyboardInterrupt) shuts down first, then propagates."""
        self.start()
        try:
            while not self._stopped.wait(0.5):
                pass
        except KeyboardInterrupt:
            self.shutdown()
            raise

    def shutdown(self) -> bool:
        """Stop accepting connections, give the requests in flight `shutdown_timeout` seconds, stop the judge and
        close the cache. Returns False when a batch was still being judged at the deadline (it is abandoned)."""
        with self._shutdown_lock:
            if self._stopped.is_set():
                return True
            deadline = time.monotonic() + self.limits.shutdown_timeout
            # Requests in flight are answered a little before uvicorn's own deadline cancels them, so that each
            # client gets a JSON answer rather than uvicorn's plain-text 500.
            self.app.begin_shutdown(max(self.limits.shutdown_timeout - 0.5, 0.0))
            self._server.should_exit = True
            if self._thread is None:
                self._socket.close()
            else:
                self._thread.join(self.limits.shutdown_timeout + 5)
                self._server.force_exit = True
            stopped = self.app.close(max(deadline - time.monotonic(), 1.0))
            if not stopped:
                logger.warning(
                    "arr serve: a batch was still being judged at the shutdown deadline; abandoned"
                )
            self._stopped.set()
            return stopped
