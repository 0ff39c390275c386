"""A pool of judge servers: one model served by several OpenAI-compatible servers, requests spread over them.

    backend = load_backend("openai", model="Qwen/Qwen3-VL-8B-Instruct",
                           base_url="http://127.0.0.1:8000/v1,http://127.0.0.1:8001/v1")

`parse_base_urls` reads the servers from one URL, a comma-separated string, a list, or a text file with one URL per
line. `ServerPool` sends each request to the healthy server with the fewest requests in flight (ties in turn). A
server that the caller reports down (the openai backend: connection refused or cut, HTTP 502-504) is taken out,
and the caller retries at once on another healthy server. An out server is health-checked first 5 s later, then
at doubling intervals up to 60 s, and put back when it answers. When every server is out, requests go round the out servers
under the caller's usual retries and backoff, exactly as if one server were down, and the first to answer is put
back. A pool of one server never takes it out: it behaves as that server alone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

EXAMPLE_URL = "http://127.0.0.1:8000/v1"


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:  # a port that is not a number from 0 to 65535
        port_ok = False
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or not port_ok
        or any(c in url for c in " \t,")
    ):
        raise ValueError(f"{url!r} is not an http(s) URL; expected e.g. {EXAMPLE_URL}")
    return url.rstrip("/")


def parse_base_urls(value: str | Sequence[str]) -> list[str]:
    """The server URLs in `value`: one URL, URLs separated by commas, a list of URLs, or the path of a text file with
    one URL per line (blank lines and `#` comments ignored). Raises a one-line `ValueError` naming a bad entry."""
    if isinstance(value, str):
        text = value.strip()
        if "://" in text or "," in text:
            items: list[Any] = text.split(",")
        else:
            path = Path(text).expanduser()
            if not path.is_file():
                raise ValueError(
                    f"{text!r} is neither an http(s) URL nor a file of URLs; expected e.g. {EXAMPLE_URL}"
                )
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as e:
                raise ValueError(f"cannot read the server list {path}: {e}") from None
            items = [line.split("#", 1)[0] for line in lines]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ValueError(
            f"expected a URL, comma-separated URLs, a list of URLs or a file of URLs, got {type(value).__name__}"
        )
    urls = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"{item!r} is not an http(s) URL; expected e.g. {EXAMPLE_URL}")
        if item.strip():
            urls.append(_check_url(item.strip()))
    if not urls:
        raise ValueError(f"no server URL given; expected e.g. {EXAMPLE_URL}")
    twice = sorted({u for u in urls if urls.count(u) > 1})
    if twice:
        raise ValueError(f"{twice[0]} is listed twice; list each server once")
    return urls


@dataclass
class _Server:
    url: str
    healthy: bool = True
    in_flight: int = 0
    requests: int = 0
    failures: int = 0
    # Counts the server's changes of state (taken out, put back): a request's outcome changes the state only if
    # none happened since it was sent, so an answer sent before a crash cannot put a dead server back.
    epoch: int = 0
    turn: int = 0  # when it was last picked: ties in load go to the server that waited longest
    probe_after: float = 0.0  # seconds from one failed health check to the next
    next_probe: float = 0.0
    probing: bool = False


@dataclass(frozen=True)
class Lease:
    """One request's hold on a server, from `ServerPool.acquire` to `ServerPool.release`."""

    url: str
    epoch: int


class ServerPool:
    """Which server each request goes to (thread-safe; see the module docstring).

    Args:
        urls: the servers.
        probe: a health check, `probe(url) -> bool` (True: the server answers); called without the lock held.
        first_probe_after, max_probe_after: seconds before the first health check of an out server, and the cap of
            the doubling wait between failed ones.
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(
        self,
        urls: Sequence[str],
        probe: Callable[[str], bool],
        first_probe_after: float = 5.0,
        max_probe_after: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not urls:
            raise ValueError("ServerPool needs at least one server URL")
        self._servers = {url: _Server(url) for url in urls}
        self._probe = probe
        self.first_probe_after = first_probe_after
        self.max_probe_after = max_probe_after
        self._clock = clock
        self._lock = threading.Lock()
        self._turns = 0

    def __len__(self) -> int:
        return len(self._servers)

    @property
    def urls(self) -> list[str]:
        return list(self._servers)

    def acquire(self) -> Lease:
        """The server for the next request (healthy, least loaded); pair every call with `release`.

        An out server whose health check is due is checked first, in the calling thread."""
        self._check_one_due()
        with self._lock:
            healthy = [s for s in self._servers.values() if s.healthy]
            server = min(healthy or self._servers.values(), key=lambda s: (s.in_flight, s.turn))
            self._turns += 1
            server.turn = self._turns
            server.in_flight += 1
            server.requests += 1
            return Lease(server.url, server.epoch)

    def release(self, lease: Lease, failure: str | None = None) -> bool:
        """End a request; `failure` (why the server looks down) takes its server out of the pool, and an answer
        from a server that was out when the request was sent (every server was out) puts it back.

        Returns True when the server is out of the pool and another is in it: the caller should move there now."""
        with self._lock:
            server = self._servers[lease.url]
            server.in_flight -= 1
            current = lease.epoch == server.epoch
            if failure is None:
                if current and not server.healthy:
                    self._put_back(server, "answered a request")
                return False
            server.failures += 1
            if current and server.healthy and len(self._servers) > 1:
                server.healthy = False
                server.epoch += 1
                server.probe_after = self.first_probe_after
                server.next_probe = self._clock() + server.probe_after
                left = sum(s.healthy for s in self._servers.values())
                logger.warning(
                    "judge server %s taken out of the pool (%s); %d of %d servers left",
                    server.url,
                    failure,
                    left,
                    len(self._servers),
                )
            return not server.healthy and any(s.healthy for s in self._servers.values())

    def _put_back(self, server: _Server, why: str) -> None:
        server.healthy = True
        server.epoch += 1
        left = sum(s.healthy for s in self._servers.values())
        logger.warning(
            "judge server %s is back in the pool (it %s); %d of %d servers up",
            server.url,
            why,
            left,
            len(self._servers),
        )

    def _check_one_due(self) -> None:
        with self._lock:
            now = self._clock()
            due = next(
                (
                    s
                    for s in self._servers.values()
                    if not s.healthy and not s.probing and s.next_probe <= now
                ),
                None,
            )
            if due is None:
                return
            due.probing = True
        alive = False
        try:
            alive = self._probe(due.url)
        finally:
            with self._lock:
                due.probing = False
                if alive and not due.healthy:
                    self._put_back(due, "answered a health check")
                elif not alive:
                    due.probe_after = min(due.probe_after * 2, self.max_probe_after)
                    due.next_probe = self._clock() + due.probe_after

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per server: requests sent, failures, requests in flight now, and whether it is in the pool now."""
        with self._lock:
            return {
                s.url: {
                    "requests": s.requests,
                    "failures": s.failures,
                    "in_flight": s.in_flight,
                    "healthy": s.healthy,
                }
                for s in self._servers.values()
            }

    @property
    def healthy_count(self) -> int:
        with self._lock:
            return sum(s.healthy for s in self._servers.values())
