"""The "cannot assess" answer: templates and parsers ("unknown"), choice probabilities, the pixel judge's criteria
without a check, RubricJudge's policies, counting, caching, few-shot examples and `arr judge`."""

from __future__ import annotations

import json
import math

import pytest

from arr import Criterion, Rubric, RubricJudge, load_backend
from arr.backends.base import CriterionQuery
from arr.backends.chat import (
    CANNOT_ASSESS_ANSWER,
    ChatBackend,
    ChatResult,
    criterion_verdict,
    parse_criterion_answer,
    parse_ordinal_answer,
    render_criterion,
)
from arr.backends.fewshot import CriterionExample, FewShotBackend
from arr.backends.openai import answer_choice_probs
from arr.shapes.scene import Obj, Scene, render


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("unknown: the image is too dark to tell", "the image is too dark to tell"),
        ("Unknown", ""),
        ("N/A - no square is visible", "no square is visible"),
        ("Answer: cannot assess, it is cropped", "it is cropped"),
        ('{"answer": "unknown", "reason": "cropped"}', "cropped"),
        ('```json\n{"verdict": "n/a"}\n```', ""),
    ],
)
def test_parse_cannot_assess_answers(text, reason):
    v = parse_criterion_answer(text)
    assert v.cannot_assess and v.prob_yes is None and v.error is None and not v.failed
    assert v.reason == reason and v.raw == text


def test_yes_no_and_failures_are_not_cannot_assess():
    assert parse_criterion_answer("no: not applicable here").prob_yes == 0.0  # "no" first wins
    assert parse_criterion_answer("nah").failed
    assert parse_criterion_answer("The answer is unclear").failed
    assert '"unknown" first' in parse_criterion_answer("maybe").error


def test_parse_ordinal_cannot_assess():
    v = parse_ordinal_answer("unknown: the circle is cut off", 5)
    assert v.cannot_assess and v.reason == "the circle is cut off"
    assert parse_ordinal_answer('{"rating": "n/a", "reason": "x"}', 3).cannot_assess
    assert parse_ordinal_answer("4: nearly", 5).prob_yes == 0.75
    assert parse_ordinal_answer("none", 5).failed


def test_choice_probabilities_with_unknown():
    choices = ("yes", "no", CANNOT_ASSESS_ANSWER)
    # "unknown" 0.4 outweighs yes + no = 0.3: cannot assess.
    v = criterion_verdict(ChatResult(choice_probs=(0.2, 0.1, 0.4)), choices)
    assert v.cannot_assess and v.prob_yes is None and json.loads(v.raw)["unknown"] == 0.4
    # Otherwise it is left out: 0.3 / (0.3 + 0.1).
    v = criterion_verdict(ChatResult(choice_probs=(0.3, 0.1, 0.2)), choices)
    assert not v.cannot_assess and v.prob_yes == pytest.approx(0.75)
    # A tie is not "more than all the others": the verdict stands.
    assert criterion_verdict(ChatResult(choice_probs=(0.1, 0.1, 0.2)), choices).prob_yes == 0.5
    # Ordinal: expected credit of 1..3 renormalised without "unknown": (0.1 * 0 + 0.3 * 0.5 + 0.1 * 1) / 0.5.
    ordinal = ("1", "2", "3", CANNOT_ASSESS_ANSWER)
    v = criterion_verdict(ChatResult(choice_probs=(0.1, 0.3, 0.1, 0.45)), ordinal, levels=3)
    assert v.prob_yes == pytest.approx(0.25 / 0.5)
    assert criterion_verdict(ChatResult(choice_probs=(0.1, 0.3, 0.1, 0.51)), ordinal, levels=3).cannot_assess
    with pytest.raises(ValueError, match="needs 3 choices"):
        criterion_verdict(ChatResult(text="1"), ("1", "2", CANNOT_ASSESS_ANSWER), levels=3)


def _tok(token: str, prob: float, top: dict[str, float]) -> dict:
    return {
        "token": token,
        "logprob": math.log(prob),
        "top_logprobs": [{"token": t, "logprob": math.log(p)} for t, p in top.items()],
    }


def test_openai_reads_unknown_at_the_answer_token():
    choices = ("yes", "no", CANNOT_ASSESS_ANSWER)
    tokens = [_tok("unknown", 0.6, {"unknown": 0.6, " yes": 0.1, "no": 0.2}), _tok(":", 1.0, {":": 1.0})]
    assert answer_choice_probs(tokens, "criterion", choices) == pytest.approx((0.1, 0.2, 0.6))
    # The leading "yes" is the answer token; "unknown" among its alternatives counts too.
    tokens = [_tok("Yes", 0.7, {"Yes": 0.7, "Unknown": 0.2}), _tok(":", 1.0, {":": 1.0})]
    assert answer_choice_probs(tokens, "criterion", choices) == pytest.approx((0.7, 0.0, 0.2))


class Answers(ChatBackend):
    """A chat judge that answers from a script: the first key found in the question's criterion."""

    name = "answers"

    def __init__(self, script: dict[str, str]) -> None:
        self.script = script
        self.requests: list = []

    def fingerprint(self) -> str:
        return "answers/" + json.dumps(self.script, sort_keys=True)

    def _chat(self, requests):
        self.requests.extend(requests)
        out = []
        for r in requests:
            user = "".join(p["text"] for p in r.messages[-1]["content"] if p["type"] == "text")
            criterion = user[user.index("<criterion>") :]
            out.append(ChatResult(text=next(a for k, a in self.script.items() if k in criterion)))
        return out


RUBRIC = Rubric(
    "a red circle, no watermark",
    [
        Criterion("circle", "There is a red circle.", weight=2.0),
        Criterion("centre", "The circle is centred.", weight=1.0),
        Criterion("mark", "There is a watermark.", weight=-1.0),
        Criterion("size", "The circle fills the image.", weight=1.0, levels=5),
    ],
)
SCRIPT = {
    "red circle": "yes: it is red",
    "centred": "unknown: the image is cropped",
    "watermark": "unknown: too small to see",
    "fills": "4: nearly",
}


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        # circle 1 (w 2), size 0.75 (w 1); centre (w 1) and mark (w -1) cannot be assessed.
        ("skip", (2 * 1 + 0.75) / 3),
        ("zero", (2 * 1 + 0 + 0 + 0.75) / 4),
        ("partial", (2 * 1 + 0.5 + 0 + 0.75) / 4),
        ("fail", (2 * 1 + 0 - 1 + 0.75) / 4),
    ],
)
def test_rubric_judge_policies_on_text_answers(policy, expected):
    judge = RubricJudge(Answers(SCRIPT), na_policy=policy)
    s = judge.score(RUBRIC.prompt, render(Scene()), RUBRIC)
    assert s.score == pytest.approx(expected)
    assert s.cannot_assess == ["centre", "mark"] and s.errors == {}
    assert s.criteria == {"circle": 1.0, "centre": None, "mark": None, "size": 0.75}
    assert s.reasons["centre"] == "the image is cropped"
    assert judge.stats.cannot_assess == 2 and judge.stats.failures == 0
    assert s.to_dict()["cannot_assess"] == ["centre", "mark"]


def test_a_failed_question_still_leaves_no_score():
    judge = RubricJudge(Answers({**SCRIPT, "red circle": "perhaps"}))
    s = judge.score(RUBRIC.prompt, render(Scene()), RUBRIC)
    assert s.score is None and "circle" in s.errors and s.cannot_assess == ["centre", "mark"]
    assert judge.stats.failures == 1
    with pytest.raises(ValueError, match="unknown cannot-assess policy"):
        RubricJudge(Answers(SCRIPT), na_policy="drop")


def test_cannot_assess_answers_are_cached_and_counted(tmp_path):
    backend = Answers(SCRIPT)
    first = RubricJudge(backend, cache=tmp_path / "c.sqlite")
    first.score(RUBRIC.prompt, render(Scene()), RUBRIC)
    again = RubricJudge(backend, cache=tmp_path / "c.sqlite", na_policy="fail")
    s = again.score(RUBRIC.prompt, render(Scene()), RUBRIC)
    assert len(backend.requests) == 4 and again.stats.cached == 4  # all four from the cache
    assert s.cannot_assess == ["centre", "mark"] and again.stats.cannot_assess == 2
    assert s.score == pytest.approx((2 + 0 - 1 + 0.75) / 4)  # the policy applies to cached answers too


def test_pixel_judge_cannot_assess_criteria_without_a_check():
    rubric = Rubric(
        "a red circle",
        [
            Criterion(
                "c",
                "There is a red circle.",
                check={"type": "count", "shape": "circle", "color": "red", "n": 1},
            ),
            Criterion("nice", "The image looks pleasant."),  # no check: the pixel judge cannot tell
        ],
    )
    image = render(Scene((Obj("circle", "red", 1, 1),)))
    skip = RubricJudge(load_backend("pixel")).score(rubric.prompt, image, rubric)
    assert skip.score == 1.0 and skip.cannot_assess == ["nice"]
    assert (
        RubricJudge(load_backend("pixel"), na_policy="zero").score(rubric.prompt, image, rubric).score == 0.5
    )
    partial = RubricJudge(load_backend("pixel"), na_policy="partial", partial_credit=0.2)
    assert partial.score(rubric.prompt, image, rubric).score == pytest.approx(1.2 / 2)
    only_text = Rubric("a red circle", [rubric.criteria[1]])
    nothing = RubricJudge(load_backend("pixel")).score(only_text.prompt, image, only_text)
    assert nothing.score is None and nothing.errors == {} and nothing.cannot_assess == ["nice"]


def test_criterion_questions_offer_unknown_and_examples_can_show_it():
    rubric = Rubric("a red circle", [Criterion("c", "The circle is red.")])
    req = render_criterion(CriterionQuery("a red circle", render(Scene()), rubric, rubric.criteria[0]))
    assert req.choices[-1] == CANNOT_ASSESS_ANSWER
    system = "".join(p["text"] for p in req.messages[0]["content"])
    assert 'Answer "unknown" instead only if the image cannot show whether the criterion holds.' in system
    inner = Answers({"red": "unknown: hidden"})
    dark = render(Scene())
    backend = FewShotBackend(
        inner, [CriterionExample(dark, "The square is red.", holds=None, reason="too dark")]
    )
    s = RubricJudge(backend).score(rubric.prompt, render(Scene()), rubric)
    assert s.cannot_assess == ["c"]
    assert inner.requests[0].messages[2]["content"][0]["text"] == "unknown: too dark"
    assert (
        FewShotBackend(inner, [CriterionExample(dark, "t", holds=False)]).fingerprint()
        != backend.fingerprint()
    )


def test_arr_judge_reports_cannot_assess_and_takes_a_policy(tmp_path, run_cli):
    rubric = Rubric(
        "a red circle",
        [
            Criterion(
                "c",
                "There is a red circle.",
                check={"type": "count", "shape": "circle", "color": "red", "n": 1},
            ),
            Criterion("nice", "The image looks pleasant."),
        ],
    )
    rubric.save(tmp_path / "r.json")
    render(Scene((Obj("circle", "red", 1, 1),))).save(tmp_path / "i.png")
    args = ["judge", "--prompt", rubric.prompt, "--rubric", tmp_path / "r.json", tmp_path / "i.png"]
    code, out, _ = run_cli(*args)
    result = json.loads(out)
    assert code == 0 and result["score"] == 1.0 and result["cannot_assess"] == ["nice"]
    assert result["judge"]["cannot_assess"] == 1 and result["raw_score"] == 1.0
    code, out, _ = run_cli(*args, "--na-policy", "fail")
    assert code == 0 and json.loads(out)["score"] == 0.5
    code, _, err = run_cli(*args, "--na-policy", "partial", "--partial-credit", "2")
    assert code == 2 and "--partial-credit: partial_credit must be a number in [0, 1], got 2.0" in err
