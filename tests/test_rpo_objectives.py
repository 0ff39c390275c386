"""Objectives as strategies: a user's objective trains without touching the trainer (passed in, or registered by
name), its own statistics reach metrics.jsonl reduced as declared, and `Statistics` reduces by hand-checked rules."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from arr import RubricJudge
from arr.rewards import RubricPairwiseReward
from arr.rpo import ConfigError, RPOConfig, RPOTrainer
from arr.rpo.objectives import (
    OBJECTIVES,
    PolicyGradient,
    Reduction,
    Statistics,
    make_objective,
    register_objective,
)
from arr.shapes.training import t2i_records
from tests.conftest import make_args, read_rows, tiny_policy
from tests.fakes import BrightnessBackend


@dataclass
class ScaledPolicyGradient(PolicyGradient):
    """The paper's update with the loss scaled by `scale`, and three statistics of its own."""

    statistics: ClassVar[dict[str, Reduction]] = {
        **PolicyGradient.statistics,
        "unscaled_loss": "mean",
        "terms": "sum",
        "abs_advantage_max": "max",
    }

    scale: float = 3.0

    def loss_terms(self, rollout, advantages, members) -> Iterator[dict[str, torch.Tensor]]:
        for terms in super().loss_terms(rollout, advantages, members):
            yield {
                **terms,
                "loss": self.scale * terms["loss"],
                "unscaled_loss": terms["loss"],
                "terms": torch.ones_like(terms["loss"]),
                "abs_advantage_max": advantages[members].abs(),
            }


def _train(tmp_path: Path, name: str, instance=None, **kw) -> tuple[RPOTrainer, list[dict]]:
    """Two steps with the objective `instance` (None: the one the config names); the LoRA must change."""
    args = make_args(tmp_path, output_dir=str(tmp_path / name), max_steps=2, **kw)
    reward = RubricPairwiseReward(RubricJudge(BrightnessBackend()))
    trainer = RPOTrainer(tiny_policy(), reward, args, t2i_records(16, "train"), objective=instance)
    before = [p.detach().clone() for p in trainer.params]
    trainer.train()
    assert any(not torch.equal(a, p) for a, p in zip(before, trainer.params, strict=True)), (
        "the LoRA must train"
    )
    return trainer, [r for r in read_rows(Path(args.output_dir)) if "loss" in r]


def test_a_subclassed_objective_trains_and_logs_its_own_statistics(tmp_path):
    trainer, rows = _train(tmp_path, "custom", ScaledPolicyGradient(clip_range=0.2, beta=0.01, scale=3.0))
    assert isinstance(trainer.objective, ScaledPolicyGradient) and len(rows) == 2
    for row in rows:
        # "loss" is what trained (scaled); the objective's own mean is the unscaled one.
        assert row["loss"] == pytest.approx(3.0 * row["unscaled_loss"], rel=1e-6)
        # A sum over every (sample, timestep) term: 4 prompts x 2 samples x 3 stochastic steps, nothing masked.
        assert row["terms"] == 24.0
        # Centred-free pairwise rewards of the brightness judge: |A| <= the win reward 1.0, and some pair won.
        assert 0 < row["abs_advantage_max"] <= 1.0
        assert 0 <= row["clip_frac"] <= 1 and row["ratio_max"] >= row["ratio_mean"] > 0


def test_a_registered_objective_is_chosen_by_name_and_set_up_from_the_config(tmp_path):
    register_objective("scaled_policy_gradient", ScaledPolicyGradient)
    try:
        args = RPOConfig(objective="scaled_policy_gradient", clip_range=0.3, beta=0.0)
        objective = make_objective(args.objective, args.to_dict())
        assert objective == ScaledPolicyGradient(clip_range=0.3, beta=0.0, scale=3.0)
        trainer, rows = _train(tmp_path, "registered", objective="scaled_policy_gradient", beta=0.0)
        assert type(trainer.objective) is ScaledPolicyGradient and trainer.objective.beta == 0.0
        assert all("terms" in row and row["kl"] == 0.0 for row in rows)
    finally:
        del OBJECTIVES["scaled_policy_gradient"]
    with pytest.raises(ConfigError, match="objective"):
        RPOConfig(objective="scaled_policy_gradient")
    with pytest.raises(TypeError, match="Objective subclass"):
        register_objective("not_an_objective", dict)  # type: ignore[arg-type]


def test_an_objective_without_a_loss_statistic_is_refused(tmp_path):
    @dataclass
    class NoLoss(PolicyGradient):
        statistics: ClassVar[dict[str, Reduction]] = {"kl": "mean"}

    reward = RubricPairwiseReward(RubricJudge(BrightnessBackend()))
    with pytest.raises(TypeError, match="must declare 'loss'"):
        RPOTrainer(tiny_policy(), reward, make_args(tmp_path), t2i_records(4, "train"), objective=NoLoss())


def test_statistics_reduce_as_declared_by_hand():
    declared = {"loss": "mean", "count": "sum", "peak": "max"}
    micro_a, micro_b = Statistics(declared), Statistics(declared)
    micro_a.add(
        {
            "loss": torch.tensor([1.0, 2.0]),
            "count": torch.tensor([1.0, 1.0]),
            "peak": torch.tensor([3.0, -1.0]),
        }
    )
    micro_a.add(
        {
            "loss": torch.tensor([3.0, 4.0]),
            "count": torch.tensor([1.0, 1.0]),
            "peak": torch.tensor([0.5, 7.0]),
        }
    )
    micro_b.add({"loss": torch.tensor([10.0]), "peak": torch.tensor([-2.0])})  # a term that logs no "count"
    total = Statistics(declared)
    total.merge(micro_a)
    total.merge(micro_b)
    assert total.count == 5 and total.totals == {"loss": 20.0, "count": 4.0, "peak": 7.0}

    # Two "processes": sums add (and so do the term counts), maxima take the larger.
    def two_ranks_sum(values):
        return [2 * v for v in values]

    def two_ranks_max(values):
        return [max(v, 9.0) for v in values]

    assert total.reduce(lambda v: v, lambda v: v) == {"loss": 20.0 / 5, "count": 4.0, "peak": 7.0}
    assert total.reduce(two_ranks_sum, two_ranks_max) == {"loss": 40.0 / 10, "count": 8.0, "peak": 9.0}
    # A step that trained nothing reports zeros, not -inf or a division by zero.
    assert Statistics(declared).reduce(lambda v: v, lambda v: v) == {"loss": 0.0, "count": 0.0, "peak": 0.0}
