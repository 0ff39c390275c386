"""Shared pytest fixtures. Keep each fixture small and documented; add new ones below."""

from __future__ import annotations

import os

import pytest

# The tests never reach the Hugging Face Hub: models are built in code.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_vlm_path(tmp_path_factory):
    """A tiny random Qwen2-VL judge saved to a temporary folder (built once per test session, ~2 s)."""
    from arr.testing.tiny_vlm import build_tiny_qwen2vl

    return build_tiny_qwen2vl(tmp_path_factory.mktemp("tiny_qwen2vl"))


@pytest.fixture
def reward_server():
    """Start in-process reward servers: `reward_server(judge=None, token=None, **limits)` -> a started
    `RewardServer` on a free 127.0.0.1 port (pixel judge by default); all are shut down after the test."""
    from arr import RubricJudge, load_backend
    from arr.serve import RewardServer, ServeLimits

    started = []

    def start(judge=None, token=None, **limits):
        judge = judge or RubricJudge(load_backend("pixel"))
        server = RewardServer(judge, "127.0.0.1", 0, limits=ServeLimits(**limits), token=token)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.shutdown()
