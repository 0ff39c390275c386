"""Reward models as rewards: any scorer (`score(prompts, images, source_images) -> [float]`) in the trainers.

- `RewardModelReward`: a `GroupReward` for `RPOTrainer` (use `reward_mode="pointwise"`: the trainer normalises the
  scores within each group, GRPO-style, as it does for `RubricPointwiseReward`). The rubric is ignored: a
  conventional reward model sees only the prompt and the image (and the source image, for editing).
- `RewardModelTRLReward`: the same scorer as a TRL reward function, for `trl.GRPOTrainer(reward_funcs=[...])`.

    from arr.reward_models import PairwiseRewardModel, RewardModelReward
    reward = RewardModelReward(PairwiseRewardModel.from_pretrained("runs/rm"))
    trainer = RPOTrainer(policy, reward, RPOConfig(reward_mode="pointwise", ...), train_dataset=...)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from arr.rewards import GroupReward, GroupRewardOutput, completion_candidates


@runtime_checkable
class ImageScorer(Protocol):
    """What a reward model offers: one float per (prompt, image[, source image])."""

    def score(
        self,
        prompts: Sequence[str],
        images: Sequence[Image.Image],
        source_images: Sequence[Image.Image | None] | None = None,
    ) -> list[float]: ...


class RewardModelReward(GroupReward):
    """A reward model's scores per sample, as a `GroupReward` (see the module docstring); it has no judge, so no
    judge counters, and `RPOTrainer` needs an `evaluator` for held-out scores."""

    def __init__(self, scorer: ImageScorer) -> None:
        if not isinstance(scorer, ImageScorer):
            raise TypeError(
                f"RewardModelReward needs a scorer with .score(prompts, images, ...), got {type(scorer).__name__}"
            )
        self.scorer = scorer

    def __call__(self, *, prompts, images, rubrics=None, source_images=None) -> GroupRewardOutput:
        flat_prompts = [p for p, group in zip(prompts, images, strict=True) for _ in group]
        flat_images = [im for group in images for im in group]
        flat_sources = None
        if source_images is not None and any(s is not None for s in source_images):
            flat_sources = [s for s, group in zip(source_images, images, strict=True) for _ in group]
        scores = self.scorer.score(flat_prompts, flat_images, flat_sources)
        rewards: list[list[float | None]] = []
        pos = 0
        for group in images:
            rewards.append([s if math.isfinite(s) else None for s in scores[pos : pos + len(group)]])
            pos += len(group)
        finite = [s for s in scores if math.isfinite(s)]
        info = {"rm_score_mean": sum(finite) / len(finite) if finite else float("nan")}
        return GroupRewardOutput(rewards, info)


class RewardModelTRLReward:
    """A reward model as a TRL reward function: one score per completion (None where no image could be made).

    Args:
        scorer: the reward model.
        to_image: `(completion, **dataset_row) -> PIL image` for completions that describe an image; otherwise the
            image comes from `image_column` or the completion itself (see `arr.rewards.image_from_completion`).
        source_column: dataset column with the source image of editing prompts.
        name: the name TRL logs the reward under.
    """

    def __init__(
        self,
        scorer: ImageScorer,
        *,
        to_image: Any = None,
        image_column: str | None = None,
        source_column: str | None = None,
        name: str | None = None,
    ) -> None:
        self.scorer = scorer
        self.to_image = to_image
        self.image_column = image_column
        self.source_column = source_column
        self.__name__ = name or type(scorer).__name__

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any
    ) -> list[float | None]:
        _, images, sources, _ = completion_candidates(
            prompts,
            completions,
            kwargs,
            to_image=self.to_image,
            image_column=self.image_column,
            source_column=self.source_column,
            judge_as="image",
            name=self.__name__,
        )
        todo = [i for i, image in enumerate(images) if image is not None]
        texts = [p if isinstance(p, str) else str(p) for p in (prompts[i] for i in todo)]
        rewards: list[float | None] = [None] * len(completions)
        if todo:
            todo_sources = [sources[i] for i in todo]
            scores = self.scorer.score(
                texts,
                [images[i] for i in todo],
                todo_sources if any(s is not None for s in todo_sources) else None,
            )
            for i, s in zip(todo, scores, strict=True):
                rewards[i] = s if math.isfinite(s) else None
        return rewards


__all__ = ["ImageScorer", "RewardModelReward", "RewardModelTRLReward"]
