"""A reward server: arr's rubric judge over HTTP for trainers that live elsewhere (flow_grpo, DanceGRPO, ...).

    arr serve --backend pixel --port 8765 --cache runs/judge.sqlite
    python -m arr.serve --backend openai --model Qwen/Qwen3-VL-8B --base-url http://127.0.0.1:8000/v1 --port 8765

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

A rubric is a rubric JSON object (`Rubric.to_dict()`); the judge is asked with `prompts[i]` when given, else the
rubric's own prompt. Bad input gets HTTP 400 with {"error": "..."} naming the field and index. The judge is shared
by all connections behind one lock (backends hold one model and are not thread-safe), the judgment cache answers
repeated questions, and SIGTERM / SIGINT stop accepting connections, finish the requests in flight, close the cache
and exit 0. docs/serve.md has client examples for flow_grpo- and DanceGRPO-style trainers.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import threading
import time
import warnings
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image, UnidentifiedImageError

from arr.images import MAX_PIXELS, to_rgb
from arr.judge import PairItem, RubricJudge, ScoreItem
from arr.rubrics import Rubric, RubricParseError

__all__ = ["RequestError", "RewardServer", "decode_image", "encode_image"]

MAX_BODY_BYTES = 256 * 1024 * 1024  # a batch of 64 uncompressed 1024 px PNGs is ~200 MB in base64
MAX_ITEMS = 4096


class RequestError(ValueError):
    """A request the server cannot answer: HTTP 400 with this message."""


def encode_image(image: Image.Image, format: str = "PNG") -> str:
    """base64 of the image's bytes in `format` (PNG is lossless, so the server judges the exact pixels)."""
    buf = io.BytesIO()
    image.save(buf, format=format)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_image(data: Any, where: str) -> Image.Image:
    """An RGB image from base64 (or a data URL); `where` names the field for the error message."""
    if not isinstance(data, str):
        raise RequestError(f"{where}: expected a base64 string, got {type(data).__name__}")
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{where}: not valid base64") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as im:
                if im.size[0] * im.size[1] > MAX_PIXELS:
                    raise RequestError(f"{where}: {im.size[0]}x{im.size[1]} pixels is over the limit")
                im.load()
                return to_rgb(im)
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise RequestError(f"{where}: not a readable image (send PNG or JPEG bytes in base64)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise RequestError(f"{where}: corrupt or truncated image ({e})") from None


def _list(body: dict[str, Any], key: str, n: int | None = None) -> list[Any] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        raise RequestError(f"{key}: expected a list, got {type(value).__name__}")
    if n is not None and len(value) != n:
        raise RequestError(f"{key}: expected {n} entries (one per item), got {len(value)}")
    return value


def _rubrics_and_prompts(body: dict[str, Any], n: int) -> tuple[list[Rubric], list[str]]:
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
    parsed: dict[int, Rubric] = {}  # a shared rubric is parsed once
    rubrics = []
    for i, r in enumerate(raw):
        if id(r) not in parsed:
            try:
                parsed[id(r)] = Rubric.from_dict(r) if isinstance(r, dict) else Rubric.from_json(str(r))
            except RubricParseError as e:
                raise RequestError(f"rubrics[{i}]: {e}") from None
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


def _sources(body: dict[str, Any], n: int) -> list[Image.Image | None]:
    raw = _list(body, "sources", n)
    if raw is None:
        return [None] * n
    return [None if s is None else decode_image(s, f"sources[{i}]") for i, s in enumerate(raw)]


def _images(body: dict[str, Any], key: str) -> list[Image.Image]:
    raw = _list(body, key)
    if raw is None:
        raise RequestError(f"missing {key!r}: a list of base64 images")
    if len(raw) > MAX_ITEMS:
        raise RequestError(
            f"{key}: {len(raw)} items is over the per-request limit of {MAX_ITEMS}; split the batch"
        )
    return [decode_image(d, f"{key}[{i}]") for i, d in enumerate(raw)]


class RewardServer:
    """The HTTP reward server around one `RubricJudge` (see the module docstring for the API).

    `port=0` picks a free port (read it back from `.port`). `serve_forever()` blocks; `shutdown()` from another
    thread stops it after the requests in flight.
    """

    def __init__(self, judge: RubricJudge, host: str = "127.0.0.1", port: int = 8765) -> None:
        self.judge = judge
        self._lock = threading.Lock()  # one judge, one model: requests take turns at the backend
        self.started = time.time()
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return  # one line per request would drown the trainer's logs; /health has the counters

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/health":
                    self._send(HTTPStatus.OK, server.health())
                else:
                    self._send(HTTPStatus.NOT_FOUND, {"error": f"no GET {self.path}; try /health"})

            def do_POST(self) -> None:
                route = {
                    "": server.score,
                    "/score": server.score,
                    "/compare": server.compare,
                    "/group": server.group,
                }
                handler = route.get(self.path.rstrip("/"))
                if handler is None:
                    self._send(
                        HTTPStatus.NOT_FOUND, {"error": f"no POST {self.path}; try /score, /compare, /group"}
                    )
                    return
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY_BYTES:
                    self._send(
                        HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"body of {length} bytes is too large"}
                    )
                    self.close_connection = True
                    return
                try:
                    body = json.loads(self.rfile.read(length) or b"null")
                    if not isinstance(body, dict):
                        raise RequestError(f"expected a JSON object, got {type(body).__name__}")
                    self._send(HTTPStatus.OK, handler(body))
                except json.JSONDecodeError as e:
                    self._send(HTTPStatus.BAD_REQUEST, {"error": f"body is not JSON: {e}"})
                except RequestError as e:
                    self._send(HTTPStatus.BAD_REQUEST, {"error": str(e)})

            def _send(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
                data = json.dumps(payload, allow_nan=False).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        # Wait for handler threads on close, so a shutdown finishes the requests in flight.
        self.httpd.daemon_threads = False
        self.httpd.block_on_close = True
        self.host, self.port = self.httpd.server_address[:2]

    # ---- endpoints ----------------------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        cache = self.judge.cache
        with self._lock:
            stats = self.judge.stats.to_dict()
        return {
            "status": "ok",
            "backend": self.judge.backend.name,
            "fingerprint": self.judge.backend.fingerprint(),
            "swap": self.judge.swap,
            "judge": stats,
            "cache": None if cache is None else str(getattr(cache, "path", cache)),
            "requests": self.requests,
            "uptime_s": round(time.time() - self.started, 3),
        }

    def score(self, body: dict[str, Any]) -> dict[str, Any]:
        images = _images(body, "images")
        rubrics, prompts = _rubrics_and_prompts(body, len(images))
        sources = _sources(body, len(images))
        items = [
            ScoreItem(p, im, r, s) for p, im, r, s in zip(prompts, images, rubrics, sources, strict=True)
        ]
        results = self._judge(self.judge.score_many, items)
        scores = [r.score for r in results]
        return {
            "scores": scores,
            "rewards": scores,
            "criteria": [r.criteria for r in results],
            "errors": ["; ".join(f"{k}: {v}" for k, v in r.errors.items()) or None for r in results],
        }

    def compare(self, body: dict[str, Any]) -> dict[str, Any]:
        a, b = _images(body, "images_a"), _images(body, "images_b")
        if len(a) != len(b):
            raise RequestError(f"images_a has {len(a)} images but images_b has {len(b)}")
        rubrics, prompts = _rubrics_and_prompts(body, len(a))
        sources = _sources(body, len(a))
        items = [PairItem(*x) for x in zip(prompts, a, b, rubrics, sources, strict=True)]
        results = self._judge(self.judge.compare_many, items)
        return {
            "preferred": [r.preferred for r in results],
            "prob_a": [r.prob_a for r in results],
            "consistent": [r.consistent for r in results],
            "reasons": [r.reasons for r in results],
            "errors": [r.error for r in results],
        }

    def group(self, body: dict[str, Any]) -> dict[str, Any]:
        from arr.rewards import RubricPairwiseReward

        groups = _list(body, "groups")
        if not groups or not all(isinstance(g, list) and len(g) >= 2 for g in groups):
            raise RequestError("groups: expected a list of groups, each a list of >= 2 base64 images")
        images = [
            [decode_image(d, f"groups[{i}][{k}]") for k, d in enumerate(g)] for i, g in enumerate(groups)
        ]
        rubrics, prompts = _rubrics_and_prompts(body, len(images))
        sources = _sources(body, len(images))
        try:
            win, lose = float(body.get("win", 1.0)), float(body.get("lose", -0.1))
        except (TypeError, ValueError):
            raise RequestError("win and lose must be numbers") from None
        reward = RubricPairwiseReward(self.judge, win_reward=win, lose_reward=lose)
        out = self._judge(
            lambda _: reward(prompts=prompts, images=images, rubrics=rubrics, source_images=sources), None
        )
        return {"rewards": out.rewards, "info": out.info}

    def _judge(self, fn: Any, items: Any) -> Any:
        with self._lock:
            self.requests += 1
            return fn(items)

    # ---- running ------------------------------------------------------------------------------------------------

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.2)

    def shutdown(self) -> None:
        """Stop accepting connections, wait for the requests in flight, close the socket and the cache."""
        self.httpd.shutdown()
        self.httpd.server_close()
        if self.judge.cache is not None:
            self.judge.cache.close()
