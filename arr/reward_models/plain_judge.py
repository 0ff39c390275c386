"""The plain judge: "which image better follows the prompt?", with no rubric, as an RPO reward (for ablations).

`PlainJudgeReward` is RPO's pairwise reward (`RubricPairwiseReward`: winner +1.0, loser -0.1, ties 0, both image
orders) with every rubric replaced by an empty one, so a VLM backend asks the same pairwise question as the
`plain` configuration of `arr eval preference` (arr/evaluation/preference.py): the prompt and the two images, and
"- (no criteria: judge by the prompt alone)" where the criteria would be.

    reward = PlainJudgeReward(RubricJudge(load_backend("openai", model="Qwen/Qwen3-VL-8B-Instruct")))

The shapes world has no VLM, and the pixel judge can only evaluate checkable criteria, so it cannot answer a
question without a rubric. `HolisticShapesBackend` is the shapes stand-in for a plain judge: it reads the prompt
(nothing else), asks one holistic yes/no, "does the image show exactly what the prompt asks for?" (the strict
GenEval-style verdict of the pixel detector), and prefers the image that passes. What it keeps of a plain VLM
judge: one overall verdict per image, no per-criterion breakdown, no partial credit, so two wrong images tie even
when one is nearly right. What it does not model: a real plain judge's noise and position bias (34.6% of verdicts
flip under a swap for Qwen3-VL-8B in the paper); this stand-in is exact and order-consistent, which favours it.
Note too that its verdict is the held-out metric itself (GenEval's strict correctness), evaluated on training
prompts: in the head-to-head it is the sparse-but-exact counterpart of the dense rubric score, not a weak judge.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from arr.backends.base import CriterionQuery, CriterionVerdict, PairQuery, PairVerdict
from arr.judge import RubricJudge
from arr.rewards import GroupRewardOutput, RubricPairwiseReward
from arr.rubrics import Rubric
from arr.shapes.prompts import CATEGORIES, PromptSpec, all_prompts

PLAIN_QUESTION = "Which image better follows the prompt?"


def plain_rubric(prompt: str, task: str = "t2i") -> Rubric:
    """The rubric of the plain configuration: the prompt and no criteria (as `arr eval preference` asks)."""
    return Rubric(prompt, [], task=task)


class PlainJudgeReward(RubricPairwiseReward):
    """RPO's pairwise reward with no rubric: the judge sees only the prompt and the two images."""

    def __init__(
        self,
        judge: RubricJudge,
        win_reward: float = 1.0,
        lose_reward: float = -0.1,
        mapping: str = "win_rate",
    ) -> None:
        super().__init__(judge, win_reward=win_reward, lose_reward=lose_reward, mapping=mapping)

    def __call__(self, *, prompts, images, rubrics, source_images=None) -> GroupRewardOutput:
        plain = [plain_rubric(p, getattr(r, "task", "t2i")) for p, r in zip(prompts, rubrics, strict=True)]
        return super().__call__(prompts=prompts, images=images, rubrics=plain, source_images=source_images)


@functools.cache
def _specs_by_text() -> dict[str, PromptSpec]:
    return {spec.text: spec for category in CATEGORIES for spec in all_prompts(category)}


def shapes_spec_for_prompt(prompt: str) -> PromptSpec:
    """The shapes-world `PromptSpec` a prompt text was made from (every shapes prompt is enumerable)."""
    spec = _specs_by_text().get(prompt.strip())
    if spec is None:
        raise ValueError(
            f"prompt {prompt[:60]!r} is not a shapes-world text-to-image prompt; the holistic shapes judge reads "
            "only those (use a VLM backend for other prompts)"
        )
    return spec


class HolisticShapesBackend:
    """A plain (rubric-free) pairwise judge for shapes prompts: one strict yes/no per image (module docstring).

    `prob_first` is 1.0 when only image 1 shows exactly what the prompt asks for, 0.0 when only image 2 does, and
    0.5 (a tie) when both or neither do. Criterion questions are not supported: a plain judge has no criteria.
    """

    name = "holistic-shapes"

    def fingerprint(self) -> str:
        from arr.shapes.detect import DETECTOR_VERSION

        return f"holistic-shapes/v{DETECTOR_VERSION}"

    def verdict(self, prompt: str, image) -> bool:
        """Does `image` show exactly what `prompt` asks for (GenEval's strict verdict)?"""
        from arr.shapes.detect import analyze
        from arr.shapes.rubrics import geneval_correct

        return geneval_correct(shapes_spec_for_prompt(prompt), analyze(image))

    def judge_pairs(self, queries: Sequence[PairQuery]) -> list[PairVerdict]:
        out = []
        for q in queries:
            if q.source is not None:
                out.append(
                    PairVerdict(None, error="the holistic shapes judge handles text-to-image prompts only")
                )
                continue
            try:
                ok1, ok2 = (self.verdict(q.prompt, im) for im in q.images)
            except ValueError as e:
                out.append(PairVerdict(None, error=str(e)))
                continue
            prob = 0.5 if ok1 == ok2 else (1.0 if ok1 else 0.0)
            reason = f"Image 1 {'matches' if ok1 else 'does not match'} the prompt; Image 2 {'matches' if ok2 else 'does not'}"
            rank = [1, 2] if prob > 0.5 else [2, 1] if prob < 0.5 else [1, 1]
            out.append(PairVerdict(prob, reason=reason, raw=f'{{"rank": {rank}}}'))
        return out

    def judge_criteria(self, queries: Sequence[CriterionQuery]) -> list[CriterionVerdict]:
        msg = "the holistic shapes judge is a plain judge: it answers pairwise questions only, not criteria"
        return [CriterionVerdict(None, error=msg) for _ in queries]


__all__ = [
    "PLAIN_QUESTION",
    "HolisticShapesBackend",
    "PlainJudgeReward",
    "plain_rubric",
    "shapes_spec_for_prompt",
]
