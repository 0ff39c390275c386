"""What a rubric writer is asked and what it answers: the contract between `RubricGenerator` and writers.

A writer is a chat VLM (`arr.rubrics.generate.ChatRubricWriter`) or a backend's own exact writer (the pixel
backend's `rubric_writer()`); this module depends on neither, so writers can live beside their backends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from PIL import Image

from arr.rubrics.model import Criterion


@dataclass
class WriteTask:
    """Ask for `k` rubric items for `prompt`: explaining a labelled pair when images are given, else zero-shot.

    `winner` is "A" (image_a preferred) or "B"; `source` is the editing source image ("Image BASE").
    """

    prompt: str
    k: int
    task: str = "t2i"
    image_a: Image.Image | None = None
    image_b: Image.Image | None = None
    winner: str | None = None
    source: Image.Image | None = None

    @property
    def is_pair(self) -> bool:
        return self.image_a is not None and self.image_b is not None


@dataclass
class RefineTask:
    """A failed answer to `write`, what went wrong (`feedback`), and which refinement round this is (1-based)."""

    write: WriteTask
    previous: str
    feedback: str
    round: int


@dataclass
class WriterOutput:
    """A writer's answer: text to parse (a rubric or a guide as JSON), or an error; token counts where known."""

    text: str | None
    error: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@runtime_checkable
class RubricWriter(Protocol):
    """What `RubricGenerator` needs from whoever writes rubrics (a VLM, or the shapes world's exact writer)."""

    name: str

    def fingerprint(self) -> str:
        """A stable string that changes whenever answers could change (cache key of zero-shot rubrics)."""
        ...

    def write_rubric(self, tasks: Sequence[WriteTask]) -> list[WriterOutput]:
        """Rubric items (JSON text) for each task, in order."""
        ...

    def refine(self, tasks: Sequence[RefineTask]) -> list[WriterOutput]:
        """Rewritten items for each failed answer, given the feedback."""
        ...

    def structure(
        self, items: Sequence[Criterion], max_categories: int, feedback: str | None = None
    ) -> WriterOutput:
        """A guide `{"guide": [{"theme", "tips"}, ...]}` grouping `items`; `feedback` says why a last try failed."""
        ...


@runtime_checkable
class WritesRubrics(Protocol):
    """A judge backend that brings its own rubric writer (the pixel backend brings the shapes world's)."""

    def rubric_writer(self) -> RubricWriter: ...
