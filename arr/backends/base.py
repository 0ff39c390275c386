"""The judge-backend protocol: the one contract every judge (local VLM, HTTP server, pixel judge) implements.

A backend answers two kinds of *semantic* questions, in batches:
- `judge_pairs`: which of two candidates (in the order shown) better satisfies a rubric, with a probability;
- `judge_criteria`: does one rubric criterion hold for one candidate, with a probability.
A candidate is an image, or a text (a `str`: e.g. a language model's response). Backends that judge texts declare
`judges_text = True` (the chat backends, hf and openai); `RubricJudge` refuses texts for the others.
`RubricJudge` (arr/judge.py) owns swapping, aggregation and caching; backends own how a question is asked.
A backend whose judge is down raises `JudgeUnavailableError`; every other failure is a verdict with `error`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from PIL import Image

from arr.rubrics import Criterion, Rubric

#: What a judge judges: an image, or a text (a `str`, such as a language model's response).
Candidate = Image.Image | str


class JudgeUnavailableError(RuntimeError):
    """Every request of a batch failed to reach the judge (connection refused, timeouts): the server is down.

    Raised instead of returning a batch of failed verdicts, so that training can stop or wait rather than mask
    every sample. Individual failures inside an otherwise working batch are returned as verdicts with `error`.
    """


@dataclass
class PairQuery:
    """Compare `images[0]` ("Image 1") with `images[1]` ("Image 2") for `prompt` under `rubric`; two texts are
    compared the same way ("Response 1", "Response 2")."""

    prompt: str
    images: tuple[Candidate, Candidate]
    rubric: Rubric
    source: Image.Image | None = None  # editing: the source image ("Image BASE")


@dataclass
class PairVerdict:
    """A backend's answer for one `PairQuery`, in the order the images were shown.

    `prob_first` is P(Image 1 is better); `None` when the backend failed (see `error`). A tie is 0.5.
    """

    prob_first: float | None
    reason: str = ""
    raw: str = ""
    error: str | None = None


@dataclass
class CriterionQuery:
    """Does `criterion` (one item of `rubric`) hold for `image` (an image, or a text)?"""

    prompt: str
    image: Candidate
    rubric: Rubric
    criterion: Criterion
    source: Image.Image | None = None


@dataclass
class CriterionVerdict:
    """`prob_yes` is P(criterion holds) — for an ordinal criterion (`levels` set) its credit in [0, 1], the
    expected (level - 1) / (levels - 1) — or `None` when there is no value: the judge could not assess the
    criterion (`cannot_assess`, its answer "unknown", e.g. the image does not show the part asked about), or the
    backend failed (see `error`). Cannot-assess is an answer, scored by the judge's policy; a failure is not.

    `members` (ensembles only) holds each member judge's own verdict, by member name.
    """

    prob_yes: float | None
    reason: str = ""
    raw: str = ""
    error: str | None = None
    cannot_assess: bool = False
    members: dict[str, CriterionVerdict] | None = None

    @property
    def failed(self) -> bool:
        """No value and no cannot-assess answer: the question failed (a transport error, an unreadable answer)."""
        return self.prob_yes is None and not self.cannot_assess


@runtime_checkable
class JudgeBackend(Protocol):
    """What `RubricJudge` needs from a backend."""

    name: str

    def fingerprint(self) -> str:
        """A stable string that changes whenever answers could change (model, revision, decoding settings)."""
        ...

    def judge_pairs(self, queries: Sequence[PairQuery]) -> list[PairVerdict]: ...

    def judge_criteria(self, queries: Sequence[CriterionQuery]) -> list[CriterionVerdict]: ...
