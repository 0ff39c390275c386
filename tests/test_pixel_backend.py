"""The pixel judge backend: protocol, per-criterion verdicts, pairwise preferences, scores and features."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import ImageDraw

import arr
from arr.backends import CriterionQuery, JudgeBackend, PairQuery
from arr.backends.pixel import FEATURE_NAMES, PixelBackend
from arr.rubrics import Criterion, Rubric
from arr.shapes.prompts import ObjectSpec, PromptSpec
from arr.shapes.rubrics import rubric_for_prompt
from arr.shapes.scene import PALETTE, Obj, Scene, render

SPEC = PromptSpec("position", (ObjectSpec("circle", "red"), ObjectSpec("square", "blue")), "left of")
GOOD = render(Scene((Obj("circle", "red", 1, 0), Obj("square", "blue", 2, 2))))
SWAPPED = render(Scene((Obj("circle", "red", 2, 2), Obj("square", "blue", 1, 0))))  # relation fails
EXTRA = render(
    Scene((Obj("circle", "red", 1, 0), Obj("square", "blue", 2, 2), Obj("triangle", "green", 0, 3)))
)


def test_protocol_registry_and_fingerprint():
    backend = arr.load_backend("pixel")
    assert isinstance(backend, JudgeBackend) and isinstance(backend, PixelBackend)
    assert backend.name == "pixel"
    assert backend.fingerprint() == "pixel/v1/strict"
    assert PixelBackend(strict=False).fingerprint() == "pixel/v1/lenient"


def test_judge_criteria_gives_certain_verdicts_and_cannot_assess_without_checks():
    rubric = rubric_for_prompt(SPEC)
    by_id = {c.id: c for c in rubric.criteria}
    no_check = Criterion("style", "The image looks pleasant.")
    bad_check = Criterion("bad", "Broken.", check={"type": "teleport"})
    queries = [
        CriterionQuery(SPEC.text, GOOD, rubric, by_id["relation"]),
        CriterionQuery(SPEC.text, SWAPPED, rubric, by_id["relation"]),
        CriterionQuery(SPEC.text, SWAPPED, rubric, by_id["count_0"]),
        CriterionQuery(SPEC.text, GOOD, rubric, no_check),
        CriterionQuery(SPEC.text, GOOD, rubric, bad_check),
    ]
    verdicts = PixelBackend().judge_criteria(queries)
    assert [v.prob_yes for v in verdicts] == [1.0, 0.0, 1.0, None, None]
    # No check: the pixel judge cannot assess the criterion (an answer); a malformed check is an error.
    assert verdicts[3].cannot_assess and verdicts[3].error is None and not verdicts[3].failed
    assert "needs a machine-checkable 'check'" in verdicts[3].reason
    assert verdicts[4].failed and not verdicts[4].cannot_assess
    assert "unknown check type" in verdicts[4].error


@pytest.mark.parametrize("worse", [SWAPPED, EXTRA], ids=["wrong_relation", "extra_object"])
def test_judge_pairs_prefers_the_correct_image_in_both_orders(worse):
    rubric = rubric_for_prompt(SPEC)
    backend = PixelBackend()
    first, second = backend.judge_pairs(
        [PairQuery(SPEC.text, (GOOD, worse), rubric), PairQuery(SPEC.text, (worse, GOOD), rubric)]
    )
    assert first.prob_first == 1.0 and second.prob_first == 0.0
    assert "Image 1 scores 1.000" in first.reason and first.raw == '{"rank": [1, 2]}'


def test_judge_pairs_tie_and_uncheckable_rubric():
    rubric = rubric_for_prompt(SPEC)
    backend = PixelBackend()
    (tie,) = backend.judge_pairs([PairQuery(SPEC.text, (GOOD, GOOD.copy()), rubric)])
    assert tie.prob_first == 0.5
    vlm_only = Rubric(prompt="x", criteria=[Criterion("a", "Looks nice.")])
    (failed,) = backend.judge_pairs([PairQuery("x", (GOOD, SWAPPED), vlm_only)])
    assert failed.prob_first is None and "no criterion the pixel judge can evaluate" in failed.error


def test_judge_pairs_reads_each_image_once_per_batch(monkeypatch):
    import arr.backends.pixel as pixel

    rubric = rubric_for_prompt(SPEC)
    group = [GOOD, SWAPPED, EXTRA]
    queries = [PairQuery(SPEC.text, (a, b), rubric) for a in group for b in group if a is not b]
    one_by_one = [PixelBackend().judge_pairs([q])[0] for q in queries]
    calls = []
    real = pixel.analyze
    monkeypatch.setattr(pixel, "analyze", lambda image: calls.append(image) or real(image))
    batched = PixelBackend().judge_pairs(queries)
    assert len(calls) == 3  # 6 ordered pairs of 3 images: one detection pass per image
    assert [(v.prob_first, v.reason, v.raw) for v in batched] == [
        (v.prob_first, v.reason, v.raw) for v in one_by_one
    ]
    assert [v.prob_first for v in batched[:2]] == [1.0, 1.0]  # GOOD beats both


def test_scores_are_weighted_fractions_with_penalties():
    backend = PixelBackend()
    rubric = rubric_for_prompt(SPEC)  # 2 counts, 2 colours, relation: 0.15 each; exact 0.25
    assert backend.score_image(GOOD, rubric) == 1.0
    assert backend.score_image(SWAPPED, rubric) == pytest.approx(0.85)  # only the relation fails
    assert backend.score_image(EXTRA, rubric) == pytest.approx(0.75)  # only exactness fails
    penalised = Rubric(
        prompt=SPEC.text,
        criteria=[
            Criterion("circle", "A circle.", weight=2.0, check={"type": "count", "shape": "circle", "n": 1}),
            Criterion("debris", "Stray fragments.", weight=-1.0, check={"type": "fragments"}),
        ],
    )
    dirty = GOOD.copy()
    ImageDraw.Draw(dirty).rectangle((40, 40, 42, 42), fill=PALETTE["yellow"])
    assert backend.score_image(GOOD, penalised) == 1.0
    assert backend.score_image(dirty, penalised) == pytest.approx(0.5)  # (2 - 1) / 2


def test_edit_scores_combine_instruction_and_preservation_like_gedit():
    rubric = Rubric(
        prompt="make the red circle blue",
        task="edit",
        criteria=[
            Criterion(
                "i1",
                "Circle is blue.",
                category="instruction",
                check={"type": "count", "shape": "circle", "color": "blue", "n": 1},
            ),
            Criterion(
                "i2",
                "No red circle.",
                category="instruction",
                check={"type": "count", "shape": "circle", "color": "red", "n": 0},
            ),
            Criterion(
                "p1",
                "Square kept.",
                category="preservation",
                check={"type": "count", "shape": "square", "n": 1},
            ),
        ],
    )
    half = render(
        Scene((Obj("circle", "blue", 0, 0), Obj("circle", "red", 1, 1), Obj("square", "green", 3, 3)))
    )
    details = PixelBackend().score_details(half, rubric)
    assert details["instruction"] == 0.5 and details["preservation"] == 1.0
    assert details["score"] == pytest.approx(math.sqrt(0.5))
    assert [c["holds"] for c in details["criteria"]] == [True, False, True]
    assert {d["shape"] for d in details["detections"]} == {"circle", "square"}


def test_features_layout_and_determinism():
    backend = PixelBackend()
    image = render(Scene((Obj("circle", "red", 1, 2),)))
    feats = backend.features([image, GOOD, image])
    assert feats.shape == (3, len(FEATURE_NAMES)) and feats.dtype == np.float32
    row = dict(zip(FEATURE_NAMES, feats[0].tolist(), strict=True))
    assert row["cell12/shape=circle"] == 1.0 and row["cell12/color=red"] == 1.0
    assert row["count/circle/red"] == 1.0 and row["objects"] == 1.0
    assert row["foreground_fraction"] == pytest.approx(76 / 48**2)
    assert sum(feats[0]) == pytest.approx(
        4.0 + 76 / 48**2
    )  # three one-hot/count entries + objects + coverage
    np.testing.assert_array_equal(feats[0], feats[2])
    assert not np.array_equal(feats[0], feats[1])


def test_rubric_judge_with_the_pixel_backend():
    judge = arr.RubricJudge(PixelBackend())
    rubric = rubric_for_prompt(SPEC)
    verdict = judge.compare(SPEC.text, SWAPPED, GOOD, rubric)
    assert verdict.preferred == 1 and verdict.consistent
    scored = judge.score(SPEC.text, SWAPPED, rubric)
    assert scored.score == pytest.approx(PixelBackend().score_image(SWAPPED, rubric))
    assert scored.criteria["relation"] == 0.0
