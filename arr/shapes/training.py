"""The shapes world as RPO training data and evaluation: prompt records with rubrics, and a GenEval-style scorer.

`eval_score` is GenEval's overall: the mean over categories of the fraction of prompts whose image is strictly
correct (exactly the requested objects, colours and relation, nothing else), judged by the pixel detector.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

from PIL import Image

from arr.rpo.trainer import PromptRecord
from arr.shapes.detect import analyze
from arr.shapes.prompts import CATEGORIES, sample_prompts
from arr.shapes.rubrics import geneval_correct, rubric_for_prompt


def t2i_records(n: int, split: str, seed: int = 0) -> list[PromptRecord]:
    """`n` prompts of `split` in GenEval's category mix, each with its rubric (and its spec for strict scoring)."""
    return [
        PromptRecord(spec.text, rubric_for_prompt(spec), category=spec.category, extra={"spec": spec})
        for spec in sample_prompts(n, split, seed=seed)
    ]


def balanced_t2i_records(n: int, split: str, seed: int = 0) -> list[PromptRecord]:
    """Like `t2i_records` but shuffled deterministically, so that any prefix keeps the category mix."""
    records = t2i_records(n, split, seed)
    random.Random(seed).shuffle(records)
    return records


def geneval_scores(records: Sequence[PromptRecord], images: Sequence[Image.Image]) -> dict[str, float]:
    """Strict GenEval-style accuracy per category, `eval_score` (mean over categories) and the pixel rubric score."""
    from arr.backends.pixel import PixelBackend

    pixel = PixelBackend()
    hits: dict[str, list[float]] = defaultdict(list)
    rubric_scores = []
    for rec, image in zip(records, images, strict=True):
        spec = rec.extra.get("spec")
        if spec is None:
            raise ValueError(
                f"record {rec.prompt!r} has no shapes PromptSpec; build records with t2i_records"
            )
        hits[spec.category].append(float(geneval_correct(spec, analyze(image))))
        rubric_scores.append(pixel.score_image(image, rec.rubric))
    per_cat = {f"eval/{c}": sum(v) / len(v) for c, v in hits.items()}
    present = [c for c in CATEGORIES if c in hits]
    out = {
        "eval_score": sum(per_cat[f"eval/{c}"] for c in present) / max(len(present), 1),
        "eval_rubric_score": sum(rubric_scores) / max(len(rubric_scores), 1),
        "eval_accuracy": sum(sum(v) for v in hits.values()) / max(sum(len(v) for v in hits.values()), 1),
    }
    out.update(per_cat)
    return out
