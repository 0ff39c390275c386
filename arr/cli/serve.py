"""`arr serve`: serve a rubric judge over HTTP until SIGTERM / SIGINT.

arr serve --backend pixel --port 8765
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

from arr.cli.common import CLIError, add_backend_options, backend_from_args


def register(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    p = sub.add_parser(name, help=help, description=help)
    _add_args(p)
    p.set_defaults(run=run)


def _add_args(p: argparse.ArgumentParser) -> None:
    add_backend_options(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    p.add_argument("--no-swap", action="store_true", help="pairwise: ask in the given order only")


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM / SIGINT; the first stderr line says where (the port matters with --port 0)."""
    from arr.judge import RubricJudge
    from arr.serve import RewardServer

    judge = RubricJudge(backend_from_args(args), cache=args.cache, swap=not args.no_swap)
    try:
        server = RewardServer(judge, args.host, args.port)
    except OSError as e:
        raise CLIError(f"cannot listen on {args.host}:{args.port}: {e.strerror}") from None
    stopper: list[threading.Thread] = []

    def stop(signum: int, frame: Any) -> None:
        # shutdown() waits for serve_forever to return, so it cannot run on the thread that is serving.
        if not stopper:
            stopper.append(threading.Thread(target=server.shutdown, name="arr-serve-shutdown"))
            stopper[0].start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sys.stderr.write(
        f"arr serve: listening on http://{server.host}:{server.port} (backend {judge.backend.name})\n"
    )
    sys.stderr.flush()
    server.serve_forever()
    for t in stopper:
        t.join()  # in-flight requests finish and the cache closes before the process exits
    sys.stderr.write(f"arr serve: stopped after {server.requests} requests\n")
    return 0
