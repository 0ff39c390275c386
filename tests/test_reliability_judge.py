"""Judge faults: the openai backend against a fault-injecting server (arr/testing/faulty_server.py) retries what
looks like transport trouble, masks what cannot be read, and RPO training keeps going, reports the masked fraction,
or stops with a clear message and a checkpoint from which a resumed run loses nothing.

The server answers with canned verdicts from the images' pixels (BrightnessBackend's rule), so a fault-free run
through HTTP must equal a run with BrightnessBackend called directly.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from arr import RubricJudge
from arr.backends.chat import JudgeUnavailableError
from arr.backends.openai import OpenAIBackend
from arr.rewards import RubricPairwiseReward
from arr.rpo import RPOTrainer, TrainingStopped
from arr.rpo.trainer import TrainerCallback
from arr.rubrics import Criterion, Rubric
from arr.shapes.training import t2i_records
from arr.testing.faulty_server import FAULTS, RETRYABLE, FaultyJudgeServer
from tests.conftest import TIMING, make_args, read_rows, tiny_policy
from tests.fakes import BrightnessBackend, grey

RUBRIC = Rubric("a bright square", [Criterion("c1", "the square is bright")])
NON_RETRYABLE = sorted(set(FAULTS) - RETRYABLE)


def backend(server: FaultyJudgeServer, **kw) -> OpenAIBackend:
    opts = dict(timeout=0.3, backoff=0.01, max_retries=4, max_concurrency=8)
    opts.update(kw)
    return OpenAIBackend("canned", base_url=server.base_url, **opts)


# ---- one request, one fault ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", FAULTS)
def test_each_fault_is_retried_or_masked(faulty_judge_server, fault):
    judge = RubricJudge(backend(faulty_judge_server, max_concurrency=1), swap=False)
    faulty_judge_server.queue_faults([fault])  # the first attempt fails this way, a second one would succeed
    jd = judge.compare("a bright square", grey(200), grey(100), RUBRIC)
    attempts = sum(faulty_judge_server.counts.values())
    if fault in RETRYABLE:
        assert jd.ok and jd.preferred == 0, jd.error
        assert attempts == 2 and faulty_judge_server.counts["ok"] == 1
    else:  # an HTTP 200 that is no verdict: a deterministic judge would say it again, so it is masked at once
        assert not jd.ok and jd.preferred is None and jd.error
        assert attempts == 1
    assert judge.stats.failures == (0 if fault in RETRYABLE else 1)


def test_retries_give_up_with_a_message_naming_the_server(faulty_judge_server):
    judge = RubricJudge(backend(faulty_judge_server, max_retries=2, max_concurrency=1), swap=False)
    faulty_judge_server.queue_faults(["http_503"] * 3)
    jd = judge.compare("p", grey(200), grey(100), RUBRIC)
    assert (
        not jd.ok
        and "HTTP 503" in jd.error
        and faulty_judge_server.base_url in jd.error
        and "3 attempts" in jd.error
    )
    faulty_judge_server.queue_faults(
        ["drop"] * 3
    )  # every request of the batch unreachable: the server is down
    with pytest.raises(JudgeUnavailableError, match="unreachable"):
        judge.compare("p", grey(200), grey(100), RUBRIC)


def test_fault_draws_are_deterministic_and_near_the_rate():
    with FaultyJudgeServer(fault_rate=0.2, faults=["http_500"], seed=3) as s:
        judge = RubricJudge(backend(s, max_retries=6), swap=True)
        items = [(grey(10 * i), grey(10 * i + 5)) for i in range(20)]
        for a, b in items:
            assert judge.compare("p", a, b, RUBRIC).preferred == 1  # every fault retried away
        first = dict(s.counts)
    with FaultyJudgeServer(fault_rate=0.2, faults=["http_500"], seed=3) as s:
        judge = RubricJudge(backend(s, max_retries=6, max_concurrency=1), swap=True)
        for a, b in items:
            judge.compare("p", a, b, RUBRIC)
        assert dict(s.counts) == first  # same faults whatever the thread scheduling
    assert first["ok"] == 40 and 0.1 < first["http_500"] / 50 < 0.35, first


# ---- training ---------------------------------------------------------------------------------------------------


def _train(tmp_path: Path, name: str, judge_backend, steps: int = 4, callbacks=(), **kw) -> list[dict]:
    args = make_args(tmp_path, output_dir=str(tmp_path / name), max_steps=steps, **kw)
    trainer = RPOTrainer(
        tiny_policy(),
        RubricPairwiseReward(RubricJudge(judge_backend)),
        args,
        t2i_records(16, "train"),
        callbacks=callbacks,
    )
    trainer.train()
    return read_rows(Path(args.output_dir))


def _same_rows(a: list[dict], b: list[dict]) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert set(ra) == set(rb)
        for k in ra:
            if k not in TIMING:
                assert ra[k] == pytest.approx(rb[k], rel=1e-6, abs=1e-9), (ra["step"], k)


def test_http_judge_without_faults_equals_the_direct_judge(tmp_path, faulty_judge_server):
    direct = _train(tmp_path, "direct", BrightnessBackend(), steps=2)
    http = _train(tmp_path, "http", backend(faulty_judge_server), steps=2)
    _same_rows(direct, http)
    assert faulty_judge_server.counts == {"ok": 2 * 4 * 2}  # steps x pairs x both orders


def test_training_with_20pct_retryable_faults_loses_nothing(tmp_path):
    """Timeouts, 429, 5xx, dropped and cut connections at 20% of attempts: retries recover every judgment."""
    direct = _train(tmp_path, "direct", BrightnessBackend())
    with FaultyJudgeServer(fault_rate=0.2, faults=sorted(RETRYABLE), seed=1, hang_seconds=0.8) as s:
        rows = _train(tmp_path, "faulty", backend(s))
        counts = dict(s.counts)
    _same_rows(direct, rows)
    assert all(r["masked_frac"] == 0.0 for r in rows)
    faulty = sum(v for k, v in counts.items() if k != "ok")
    assert counts["ok"] == 4 * 4 * 2 and faulty >= 3, counts


def test_training_with_20pct_mixed_faults_masks_and_reports(tmp_path, caplog):
    """All fault kinds at 20%: unreadable answers are masked, counted in metrics.jsonl, and training completes."""
    with FaultyJudgeServer(fault_rate=0.2, seed=2, hang_seconds=0.8) as s:
        with caplog.at_level(logging.WARNING):
            rows = _train(tmp_path, "faulty", backend(s), steps=6, max_judge_failure_rate=0.9)
        counts = dict(s.counts)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    # G = 2: one pair per group, and a failed pair (either order) masks both of its samples.
    for r in rows:
        assert r["masked_frac"] == pytest.approx(r["reward/judge_failure_rate"])
    failed_pairs = sum(round(r["masked_frac"] * 4) for r in rows)
    unreadable = sum(counts.get(k, 0) for k in NON_RETRYABLE)
    assert 0 < failed_pairs <= unreadable, (failed_pairs, counts)
    assert any(counts.get(k, 0) for k in RETRYABLE)


class _BreakServerAfter(TrainerCallback):
    """Turns every later answer into a refusal once `step` is logged: the judge goes bad mid-run."""

    def __init__(self, server: FaultyJudgeServer, step: int) -> None:
        self.server, self.step = server, step

    def on_step_end(self, trainer, step, metrics):
        if step == self.step:
            self.server.fault_rate = 1.0
            self.server.faults = ("refusal", "empty", "malformed_json")


def test_failure_rate_over_the_limit_stops_with_a_checkpoint_and_resume_loses_nothing(
    tmp_path, faulty_judge_server
):
    direct = _train(tmp_path, "direct", BrightnessBackend())
    with pytest.raises(
        TrainingStopped, match=r"step 3: 100% of samples got no judgment.*max_judge_failure_rate"
    ):
        _train(
            tmp_path,
            "run",
            backend(faulty_judge_server),
            callbacks=[_BreakServerAfter(faulty_judge_server, 2)],
            save_steps=100,
        )
    ckpt = tmp_path / "run" / "checkpoints" / "step_2"
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "README.md", "lora.safetensors", "optimizer.bin", "pytorch_lora_weights.safetensors",
        "random_states_0.pkl", "scheduler.bin", "trainer_state.json",
    ]  # fmt: skip
    faulty_judge_server.fault_rate = 0.0  # the judge is fixed; resume
    rows = _train(
        tmp_path, "run", backend(faulty_judge_server), resume_from_checkpoint="latest", save_steps=100
    )
    _same_rows(direct, rows)


def test_judge_server_down_stops_with_a_checkpoint(tmp_path, faulty_judge_server):
    with pytest.raises(TrainingStopped, match="max_judge_failure_rate"):
        _train(
            tmp_path,
            "run",
            backend(faulty_judge_server, max_retries=1),
            callbacks=[_Down(faulty_judge_server, 2)],
            save_steps=100,
        )
    assert (tmp_path / "run" / "checkpoints" / "step_2" / "trainer_state.json").is_file()


class _Down(TrainerCallback):
    def __init__(self, server: FaultyJudgeServer, step: int) -> None:
        self.server, self.step = server, step

    def on_step_end(self, trainer, step, metrics):
        if step == self.step:
            self.server.fault_rate = 1.0
            self.server.faults = ("drop",)
