"""`arr serve`: serve a rubric judge over HTTP until SIGTERM / SIGINT.

arr serve --backend pixel --port 8765
ARR_SERVE_TOKEN=... arr serve --backend pixel --host 0.0.0.0 --token-env ARR_SERVE_TOKEN
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading
from typing import Any

from arr.cli.common import CLIError, add_backend_options, judge_from_args, port_number


def register(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    p = sub.add_parser(name, help=help, description=help)
    _add_args(p)
    p.set_defaults(run=run)


def _add_args(p: argparse.ArgumentParser) -> None:
    from arr.serve_limits import ServeLimits

    add_backend_options(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=port_number, default=8765, help="port (default 8765; 0 picks a free one)")
    p.add_argument("--no-swap", action="store_true", help="pairwise: ask in the given order only")
    p.add_argument(
        "--token-env",
        metavar="NAME",
        help="environment variable holding a bearer token that every request must send "
        "(Authorization: Bearer <token>); needed to serve beyond this machine safely",
    )
    g = p.add_argument_group("limits (docs/serve.md)")
    for f in dataclasses.fields(ServeLimits):
        g.add_argument(
            "--" + f.name.replace("_", "-"),
            type=int if f.type == "int" else float,
            default=f.default,
            metavar="N" if f.type == "int" else "SECONDS",
            help=f"{f.metadata['help']} (default {f.default})",
        )


def _limits(args: argparse.Namespace) -> Any:
    from arr.serve_limits import ServeLimits

    try:
        return ServeLimits(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ServeLimits)})
    except ValueError as e:
        raise CLIError(str(e).replace("ServeLimits.", "--").replace("_", "-")) from None


def _token(args: argparse.Namespace) -> str | None:
    if args.token_env is None:
        return None
    token = os.environ.get(args.token_env, "").strip()
    if not token:
        raise CLIError(f"--token-env {args.token_env}: that environment variable is not set or empty")
    return token


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM / SIGINT; the first stderr line says where (the port matters with --port 0)."""
    from arr.serve import RewardServer

    limits, token = _limits(args), _token(args)
    judge = judge_from_args(args, swap=not args.no_swap)
    try:
        server = RewardServer(judge, args.host, args.port, limits=limits, token=token)
    except OSError as e:
        raise CLIError(f"cannot listen on {args.host}:{args.port}: {e.strerror}") from None
    # The HTTP layer warns once per malformed request or connection over the limit; on a public port that would
    # let anyone flood stderr. Its errors still show; /health counts what the server rejected.
    logging.getLogger("uvicorn").setLevel(logging.ERROR)
    stopper: list[threading.Thread] = []
    results: list[bool] = []

    def stop(signum: int, frame: Any) -> None:
        if stopper:  # a second signal: stop waiting for the requests in flight
            sys.stderr.write("arr serve: second signal, exiting now\n")
            sys.stderr.flush()
            os._exit(1)
        # shutdown() waits for the serving thread, so it runs on a thread of its own, not in the signal handler.
        stopper.append(
            threading.Thread(target=lambda: results.append(server.shutdown()), name="arr-serve-shutdown")
        )
        stopper[0].start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sys.stderr.write(
        f"arr serve: listening on http://{server.host}:{server.port} (backend {judge.backend.name})\n"
    )
    sys.stderr.flush()
    server.serve_forever()
    for t in stopper:
        t.join()  # in-flight requests finish (up to --shutdown-timeout) and the cache closes before exiting
    late = "" if all(results) else f"; a batch still judged after {limits.shutdown_timeout:g} s was abandoned"
    sys.stderr.write(f"arr serve: stopped after {server.requests} requests{late}\n")
    return 0
