"""Rollout: one process's sampled batch, with the global index of each group and the step it was sampled for.

Everything random in an update (minibatch membership and order, the forward objective's noise levels) is keyed by
a group's global index and the step, so it is the rollout that carries them: an update never re-derives them from
the prompt schedule, and a `sample` override that picks prompts differently cannot silently regroup samples.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image

from arr.data import PromptRecord
from arr.policies.base import Conditioning, Trajectory


@dataclass
class Rollout:
    """One process's sampled batch: trajectories, decoded images, the records they answer, and their indexing.

    Samples come in groups of `group_size`: samples [i * group_size, (i + 1) * group_size) answer `records[i]`,
    whose global group index (its position in the step's batch over all processes) is `group_indices[i]`.
    """

    trajectory: Trajectory
    images: list[Image.Image]
    records: list[PromptRecord]
    group_size: int
    group_indices: list[int]
    step: int

    def __post_init__(self) -> None:
        n = len(self.records)
        if len(self.group_indices) != n or len(self.trajectory) != n * self.group_size:
            raise ValueError(
                f"a rollout of {n} records needs {n} group indices and {n} x group_size={self.group_size} "
                f"samples, got {len(self.group_indices)} indices and {len(self.trajectory)} samples"
            )

    def __len__(self) -> int:
        return len(self.trajectory)

    def sample_group_indices(self) -> torch.Tensor:
        """The global group index of every sample, [B] (each group's index repeated `group_size` times)."""
        return torch.tensor(self.group_indices).repeat_interleave(self.group_size)


def cat_rollouts(chunks: list[Rollout]) -> Rollout:
    """Rollouts of one step, sampled in chunks, as one."""
    if len(chunks) == 1:
        return chunks[0]
    return Rollout(
        _cat_trajectories([c.trajectory for c in chunks]),
        [im for c in chunks for im in c.images],
        [r for c in chunks for r in c.records],
        chunks[0].group_size,
        [k for c in chunks for k in c.group_indices],
        chunks[0].step,
    )


def _cat_trajectories(trajs: list[Trajectory]) -> Trajectory:
    """Concatenate trajectories sampled in chunks with the same settings."""
    first = trajs[0]
    conds = [t.cond for t in trajs]
    cond = Conditioning(
        prompts=[p for c in conds for p in c.prompts],
        embeds={k: torch.cat([c.embeds[k] for c in conds]) for k in first.cond.embeds},
        negative=None
        if first.cond.negative is None
        else {k: torch.cat([c.negative[k] for c in conds]) for k in first.cond.negative},
        source_images=None
        if first.cond.source_images is None
        else [im for c in conds for im in c.source_images],
        extras=dict(first.cond.extras),
    )
    offsets = np.cumsum([0] + [int(t.group_ids.max()) + 1 for t in trajs[:-1]])
    return replace(
        first,
        latents=torch.cat([t.latents for t in trajs]),
        log_probs=torch.cat([t.log_probs for t in trajs]),
        cond=cond,
        group_ids=torch.cat([t.group_ids + int(o) for t, o in zip(trajs, offsets, strict=True)]),
    )


__all__ = ["Rollout", "cat_rollouts"]
