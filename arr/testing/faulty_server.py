"""A fault-injecting OpenAI-compatible chat server on 127.0.0.1, for reliability tests of the `openai` judge backend.

    with FaultyJudgeServer(fault_rate=0.2, seed=0) as server:          # a thread in this process
        backend = OpenAIBackend("canned", base_url=server.base_url, timeout=0.5, backoff=0.01)

    python -m arr.testing.faulty_server --port 8123 --fault-rate 0.2    # a separate process (Ctrl-C stops it)

It is not a model. Answers are canned verdicts computed from the pixels of the images in the request, the same rule
as `tests/fakes.BrightnessBackend`: a pair is won by the image whose top-left pixel has the larger red value (ties
are equal ranks), a yes/no criterion holds with probability red / 255 (sent as yes/no token log-probabilities), an
ordinal criterion is rated by the same fraction. So a run against this server without faults must give exactly
what a run with `BrightnessBackend` gives, and every difference under faults is the fault's doing.

Faults (`FAULTS`) are drawn per attempt: whether the n-th arrival of a given request body is faulty, and which
fault it gets, is a hash of (seed, body, n), so the faults a run sees do not depend on thread scheduling and a
rerun sees the same ones. `RETRYABLE` faults look like transport trouble (the backend retries them); the others
are well-formed HTTP 200 answers that cannot be read as a verdict (the backend masks them without retrying, since
a deterministic judge would repeat them). `queue_faults` scripts the next requests' faults instead, in order.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import io
import json
import math
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image

FAULTS = (
    "timeout",  # answer only after `hang_seconds` (longer than the client's timeout)
    "http_429",  # rate limited, with Retry-After: 0
    "http_500",
    "http_503",
    "drop",  # close the connection without answering
    "truncated_body",  # Content-Length promises more bytes than are sent, then the connection closes
    "malformed_json",  # HTTP 200 whose body is JSON cut in the middle
    "no_choices",  # HTTP 200, valid JSON without `choices`
    "empty",  # HTTP 200, an empty answer text
    "refusal",  # HTTP 200, the model declines to judge
)
RETRYABLE = frozenset({"timeout", "http_429", "http_500", "http_503", "drop", "truncated_body"})
# Not in FAULTS (and so never drawn at random): an HTTP 500 whose message quotes the request's Authorization
# header back, the way a careless proxy might; the backend must keep the key out of its logs and errors.
LEAKY = "leaky_500"
REFUSAL_TEXT = "I'm sorry, but I can't help with evaluating these images."

# (kind, judged images, question text) -> (answer text, {token: probability} for the answer token or None)
Answerer = Callable[[str, Sequence[Image.Image], str], tuple[str, dict[str, float] | None]]


def _red(image: Image.Image) -> int:
    return int(image.convert("RGB").getpixel((0, 0))[0])


def brightness_answer(
    kind: str, images: Sequence[Image.Image], text: str
) -> tuple[str, dict[str, float] | None]:
    """The canned verdict rule described in the module docstring (BrightnessBackend's, over HTTP)."""
    if kind == "pair":
        a, b = (_red(im) for im in images[-2:])
        rank = [1, 2] if a > b else [2, 1] if a < b else [1, 1]
        return json.dumps({"rank": rank, "reason": f"red {a} vs {b}"}), None
    p = _red(images[-1]) / 255
    if kind == "ordinal":
        levels = int(text.rsplit("Rate from 1 to ", 1)[1].split()[0]) if "Rate from 1 to " in text else 5
        return f"{1 + round(p * (levels - 1))}: red {round(p * 255)}", None
    return f"{'yes' if p >= 0.5 else 'no'}: red {round(p * 255)}", {"yes": p, "no": 1.0 - p}


def _kind(messages: list[dict[str, Any]]) -> str:
    """Which question the backend asked, from its system prompt (arr/templates/system_*.txt)."""
    system = " ".join(str(m.get("content")) for m in messages if m.get("role") == "system")
    if "compare two images" in system:
        return "pair"
    if "rate how well" in system:
        return "ordinal"
    if "criterion holds" in system:
        return "criterion"
    return "text"


def _images_and_text(messages: list[dict[str, Any]]) -> tuple[list[Image.Image], str]:
    images, texts = [], []
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            texts.append(content)
            continue
        for part in content or []:
            if part.get("type") == "image_url":
                url = part["image_url"]["url"]
                images.append(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))
            elif part.get("type") == "text":
                texts.append(part["text"])
    return images, "\n".join(texts)


def _unit(*parts: Any) -> float:
    """A uniform number in [0, 1) from a hash of `parts` (stable across processes and runs)."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class FaultyJudgeServer:
    """The server (see the module docstring); `start()` runs it in a daemon thread, `stop()` shuts it down.

    Args:
        fault_rate: probability that an attempt gets a fault.
        faults: the faults drawn from (equally likely), a subset of `FAULTS` (plus `LEAKY` if wanted).
        seed: changes which attempts are faulty.
        hang_seconds: how long a "timeout" fault waits before answering.
        api_key: when set, requests without `Authorization: Bearer <api_key>` get HTTP 401.
        answer: the canned answerer (default `brightness_answer`).
        logprobs: send answer-token log-probabilities where the answerer gives them and the request asks.
        keep_bodies: keep every request body (for tests that inspect what the backend sent).
        counts_file: rewrite `counts` to this JSON file after every request (for a server in another process).
        latency: seconds added before every answer (a remote judge's network + queueing time, for benchmarks).
    """

    def __init__(
        self,
        fault_rate: float = 0.0,
        faults: Sequence[str] = FAULTS,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        hang_seconds: float = 2.0,
        api_key: str | None = None,
        answer: Answerer = brightness_answer,
        logprobs: bool = True,
        keep_bodies: bool = False,
        counts_file: str | None = None,
        latency: float = 0.0,
    ) -> None:
        unknown = sorted(set(faults) - set(FAULTS) - {LEAKY})
        if unknown:
            raise ValueError(f"unknown faults {unknown}; choose from {list(FAULTS) + [LEAKY]}")
        if not 0.0 <= fault_rate <= 1.0:
            raise ValueError(f"fault_rate must be in [0, 1], got {fault_rate}")
        self.fault_rate = fault_rate
        self.faults = tuple(faults)
        self.seed = seed
        self.hang_seconds = hang_seconds
        self.api_key = api_key
        self.answer = answer
        self.logprobs = logprobs
        self.keep_bodies = keep_bodies
        self.counts_file = counts_file
        self.latency = latency
        self.counts: Counter[str] = Counter()  # "ok", "unauthorized" and each fault name
        self.bodies: list[dict[str, Any]] = []
        self.auth_headers: Counter[str] = Counter()
        self._attempts: Counter[str] = Counter()
        self._queue: list[str] = []
        self._connections: set[socket.socket] = set()
        self._killed = threading.Event()
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return str(self._httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def queue_faults(self, faults: Sequence[str]) -> None:
        """The next requests get these faults, in arrival order ("ok" for none), before random faults resume."""
        with self._lock:
            self._queue.extend(faults)

    def start(self) -> FaultyJudgeServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="faulty-judge", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(10)

    def kill(self) -> None:
        """Stop the way a crashed server stops: every open connection cut at once, no request answered from now
        on, and no longer listening (`stop` alone leaves kept-alive connections answering)."""
        self._killed.set()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self.stop()

    def __enter__(self) -> FaultyJudgeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def faulty_fraction(self) -> float:
        """Faulty attempts / all attempts answered so far."""
        total = sum(self.counts.values())
        return sum(v for k, v in self.counts.items() if k not in ("ok", "unauthorized")) / max(total, 1)

    # ---- decisions ----------------------------------------------------------------------------------------------

    def _choose(self, raw: bytes) -> str:
        digest = hashlib.sha256(raw).hexdigest()
        with self._lock:
            if self._queue:
                return self._queue.pop(0)
            attempt = self._attempts[digest]
            self._attempts[digest] += 1
        if _unit(self.seed, digest, attempt, "rate") >= self.fault_rate:
            return "ok"
        return self.faults[int(_unit(self.seed, digest, attempt, "kind") * len(self.faults))]

    def _completion(self, body: dict[str, Any], fault: str) -> dict[str, Any]:
        messages = body.get("messages") or []
        kind = _kind(messages)
        images, text = _images_and_text(messages)
        if fault == "empty":
            answer, probs = "", None
        elif fault == "refusal":
            answer, probs = REFUSAL_TEXT, None
        else:
            answer, probs = self.answer(kind, images, text)
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": answer},
            "finish_reason": "stop",
            "logprobs": None,
        }
        if probs and self.logprobs and body.get("logprobs"):
            first = answer.split(":", 1)[0]
            # log(0) is not JSON; a floor of 1e-12 moves a probability by at most that much.
            top = [{"token": t, "logprob": math.log(max(p, 1e-12))} for t, p in probs.items()]
            choice["logprobs"] = {
                "content": [
                    {
                        "token": first,
                        "logprob": math.log(max(probs.get(first, 0.0), 1e-12)),
                        "top_logprobs": top,
                    }
                ]
            }
        return {
            "id": "chatcmpl-faulty",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", ""),
            "choices": [choice],
            "usage": {"prompt_tokens": len(text) // 4, "completion_tokens": max(1, len(answer) // 4)},
        }

    def _authorized(self, auth: str) -> bool:
        """Count the Authorization header; False (counted as "unauthorized") where it lacks the API key."""
        with self._lock:
            self.auth_headers[auth] += 1
            if self.api_key is not None and auth != f"Bearer {self.api_key}":
                self.counts["unauthorized"] += 1
                return False
        return True

    def _record(self, raw: bytes, body: dict[str, Any]) -> str:
        """Choose this attempt's fault and count it (keeping the body and rewriting the counts file where asked)."""
        fault = self._choose(raw)
        with self._lock:
            self.counts[fault] += 1
            if self.keep_bodies:
                self.bodies.append(body)
            if self.counts_file:
                with open(self.counts_file, "w", encoding="utf-8") as f:
                    json.dump(dict(self.counts), f)
        return fault

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like real servers (httpx pools connections)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
                return  # quiet: tests count requests through `server.counts`

            def setup(self) -> None:
                super().setup()
                with server._lock:
                    server._connections.add(self.connection)

            def finish(self) -> None:
                try:
                    super().finish()
                finally:
                    with server._lock:
                        server._connections.discard(self.connection)

            def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

            def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
                self._send(status, json.dumps({"error": {"message": message}}).encode(), headers)

            def _hang_up(self) -> None:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if server._killed.is_set():
                    self._hang_up()
                elif self.path.rstrip("/") in ("/health", "/v1/models"):
                    self._send(200, json.dumps({"object": "list", "data": [{"id": "canned"}]}).encode())
                else:
                    self._error(404, f"no route {self.path}")

            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if server._killed.is_set():
                    self._hang_up()
                    return
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._error(404, f"no route {self.path}")
                    return
                auth = self.headers.get("Authorization") or ""
                if not server._authorized(auth):
                    self._error(401, "missing or wrong API key")
                    return
                try:
                    body = json.loads(raw)
                except ValueError:
                    self._error(400, "request body is not JSON")
                    return
                fault = server._record(raw, body)
                # A client that gave up (its timeout) has closed the socket: nothing left to answer.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self._answer(body, fault, auth)

            def _answer(self, body: dict[str, Any], fault: str, auth: str) -> None:
                if server.latency > 0:
                    time.sleep(server.latency)
                if server._killed.is_set():  # killed while this request waited
                    self._hang_up()
                    return
                if fault == "timeout":
                    time.sleep(server.hang_seconds)
                    fault = "ok"
                if fault == "http_429":
                    self._error(429, "rate limited: slow down", {"Retry-After": "0"})
                elif fault in ("http_500", "http_503"):
                    self._error(int(fault[-3:]), "the judge model crashed (injected fault)")
                elif fault == LEAKY:
                    self._error(500, f"upstream rejected request with header Authorization: {auth}")
                elif fault == "drop":
                    self._hang_up()
                elif fault == "no_choices":
                    self._send(200, json.dumps({"id": "x", "object": "chat.completion"}).encode())
                else:
                    payload = json.dumps(server._completion(body, fault)).encode()
                    if fault == "malformed_json":
                        self._send(200, payload[: len(payload) // 2])
                    elif fault == "truncated_body":
                        _send_truncated(self, payload)
                    else:
                        self._send(200, payload)

        return Handler


def _send_truncated(handler: BaseHTTPRequestHandler, payload: bytes) -> None:
    """Promise `payload` in Content-Length, send half of it, and close the connection."""
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    handler.wfile.write(payload[: len(payload) // 2])
    handler.wfile.flush()
    handler.close_connection = True
    handler.connection.shutdown(socket.SHUT_RDWR)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Fault-injecting OpenAI-compatible judge server (tests only).")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on the first line)")
    p.add_argument("--fault-rate", type=float, default=0.0)
    p.add_argument("--faults", default=",".join(FAULTS), help="comma-separated subset of the fault names")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hang-seconds", type=float, default=2.0)
    p.add_argument(
        "--api-key-env", default=None, help="require this environment variable's key as Bearer token"
    )
    p.add_argument(
        "--counts-file", default=None, help="write the per-fault counts here (JSON) on every request"
    )
    p.add_argument("--latency", type=float, default=0.0, help="seconds added before every answer")
    args = p.parse_args(argv)
    import os
    import sys

    key = os.environ.get(args.api_key_env) if args.api_key_env else None
    server = FaultyJudgeServer(
        fault_rate=args.fault_rate,
        faults=[f for f in args.faults.split(",") if f],
        seed=args.seed,
        port=args.port,
        hang_seconds=args.hang_seconds,
        api_key=key,
        counts_file=args.counts_file,
        latency=args.latency,
    )
    sys.stdout.write(f"{server.base_url}\n")
    sys.stdout.flush()
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
