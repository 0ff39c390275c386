"""bench/rpo_step.py's PhaseTimer: nested phases count once, tracked calls count wherever they happen."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "rpo_step.py"


def _timer_with_fake_clock():
    spec = importlib.util.spec_from_file_location("rpo_step_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    clock = SimpleNamespace(now=0.0)
    module.time = SimpleNamespace(perf_counter=lambda: clock.now)  # a clock that moves only when told

    def work(seconds: float):
        def run():
            clock.now += seconds

        return run

    return module.PhaseTimer(), work


def test_nested_phase_counts_once_and_track_sees_nested_calls():
    timer, work = _timer_with_fake_clock()
    inner = timer.wrap("judging", timer.track("decode", work(2.0)))

    def outer():
        work(1.0)()
        inner()  # inside "sampling": counted there, not as judging

    timer.wrap("sampling", outer)()
    inner()  # alone: judging
    assert timer.seconds == {"sampling": 3.0, "judging": 2.0, "decode": 4.0}


def test_phase_name_can_depend_on_state():
    timer, work = _timer_with_fake_clock()
    f = timer.wrap(lambda: "logprob_reference" if timer.in_reference else "logprob_policy", work(1.0))
    f()
    timer.in_reference = True
    f()
    f()
    assert timer.seconds == {"logprob_policy": 1.0, "logprob_reference": 2.0}
