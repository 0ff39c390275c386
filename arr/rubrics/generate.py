"""Auto-Rubric as Reward: turn labelled preference pairs into a verified rubric guide.

    arr rubric generate --pairs eval/data/shapes_pairs_sample/pairs.json --backend pixel --out guide.json

The pipeline (the ARR paper's), for each labelled pair (prompt, image A, image B, winner, optional source):
1. *generate*: a rubric writer proposes `k` binary items that explain why the winner wins;
2. *verify*: the judge, given only those items, must pick the winner in both image orders (`RubricJudge` with
   swap), so an item set that only works through position bias fails;
3. *refine*: a failing set goes back to the writer with the failure as feedback, up to `max_refine_rounds`
   times; what still fails is discarded;
4. *structure*: all verified items are grouped into at most 5 "Theme + Tips" categories, the rubric guide that
   becomes the judge's system prompt (`Rubric.guide`).
Prompt-specific rubrics are generated zero-shot per prompt (`prompt_rubrics`) and cached by prompt in a JSONL file.

Writers implement `RubricWriter` (`write_rubric`, `refine`, `structure`): `ChatRubricWriter` asks any chat VLM
backend (hf, openai) through `ChatBackend.generate_text`; the shapes world's deterministic writer is
`arr.shapes.rubric_writer.ShapesRubricWriter` (the pixel backend's). Writers return text; this module parses it
(`Rubric.from_json`, tolerant of VLM damage), so every writer goes through the same checks. Prompts live in
versioned files (arr/templates/generate_*.txt, refine_*.txt, structure*.txt; version `GENERATE_TEMPLATE_VERSION`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from string import Template
from typing import Any

from PIL import Image

from arr.backends.base import JudgeBackend
from arr.jsonl import JSONLError, iter_jsonl
from arr.judge import PairItem, RubricJudge
from arr.rubrics.model import Criterion, GuideCategory, Rubric, as_rubric, rubric_from_obj
from arr.rubrics.parse import RubricParseError
from arr.rubrics.writer import RefineTask, RubricWriter, WriterOutput, WritesRubrics, WriteTask

logger = logging.getLogger(__name__)

GENERATE_TEMPLATE_VERSION = "v1"  # part of writer fingerprints and the prompt-rubric cache key
MAX_GUIDE_CATEGORIES = 5  # the paper's guide has at most 5 Theme + Tips categories

PASSED_FIRST = "passed_first"
PASSED_REFINED = "passed_refined"
DISCARDED = "discarded"


# ---- the chat-VLM writer ----------------------------------------------------------------------------------------


def _escape(text: str) -> str:
    from arr.backends.chat import escape_field

    return escape_field(text)


class ChatRubricWriter:
    """Writes rubrics with a chat VLM backend (hf, openai) through its `generate_text`.

    Args:
        backend: a `ChatBackend` (anything with `generate_text(requests)` and `fingerprint()`).
        max_new_tokens: answer budget per request (k items of one sentence each need about 40 tokens per item).
    """

    name = "chat"

    def __init__(self, backend: Any, max_new_tokens: int = 512) -> None:
        if not callable(getattr(backend, "generate_text", None)):
            raise TypeError(
                f"ChatRubricWriter needs a backend with generate_text() (a ChatBackend: hf, openai), "
                f"got {type(backend).__name__}"
            )
        if max_new_tokens < 1:
            raise ValueError(f"ChatRubricWriter max_new_tokens must be >= 1, got {max_new_tokens}")
        self.backend = backend
        self.max_new_tokens = max_new_tokens
        self.name = f"chat/{backend.name}"

    def fingerprint(self) -> str:
        return f"{self.backend.fingerprint()}|writer={GENERATE_TEMPLATE_VERSION}|max_new_tokens={self.max_new_tokens}"

    def _first_turn(self, t: WriteTask) -> tuple[str, dict[str, Image.Image], dict[str, str]]:
        edit = t.task == "edit"
        fields = {"prompt": _escape(t.prompt), "k": str(t.k)}
        if not t.is_pair:
            return ("generate_prompt_edit" if edit else "generate_prompt_t2i"), {}, fields
        if t.winner not in ("A", "B"):
            raise ValueError(f"pair task for {t.prompt[:60]!r}: winner must be 'A' or 'B', got {t.winner!r}")
        images = {"1": t.image_a, "2": t.image_b}
        if edit:
            if t.source is None:
                raise ValueError(f"editing pair for {t.prompt[:60]!r} needs the source image")
            images["base"] = t.source
        fields["preferred"] = "Image 1" if t.winner == "A" else "Image 2"
        return ("generate_pair_edit" if edit else "generate_pair_t2i"), images, fields

    def _request(self, t: WriteTask, history: Sequence[tuple[str, str]] = ()) -> Any:
        from arr.backends.chat import render_text

        template, images, fields = self._first_turn(t)
        return render_text(
            "generate_system", template, fields, images, history, max_new_tokens=self.max_new_tokens
        )

    def _send(self, requests: list[Any]) -> list[WriterOutput]:
        results = self.backend.generate_text(requests)
        return [
            WriterOutput(r.text, r.error, r.prompt_tokens, r.completion_tokens)
            if r.text is not None
            else WriterOutput(
                None, r.error or "the writer returned no text", r.prompt_tokens, r.completion_tokens
            )
            for r in results
        ]

    def write_rubric(self, tasks: Sequence[WriteTask]) -> list[WriterOutput]:
        return self._send([self._request(t) for t in tasks])

    def refine(self, tasks: Sequence[RefineTask]) -> list[WriterOutput]:
        requests = []
        for r in tasks:
            name = "refine_pair" if r.write.is_pair else "refine_prompt"
            feedback = Template(load_generation_template(name)).substitute(
                feedback=_escape(r.feedback), k=str(r.write.k)
            )
            requests.append(self._request(r.write, [("assistant", r.previous), ("user", feedback)]))
        return self._send(requests)

    def structure(
        self, items: Sequence[Criterion], max_categories: int, feedback: str | None = None
    ) -> WriterOutput:
        from arr.backends.chat import render_text

        lines = "\n".join(
            f"- {_escape(c.text)}" + (f" [{_escape(c.category)}]" if c.category else "") for c in items
        )
        fields = {"items": lines, "max_categories": str(max_categories)}
        history: list[tuple[str, str]] = []
        if feedback is not None:
            again = Template(load_generation_template("refine_structure")).substitute(
                feedback=_escape(feedback), max_categories=str(max_categories)
            )
            history = [("user", again)]
        request = render_text(
            "structure_system", "structure", fields, {}, history, max_new_tokens=self.max_new_tokens
        )
        return self._send([request])[0]


def load_generation_template(name: str) -> str:
    """The text of arr/templates/<name>.txt (the loader shared with the judge's templates)."""
    from arr.backends.chat import load_template

    return load_template(name)


def writer_for(backend: Any) -> RubricWriter:
    """The rubric writer of a backend: itself if it is one, the backend's own writer if it brings one (the pixel
    backend brings the shapes world's exact writer), else a chat writer for VLM backends."""
    if isinstance(backend, RubricWriter):
        return backend
    if isinstance(backend, WritesRubrics):
        return backend.rubric_writer()
    if callable(getattr(backend, "generate_text", None)):
        return ChatRubricWriter(backend)
    raise TypeError(
        f"backend {type(backend).__name__} cannot write rubrics: pass writer= (a RubricWriter), or use a chat "
        "backend (hf, openai) or the pixel backend"
    )


# ---- results ----------------------------------------------------------------------------------------------------


@dataclass
class GenerationStats:
    """What the pipeline did and what it cost. Token counts are None where no writer or judge reported any."""

    pairs: int = 0
    passed_first: int = 0
    passed_refined: int = 0
    discarded: int = 0
    parse_failures: int = 0  # answers that could not be read as rubric items (each costs a refinement round)
    refine_rounds: int = 0  # refinement requests sent, over all pairs
    items: int = 0  # verified items kept for the guide (after removing duplicates)
    writer_calls: int = 0
    judge_calls: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    writer_seconds: float = 0.0
    judge_seconds: float = 0.0
    seconds: float = 0.0
    structure_attempts: int = 0
    structure_fallback: str | None = (
        None  # why the guide was grouped by item category instead of by the writer
    )

    @property
    def calls(self) -> int:
        return self.writer_calls + self.judge_calls

    def rate(self, count: int) -> float:
        return count / self.pairs if self.pairs else 0.0

    def add_tokens(self, prompt: int | None, completion: int | None) -> None:
        if prompt is not None:
            self.prompt_tokens = (self.prompt_tokens or 0) + prompt
        if completion is not None:
            self.completion_tokens = (self.completion_tokens or 0) + completion

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["calls"] = self.calls
        data["passed_first_rate"] = self.rate(self.passed_first)
        data["passed_refined_rate"] = self.rate(self.passed_refined)
        data["discarded_rate"] = self.rate(self.discarded)
        return data


@dataclass
class PairOutcome:
    """One pair's path through the pipeline: `status` is passed_first, passed_refined or discarded."""

    id: str
    prompt: str
    status: str
    rounds: int  # refinement rounds used (0 = passed at first try)
    items: list[Criterion] = field(default_factory=list)  # the verified items (empty when discarded)
    feedback: list[str] = field(default_factory=list)  # why each failed attempt failed, in order

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "prompt": self.prompt,
            "status": self.status,
            "rounds": self.rounds,
            "items": [c.to_dict() for c in self.items],
            "feedback": list(self.feedback),
        }


@dataclass
class RubricGuide:
    """The pipeline's product: at most 5 Theme + Tips categories, the verified items behind them, and statistics.

    Saved as a rubric file (`Rubric.load` reads it: the items are its criteria, the categories its guide), with
    the statistics and per-pair outcomes beside them.
    """

    categories: list[GuideCategory]
    items: list[Criterion]
    stats: GenerationStats
    outcomes: list[PairOutcome] = field(default_factory=list)

    def apply(self, rubric: Rubric) -> Rubric:
        """`rubric` with this guide as its system-prompt guide (criteria unchanged)."""
        return Rubric(rubric.prompt, list(rubric.criteria), list(self.categories), rubric.task)

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": "",
            "task": "t2i",
            "criteria": [c.to_dict() for c in self.items],
            "guide": [g.to_dict() for g in self.categories],
            "stats": self.stats.to_dict(),
            "pairs": [o.to_dict() for o in self.outcomes],
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    @staticmethod
    def load_categories(path: str | Path) -> list[GuideCategory]:
        """The guide categories of a saved guide (or of any rubric file with a guide)."""
        rubric = Rubric.load(path)
        if not rubric.guide:
            raise RubricParseError(f"{path}: no 'guide' categories in this file (expected a guide.json)")
        return rubric.guide


# ---- parsing ----------------------------------------------------------------------------------------------------


def parse_items(text: str, prompt: str, task: str, k: int) -> list[Criterion]:
    """The rubric items in a writer's answer (at most `k`, ids made unique); raises RubricParseError."""
    rubric = Rubric.from_json(text, prompt=prompt)
    if not rubric.criteria:
        raise RubricParseError("the answer holds no rubric items")
    return [
        Criterion(f"c{i}", c.text, c.weight, c.category, c.check, c.levels)
        for i, c in enumerate(rubric.criteria[:k], 1)
    ]


def _json_values(text: str) -> Iterable[Any]:
    decoder = json.JSONDecoder()
    for i, ch in enumerate(text):
        if ch in "{[":
            try:
                value, _ = decoder.raw_decode(text, i)
            except json.JSONDecodeError:
                continue
            yield value


def parse_guide(text: str, max_categories: int) -> list[GuideCategory]:
    """Guide categories from a writer's answer `{"guide": [{"theme", "tips"}]}` (or a bare list); raises
    RubricParseError when there is none or there are more than `max_categories`."""
    for value in _json_values(text):
        if isinstance(value, dict):
            value = next((value[k] for k in ("guide", "categories", "themes") if k in value), None)
        if not isinstance(value, (list, dict)) or not value:
            continue
        try:
            # The guide reader lives with the rubric reader; a placeholder criterion satisfies its rubric check.
            guide = rubric_from_obj({"criteria": ["-"], "guide": value}).guide
        except RubricParseError:
            continue
        if len(guide) > max_categories:
            raise RubricParseError(
                f"the guide has {len(guide)} categories; at most {max_categories} are allowed"
            )
        if guide:
            return guide
    raise RubricParseError(
        'no guide found: expected JSON {"guide": [{"theme": "...", "tips": ["..."]}, ...]}, '
        f"got {text[:120]!r}"
    )


def group_by_category(items: Sequence[Criterion], max_categories: int) -> list[GuideCategory]:
    """A guide made by grouping items by their category (largest first; the rest merged into "Other details").

    The fallback when a writer gives no usable guide: every verified item still reaches the judge, as a tip.
    """
    groups: dict[str, list[str]] = {}
    for c in items:
        groups.setdefault((c.category or "general").strip() or "general", []).append(c.text)
    ordered = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    if len(ordered) > max_categories:
        head = ordered[: max_categories - 1]
        rest = [t for _, texts in ordered[max_categories - 1 :] for t in texts]
        ordered = [*head, ("other details", rest)]
    return [
        GuideCategory(theme=name.capitalize(), tips=list(dict.fromkeys(texts))) for name, texts in ordered
    ]


# ---- the generator ----------------------------------------------------------------------------------------------


class RubricGenerator:
    """Generate -> verify -> refine -> structure, plus zero-shot prompt rubrics.

    Args:
        backend: the judge backend that verifies item sets (and, unless `writer` is given, writes them).
        k: rubric items asked per pair (the paper uses 5).
        max_refine_rounds: refinements of a failing item set before it is discarded (the paper uses 5).
        writer: who writes the items; default `writer_for(backend)`.
        judge: the verifying judge; default `RubricJudge(backend, swap=True)` (both image orders).
        max_categories: guide categories at most.
    """

    def __init__(
        self,
        backend: JudgeBackend,
        k: int = 5,
        max_refine_rounds: int = 5,
        writer: RubricWriter | None = None,
        judge: RubricJudge | None = None,
        max_categories: int = MAX_GUIDE_CATEGORIES,
    ) -> None:
        if k < 1:
            raise ValueError(f"RubricGenerator k (items per pair) must be >= 1, got {k}")
        if max_refine_rounds < 0:
            raise ValueError(f"RubricGenerator max_refine_rounds must be >= 0, got {max_refine_rounds}")
        if max_categories < 1:
            raise ValueError(f"RubricGenerator max_categories must be >= 1, got {max_categories}")
        self.backend = backend
        self.k = k
        self.max_refine_rounds = max_refine_rounds
        self.writer = writer if writer is not None else writer_for(backend)
        self.judge = judge if judge is not None else RubricJudge(backend, swap=True)
        if not self.judge.swap:
            raise ValueError(
                "RubricGenerator verifies in both image orders: pass a RubricJudge with swap=True"
            )
        self.max_categories = max_categories
        self.stats = GenerationStats()

    # -- bookkeeping --

    def _write(self, fn: Any, tasks: Sequence[Any]) -> list[WriterOutput]:
        if not tasks:
            return []
        start = time.perf_counter()
        outputs = fn(tasks)
        self.stats.writer_seconds += time.perf_counter() - start
        self.stats.writer_calls += len(tasks)
        if len(outputs) != len(tasks):
            raise RuntimeError(
                f"rubric writer {self.writer.name!r} gave {len(outputs)} answers for {len(tasks)} tasks"
            )
        for o in outputs:
            self.stats.add_tokens(o.prompt_tokens, o.completion_tokens)
        return outputs

    def _judge_tokens(self) -> Any:
        usage = getattr(self.judge.backend, "token_usage", None)
        return usage.copy() if usage is not None else None

    # -- generate / verify / refine --

    def _verify(
        self, tasks: Sequence[WriteTask], answers: Sequence[WriterOutput]
    ) -> list[tuple[list[Criterion] | None, str | None]]:
        """For each answer: (items, None) when the judge recovers the label in both orders, else (None, feedback)."""
        out: list[tuple[list[Criterion] | None, str | None]] = [(None, None)] * len(tasks)
        parsed: list[tuple[int, list[Criterion]]] = []
        for i, (t, a) in enumerate(zip(tasks, answers, strict=True)):
            if a.text is None:
                out[i] = (None, f"the writer failed: {a.error}")
                continue
            try:
                parsed.append((i, parse_items(a.text, t.prompt, t.task, t.k)))
            except RubricParseError as e:
                self.stats.parse_failures += 1
                out[i] = (None, f"the answer could not be read as rubric items: {e}")
        items = [
            PairItem(
                tasks[i].prompt,
                tasks[i].image_a,
                tasks[i].image_b,
                Rubric(tasks[i].prompt, crit, task=tasks[i].task),
                tasks[i].source,
            )
            for i, crit in parsed
        ]
        before = (self.judge.stats.calls, self.judge.stats.seconds)
        usage = self._judge_tokens()
        judgments = self.judge.compare_many(items) if items else []
        self.stats.judge_calls += self.judge.stats.calls - before[0]
        self.stats.judge_seconds += self.judge.stats.seconds - before[1]
        if usage is not None:
            # Only the judge's questions run between the two readings, so the difference is the judge's tokens.
            now = self.judge.backend.token_usage  # type: ignore[attr-defined]
            if now.requests - now.unknown > usage.requests - usage.unknown:
                self.stats.add_tokens(
                    now.prompt_tokens - usage.prompt_tokens, now.completion_tokens - usage.completion_tokens
                )
        for (i, crit), j in zip(parsed, judgments, strict=True):
            want = 0 if tasks[i].winner == "A" else 1
            preferred = "Image 1" if want == 0 else "Image 2"
            if not j.ok:
                out[i] = (None, f"the judge could not use these items: {j.error}")
            elif j.preferred == want:
                out[i] = (crit, None)
            elif not j.consistent:
                out[i] = (
                    None,
                    "with only these items the judge's verdict changed when the two images were swapped, so the "
                    f"items do not separate them; {preferred} should win in both orders",
                )
            elif j.preferred is None:
                out[i] = (
                    None,
                    f"with only these items the judge found the two images equal; {preferred} should win",
                )
            else:
                reason = next((r for r in j.reasons if r), "")
                out[i] = (
                    None,
                    f"with only these items the judge preferred the other image, but {preferred} is the preferred "
                    "one" + (f" (the judge said: {reason[:300]})" if reason else ""),
                )
        return out

    def generate(self, pairs: Sequence[Any]) -> RubricGuide:
        """Run the whole pipeline on labelled pairs and return the guide (see `RubricGuide`).

        A pair is anything with `prompt`, `image_a`, `image_b`, `winner` ("A"/"B") and optionally `source`, `task`
        and `id` (e.g. `arr.shapes.pairs.PreferencePair`, or what the `arr.evaluation.preference_benchmarks`
        loaders return).
        """
        start = time.perf_counter()
        outcomes = self.verify_pairs(pairs)
        guide = self.structure([c for o in outcomes for c in o.items])
        self.stats.seconds += time.perf_counter() - start
        return RubricGuide(guide, self._unique(outcomes), self.stats, outcomes)

    def verify_pairs(self, pairs: Sequence[Any]) -> list[PairOutcome]:
        """Steps 1-3 (generate, verify, refine) for every pair; updates `self.stats`."""
        tasks: list[WriteTask] = []
        for n, p in enumerate(pairs):
            winner = getattr(p, "winner", None)
            if winner not in ("A", "B"):
                raise ValueError(f"pair {getattr(p, 'id', n)!r}: winner must be 'A' or 'B', got {winner!r}")
            source = getattr(p, "source", None)
            task = getattr(p, "task", None) or ("edit" if source is not None else "t2i")
            tasks.append(WriteTask(p.prompt, self.k, task, p.image_a, p.image_b, winner, source))
        ids = [str(getattr(p, "id", f"pair-{n:05d}")) for n, p in enumerate(pairs)]
        self.stats.pairs += len(tasks)

        outcomes: list[PairOutcome | None] = [None] * len(tasks)
        feedback: list[list[str]] = [[] for _ in tasks]
        answers = self._write(self.writer.write_rubric, tasks)
        todo = list(range(len(tasks)))
        for rnd in range(self.max_refine_rounds + 1):
            verdicts = self._verify([tasks[i] for i in todo], [answers[i] for i in todo])
            failed = []
            for i, (items, why) in zip(todo, verdicts, strict=True):
                if items is not None:
                    status = PASSED_FIRST if rnd == 0 else PASSED_REFINED
                    outcomes[i] = PairOutcome(ids[i], tasks[i].prompt, status, rnd, items, feedback[i])
                else:
                    feedback[i].append(why or "failed")
                    failed.append(i)
            todo = failed
            if not todo or rnd == self.max_refine_rounds:
                break
            refine = [RefineTask(tasks[i], answers[i].text or "", feedback[i][-1], rnd + 1) for i in todo]
            self.stats.refine_rounds += len(refine)
            for i, a in zip(todo, self._write(self.writer.refine, refine), strict=True):
                answers[i] = a
        for i in todo:
            outcomes[i] = PairOutcome(
                ids[i], tasks[i].prompt, DISCARDED, self.max_refine_rounds, [], feedback[i]
            )

        done = [o for o in outcomes if o is not None]
        self.stats.passed_first += sum(o.status == PASSED_FIRST for o in done)
        self.stats.passed_refined += sum(o.status == PASSED_REFINED for o in done)
        self.stats.discarded += sum(o.status == DISCARDED for o in done)
        return done

    @staticmethod
    def _unique(outcomes: Sequence[PairOutcome]) -> list[Criterion]:
        seen: dict[str, Criterion] = {}
        for o in outcomes:
            for c in o.items:
                key = " ".join(c.text.lower().split())
                if key not in seen:
                    seen[key] = Criterion(
                        f"g{len(seen) + 1}", c.text, c.weight, c.category, c.check, c.levels
                    )
        return list(seen.values())

    # -- structure --

    def structure(self, items: Sequence[Criterion]) -> list[GuideCategory]:
        """Step 4: the writer groups verified items into at most `max_categories` Theme + Tips categories.

        An unusable answer is retried with feedback (up to `max_refine_rounds` times); if none works, the items are
        grouped by their own category instead, and `stats.structure_fallback` says why.
        """
        unique = self._unique([PairOutcome("", "", PASSED_FIRST, 0, list(items))])
        self.stats.items = len(unique)
        if not unique:
            self.stats.structure_fallback = "no verified items to structure"
            return []
        feedback: str | None = None
        for _ in range(self.max_refine_rounds + 1):
            self.stats.structure_attempts += 1
            start = time.perf_counter()
            answer = self.writer.structure(unique, self.max_categories, feedback)
            self.stats.writer_seconds += time.perf_counter() - start
            self.stats.writer_calls += 1
            self.stats.add_tokens(answer.prompt_tokens, answer.completion_tokens)
            if answer.text is None:
                feedback = f"the writer failed: {answer.error}"
                continue
            try:
                return parse_guide(answer.text, self.max_categories)
            except RubricParseError as e:
                feedback = str(e)
        self.stats.structure_fallback = (
            f"grouped by item category after {self.stats.structure_attempts} tries: {feedback}"
        )
        logger.warning("rubric guide: %s", self.stats.structure_fallback)
        return group_by_category(unique, self.max_categories)

    # -- zero-shot prompt rubrics --

    def prompt_rubrics(
        self,
        prompts: Sequence[str],
        task: str = "t2i",
        cache: str | Path | None = None,
        sources: Sequence[Image.Image | None] | None = None,
    ) -> list[Rubric | None]:
        """A rubric of `k` items per prompt, written zero-shot (no images), cached by prompt in a JSONL file.

        Unreadable answers are retried with feedback up to `max_refine_rounds` times; a prompt that still fails
        gets None (and a warning). Cached entries are keyed by the writer's fingerprint, `k`, `task` and prompt.
        """
        if task not in ("t2i", "edit"):
            raise ValueError(f"prompt_rubrics task must be 't2i' or 'edit', got {task!r}")
        store = PromptRubricCache(cache) if cache is not None else None
        keys = [self._prompt_key(p, task) for p in prompts]
        out: list[Rubric | None] = [None] * len(prompts)
        hits = store.get_many(keys) if store is not None else {}
        todo: list[int] = []
        for i, key in enumerate(keys):
            if key in hits:
                out[i] = hits[key]
            else:
                todo.append(i)
        # Identical prompts are written once.
        first: dict[str, int] = {}
        for i in todo:
            first.setdefault(keys[i], i)
        unique = list(first.values())
        tasks = [
            WriteTask(prompts[i], self.k, task, source=sources[i] if sources is not None else None)
            for i in unique
        ]
        answers = self._write(self.writer.write_rubric, tasks)
        pending = list(range(len(tasks)))
        results: list[Rubric | None] = [None] * len(tasks)
        errors: list[str] = [""] * len(tasks)
        for rnd in range(self.max_refine_rounds + 1):
            failed = []
            for j in pending:
                a = answers[j]
                if a.text is None:
                    errors[j] = f"the writer failed: {a.error}"
                    failed.append(j)
                    continue
                try:
                    items = parse_items(a.text, tasks[j].prompt, task, self.k)
                    results[j] = Rubric(tasks[j].prompt, items, task=task)
                except RubricParseError as e:
                    self.stats.parse_failures += 1
                    errors[j] = f"the answer could not be read as rubric items: {e}"
                    failed.append(j)
            pending = failed
            if not pending or rnd == self.max_refine_rounds:
                break
            refine = [RefineTask(tasks[j], answers[j].text or "", errors[j], rnd + 1) for j in pending]
            for j, a in zip(pending, self._write(self.writer.refine, refine), strict=True):
                answers[j] = a
        for j in pending:
            logger.warning("no rubric for prompt %r: %s", tasks[j].prompt[:80], errors[j])
        if store is not None:
            store.put_many([(keys[i], r) for i, r in zip(unique, results, strict=True) if r is not None])
        by_key = {keys[i]: r for i, r in zip(unique, results, strict=True)}
        for i in todo:
            out[i] = by_key[keys[i]]
        return out

    def _prompt_key(self, prompt: str, task: str) -> str:
        raw = json.dumps(
            {
                "writer": self.writer.fingerprint(),
                "k": self.k,
                "task": task,
                "prompt": prompt,
                "templates": GENERATE_TEMPLATE_VERSION,
            },
            sort_keys=True,
        )
        return hashlib.sha256(raw.encode("utf-8")).hexdigest()


class PromptRubricCache:
    """Zero-shot prompt rubrics in a JSONL file, one `{"key", "prompt", "rubric"}` object per line, append-only.

    JSONL rather than the sqlite judgment cache: the file is also the product (`arr rubric prompts --out`), easy
    to read, diff and hand-edit; a later line for the same key wins.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _read(self) -> dict[str, Rubric]:
        found: dict[str, Rubric] = {}
        if not self.path.exists():
            return found
        try:
            for n, record in iter_jsonl(self.path, strict=True):
                if not isinstance(record.get("key"), str) or "rubric" not in record:
                    raise RubricParseError(
                        f"{self.path}:{n}: not a prompt-rubric cache line (needs key and rubric)"
                    )
                found[record["key"]] = as_rubric(record["rubric"], f"{self.path}:{n}")
        except JSONLError as e:
            raise RubricParseError(f"{e} (a prompt-rubric cache line)") from None
        return found

    def get_many(self, keys: Sequence[str]) -> dict[str, Rubric]:
        cached = self._read()
        return {k: cached[k] for k in keys if k in cached}

    def put_many(self, entries: Sequence[tuple[str, Rubric]]) -> None:
        if not entries:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            for key, rubric in entries:
                f.write(
                    json.dumps(
                        {"key": key, "prompt": rubric.prompt, "rubric": rubric.to_dict()}, ensure_ascii=False
                    )
                    + "\n"
                )


def load_prompt_rubrics(path: str | Path) -> dict[str, Rubric]:
    """Rubrics by prompt from a JSONL file written by `prompt_rubrics` / `arr rubric prompts` (later lines win)."""
    return {r.prompt: r for r in PromptRubricCache(path)._read().values()}


__all__ = [
    "DISCARDED",
    "GENERATE_TEMPLATE_VERSION",
    "MAX_GUIDE_CATEGORIES",
    "PASSED_FIRST",
    "PASSED_REFINED",
    "ChatRubricWriter",
    "GenerationStats",
    "PairOutcome",
    "PromptRubricCache",
    "RefineTask",
    "RubricGenerator",
    "RubricGuide",
    "RubricWriter",
    "WriteTask",
    "WriterOutput",
    "group_by_category",
    "load_prompt_rubrics",
    "parse_guide",
    "parse_items",
    "writer_for",
]
