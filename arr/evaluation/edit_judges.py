"""Benchmark judges for edits: the scoring protocols of GEdit-Bench (VIEScore SC / PQ) and ImgEdit-Bench (1-5).

Both ask a chat VLM (any `ChatBackend`: `hf` or `openai`) with our own prompt text (arr/templates/eval_*.txt,
version `PROMPT_VERSION`, recorded with every result) that implements the benchmark's published definition:

- GEdit-Bench / VIEScore: semantic consistency SC = min(instruction success, no over-editing), both 0-10, asked
  with Image BASE and the edit; perceptual quality PQ = min(naturalness, no artifacts), both 0-10, asked with the
  edit alone; overall O = sqrt(SC * PQ) per sample, averaged.
- ImgEdit-Bench: prompt compliance, visual naturalness and physical/detail integrity, each 1-5, with a per-edit-type
  emphasis; the sample's score is their mean, averaged per edit type.

`PixelEditJudge` is the shapes world's exact stand-in on the GEdit scales: SC = 10 x instruction score and
PQ = 10 x preservation score of the pixel judge (the shapes world has no photographic quality to rate; what it can
get wrong besides the instruction is everything else in the image), so O = 10 x sqrt(I x P), the pixel judge's own
editing score.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, Protocol

from PIL import Image

from arr.backends.chat import ChatBackend, escape_field, json_objects, render_text
from arr.evaluation.edit_benchmarks import EditSample

PROMPT_VERSION = "v1"
PROTOCOLS = ("viescore", "imgedit")
MAX_NEW_TOKENS = 200

# Our wording of what each ImgEdit edit type is judged on (the benchmark uses one prompt per type).
IMGEDIT_GUIDANCE: dict[str, str] = {
    "add": "the new object is present, complete, at a sensible place and scale, and nothing else moved.",
    "remove": "the object is entirely gone, the area behind it is filled plausibly, and nothing else was removed.",
    "replace": "the named object is swapped for the requested one at the same place, with no remnants of the old one.",
    "adjust": "the named attribute (colour, material, size, ...) of the named object changed as asked, and only it.",
    "style": "the whole image takes the requested style while keeping its content and layout recognisable.",
    "background": "the background changed as asked while the foreground subjects stay intact and well cut out.",
    "extract": "the named object is isolated cleanly and completely, without pieces of other objects.",
    "action": "the subject's pose or action changed as asked while its identity and the scene stay the same.",
    "compose": "every one of the several requested changes is made, each as asked, and nothing else.",
}
DEFAULT_GUIDANCE = "the requested change is made exactly as asked and everything else is preserved."


class EditJudge(Protocol):
    """Scores edits for one benchmark protocol; one dict per sample: {"scores": {...}, "reason", "error"}."""

    protocol: str

    def fingerprint(self) -> str: ...

    def judge(self, samples: Sequence[EditSample], edits: Sequence[Image.Image]) -> list[dict[str, Any]]: ...


def parse_scores(
    text: str, keys: Sequence[str], low: float, high: float
) -> tuple[dict[str, float] | None, str, str | None]:
    """(scores, reason, error) from a JSON answer with numeric `keys` in [low, high]; tolerant of prose around it."""
    cleaned = re.sub(r"```(?:json)?", "", text or "", flags=re.IGNORECASE)
    found: dict[str, Any] = {}
    reason = ""
    for obj in json_objects(cleaned):
        if any(k in obj for k in keys):
            found = obj
            reason = obj.get("reason") if isinstance(obj.get("reason"), str) else ""
            break
    if not found:  # e.g. an answer cut off before its closing brace
        for k in keys:
            m = re.search(rf'["\']?{re.escape(k)}["\']?\s*[:=]\s*["\']?(-?\d+(?:\.\d+)?)', cleaned)
            if m:
                found[k] = m.group(1)
    scores: dict[str, float] = {}
    for k in keys:
        value = found.get(k)
        try:
            number = float(value)
        except (TypeError, ValueError):
            return None, reason, f"judge answer lacks a numeric {k!r}: {text[:160]!r}"
        if not low <= number <= high or not math.isfinite(number):
            return None, reason, f"judge answer has {k}={number}; expected {low:g}..{high:g}"
        scores[k] = number
    return scores, reason, None


class _ChatJudge:
    """Shared part of the VLM protocols: render, ask the backend once per batch (the `openai` backend sends the
    batch's requests in parallel, `hf` batches them on the device), parse."""

    protocol = ""

    def __init__(self, backend: ChatBackend, max_new_tokens: int = MAX_NEW_TOKENS) -> None:
        if not hasattr(backend, "generate_text"):
            raise ValueError(
                f"the {self.protocol} judge needs a chat VLM backend (hf or openai); {getattr(backend, 'name', backend)!r} "
                "cannot answer free-text questions"
            )
        self.backend = backend
        self.max_new_tokens = max_new_tokens

    def fingerprint(self) -> str:
        return f"{self.protocol}/{PROMPT_VERSION}/{self.backend.fingerprint()}"

    def _ask(self, requests: list[Any]) -> list[tuple[str | None, str | None]]:
        results = self.backend.generate_text(requests)
        return [(r.text, r.error) for r in results]


class VIEScoreJudge(_ChatJudge):
    """GEdit-Bench's VIEScore protocol: SC and PQ on 0-10, O = sqrt(SC * PQ)."""

    protocol = "viescore"

    def judge(self, samples: Sequence[EditSample], edits: Sequence[Image.Image]) -> list[dict[str, Any]]:
        requests = []
        for s, edit in zip(samples, edits, strict=True):
            fields = {"instruction": escape_field(s.instruction)}
            requests.append(
                render_text(
                    "eval_edit_system",
                    "eval_gedit_sc",
                    fields,
                    {"base": s.source, "1": edit},
                    max_new_tokens=self.max_new_tokens,
                )
            )
            requests.append(
                render_text(
                    "eval_edit_system", "eval_gedit_pq", {}, {"1": edit}, max_new_tokens=self.max_new_tokens
                )
            )
        answers = self._ask(requests)
        out = []
        for k in range(len(samples)):
            (sc_text, sc_err), (pq_text, pq_err) = answers[2 * k], answers[2 * k + 1]
            if sc_text is None or pq_text is None:
                out.append({"scores": None, "reason": "", "error": sc_err or pq_err or "no answer"})
                continue
            sc, sc_reason, e1 = parse_scores(sc_text, ("success", "overediting"), 0, 10)
            pq, pq_reason, e2 = parse_scores(pq_text, ("naturalness", "artifacts"), 0, 10)
            if sc is None or pq is None:
                out.append({"scores": None, "reason": "", "error": e1 or e2, "raw": [sc_text, pq_text]})
                continue
            out.append(
                {
                    "scores": viescore(sc["success"], sc["overediting"], pq["naturalness"], pq["artifacts"]),
                    "reason": f"SC: {sc_reason} PQ: {pq_reason}".strip(),
                    "error": None,
                }
            )
        return out


def viescore(success: float, overediting: float, naturalness: float, artifacts: float) -> dict[str, float]:
    """VIEScore's combination: SC = min of the two consistency ratings, PQ = min of the two quality ratings."""
    sc = min(success, overediting)
    pq = min(naturalness, artifacts)
    return {
        "SC": sc,
        "PQ": pq,
        "O": math.sqrt(sc * pq),
        "success": success,
        "overediting": overediting,
        "naturalness": naturalness,
        "artifacts": artifacts,
    }


IMGEDIT_KEYS = ("prompt_compliance", "visual_naturalness", "physical_integrity")


class ImgEditJudge(_ChatJudge):
    """ImgEdit-Bench's protocol: three 1-5 ratings with a per-edit-type emphasis; score = their mean."""

    protocol = "imgedit"

    def judge(self, samples: Sequence[EditSample], edits: Sequence[Image.Image]) -> list[dict[str, Any]]:
        requests = []
        for s, edit in zip(samples, edits, strict=True):
            fields = {
                "instruction": escape_field(s.instruction),
                "edit_type": escape_field(s.category or "edit"),
                "type_guidance": IMGEDIT_GUIDANCE.get(s.category, DEFAULT_GUIDANCE),
            }
            requests.append(
                render_text(
                    "eval_edit_system",
                    "eval_imgedit",
                    fields,
                    {"base": s.source, "1": edit},
                    max_new_tokens=self.max_new_tokens,
                )
            )
        out = []
        for text, error in self._ask(requests):
            if text is None:
                out.append({"scores": None, "reason": "", "error": error or "no answer"})
                continue
            scores, reason, err = parse_scores(text, IMGEDIT_KEYS, 1, 5)
            if scores is None:
                out.append({"scores": None, "reason": reason, "error": err, "raw": text})
                continue
            scores["score"] = sum(scores[k] for k in IMGEDIT_KEYS) / len(IMGEDIT_KEYS)
            out.append({"scores": scores, "reason": reason, "error": None})
        return out


class PixelEditJudge:
    """The shapes world's exact judge on GEdit's scales (see the module docstring); needs shapes-world samples."""

    protocol = "viescore"

    def __init__(self, strict: bool = True) -> None:
        from arr.backends.pixel import PixelBackend

        self.backend = PixelBackend(strict=strict)

    def fingerprint(self) -> str:
        return f"viescore-pixel/{PROMPT_VERSION}/{self.backend.fingerprint()}"

    def judge(self, samples: Sequence[EditSample], edits: Sequence[Image.Image]) -> list[dict[str, Any]]:
        from arr.shapes.detect import analyze
        from arr.shapes.edits import edit_correct, rubric_for_edit

        out = []
        for s, image in zip(samples, edits, strict=True):
            edit = s.extra.get("edit")
            if edit is None:
                out.append(
                    {
                        "scores": None,
                        "reason": "",
                        "error": f"sample {s.id}: the pixel judge scores shapes-world edits only (no exact edit "
                        "attached); use --backend hf or openai for this benchmark",
                    }
                )
                continue
            if image.size != s.source.size:
                image = image.resize(s.source.size, Image.NEAREST)
            report = analyze(image)
            details = self.backend.score_details(image, rubric_for_edit(edit), s.source)
            i = float(details["instruction"])
            p = 1.0 if details["preservation"] is None else float(details["preservation"])
            failed = [c["id"] for c in details["criteria"] if c["holds"] is False]
            out.append(
                {
                    "scores": {
                        "SC": 10.0 * i,
                        "PQ": 10.0 * p,
                        "O": 10.0 * math.sqrt(i * p),
                        "instruction": i,
                        "preservation": p,
                        "correct": float(edit_correct(edit, report, strict=self.backend.strict)),
                    },
                    "reason": f"failed: {', '.join(failed) or 'none'}",
                    "error": None,
                }
            )
        return out


def make_edit_judge(protocol: str, backend: Any) -> EditJudge:
    """The judge for a suite's protocol on a backend (`pixel` gives the shapes world's exact judge)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown judge protocol {protocol!r}; expected one of {PROTOCOLS}")
    if getattr(backend, "name", "") == "pixel":
        if protocol != "viescore":
            raise ValueError(
                f"the pixel judge scores shapes-world edits on GEdit's SC/PQ scales only; protocol {protocol!r} "
                "needs a VLM judge (--backend hf or openai)"
            )
        return PixelEditJudge(strict=getattr(backend, "strict", True))
    return (VIEScoreJudge if protocol == "viescore" else ImgEditJudge)(backend)


__all__ = [
    "IMGEDIT_GUIDANCE",
    "IMGEDIT_KEYS",
    "PROMPT_VERSION",
    "PROTOCOLS",
    "EditJudge",
    "ImgEditJudge",
    "PixelEditJudge",
    "VIEScoreJudge",
    "make_edit_judge",
    "parse_scores",
    "viescore",
]
