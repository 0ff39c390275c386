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
def unwritable_dir(tmp_path):
    """A folder this process cannot write to: a read-only folder, or, for root (whom permission bits do not stop),
    a read-only file system such as Linux's /sys. Skips where neither exists."""
    import tempfile
    from pathlib import Path

    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    found = None
    for candidate in (read_only, Path("/sys")):
        try:
            fd, probe = tempfile.mkstemp(dir=candidate)
        except OSError:
            found = candidate
            break
        os.close(fd)
        os.unlink(probe)
    try:
        if found is None:
            pytest.skip("no unwritable folder on this machine")
        yield found
    finally:
        read_only.chmod(0o755)


@pytest.fixture
def run_cli(capsys):
    """Run `arr ARGS...` in this process: (exit code, stdout, stderr). argparse's exits count as exit codes."""
    from arr.cli import main

    def run(*argv: str) -> tuple[int, str, str]:
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
