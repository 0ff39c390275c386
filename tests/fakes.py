"""Scripted judge backends for tests: predictable, position-biased and failing judges, and a scripted chat VLM."""

from __future__ import annotations

from PIL import Image

from arr.backends.base import CriterionVerdict, PairVerdict
from arr.backends.chat import ChatBackend, ChatResult


def grey(level: int) -> Image.Image:
    return Image.new("RGB", (8, 8), (level, level, level))


class BrightnessBackend:
    """Prefers the brighter image; a criterion holds with probability brightness / 255."""

    name = "brightness"

    def __init__(self) -> None:
        self.pair_calls: list[tuple[int, int]] = []
        self.criterion_calls = 0

    def fingerprint(self) -> str:
        return "brightness/v1"

    def judge_pairs(self, queries):
        out = []
        for q in queries:
            a, b = (im.getpixel((0, 0))[0] for im in q.images)
            self.pair_calls.append((a, b))
            out.append(PairVerdict(1.0 if a > b else 0.0 if a < b else 0.5, reason=f"{a} vs {b}"))
        return out

    def judge_criteria(self, queries):
        self.criterion_calls += len(queries)
        return [CriterionVerdict(q.image.getpixel((0, 0))[0] / 255) for q in queries]


class CoarseBrightnessBackend(BrightnessBackend):
    """Prefers the brighter image by quarters of the range, so that many pairs tie."""

    def fingerprint(self) -> str:
        return "coarse-brightness/v1"

    def judge_pairs(self, queries):
        out = []
        for q in queries:
            a, b = (im.getpixel((0, 0))[0] // 64 for im in q.images)
            out.append(PairVerdict(1.0 if a > b else 0.0 if a < b else 0.5, reason=f"{a} vs {b}"))
        return out


class FirstPositionBackend(BrightnessBackend):
    """A judge with pure position bias: it always prefers whatever is shown first."""

    def judge_pairs(self, queries):
        super().judge_pairs(queries)
        return [PairVerdict(0.9) for _ in queries]


class FailingBackend(BrightnessBackend):
    def judge_pairs(self, queries):
        return [PairVerdict(None, error="HTTP 503 after 4 retries") for _ in queries]

    def judge_criteria(self, queries):
        return [
            CriterionVerdict(None if q.criterion.id == "c2" else 1.0, error="unparseable") for q in queries
        ]


class ScriptedVLM(ChatBackend):
    """A chat backend that answers each request with `answer(request)` and remembers what it was asked."""

    name = "scripted"

    def __init__(self, answer) -> None:
        self.answer, self.seen = answer, []

    def fingerprint(self) -> str:
        return "scripted/v0"

    def _chat(self, requests):
        self.seen.extend(requests)
        return [ChatResult(text=self.answer(r)) for r in requests]


def gedit_answers(request) -> str:
    """Answers of a VIEScore judge: SC questions (two images) and PQ questions (one), in the formats VLMs use."""
    if len(request.images) == 2:  # SC: Image BASE and the edit
        return 'Sure. {"success": 8, "overediting": 6, "reason": "mostly right"}'
    return '```json\n{"naturalness": 9, "artifacts": 7, "reason": "clean"}\n```'


class GatedBackend(BrightnessBackend):
    """BrightnessBackend that waits for `gate` (a threading.Event) before answering each batch, so a test can hold
    a request in the judge for as long as it needs; `entered` is set once a batch is waiting."""

    def __init__(self) -> None:
        import threading

        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.batches: list[int] = []

    def judge_criteria(self, queries):
        self.entered.set()
        self.gate.wait(60)
        self.batches.append(len(queries))
        return super().judge_criteria(queries)


class SlowBackend(BrightnessBackend):
    """BrightnessBackend that takes 50 ms per question: a long batch for server process tests (`--backend
    tests.fakes:SlowBackend`)."""

    def judge_criteria(self, queries):
        import time

        time.sleep(0.05 * len(queries))
        return super().judge_criteria(queries)


class ScriptedCriteria:
    """Answers each criterion question from `answers[criterion id]`: a value, "unknown" (cannot assess), or None (a
    failed question); pairs get `prob_first`. Counts the criterion questions it was asked."""

    def __init__(self, answers: dict, name: str = "scripted", prob_first: float = 0.5) -> None:
        self.answers, self.name, self.prob_first = dict(answers), name, prob_first
        self.asked = 0

    def fingerprint(self) -> str:
        return f"scripted/{self.name}/{sorted(self.answers.items(), key=str)}/{self.prob_first}"

    def judge_pairs(self, queries):
        return [PairVerdict(self.prob_first, reason=self.name) for _ in queries]

    def judge_criteria(self, queries):
        self.asked += len(queries)
        out = []
        for q in queries:
            a = self.answers[q.criterion.id]
            if a == "unknown":
                out.append(CriterionVerdict(None, reason="cannot tell", cannot_assess=True))
            elif a is None:
                out.append(CriterionVerdict(None, error="HTTP 503"))
            else:
                out.append(CriterionVerdict(float(a), reason=f"{self.name} says {a}"))
        return out
