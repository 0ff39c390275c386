"""`ServeLimits`: what one request may ask of the reward server (arr/serve.py), and how long anything may take.

A module of its own, free of the HTTP stack, so that the command line can build its options from these fields
without importing uvicorn and starlette (`arr --help` stays fast).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

__all__ = ["ServeLimits"]


@dataclass
class ServeLimits:
    """What one request may ask of the server, and how long anything may take. Every limit is checked before any
    image is decoded or any question asked; a request over a limit gets HTTP 400 (413 for the body) naming it.

    Memory: a request waiting for the judge holds its compressed images (under `max_body_bytes`); only the request
    being judged holds decoded pixels (3 bytes each). So the server needs about `max_queue * max_body_bytes +
    3 * max_pixels` bytes at most: 2 GB with the defaults, which take a batch of 64 images of 512x512 (or 16 of
    1024x1024) per request and 64 requests at once.
    """

    max_body_bytes: int = field(default=32 * 1024 * 1024, metadata={"help": "bytes of one request body"})
    max_items: int = field(
        default=1024, metadata={"help": "images (or pairs) per request; for /group, images over all groups"}
    )
    max_criteria: int = field(
        default=64,
        metadata={"help": "criteria per rubric (pointwise scoring asks one question per criterion)"},
    )
    max_pixels: int = field(
        default=16 * 1024 * 1024,
        metadata={"help": "decoded pixels per request, all images and sources together"},
    )
    max_group_size: int = field(
        default=16, metadata={"help": "images per /group group (every pair is judged: G*(G-1) questions)"}
    )
    max_json_depth: int = field(default=32, metadata={"help": "nesting depth of the JSON body"})
    max_queue: int = field(
        default=64,
        metadata={
            "help": "requests in the server at once (read, waiting or judged); more get 503 + Retry-After"
        },
    )
    request_timeout: float = field(
        default=300.0, metadata={"help": "seconds from a request's arrival to its answer; later gets 504"}
    )
    read_timeout: float = field(
        default=60.0,
        metadata={"help": "seconds a client has to send its whole request (slow clients are cut off)"},
    )
    shutdown_timeout: float = field(
        default=30.0, metadata={"help": "seconds the requests in flight get after SIGTERM / SIGINT"}
    )
    max_connections: int = field(
        default=1024, metadata={"help": "open connections; beyond it new requests get 503"}
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"ServeLimits.{f.name} must be a number, got {value!r}")
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"ServeLimits.{f.name} must be a positive finite number, got {value!r}")
            if f.type == "int" and not isinstance(value, int):
                raise ValueError(f"ServeLimits.{f.name} must be a whole number, got {value!r}")
        if self.max_group_size < 2:
            raise ValueError(f"ServeLimits.max_group_size must be >= 2 (a pair), got {self.max_group_size}")
