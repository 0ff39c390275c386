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
