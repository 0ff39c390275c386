"""bench/rpo_step.py's PhaseTimer: nested phases count once, tracked calls count wherever they happen."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "rpo_step.py"


def _timer():
    spec = importlib.util.spec_from_file_location("rpo_step_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PhaseTimer()


def test_nested_phase_counts_once_and_track_sees_nested_calls():
    timer = _timer()
    inner = timer.wrap("judging", timer.track("decode", lambda: time.sleep(0.02)))

    def outer():
        time.sleep(0.02)
        inner()  # inside "sampling": counted there, not as judging

    timer.wrap("sampling", outer)()
    inner()  # alone: judging
    s = timer.seconds
    assert 0.04 <= s["sampling"] < 0.2
    assert 0.02 <= s["judging"] < 0.1  # only the lone call
    assert 0.04 <= s["decode"] < 0.2  # both calls, nested or not


def test_phase_name_can_depend_on_state():
    timer = _timer()
    f = timer.wrap(lambda: "logprob_reference" if timer.in_reference else "logprob_policy", lambda: None)
    f()
    timer.in_reference = True
    f()
    assert set(timer.seconds) == {"logprob_policy", "logprob_reference"}
