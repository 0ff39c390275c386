"""Rubric scoring beyond yes/no items, on the pixel judge: penalties, ordinal criteria, judge ensembles and bootstrap
intervals."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from arr import Criterion, Rubric, RubricJudge, load_backend
from arr.backends.base import CriterionVerdict, PairVerdict
from arr.cache import image_digest
from arr.ensemble import EnsembleBackend, aggregate_criterion, aggregate_pair
from arr.rubrics import RubricParseError
from arr.shapes.pairs import make_pairs
from arr.shapes.scene import Obj, Scene, render
from arr.stats import bootstrap_ci


def count(shape, color, n=1, op="ge"):
    return {"type": "count", "shape": shape, "color": color, "n": n, "op": op}


# ---- negative weights ------------------------------------------------------------------------------------------


def test_penalty_subtracts_on_the_pixel_judge():
    rubric = Rubric(
        "a red circle",
        [
            Criterion("circle", "There is a red circle.", 1.0, check=count("circle", "red")),
            Criterion("green", "A green square is visible.", -0.5, check=count("square", "green")),
        ],
    )
    clean = render(Scene((Obj("circle", "red", 0, 0),)))
    spoiled = render(Scene((Obj("circle", "red", 0, 0), Obj("square", "green", 2, 2))))
    judge = RubricJudge(load_backend("pixel"))
    # Hand-computed: (1.0 * 1 - 0.5 * 0) / 1.0 and (1.0 * 1 - 0.5 * 1) / 1.0.
    assert judge.score(rubric.prompt, clean, rubric).score == 1.0
    assert judge.score(rubric.prompt, spoiled, rubric).score == 0.5
    assert load_backend("pixel").score_image(spoiled, rubric) == 0.5
    # A penalty alone cannot push the score below zero.
    nothing = render(Scene((Obj("square", "green", 1, 1),)))
    assert judge.score(rubric.prompt, nothing, rubric).score == 0.0
    # Pairwise, the penalised image loses in both orders.
    verdict = judge.compare(rubric.prompt, clean, spoiled, rubric)
    assert verdict.preferred == 0 and verdict.consistent


# ---- ordinal criteria ------------------------------------------------------------------------------------------


def graded_rubric() -> Rubric:
    subs = [
        count("circle", "red"),
        count("square", "blue"),
        {"type": "relation", "a": {"shape": "circle"}, "rel": "left of", "b": {"shape": "square"}},
        {
            "type": "exact_set",
            "objects": [
                {"shape": "circle", "color": "red", "count": 1},
                {"shape": "square", "color": "blue", "count": 1},
            ],
        },
    ]
    return Rubric(
        "a red circle left of a blue square",
        [
            Criterion(
                "overall",
                "Rate 1-5 how well the image matches.",
                1.0,
                check={"type": "graded", "checks": subs},
                levels=5,
            ),
            Criterion("circle", "There is a red circle.", 1.0, check=count("circle", "red")),
        ],
    )


@pytest.mark.parametrize(
    ("objects", "level"),
    [
        ((Obj("triangle", "green", 0, 0),), 1),  # nothing holds
        ((Obj("circle", "red", 0, 3),), 2),  # circle only
        ((Obj("circle", "red", 0, 3), Obj("square", "blue", 0, 0)), 4),  # wrong side
        ((Obj("circle", "red", 0, 0), Obj("square", "blue", 0, 3)), 5),  # all four
    ],
)
def test_ordinal_criterion_levels_on_the_pixel_judge(objects, level):
    rubric = graded_rubric()
    image = render(Scene(objects))
    result = RubricJudge(load_backend("pixel")).score(rubric.prompt, image, rubric)
    credit = (level - 1) / 4
    assert result.criteria["overall"] == credit
    circle = 1.0 if any(o.shape == "circle" and o.color == "red" for o in objects) else 0.0
    assert result.score == pytest.approx((credit + circle) / 2)


def test_ordinal_criterion_round_trips_and_validates():
    rubric = graded_rubric()
    again = Rubric.from_json(rubric.to_json())
    assert again.criteria[0].levels == 5 and again.criteria[1].levels is None
    assert "levels" not in rubric.criteria[1].to_dict()  # binary items serialise as before
    assert again.to_dict() == rubric.to_dict()
    assert Criterion("x", "t", levels=5).credit(4) == 0.75
    with pytest.raises(RubricParseError, match="levels must be an integer >= 2"):
        Criterion("x", "t", levels=1)
    with pytest.raises(RubricParseError, match=r"levels: expected an integer >= 2"):
        Rubric.from_dict({"prompt": "p", "criteria": [{"text": "t", "levels": "many"}]})
    bad = Rubric("p", [Criterion("x", "t", check=count("circle", "red"), levels=3)])
    verdict = RubricJudge(load_backend("pixel")).score("p", render(Scene()), bad)
    assert verdict.score is None and "graded" in verdict.errors["x"]


# ---- ensembles -------------------------------------------------------------------------------------------------


class NoisyPixel:
    """The pixel judge with each answer flipped with probability `flip`, deterministically per question.

    The noise depends on the images in the order shown, so the two orders of a pair are independent draws, as
    for a position-inconsistent VLM judge.
    """

    name = "noisy-pixel"

    def __init__(self, flip: float, seed: int) -> None:
        self.inner = load_backend("pixel")
        self.flip, self.seed = flip, seed

    def fingerprint(self) -> str:
        return f"noisy/{self.flip}/{self.seed}/{self.inner.fingerprint()}"

    def _flipped(self, *parts: str) -> bool:
        h = hashlib.sha256("|".join((str(self.seed), *parts)).encode()).digest()
        return int.from_bytes(h[:8], "big") / 2**64 < self.flip

    def judge_pairs(self, queries):
        out = []
        for q, v in zip(queries, self.inner.judge_pairs(queries), strict=True):
            if self._flipped("pair", *(image_digest(im) for im in q.images)):
                v = PairVerdict(1.0 - v.prob_first, "flipped", v.raw)
            out.append(v)
        return out

    def judge_criteria(self, queries):
        out = []
        for q, v in zip(queries, self.inner.judge_criteria(queries), strict=True):
            if self._flipped("criterion", image_digest(q.image), q.criterion.id):
                v = CriterionVerdict(1.0 - v.prob_yes, "flipped", v.raw)
            out.append(v)
        return out


def pair_correctness(backend, pairs) -> list[float]:
    """Per pair: 1 for the known winner, 0.5 for a tie or order-inconsistent verdict, 0 for the loser."""
    judge = RubricJudge(backend)
    from arr.judge import PairItem

    verdicts = judge.compare_many([PairItem(p.prompt, p.image_a, p.image_b, p.rubric) for p in pairs])
    out = []
    for p, v in zip(pairs, verdicts, strict=True):
        want = 0 if p.winner == "A" else 1
        out.append(0.5 if v.preferred is None else float(v.preferred == want))
    return out


@pytest.fixture(scope="module")
def pairs():
    return make_pairs(80, seed=3, split="heldout", task="t2i")


def test_ensemble_of_pixel_and_noisy_copy_beats_the_noisy_copy(pairs):
    noisy = NoisyPixel(flip=0.35, seed=1)
    alone = pair_correctness(noisy, pairs)
    ensemble = pair_correctness(EnsembleBackend([load_backend("pixel"), noisy], "mean"), pairs)
    exact = pair_correctness(load_backend("pixel"), pairs)
    assert np.mean(exact) == 1.0
    assert np.mean(ensemble) > np.mean(alone)
    # The exact member turns every wrong verdict into a tie: per pair, the ensemble is never worse.
    diff = [e - a for e, a in zip(ensemble, alone, strict=True)]
    assert min(diff) >= 0.0
    assert bootstrap_ci(diff, n=2000).low > 0.0


def test_majority_of_noisy_copies_beats_one_noisy_copy(pairs):
    copies = [NoisyPixel(flip=0.3, seed=s) for s in (1, 2, 3)]
    single = [np.mean(pair_correctness(c, pairs)) for c in copies]
    majority = np.mean(pair_correctness(EnsembleBackend(copies, "majority"), pairs))
    assert majority > max(single)


def test_ensemble_aggregations_hand_computed():
    assert aggregate_criterion([1.0, 0.0, 0.5], "mean") == 0.5
    assert aggregate_criterion([0.9, 0.6, 0.2], "majority") == 1.0
    # 0.5 abstains, leaving one vote each: a tie goes to the worse outcome, "does not hold" (more in test_ensemble.py).
    assert aggregate_criterion([0.9, 0.2, 0.5], "majority") == 0.0
    assert aggregate_criterion([0.9, 0.6, 0.2], "min") == 0.2
    # min for pairs: Image 1's least support 0.6, Image 2's least support 1 - 0.9 = 0.1 -> 0.6 / 0.7.
    assert aggregate_pair([0.9, 0.6], "min") == pytest.approx(0.6 / 0.7)
    # ... and swapping the order gives the complement (no position dependence).
    assert aggregate_pair([0.1, 0.4], "min") == pytest.approx(1 - 0.6 / 0.7)
    with pytest.raises(ValueError, match="expected one of"):
        EnsembleBackend([load_backend("pixel")], "median")
    with pytest.raises(TypeError, match="member 1"):
        EnsembleBackend([load_backend("pixel"), object()])


def test_ensemble_min_answers_and_fingerprint():
    class Down:
        name = "down"

        def fingerprint(self):
            return "down"

        def judge_pairs(self, queries):
            return [PairVerdict(None, error="HTTP 503") for _ in queries]

        def judge_criteria(self, queries):
            return [CriterionVerdict(None, error="HTTP 503") for _ in queries]

    rubric = Rubric("a red circle", [Criterion("c", "red circle", check=count("circle", "red"))])
    image = render(Scene((Obj("circle", "red", 1, 1),)))
    lenient = RubricJudge(EnsembleBackend([load_backend("pixel"), Down()]))
    assert lenient.score(rubric.prompt, image, rubric).score == 1.0
    strict = RubricJudge(EnsembleBackend([load_backend("pixel"), Down()], min_answers=2))
    result = strict.score(rubric.prompt, image, rubric)
    assert result.score is None and "1 of 2 members answered" in result.errors["c"]
    a = EnsembleBackend([load_backend("pixel")], "mean").fingerprint()
    assert a != EnsembleBackend([load_backend("pixel")], "min").fingerprint()
    assert load_backend("pixel").fingerprint() in a


# ---- bootstrap confidence intervals ----------------------------------------------------------------------------


def test_bootstrap_ci_hand_computed():
    # Means of 4 draws from {0, 0, 1, 1}: P(0) = P(1) = 1/16 > 2.5%, so the 95% interval is [0, 1] ...
    ci = bootstrap_ci([0, 0, 1, 1], n=20000)
    assert (ci.value, ci.low, ci.high) == (0.5, 0.0, 1.0)
    # ... while P(mean <= 0.25) = 5/16 > 10%, so the 80% interval is [0.25, 0.75].
    ci80 = bootstrap_ci([0, 0, 1, 1], n=20000, alpha=0.2)
    assert (ci80.low, ci80.high) == (0.25, 0.75)
    assert bootstrap_ci([0.7] * 5).low == bootstrap_ci([0.7] * 5).high == pytest.approx(0.7)
    assert bootstrap_ci([1, None, 0], n=10).n == 2


def test_bootstrap_ci_properties():
    rng = np.random.default_rng(0)
    values = rng.random(200)
    ci = bootstrap_ci(values, seed=5)
    assert ci.low < ci.value < ci.high
    assert ci == bootstrap_ci(values, seed=5)  # seeded: reproducible
    wide = bootstrap_ci(values[:20], seed=5)
    assert wide.high - wide.low > ci.high - ci.low  # fewer values, wider interval
    med = bootstrap_ci(values, stat=lambda v: float(np.median(v)), n=300)
    assert med.value == pytest.approx(float(np.median(values)))
    assert med.low <= med.value <= med.high
    for bad, msg in (([], "no values"), ([None], "no values"), ([float("nan")], "finite")):
        with pytest.raises(ValueError, match=msg):
            bootstrap_ci(bad)
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci([1.0], alpha=1.5)


# ---- few-shot calibration examples -----------------------------------------------------------------------------


def test_few_shot_examples_render_into_the_chat_prompt():
    from arr.backends.chat import ChatBackend, ChatResult
    from arr.backends.fewshot import CriterionExample, FewShotBackend, PairExample

    class Recording(ChatBackend):
        name = "recording"

        def __init__(self):
            self.requests = []

        def fingerprint(self):
            return "recording/v1"

        def _chat(self, requests):
            self.requests.extend(requests)
            return [
                ChatResult(text="yes: fine" if r.kind == "criterion" else '{"rank": [2, 1]}')
                for r in requests
            ]

    red = render(Scene((Obj("square", "red", 0, 0),)))
    blue = render(Scene((Obj("square", "blue", 0, 0),)))
    inner = Recording()
    backend = FewShotBackend(
        inner,
        [
            CriterionExample(
                blue, "The square is red.", holds=False, reason="it is blue", prompt="a red square"
            ),
            PairExample(red, blue, better=1, reason="Image 2 is blue", prompt="a red square"),
        ],
    )
    rubric = Rubric("a red square", [Criterion("c", "The square is red.")])
    judge = RubricJudge(backend, swap=False)
    assert judge.score(rubric.prompt, red, rubric).score == 1.0
    assert (
        judge.compare(rubric.prompt, red, blue, rubric).preferred == 1
    )  # the scripted answer ranks Image 2 first
    crit, pair = inner.requests
    roles = [m["role"] for m in crit.messages]
    assert roles == ["system", "user", "assistant", "user"]
    assert crit.messages[2]["content"][0]["text"] == "no: it is blue"
    assert [p["image"] for p in crit.messages[1]["content"] if p["type"] == "image"] == [blue]
    assert crit.images == [blue, red]  # the example's image, then the question's
    assert [m["role"] for m in pair.messages] == ["system", "user", "assistant", "user"]
    assert json.loads(pair.messages[2]["content"][0]["text"]) == {"rank": [1, 2], "reason": "Image 2 is blue"}
    # Examples change answers, so they change the fingerprint (and the cache keys).
    assert backend.fingerprint().startswith("recording/v1|fewshot=")
    other = FewShotBackend(inner, [CriterionExample(blue, "The square is red.", holds=True)])
    assert other.fingerprint() != backend.fingerprint()
    with pytest.raises(TypeError, match="wraps a chat judge"):
        FewShotBackend(load_backend("pixel"), [])
