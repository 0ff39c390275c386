"""Conventional reward models, the baselines rubric rewards are compared against.

- `PairwiseRewardModel` + `BradleyTerryTrainer` / `BradleyTerryConfig`: an image reward model trained on preference
  pairs with the Bradley-Terry loss (`arr reward-model train --pairs pairs.json --out DIR`).
- `CLIPScorer` (PickScore / HPSv2-style), `BlipScorer` (ImageReward-style), `QwenVLScorer` (HPSv3 / EditReward-style):
  published reward-model architectures loaded with transformers classes.
- `RewardModelReward` (a `GroupReward` for `RPOTrainer`, reward_mode="pointwise") and `RewardModelTRLReward`
  (a TRL reward function) turn any of them into a training reward.
- `PlainJudgeReward`: the pairwise judge asked without a rubric; `HolisticShapesBackend` is its shapes stand-in.

Heavy imports happen on first use, so `import arr.reward_models` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BradleyTerryConfig": "arr.reward_models.bradley_terry",
    "BradleyTerryResult": "arr.reward_models.bradley_terry",
    "BradleyTerryTrainer": "arr.reward_models.bradley_terry",
    "PairwiseRewardModel": "arr.reward_models.bradley_terry",
    "PairwiseRewardModelConfig": "arr.reward_models.bradley_terry",
    "preference_accuracy": "arr.reward_models.bradley_terry",
    "BlipScorer": "arr.reward_models.backends",
    "CLIPScorer": "arr.reward_models.backends",
    "QwenVLScorer": "arr.reward_models.backends",
    "ImageScorer": "arr.reward_models.rewards",
    "RewardModelReward": "arr.reward_models.rewards",
    "RewardModelTRLReward": "arr.reward_models.rewards",
    "HolisticShapesBackend": "arr.reward_models.plain_judge",
    "PlainJudgeReward": "arr.reward_models.plain_judge",
    "plain_rubric": "arr.reward_models.plain_judge",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'arr.reward_models' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
