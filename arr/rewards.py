"""Reward adapters: rubric judgments -> per-sample rewards for a group of samples of one prompt.

One contract for every reward (STYLE.md row 4): keyword inputs (`prompts`, `images`, `rubrics`, `source_images`)
-> per-sample values plus extra info, where `None` means "no judgment" (the sample is masked out of the loss).
Images arrive grouped: `images[i]` holds the G samples drawn for `prompts[i]` from the same initial noise.

- `RubricPairwiseReward`: RPO's reward. Every pair in a group is judged (both orders when the judge swaps);
  a sample's reward is its mean pairwise outcome: +win for a win, lose (-0.1 in the paper) for a loss, 0 for a
  tie. With G = 2 this is exactly the paper's winner +1.0 / loser -0.1; ties give zero advantage.
- `RubricPointwiseReward`: rubric scores in [0, 1] per sample (normalise within the group for GRPO).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Protocol

from PIL import Image

from arr.judge import PairItem, RubricJudge, ScoreItem
from arr.rubric import Rubric


@dataclass
class GroupRewardOutput:
    """`rewards[i][k]` is the reward of sample k of prompt i (None: no judgment); `info` holds logged extras."""

    rewards: list[list[float | None]]
    info: dict[str, Any] = field(default_factory=dict)


class GroupReward(Protocol):
    """What the RPO trainer calls once per batch of groups."""

    def __call__(
        self,
        *,
        prompts: Sequence[str],
        images: Sequence[Sequence[Image.Image]],
        rubrics: Sequence[Rubric],
        source_images: Sequence[Image.Image | None] | None = None,
    ) -> GroupRewardOutput: ...


def pairwise_outcome_rewards(
    group_size: int, outcomes: dict[tuple[int, int], int | None | str], win: float = 1.0, lose: float = -0.1
) -> list[float | None]:
    """Per-sample mean pairwise reward from the outcomes of every pair (i < j) in a group.

    `outcomes[(i, j)]` is 0 if i won, 1 if j won, None for a tie, or "failed" when the judge gave no verdict
    (that pair is left out). A sample whose every pair failed gets None.
    """
    totals = [0.0] * group_size
    counts = [0] * group_size
    for (i, j), out in outcomes.items():
        if out == "failed":
            continue
        counts[i] += 1
        counts[j] += 1
        if out == 0:
            totals[i] += win
            totals[j] += lose
        elif out == 1:
            totals[i] += lose
            totals[j] += win
    return [totals[k] / counts[k] if counts[k] else None for k in range(group_size)]


class RubricPairwiseReward:
    """RPO's pairwise rubric reward (see the module docstring)."""

    def __init__(self, judge: RubricJudge, win_reward: float = 1.0, lose_reward: float = -0.1) -> None:
        self.judge = judge
        self.win_reward = win_reward
        self.lose_reward = lose_reward

    def __call__(self, *, prompts, images, rubrics, source_images=None) -> GroupRewardOutput:
        sources = source_images if source_images is not None else [None] * len(prompts)
        items: list[PairItem] = []
        index: list[tuple[int, int, int]] = []
        for g, (prompt, group, rubric, src) in enumerate(zip(prompts, images, rubrics, sources, strict=True)):
            for i, j in combinations(range(len(group)), 2):
                items.append(PairItem(prompt, group[i], group[j], rubric, src))
                index.append((g, i, j))
        judgments = self.judge.compare_many(items)
        outcomes: list[dict[tuple[int, int], Any]] = [{} for _ in prompts]
        ties = failures = inconsistent = 0
        for (g, i, j), jd in zip(index, judgments, strict=True):
            if not jd.ok:
                outcomes[g][(i, j)] = "failed"
                failures += 1
                continue
            outcomes[g][(i, j)] = jd.preferred
            ties += jd.preferred is None
            inconsistent += not jd.consistent
        rewards = [
            pairwise_outcome_rewards(len(group), out, self.win_reward, self.lose_reward)
            for group, out in zip(images, outcomes, strict=True)
        ]
        n = max(len(judgments), 1)
        info = {
            "pairs": len(judgments),
            "tie_rate": ties / n,
            "inconsistent_rate": inconsistent / n,
            "judge_failure_rate": failures / n,
        }
        return GroupRewardOutput(rewards, info)


class RubricPointwiseReward:
    """Rubric scores in [0, 1] per sample (the GRPO-style baseline normalises them within each group)."""

    def __init__(self, judge: RubricJudge) -> None:
        self.judge = judge

    def __call__(self, *, prompts, images, rubrics, source_images=None) -> GroupRewardOutput:
        sources = source_images if source_images is not None else [None] * len(prompts)
        items = [
            ScoreItem(prompt, im, rubric, src)
            for prompt, group, rubric, src in zip(prompts, images, rubrics, sources, strict=True)
            for im in group
        ]
        scores = self.judge.score_many(items)
        rewards: list[list[float | None]] = []
        pos = 0
        for group in images:
            rewards.append([s.score for s in scores[pos : pos + len(group)]])
            pos += len(group)
        failures = sum(s.score is None for s in scores)
        return GroupRewardOutput(rewards, {"judge_failure_rate": failures / max(len(scores), 1)})
