"""Small HTTP clients for the reward server tests: JSON over urllib, and raw bytes over a socket for framing
attacks that no well-behaved client library would send."""

from __future__ import annotations

import json
import re
import socket
import urllib.error
import urllib.request


def post(url: str, body: dict, timeout: float = 30.0, headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def get(url: str, timeout: float = 10.0, headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def raw_exchange(port: int, data: bytes, timeout: float = 10.0, wait_close: bool = True) -> bytes:
    """Send raw bytes, then read until the server closes the connection (or `timeout`, which raises)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if not wait_close:
            sock.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
        return out


def responses(raw: bytes) -> list[tuple[int, dict | None]]:
    """(status, JSON body or None) of every HTTP response in `raw`, in order."""
    out = []
    pos = 0
    while (m := re.compile(rb"HTTP/1\.[01] (\d{3}) [^\r\n]*\r\n").search(raw, pos)) is not None:
        head_end = raw.index(b"\r\n\r\n", m.end()) + 4
        length = re.search(rb"(?i)content-length: *(\d+)", raw[m.start() : head_end])
        body = raw[head_end : head_end + int(length.group(1))] if length else b""
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        out.append((int(m.group(1)), parsed))
        pos = head_end + len(body)
    return out
