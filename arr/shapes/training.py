"""The shapes world as RPO training data and evaluation: prompt records with rubrics, and the held-out scorers.

Text-to-image: `eval_score` is GenEval's overall, the mean over categories of the fraction of prompts whose image is
strictly correct (exactly the requested objects, colours and relation, nothing else), judged by the pixel detector.
Editing: `eval_score` is GEdit-Bench's overall, the mean of sqrt(instruction x preservation) from the pixel judge,
with instruction following, preservation and strict correctness (the detected scene is the target) beside it.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from PIL import Image

from arr.data import PromptRecord
from arr.report import SampleNote
from arr.shapes.detect import analyze
from arr.shapes.prompts import CATEGORIES, sample_prompts
from arr.shapes.rubrics import geneval_correct, rubric_for_prompt
from arr.stats import PER_PROMPT_SCORES


def t2i_records(
    n: int, split: str, seed: int = 0, category_multipliers: dict[str, float] | None = None
) -> list[PromptRecord]:
    """`n` prompts of `split` in GenEval's category mix (scaled by `category_multipliers`), each with its rubric
    (and its spec for strict scoring)."""
    return [
        PromptRecord(spec.text, rubric_for_prompt(spec), category=spec.category, extra={"spec": spec})
        for spec in sample_prompts(n, split, seed=seed, category_multipliers=category_multipliers)
    ]


def balanced_t2i_records(n: int, split: str, seed: int = 0) -> list[PromptRecord]:
    """Like `t2i_records` but shuffled deterministically, so that any prefix keeps the category mix."""
    records = t2i_records(n, split, seed)
    random.Random(seed).shuffle(records)
    return records


def edit_records(n: int, split: str, seed: int = 0) -> list[PromptRecord]:
    """`n` edits of `split` (recolour, remove, add, move), each with its source image and instruction rubric."""
    from arr.shapes.edits import rubric_for_edit, sample_edit
    from arr.shapes.scene import render

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        edit = sample_edit(rng, split)
        out.append(
            PromptRecord(
                edit.text,
                rubric_for_edit(edit),
                category=edit.kind,
                source_image=render(edit.source),
                extra={"edit": edit},
            )
        )
    return out


def edit_scores(records: Sequence[PromptRecord], images: Sequence[Image.Image]) -> dict[str, Any]:
    """GEdit-style overall (`eval_score`), instruction, preservation and strict correctness, overall and per kind;
    the per-edit scores under `arr.stats.PER_PROMPT_SCORES`."""
    from arr.backends.pixel import PixelBackend
    from arr.shapes.edits import edit_correct

    pixel = PixelBackend()
    rows: dict[str, list[dict[str, float]]] = defaultdict(list)
    per_prompt: list[tuple[str, float]] = []  # one stratum: the headline score is the plain mean over edits
    for rec, image in zip(records, images, strict=True):
        edit = rec.extra.get("edit")
        if edit is None:
            raise ValueError(f"record {rec.prompt!r} has no shapes EditSpec; build records with edit_records")
        d = pixel.score_details(image, rec.rubric, rec.source_image)
        rows[edit.kind].append(
            {
                "score": float(d["score"]),
                "instruction": float(d["instruction"]),
                "preservation": float(1.0 if d["preservation"] is None else d["preservation"]),
                "correct": float(edit_correct(edit, image)),
            }
        )
        per_prompt.append(("all", float(d["score"])))
    everything = [r for kind_rows in rows.values() for r in kind_rows]

    def mean(items: list[dict[str, float]], key: str) -> float:
        return sum(r[key] for r in items) / max(len(items), 1)

    n = max(len(everything), 1)
    mu = mean(everything, "score")
    out = {
        "eval_score": mu,
        # Standard error of the mean score over edits (one sample per edit).
        "eval_score_se": (sum((r["score"] - mu) ** 2 for r in everything) / max(n - 1, 1) / n) ** 0.5,
        "eval_instruction": mean(everything, "instruction"),
        "eval_preservation": mean(everything, "preservation"),
        "eval_correct": mean(everything, "correct"),
    }
    out.update({f"eval/{kind}": mean(r, "score") for kind, r in sorted(rows.items())})
    out[PER_PROMPT_SCORES] = per_prompt
    return out


def geneval_scores(records: Sequence[PromptRecord], images: Sequence[Image.Image]) -> dict[str, Any]:
    """Strict GenEval-style accuracy per category, `eval_score` (mean over categories) and the pixel rubric score;
    each prompt's (category, correct) under `arr.stats.PER_PROMPT_SCORES`."""
    from arr.backends.pixel import PixelBackend

    pixel = PixelBackend()
    hits: dict[str, list[float]] = defaultdict(list)
    per_prompt: list[tuple[str, float]] = []
    rubric_scores = []
    for rec, image in zip(records, images, strict=True):
        spec = rec.extra.get("spec")
        if spec is None:
            raise ValueError(
                f"record {rec.prompt!r} has no shapes PromptSpec; build records with t2i_records"
            )
        correct = float(geneval_correct(spec, analyze(image)))
        hits[spec.category].append(correct)
        per_prompt.append((spec.category, correct))
        rubric_scores.append(pixel.score_image(image, rec.rubric))
    per_cat = {f"eval/{c}": sum(v) / len(v) for c, v in hits.items()}
    present = [c for c in CATEGORIES if c in hits]
    # Standard error of one evaluation (binomial, one sample per prompt): the score is a mean of per-category
    # fractions, so its variance is the sum of p(1 - p) / n over categories, over the number of categories squared.
    variance = (
        sum(per_cat[f"eval/{c}"] * (1 - per_cat[f"eval/{c}"]) / len(hits[c]) for c in present)
        / max(len(present), 1) ** 2
    )
    out = {
        "eval_score": sum(per_cat[f"eval/{c}"] for c in present) / max(len(present), 1),
        "eval_score_se": variance**0.5,
        "eval_rubric_score": sum(rubric_scores) / max(len(rubric_scores), 1),
        "eval_accuracy": sum(sum(v) for v in hits.values()) / max(sum(len(v) for v in hits.values()), 1),
    }
    out.update(per_cat)
    out[PER_PROMPT_SCORES] = per_prompt
    return out


def geneval_notes(records: Sequence[PromptRecord], images: Sequence[Image.Image]) -> list[SampleNote]:
    """Per image, for the report's captions: strictly correct or wrong (what `eval_score` counts) and the pixel
    judge's rubric score."""
    from arr.backends.pixel import PixelBackend

    pixel = PixelBackend()
    out = []
    for rec, image in zip(records, images, strict=True):
        spec = rec.extra.get("spec")
        if spec is None:
            raise ValueError(
                f"record {rec.prompt!r} has no shapes PromptSpec; build records with t2i_records"
            )
        correct = geneval_correct(spec, analyze(image))
        rubric = pixel.score_image(image, rec.rubric)
        out.append(SampleNote("correct" if correct else "wrong", correct, rubric, "rubric"))
    return out


def edit_notes(records: Sequence[PromptRecord], images: Sequence[Image.Image]) -> list[SampleNote]:
    """Per edit, for the report's captions: strictly correct or wrong (the detected scene is the target) and the
    pixel judge's score (what `eval_score` averages)."""
    from arr.backends.pixel import PixelBackend
    from arr.shapes.edits import edit_correct

    pixel = PixelBackend()
    out = []
    for rec, image in zip(records, images, strict=True):
        edit = rec.extra.get("edit")
        if edit is None:
            raise ValueError(f"record {rec.prompt!r} has no shapes EditSpec; build records with edit_records")
        correct = edit_correct(edit, image)
        score = float(pixel.score_details(image, rec.rubric, rec.source_image)["score"])
        out.append(SampleNote("correct" if correct else "wrong", correct, score, "score"))
    return out


def sample_monitor(judge: Any) -> Callable[[Sequence[PromptRecord], Sequence[Image.Image]], dict[str, float]]:
    """A monitor of training samples (`RPOConfig.monitor_steps`): the exact pixel judge's rubric score and strict
    accuracy beside `judge`'s own pointwise rubric score (a `RubricJudge`, e.g. the learned VLM that gives the reward).

    If a policy games a learned judge, `judge_score` rises while `pixel_score` does not; when the reward is sound,
    both rise together.
    """
    from arr.backends.pixel import PixelBackend
    from arr.judge import ScoreItem

    pixel = PixelBackend()

    def monitor(records: Sequence[PromptRecord], images: Sequence[Image.Image]) -> dict[str, float]:
        pixel_scores = [
            pixel.score_image(im, r.rubric, r.source_image) for r, im in zip(records, images, strict=True)
        ]
        out = {"pixel_score": sum(pixel_scores) / max(len(pixel_scores), 1)}
        specs = [r.extra.get("spec") for r in records]
        if all(s is not None for s in specs):
            correct = [geneval_correct(s, analyze(im)) for s, im in zip(specs, images, strict=True)]
            out["pixel_accuracy"] = sum(correct) / max(len(correct), 1)
        judged = judge.score_many(
            [ScoreItem(r.prompt, im, r.rubric, r.source_image) for r, im in zip(records, images, strict=True)]
        )
        scores = [j.score for j in judged if j.score is not None]
        if scores:
            out["judge_score"] = sum(scores) / len(scores)
        return out

    return monitor
