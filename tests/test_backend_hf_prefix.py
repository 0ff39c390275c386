"""Shared-prefix judging in the hf backend: the same probabilities as full passes, with each image encoded once."""

from __future__ import annotations

import json

import pytest

from arr import RubricJudge
from arr.backends.base import CriterionQuery, PairQuery
from arr.backends.hf import HFBackend
from arr.rubrics import Criterion, Rubric
from tests.conftest import random_image

RUBRIC = Rubric(
    "a red circle left of a blue square",
    [
        Criterion("c1", "there is a red circle"),
        Criterion("c2", "the circle is left of the square"),
        Criterion("q", "overall quality", levels=5),
        Criterion("s", "the square is blue"),
        Criterion("r", "realism", levels=5),
    ],
)
EDIT = Rubric(
    "make the circle green",
    [Criterion("e1", "the circle is green"), Criterion("e2", "rest kept")],
    task="edit",
)


@pytest.fixture(scope="module")
def backends(tiny_vlm_path):
    # batch_size 2 < group size 3: the suffixes run in two chunks, each against a fresh copy of the prefix cache.
    full = HFBackend(str(tiny_vlm_path), batch_size=2, trust_remote_code=True, share_prefix=False)
    shared = HFBackend(str(tiny_vlm_path), batch_size=2, trust_remote_code=True, share_prefix=True)
    return full, shared


def _queries() -> list[CriterionQuery]:
    images = [random_image(i) for i in range(3)]
    out = [CriterionQuery(RUBRIC.prompt, im, RUBRIC, c) for im in images[:2] for c in RUBRIC.criteria]
    out += [CriterionQuery(EDIT.prompt, images[2], EDIT, c, source=images[0]) for c in EDIT.criteria]
    # A lone question (nothing to share with) and a pair go through the full path in both backends.
    out.append(CriterionQuery("lone", images[1].copy(), RUBRIC, RUBRIC.criteria[0]))
    return out


def test_shared_prefix_matches_full_passes_and_encodes_each_image_once(backends):
    full, shared = backends
    queries = _queries()
    calls: list[int] = []
    hook = shared.model.model.visual.register_forward_hook(lambda m, i, o: calls.append(1))
    try:
        got = shared.judge_criteria(queries)
    finally:
        hook.remove()
    want = full.judge_criteria(queries)
    for q, g, w in zip(queries, got, want, strict=True):
        assert g.error is None and w.error is None and g.cannot_assess == w.cannot_assess
        # The choice probabilities themselves ("unknown" included) agree, whichever answer they make.
        assert json.loads(g.raw) == pytest.approx(json.loads(w.raw), rel=1e-3), q.criterion.id
        if w.prob_yes is not None:
            assert abs(g.prob_yes - w.prob_yes) < 1e-4, (q.criterion.id, g.prob_yes, w.prob_yes)
    # Most questions have a value to compare.
    assert sum(w.prob_yes is not None for w in want) >= len(want) // 2
    # Vision-tower calls: 2 images x {yes/no, 1..5 rating} groups, 1 edit group, 1 lone question = 6, not 13.
    assert len(calls) == 6
    # Token accounting still counts every question's full length.
    assert shared.token_usage.prompt_tokens == full.token_usage.prompt_tokens


def test_shared_prefix_through_rubric_judge_and_pairs(backends):
    full, shared = backends
    image = random_image(7)
    s_full = RubricJudge(full).score(RUBRIC.prompt, image, RUBRIC)
    s_shared = RubricJudge(shared).score(RUBRIC.prompt, image, RUBRIC)
    assert s_shared.score == pytest.approx(s_full.score, abs=1e-4)
    pair = PairQuery(RUBRIC.prompt, (random_image(1), random_image(2)), RUBRIC)
    (p_full,), (p_shared,) = full.judge_pairs([pair]), shared.judge_pairs([pair])
    assert p_shared.prob_first == pytest.approx(p_full.prob_first, abs=1e-6)
