"""Rubrics: the data model, a tolerant parser for VLM answers and rubric files, and ARR rubric generation.

- `model`: `Rubric`, `Criterion`, `GuideCategory`.
- `scoring`: the weighted score formula and the cannot-assess policies (`NA_POLICIES`).
- `parse`: VLM answers and files -> validated rubric data (`RubricParseError` for what cannot be repaired).
- `writer`: what a rubric writer is asked and answers (the `RubricWriter` protocol).
- `generate`: Auto-Rubric as Reward: generate -> verify -> refine -> structure (`RubricGenerator`).
"""

from arr.rubrics.model import (
    PRESERVATION,
    Criterion,
    GuideCategory,
    Rubric,
    as_rubric,
    parse_rubric,
    rubric_from_obj,
)
from arr.rubrics.parse import RubricParseError
from arr.rubrics.scoring import NA_POLICIES

__all__ = [
    "NA_POLICIES",
    "PRESERVATION",
    "Criterion",
    "GuideCategory",
    "Rubric",
    "RubricParseError",
    "as_rubric",
    "parse_rubric",
    "rubric_from_obj",
]
