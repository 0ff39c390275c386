"""Judge evaluation (arr/evaluation/preference.py): accuracy against ground truth, position-flip rate of a judge
with a known bias, swap-consistent ties, loaders for the three pair schemas, cost counting and the report."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from arr import load_backend
from arr.backends.base import PairVerdict
from arr.backends.chat import ChatBackend, ChatResult
from arr.evaluation.preference import binomial_stderr, evaluate_config, evaluate_preference
from arr.evaluation.preference_benchmarks import (
    load_editreward_bench,
    load_hpdv3,
    load_mmrb2,
    load_preference_suite,
)
from arr.evaluation.preference_report import write_report
from arr.judge import PairItem, RubricJudge
from arr.rubrics import GuideCategory
from arr.shapes.pairs import make_pairs

EVAL = Path(__file__).resolve().parents[1] / "eval"


class FirstBiased:
    """Wraps a judge: with probability `p` (seeded) it prefers whatever image is shown first, else asks `inner`."""

    name = "first-biased"

    def __init__(self, inner, p: float, seed: int = 0) -> None:
        self.inner, self.p, self.rng = inner, p, random.Random(seed)

    def fingerprint(self) -> str:
        return f"first-biased/{self.p}/{self.inner.fingerprint()}"

    def judge_pairs(self, queries):
        honest = self.inner.judge_pairs(queries)
        return [PairVerdict(1.0, reason="first") if self.rng.random() < self.p else v for v in honest]

    def judge_criteria(self, queries):
        return self.inner.judge_criteria(queries)


@pytest.fixture(scope="module")
def shapes_pairs():
    return make_pairs(200, seed=5, task="both")


def test_pixel_judge_accuracy_equals_ground_truth(shapes_pairs):
    result = evaluate_preference(shapes_pairs, load_backend("pixel"), configs=["rubric"])
    m = result["configs"]["rubric"]
    # Labels are right by construction and the pixel judge is exact on exact renders.
    assert m["n"] == 200 and m["accuracy"] == 1.0 and m["single_order_accuracy"] == 1.0
    assert m["flip_rate"] == 0.0 and m["tie_rate"] == 0.0 and m["failure_rate"] == 0.0
    assert all(c["accuracy"] == 1.0 for c in m["categories"].values())
    assert sum(c["n"] for c in m["categories"].values()) == 200
    assert (
        m["cost"]["calls"] == 400 and m["cost"]["prompt_tokens"] is None
    )  # both orders; pixel counts no tokens
    assert result["skipped"] == {} or "rubric+guide" not in result["configs"]


def test_position_bias_gives_expected_flip_rate(shapes_pairs):
    p = 0.3
    biased = FirstBiased(load_backend("pixel"), p, seed=1)
    m = evaluate_config(shapes_pairs, biased, "rubric")
    n = len(shapes_pairs)
    # A truthful judge that answers "first" with probability p flips exactly when the bias strikes in the order
    # that shows the loser first: probability p per pair.
    assert abs(m["flip_rate"] - p) < 4 * binomial_stderr(p, n)
    # Swap-consistent judging turns every flip into a tie and keeps every other verdict right.
    assert m["tie_rate"] == m["flip_rate"]
    assert m["accuracy"] == pytest.approx(1 - m["flip_rate"])
    assert m["single_order_accuracy"] == pytest.approx(1 - m["flip_rate"] / 2)

    judge = RubricJudge(FirstBiased(load_backend("pixel"), p, seed=2), swap=True)
    js = judge.compare_many(
        [PairItem(q.prompt, q.image_a, q.image_b, q.rubric, q.source) for q in shapes_pairs]
    )
    ties = sum(j.preferred is None for j in js)
    wrong = sum(
        j.preferred is not None and j.preferred != (0 if q.winner == "A" else 1)
        for j, q in zip(js, shapes_pairs, strict=True)
    )
    assert wrong == 0 and abs(ties / n - p) < 4 * binomial_stderr(p, n)


def test_plain_and_guide_configurations(shapes_pairs):
    pairs = shapes_pairs[:20]
    guide = [GuideCategory("Objects and counts", ["count every object"])]
    result = evaluate_preference(pairs, load_backend("pixel"), guide=guide)
    assert set(result["configs"]) == {"rubric", "rubric+guide"}
    # The pixel judge needs checkable criteria: it cannot judge the plain configuration at all, so that
    # configuration is skipped with the reason, not reported as an accuracy of 0.
    assert "plain" not in result["configs"]
    assert result["skipped"]["plain"].startswith("the pixel judge could not judge any pair")
    assert "no criterion the pixel judge can evaluate" in result["skipped"]["plain"]
    assert result["configs"]["rubric+guide"]["accuracy"] == 1.0
    no_guide = evaluate_preference(pairs, load_backend("pixel"), configs=["rubric", "rubric+guide"])
    assert "rubric+guide" in no_guide["skipped"] and "rubric+guide" not in no_guide["configs"]


class CountingChat(ChatBackend):
    """A chat judge that always ranks Image 1 first and reports 10 prompt + 3 completion tokens per answer."""

    name = "counting"

    def fingerprint(self) -> str:
        return "counting/v1"

    def _chat(self, requests):
        return [
            ChatResult(text='{"rank": [1, 2], "reason": "first"}', prompt_tokens=10, completion_tokens=3)
            for _ in requests
        ]


def test_chat_judge_cost_and_pure_position_bias(shapes_pairs):
    m = evaluate_config(shapes_pairs[:10], CountingChat(), "plain")
    assert m["flip_rate"] == 1.0 and m["accuracy"] == 0.0 and m["tie_rate"] == 1.0
    assert m["single_order_accuracy"] == 0.5
    assert (
        m["cost"]["calls"] == 20
        and m["cost"]["prompt_tokens"] == 200
        and m["cost"]["completion_tokens"] == 60
    )


def test_load_mmrb2_fixture():
    t2i = load_mmrb2(EVAL / "data/mmrb2_sample/t2i.json")
    assert len(t2i) == 6 and all(p.task == "t2i" and p.source is None for p in t2i)
    assert {p.winner for p in t2i} <= {"A", "B"} and all(p.prompt for p in t2i)
    edit = load_mmrb2(EVAL / "data/mmrb2_sample/edit.json", limit=3)
    assert len(edit) == 3 and all(p.task == "edit" and p.source is not None for p in edit)
    raw = json.loads((EVAL / "data/mmrb2_sample/t2i.json").read_text())["pairs"][0]
    assert t2i[0].winner == raw["chosen"] and t2i[0].category == raw["prompt_metadata"]["category"]


def test_load_editreward_fixture_skips_ties():
    pairs, ties = load_editreward_bench(EVAL / "data/editreward_sample/records.jsonl")
    assert len(pairs) == 6 and ties == 1
    assert all(p.task == "edit" and p.source is not None for p in pairs)
    none, _ = load_editreward_bench(EVAL / "data/editreward_sample/records.jsonl", subset="3pair")
    assert none == []


def test_load_hpdv3_positions(tmp_path):
    pairs = load_hpdv3(EVAL / "data/shapes_pairs_sample/pairs.json")
    records = json.loads((EVAL / "data/shapes_pairs_sample/pairs.json").read_text())
    assert [p.winner for p in pairs] == [r["position"] for r in records]
    # Real HPDv3 files always list the winner first (path1): positions come from a hash, both occur, stably.
    stripped = [{k: v for k, v in r.items() if k != "position"} for r in records] * 4
    for i, r in enumerate(stripped):
        r["prompt"] = f"{r['prompt']} #{i}"
    (tmp_path / "images").symlink_to(EVAL / "data/shapes_pairs_sample/images")
    (tmp_path / "test.json").write_text(json.dumps(stripped))
    loaded = load_hpdv3(tmp_path / "test.json")
    assert {p.winner for p in loaded} == {"A", "B"}
    assert [p.winner for p in loaded] == [p.winner for p in load_hpdv3(tmp_path / "test.json")]
    for p in loaded:
        assert (p.image_a if p.winner == "A" else p.image_b).tobytes() == p.chosen.tobytes()
    with pytest.raises(ValueError, match="path1"):
        (tmp_path / "bad.json").write_text(json.dumps([{"prompt": "x"}]))
        load_hpdv3(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="does not exist"):
        load_hpdv3(tmp_path / "missing.json")


def test_suite_and_report(tmp_path):
    suite, pairs, ties = load_preference_suite(EVAL / "editreward_sample.yaml")
    assert suite["schema"] == "editreward" and len(pairs) == 6 and ties == 1
    result = evaluate_preference(pairs, CountingChat(), configs=["plain"])
    json_path, html_path = write_report(result, tmp_path, "test")
    assert json.loads(json_path.read_text())["configs"]["plain"]["n"] == 6
    page = html_path.read_text()
    assert "<svg" in page and "flip rate" in page and "Per category" in page
    assert ">fraction of pairs<" in page and ">judge configuration<" in page  # the chart's axes are labelled
    assert (
        "<div class='v'>0.000</div><div class='k'>accuracy (plain)</div>" in page
    )  # a real 0: every pair flips


def test_report_headlines_a_skipped_configuration_as_skipped(tmp_path):
    result = evaluate_preference(
        make_pairs(6, seed=3, task="t2i"), load_backend("pixel"), configs=["plain", "rubric"]
    )
    assert set(result["configs"]) == {"rubric"} and set(result["skipped"]) == {"plain"}
    page = write_report(result, tmp_path, "test")[1].read_text()
    assert "<div class='v'>skipped</div><div class='k'>accuracy (plain)</div>" in page
    assert "accuracy (plain)</div>" in page and "0.000</div><div class='k'>accuracy (plain)" not in page
    assert "no criterion the pixel judge can evaluate" in page
