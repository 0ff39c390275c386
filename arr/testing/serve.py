"""Run `transformers serve` on a local model folder as a real OpenAI-compatible server (tests, benchmarks).

    with TransformersServer(model_dir) as server:        # starts, waits for /health
        backend = OpenAIBackend(str(model_dir), base_url=server.base_url)

Needs `pip install 'transformers[serving]'`. The server gets `--trust-remote-code` because the tiny test model's
processor is a local subclass (arr/testing/tiny_qwen2vl_processor.py); only point it at folders you built.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the usual bind-to-0 trick)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def transformers_cli() -> str | None:
    """The `transformers` console script of this Python environment, or None when it is not installed."""
    beside = Path(sys.executable).parent / "transformers"
    if beside.exists():
        return str(beside)
    return shutil.which("transformers")


class TransformersServer:
    """A `transformers serve` subprocess in its own process group, with its log in a file."""

    def __init__(
        self,
        model_dir: str | Path,
        host: str = "127.0.0.1",
        port: int | None = None,
        log_path: str | Path | None = None,
        ready_timeout: float = 180.0,
    ) -> None:
        cli = transformers_cli()
        if cli is None:
            raise FileNotFoundError(
                "`transformers` CLI not found; install it with pip install 'transformers[serving]'"
            )
        self.model_dir = str(model_dir)
        self.host = host
        self.port = port or free_port(host)
        self.ready_timeout = ready_timeout
        self.log_path = (
            Path(log_path)
            if log_path
            else Path(tempfile.mkstemp(prefix="transformers-serve-", suffix=".log")[1])
        )
        self._cmd = [
            cli, "serve", "--host", host, "--port", str(self.port), "--device", "cpu", "--trust-remote-code",
            self.model_dir,
        ]  # fmt: skip
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> TransformersServer:
        env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_WAIT_POLICY="PASSIVE")
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self._cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        return self

    def wait_ready(self, timeout: float | None = None) -> None:
        """Poll /health until it answers 200; fail with the log's tail if the server dies or takes too long."""
        deadline = time.monotonic() + (timeout or self.ready_timeout)
        url = f"http://{self.host}:{self.port}/health"
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"transformers serve exited early:\n{self.log_tail()}")
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(
            f"transformers serve not ready at {url} after {timeout or self.ready_timeout} s:\n{self.log_tail()}"
        )

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """Stop at once (SIGKILL to the server's process group): what a crash looks like to clients."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        """Stop gracefully (SIGTERM), killing the process group if it has not exited after 10 s."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()

    def __enter__(self) -> TransformersServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.kill()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
