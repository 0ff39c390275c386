"""What the judge's vision tower should see in each grid cell: a dense auxiliary target for pretraining.

A judge trained from scratch on its answers alone learns the answers' text priors and leaves the images unread: the
answer depends on the picture through a long, sparse path (one yes/no token per question), and the language model
finds the priors first. In a run of 2,500 steps its held-out accuracy stayed at the majority rate while its training
accuracy rose, which is memorisation. So pretraining also asks the vision tower, token by token, what is in its part
of the picture, read from the image by the pixel judge's detector (`arr.shapes.detect`), never from the scene
description, so that model samples, renders and corruptions are all labelled alike.

The shapes world's scenes sit on a 4 x 4 grid of 12-pixel cells, and the judge's vision tower (6-pixel patches,
2 x 2 merge) gives one output token per cell, in row-major order, so token k is cell (k // 4, k % 4). Per cell the
target is multi-hot over `CELL_LABELS`: each palette colour with at least `MIN_COLOR_PIXELS` pixels there, each shape
whose detected object's centroid lies there, and "other" for an object-sized blob of no clear shape or a fragment.
The head reading these targets (a linear layer) lives in the training run only; the shipped judge is a plain
Qwen2-VL.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from arr.shapes.detect import CELL, analyze, classify_pixels, image_array
from arr.shapes.scene import COLORS, GRID, IMAGE_SIZE, SHAPES

CELL_LABELS: tuple[str, ...] = (*COLORS, *SHAPES, "other")
MIN_COLOR_PIXELS = 6  # of a cell's 144: a colour smaller than this is a speck or a neighbour's blurred edge


def cell_targets(image: Image.Image) -> np.ndarray:
    """[GRID * GRID, len(CELL_LABELS)] multi-hot (float32) targets of one image, cells in row-major order."""
    out = np.zeros((GRID * GRID, len(CELL_LABELS)), dtype=np.float32)
    classes, _ = classify_pixels(image_array(image))
    classes = classes.reshape(IMAGE_SIZE, IMAGE_SIZE)
    cells = classes.reshape(GRID, CELL, GRID, CELL).transpose(0, 2, 1, 3).reshape(GRID * GRID, -1)
    for k in range(len(COLORS)):
        out[:, k] = (cells == k + 1).sum(axis=1) >= MIN_COLOR_PIXELS
    for det in analyze(image).detections:
        row, col = det.cell
        label = det.shape if det.shape in SHAPES else "other"
        out[row * GRID + col, CELL_LABELS.index(label)] = 1.0
    return out


def batch_cell_targets(images: Sequence[Image.Image]) -> torch.Tensor:
    """[len(images) * GRID * GRID, len(CELL_LABELS)]: the targets of the vision tower's output tokens, in order."""
    return torch.from_numpy(np.concatenate([cell_targets(im) for im in images]))


class VisionTap:
    """Keeps the vision tower's merged output tokens of each forward pass (a forward hook), for the cell loss."""

    def __init__(self, model) -> None:
        self.outputs: list[torch.Tensor] = []
        visual = model.model.visual if hasattr(model, "model") else model.visual
        self._handle = visual.register_forward_hook(self._keep)

    def _keep(self, module, args, output) -> None:
        pooled = getattr(output, "pooler_output", output)
        self.outputs.append(pooled if isinstance(pooled, torch.Tensor) else torch.cat(list(pooled)))

    def take(self) -> torch.Tensor | None:
        out = torch.cat(self.outputs) if self.outputs else None
        self.outputs = []
        return out

    def remove(self) -> None:
        self._handle.remove()


def cell_loss(
    head: torch.nn.Module, tokens: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """Binary cross-entropy of the head's cell logits (mean over cells and labels) and the cells read exactly."""
    if tokens.shape[0] != targets.shape[0]:
        raise ValueError(
            f"{tokens.shape[0]} vision tokens for {targets.shape[0]} cell targets: the judge's vision tower must "
            f"give one token per cell ({GRID}x{GRID} per {IMAGE_SIZE}-px image)"
        )
    logits = head(tokens.float())
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
    with torch.no_grad():
        exact = ((logits > 0) == (targets > 0.5)).all(dim=-1).float().mean().item()
    return loss, {"cell_loss": loss.item(), "cell_exact": exact}


__all__ = ["CELL_LABELS", "VisionTap", "batch_cell_targets", "cell_loss", "cell_targets"]
