"""HFBackend on a tiny random Qwen2-VL: probabilities match the logits, batching changes nothing, generate parses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import arr
from arr.backends.base import CriterionQuery, JudgeBackend, PairQuery
from arr.backends.chat import TEMPLATE_VERSION, render_criterion, render_pair
from arr.backends.hf import HFBackend
from arr.rubrics import Criterion, GuideCategory, Rubric
from tests.conftest import random_image

IMAGES = [random_image(i) for i in range(4)]
T2I = Rubric(
    "a red circle left of a blue square",
    [Criterion("c1", "there is a red circle"), Criterion("c2", "the circle is left of the square")],
    guide=[GuideCategory("Layout", ["check left/right"])],
)
EDIT = Rubric("make the circle green", [Criterion("e1", "the circle is green")], task="edit")


def _pairs() -> list[PairQuery]:
    a, b, c, d = IMAGES
    return [
        PairQuery(T2I.prompt, (a, b), T2I),
        PairQuery(T2I.prompt, (b, a), T2I),
        PairQuery("short", (c, d), Rubric("short", [Criterion("s", "ok")])),
        PairQuery(EDIT.prompt, (c, a), EDIT, source=d),
        PairQuery(T2I.prompt + " and a much longer prompt " * 4, (d, b), T2I),
    ]


def _criteria() -> list[CriterionQuery]:
    a, b, c, d = IMAGES
    return [
        CriterionQuery(T2I.prompt, a, T2I, T2I.criteria[0]),
        CriterionQuery(T2I.prompt, b, T2I, T2I.criteria[1]),
        CriterionQuery(EDIT.prompt, c, EDIT, EDIT.criteria[0], source=d),
    ]


@pytest.fixture(scope="module")
def backend(tiny_vlm_path):
    return HFBackend(str(tiny_vlm_path), batch_size=4, trust_remote_code=True)


def _hand_probs(backend: HFBackend, request, tokens: tuple[list[str], list[str]]) -> tuple[float, float]:
    """One plain forward pass over the full sequence, softmax at the last position, summed by token string."""
    text = backend.processor.apply_chat_template(request.messages, add_generation_prompt=True, tokenize=False)
    inputs = backend.processor(
        text=[text + request.answer_prefix], images=request.images, return_tensors="pt"
    )
    with torch.no_grad():
        logits = backend.model(**inputs).logits[0, -1].double()
    probs = torch.softmax(logits, dim=-1)
    tok = backend.tokenizer
    first = sum(float(probs[tok.convert_tokens_to_ids(t)]) for t in tokens[0])
    second = sum(float(probs[tok.convert_tokens_to_ids(t)]) for t in tokens[1])
    return first, second


def test_loads_through_registry_and_fingerprint(tiny_vlm_path, backend):
    b = arr.load_backend("hf", model=str(tiny_vlm_path), trust_remote_code=True, mode="generate")
    assert isinstance(b, HFBackend) and isinstance(b, JudgeBackend) and b.name == "hf"
    fp = backend.fingerprint()
    assert str(tiny_vlm_path) in fp and "dtype=float32" in fp and "mode=probs" in fp
    assert f"template={TEMPLATE_VERSION}" in fp
    assert (
        b.fingerprint() != fp
        and "mode=generate" in b.fingerprint()
        and "max_new_tokens=128" in b.fingerprint()
    )


def test_pair_probabilities_match_logits_in_both_orders(backend):
    queries = _pairs()[:2]  # the same pair, then swapped
    verdicts = backend.judge_pairs(queries)
    # "1"/"2" are byte tokens; " 1" is two tokens in the tiny vocabulary, so it is no spelling of a choice.
    tokens = (["1"], ["2"])
    for q, v in zip(queries, verdicts, strict=True):
        assert v.error is None and 0.0 <= v.prob_first <= 1.0
        p1, p2 = _hand_probs(backend, render_pair(q), tokens)
        assert v.prob_first == pytest.approx(p1 / (p1 + p2), abs=1e-6)
    # The images really reach the model: swapping them changes the answer.
    assert verdicts[0].prob_first != pytest.approx(verdicts[1].prob_first, abs=1e-6)


def test_criterion_probabilities_match_logits(backend):
    queries = _criteria()
    verdicts = backend.judge_criteria(queries)
    # Every single-token spelling of yes/no in the tiny vocabulary ("YES" is three tokens, so it is not one).
    tokens = (["yes", "Yes", "Ġyes", "ĠYes"], ["no", "No", "Ġno", "ĠNo"])
    for q, v in zip(queries, verdicts, strict=True):
        assert v.error is None and 0.0 <= v.prob_yes <= 1.0
        p_yes, p_no = _hand_probs(backend, render_criterion(q), tokens)
        assert v.prob_yes == pytest.approx(p_yes / (p_yes + p_no), abs=1e-6)
        assert '"yes"' in v.raw and '"no"' in v.raw


def test_batched_equals_single(backend):
    single = HFBackend(backend.model, processor=backend.processor, batch_size=1)
    batched_pairs = backend.judge_pairs(
        _pairs()
    )  # 5 queries of different lengths: batches of 4 + 1, left-padded
    single_pairs = single.judge_pairs(_pairs())
    for b, s in zip(batched_pairs, single_pairs, strict=True):
        assert b.prob_first == pytest.approx(s.prob_first, abs=1e-5)
    batched = backend.judge_criteria(_criteria())
    alone = [single.judge_criteria([q])[0] for q in _criteria()]
    for b, s in zip(batched, alone, strict=True):
        assert b.prob_yes == pytest.approx(s.prob_yes, abs=1e-5)


def test_generate_mode_returns_verdicts_without_raising(backend):
    gen = HFBackend(
        backend.model, processor=backend.processor, batch_size=3, mode="generate", max_new_tokens=12
    )
    pairs = gen.judge_pairs(_pairs())
    crits = gen.judge_criteria(_criteria())
    assert len(pairs) == 5 and len(crits) == 3
    for v in pairs:
        assert (v.prob_first in (0.0, 0.5, 1.0) and v.error is None) or (v.prob_first is None and v.error)
        assert isinstance(v.raw, str)
    for v in crits:
        assert (v.prob_yes in (0.0, 1.0) and v.error is None) or (v.prob_yes is None and v.error)
    # Greedy decoding is deterministic.
    assert [v.raw for v in gen.judge_pairs(_pairs()[:2])] == [v.raw for v in pairs[:2]]


def test_rubric_judge_on_hf_backend(backend):
    judge = arr.RubricJudge(backend)
    j = judge.compare(T2I.prompt, IMAGES[0], IMAGES[1], T2I)
    direct = backend.judge_pairs(_pairs()[:2])
    assert j.prob_a == pytest.approx((direct[0].prob_first + 1 - direct[1].prob_first) / 2, abs=1e-6)
    s = judge.score(T2I.prompt, IMAGES[0], T2I)
    assert s.ok and 0.0 <= s.score <= 1.0


def test_features(backend):
    feats = backend.features(IMAGES + [IMAGES[0]])
    assert feats.shape == (5, backend.model.config.text_config.hidden_size) and feats.dtype == np.float32
    assert np.isfinite(feats).all()
    np.testing.assert_allclose(feats[0], feats[4], atol=1e-6)  # same image, same features
    assert not np.allclose(feats[0], feats[1])


def test_bad_arguments_fail_clearly(tiny_vlm_path, tmp_path, backend):
    with pytest.raises(ValueError, match="mode must be one of"):
        HFBackend(backend.model, processor=backend.processor, mode="sample")
    with pytest.raises(ValueError, match="no processor"):
        HFBackend(backend.model)
    with pytest.raises(ValueError, match="could not load judge model"):
        HFBackend(str(tmp_path / "missing"))


class _Recording:
    """Wraps a backend, recording the order in which images reach it (and optionally biasing its answers)."""

    def __init__(self, inner, bias: float = 0.0) -> None:
        self.inner, self.bias, self.seen = inner, bias, []
        self.name = inner.name

    def fingerprint(self) -> str:
        return f"{self.inner.fingerprint()}|bias={self.bias}"

    def judge_pairs(self, queries):
        self.seen += [tuple(id(im) for im in q.images) for q in queries]
        out = self.inner.judge_pairs(queries)
        for v in out:  # a judge that leans towards whatever it is shown first
            v.prob_first = min(1.0, v.prob_first + self.bias)
        return out

    def judge_criteria(self, queries):
        return self.inner.judge_criteria(queries)


def test_swap_asks_both_orders_of_the_real_model_and_position_bias_becomes_a_tie(backend):
    a, b = IMAGES[0], IMAGES[1]
    rec = _Recording(backend)
    j = arr.RubricJudge(rec, swap=True).compare(T2I.prompt, a, b, T2I)
    assert rec.seen == [(id(a), id(b)), (id(b), id(a))]
    assert j.ok and len(j.raw) == 2
    biased = _Recording(backend, bias=0.5)
    jb = arr.RubricJudge(biased, swap=True).compare(T2I.prompt, a, b, T2I)
    assert jb.preferred is None and not jb.consistent
    unswapped = arr.RubricJudge(_Recording(backend, bias=0.5), swap=False).compare(T2I.prompt, b, a, T2I)
    assert unswapped.preferred == 0  # without swapping, the bias decides
