"""Rubrics: the data model, a tolerant parser for VLM answers and rubric files, and ARR rubric generation.

- `model`: `Rubric`, `Criterion`, `GuideCategory` and the weighted score.
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

__all__ = [
    "PRESERVATION",
    "Criterion",
    "GuideCategory",
    "Rubric",
    "RubricParseError",
    "as_rubric",
    "parse_rubric",
    "rubric_from_obj",
]
