"""Shared logic for chat VLM judges: prompt rendering, answer parsing and choice-token probabilities.

`hf` and `openai` differ only in how a chat request travels (a local forward pass or an HTTP call); everything that
decides what the judge is asked and how its answer becomes a probability lives here, so both backends ask the same
question and read answers the same way. Subclasses of `ChatBackend` implement `_chat` (transport) and
`fingerprint`.

Prompts come from `arr/templates/*.txt` (version `TEMPLATE_VERSION`, part of every backend fingerprint, so changing
a template invalidates cached judgments). User-supplied text (the prompt or editing instruction, the rubric criteria
and the guide) is quoted as data inside delimited fields (<prompt>...</prompt>) after escaping `&`, `<` and `>`, so
a hostile prompt can neither close its field nor smuggle in chat-control tokens such as `<|im_end|>`.

Texts are judged too: a candidate that is a `str` (a language model's response) is asked about with the `*_text`
templates, which quote it as data in a <response> field instead of showing an image; everything else (choices,
answer parsing, probabilities) is the same.

Ordinal criteria (`Criterion.levels = N`) are asked as "rate from 1 to N" questions (templates
`user_criterion_ordinal_*`, `system_criterion_ordinal`) with the choices "1".."N". Their `CriterionVerdict.prob_yes`
carries the criterion's *credit* in [0, 1] rather than a probability: the expected (level - 1) / (N - 1) under the
judge's renormalised distribution over the N digits where a backend reads token probabilities, or the parsed
rating's credit where it reads text. `Rubric.score` weighs it exactly like a yes-probability.

Every criterion question (yes/no or rating) also offers the answer "unknown" (`CANNOT_ASSESS_ANSWER`) for a criterion
the image cannot show. It is the request's last choice: where a backend reads token probabilities, the verdict is
"cannot assess" when "unknown" holds more probability than all the other answers together, and otherwise the other
answers are renormalised without it; where it reads text, a leading "unknown" (or "n/a", "cannot assess", ...) is
that verdict. `RubricJudge` scores such criteria by its cannot-assess policy (arr/rubrics/scoring.py).
"""

from __future__ import annotations

import json
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources
from string import Template
from typing import Any, Literal

from PIL import Image

from arr.backends.base import (
    CriterionQuery,
    CriterionVerdict,
    JudgeUnavailableError,
    PairQuery,
    PairVerdict,
)
from arr.rubrics import Criterion, GuideCategory

# v2: criterion questions end with the criterion (answer instructions before it), so questions about one image share
# every token up to the criterion and the hf backend's shared-prefix judging reuses all of it (bench/judge_prefix.py).
# v3: criterion questions offer "unknown" for a criterion the image cannot show (pair questions are unchanged).
TEMPLATE_VERSION = "v3"

# Choice tokens read from the judge's answer: the rank of Image 1 in `{"rank": [r1, r2]}`, and yes/no.
PAIR_CHOICES: tuple[str, str] = ("1", "2")
CRITERION_CHOICES: tuple[str, str] = ("yes", "no")
# The cannot-assess answer, offered (last) in every criterion question. One word that common tokenizers keep whole,
# so that its probability can be read from one position like "yes" and "no".
CANNOT_ASSESS_ANSWER = "unknown"
# The answer is teacher-forced up to the choice token when a backend can score it (hf mode="probs").
PAIR_ANSWER_PREFIX = '{"rank": ['
CRITERION_ANSWER_PREFIX = ""
ORDINAL_ANSWER_PREFIX = ""

_IMAGE_MARKER = re.compile(r"\[\[image:(base|1|2)\]\]")


# ---- templates --------------------------------------------------------------------------------------------------


@cache
def load_template(name: str) -> str:
    """The text of `arr/templates/<name>.txt`."""
    path = resources.files("arr").joinpath("templates", f"{name}.txt")
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"no judge prompt template {name!r} (expected arr/templates/{name}.txt)") from None


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def escape_field(text: str) -> str:
    """Escape text quoted inside a <field>...</field> so it cannot close the field or form special tokens.

    Lone surrogates (bytes that were not UTF-8, decoded with surrogateescape, e.g. from argv) become U+FFFD:
    neither JSON-over-HTTP nor tokenizers can encode them, and the judge could not read those bytes anyway.
    """
    text = _LONE_SURROGATE.sub("\ufffd", text)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def format_criteria(criteria: Iterable[Criterion]) -> str:
    """One line per criterion, `- [id] text`; negative weights are marked as penalties."""
    lines = []
    for c in criteria:
        mark = " (penalty)" if c.weight < 0 else ""
        lines.append(f"- [{escape_field(c.id)}]{mark} {escape_field(c.text)}")
    return "\n".join(lines) if lines else "- (no criteria: judge by the prompt alone)"


def format_guide(guide: Sequence[GuideCategory], template: str = "guide") -> str:
    """The guide block for the system prompt, or "" when the rubric has no guide."""
    if not guide:
        return ""
    lines = []
    for i, cat in enumerate(guide, 1):
        lines.append(f"{i}. Theme: {escape_field(cat.theme)}")
        lines.extend(f"   - Tip: {escape_field(tip)}" for tip in cat.tips)
    return Template(load_template(template)).substitute(guide="\n".join(lines))


def _system_message(
    kind: str, guide: Sequence[GuideCategory], fields: Mapping[str, str] | None = None, text: bool = False
) -> dict[str, Any]:
    """The system turn of a `kind` question ("pair", "criterion", ...); `text` picks the templates for texts."""
    suffix = "_text" if text else ""
    guide_block = format_guide(guide, "guide" + suffix)
    body = Template(load_template(f"system_{kind}{suffix}")).substitute(dict(fields or {}), guide=guide_block)
    return {"role": "system", "content": [{"type": "text", "text": body.strip()}]}


def _user_message(
    template: str, images: Mapping[str, Image.Image], fields: Mapping[str, str]
) -> dict[str, Any]:
    """Split the template at its image markers *before* substituting, so user text can never add an image."""
    content: list[dict[str, Any]] = []
    pieces = _IMAGE_MARKER.split(template)
    # re.split with one group alternates text, marker name, text, ...
    for i, piece in enumerate(pieces):
        if i % 2 == 1:
            content.append({"type": "image", "image": images[piece]})
        else:
            text = Template(piece).substitute(fields)
            if text:
                content.append({"type": "text", "text": text})
    if content and content[-1]["type"] == "text":
        content[-1]["text"] = content[-1]["text"].rstrip("\n")
    return {"role": "user", "content": content}


@dataclass
class ChatRequest:
    """One judge question as chat messages (OpenAI-style parts; images are PIL images in `{"type": "image"}`).

    `choices` are the answer tokens whose probabilities decide the verdict: two for pairs (first = Image 1 wins)
    and yes/no criteria (first = yes), "1".."N" for an ordinal criterion, which also sets `levels` = N (so that a
    2-level ordinal item, rated "1"/"2", is not read as yes/no); criterion questions end their choices with
    `CANNOT_ASSESS_ANSWER`. `answer_prefix` is the start of the answer a backend
    may teacher-force before reading them. Kind "text" is a free-text request (rubric writing, arr/rubrics/generate.py): it
    is always answered by generation and has no choices.
    """

    kind: Literal["pair", "criterion", "text"]
    messages: list[dict[str, Any]]
    choices: tuple[str, ...]
    answer_prefix: str
    max_new_tokens: int | None = None  # "text" requests: the answer budget (None: the backend's default)
    levels: int | None = None  # ordinal criterion requests: the scale 1..levels (None: not ordinal)

    @property
    def images(self) -> list[Image.Image]:
        return [p["image"] for m in self.messages for p in m["content"] if p["type"] == "image"]


@dataclass
class ChatResult:
    """A transport's answer: the text, and/or unnormalised probabilities of `choices`, or an error.

    `unreachable` marks transport failures (connection refused, timeouts): when all results of a batch carry it,
    `ChatBackend` raises `JudgeUnavailableError`.
    """

    text: str | None = None
    choice_probs: tuple[float, ...] | None = None  # one unnormalised probability per request choice, in order
    error: str | None = None
    unreachable: bool = False
    # Token counts where the transport knows them (hf counts them, OpenAI-compatible servers report usage).
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass
class TokenUsage:
    """Tokens a chat backend has spent so far, where its transport reports them; `requests` counts every answer."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    unknown: int = 0  # answers that came without token counts

    def add(self, results: Sequence[ChatResult]) -> None:
        for r in results:
            self.requests += 1
            if r.prompt_tokens is None and r.completion_tokens is None:
                self.unknown += 1
            self.prompt_tokens += r.prompt_tokens or 0
            self.completion_tokens += r.completion_tokens or 0

    def copy(self) -> TokenUsage:
        return TokenUsage(self.requests, self.prompt_tokens, self.completion_tokens, self.unknown)


def _judges_texts(candidates: Sequence[Any], prompt: str, rubric_task: str, source: Any) -> bool:
    """Whether the candidates are texts (all of them) rather than images; a mix, or texts for an editing rubric,
    is an error."""
    texts = [isinstance(c, str) for c in candidates]
    if not any(texts):
        return False
    if not all(texts):
        raise ValueError(f"for {prompt[:60]!r}: compare two images or two texts, not an image with a text")
    if source is not None or rubric_task == "edit":
        raise ValueError(
            f"editing rubric for instruction {prompt[:60]!r}: edits are images, but the candidates are texts"
        )
    return True


def _is_edit(prompt: str, rubric_task: str, source: Image.Image | None) -> bool:
    if source is not None:
        return True
    if rubric_task == "edit":
        raise ValueError(
            f"editing rubric for instruction {prompt[:60]!r} needs the source image; pass `source=`"
        )
    return False


def render_pair(q: PairQuery) -> ChatRequest:
    """The pairwise question: Image BASE (editing), Image 1, Image 2, the prompt and the criteria as data (for
    texts: Response 1 and Response 2, quoted as data)."""
    criteria = format_criteria(q.rubric.criteria)
    if _judges_texts(q.images, q.prompt, q.rubric.task, q.source):
        first, second = (escape_field(t) for t in q.images)
        fields = {
            "prompt": escape_field(q.prompt),
            "criteria": criteria,
            "response_1": first,
            "response_2": second,
        }
        messages = [
            _system_message("pair", q.rubric.guide, text=True),
            _user_message(load_template("user_pair_text"), {}, fields),
        ]
        return ChatRequest("pair", messages, PAIR_CHOICES, PAIR_ANSWER_PREFIX)
    edit = _is_edit(q.prompt, q.rubric.task, q.source)
    images = {"1": q.images[0], "2": q.images[1]}
    if edit:
        images["base"] = q.source
    fields = {"prompt": escape_field(q.prompt), "criteria": criteria}
    template = load_template("user_pair_edit" if edit else "user_pair_t2i")
    messages = [_system_message("pair", q.rubric.guide), _user_message(template, images, fields)]
    return ChatRequest("pair", messages, PAIR_CHOICES, PAIR_ANSWER_PREFIX)


def ordinal_choices(levels: int) -> tuple[str, ...]:
    """The answers of a 1..levels rating, as the strings the judge writes: "1", "2", ..."""
    return tuple(str(level) for level in range(1, levels + 1))


def render_criterion(q: CriterionQuery) -> ChatRequest:
    """The per-criterion question: (Image BASE,) the image, the prompt and one criterion as data.

    A binary criterion asks yes/no; an ordinal one (`levels` set) asks for a rating 1..levels; both may answer
    "unknown" (`CANNOT_ASSESS_ANSWER`). A text candidate is quoted as the <response> to judge.
    """
    text = _judges_texts([q.image], q.prompt, q.rubric.task, q.source)
    edit = not text and _is_edit(q.prompt, q.rubric.task, q.source)
    images: dict[str, Image.Image] = {}
    fields = {"prompt": escape_field(q.prompt), "criterion": escape_field(q.criterion.text)}
    if text:
        fields["response"] = escape_field(q.image)
    else:
        images["1"] = q.image
    if edit:
        images["base"] = q.source
    variant = "text" if text else "edit" if edit else "t2i"
    levels = q.criterion.levels
    if levels is not None:
        fields["levels"] = str(levels)
        template = load_template(f"user_criterion_ordinal_{variant}")
        system = _system_message("criterion_ordinal", q.rubric.guide, {"levels": str(levels)}, text=text)
        messages = [system, _user_message(template, images, fields)]
        choices = (*ordinal_choices(levels), CANNOT_ASSESS_ANSWER)
        return ChatRequest("criterion", messages, choices, ORDINAL_ANSWER_PREFIX, levels=levels)
    template = load_template(f"user_criterion_{variant}")
    messages = [
        _system_message("criterion", q.rubric.guide, text=text),
        _user_message(template, images, fields),
    ]
    choices = (*CRITERION_CHOICES, CANNOT_ASSESS_ANSWER)
    return ChatRequest("criterion", messages, choices, CRITERION_ANSWER_PREFIX)


def render_text(
    system_template: str,
    user_template: str,
    fields: Mapping[str, str],
    images: Mapping[str, Image.Image] | None = None,
    history: Sequence[tuple[str, str]] = (),
    max_new_tokens: int | None = None,
) -> ChatRequest:
    """A free-text request from two templates: the system prompt, then the user turn with `[[image:...]]` markers.

    `fields` must already be escaped where they quote user text (`escape_field`). `history` appends further turns
    as (role, text) pairs after the first user turn, e.g. a previous answer and the feedback on it.
    """
    system = Template(load_template(system_template)).substitute(fields).strip()
    messages: list[dict[str, Any]] = [{"role": "system", "content": [{"type": "text", "text": system}]}]
    messages.append(_user_message(load_template(user_template), images or {}, fields))
    for role, text in history:
        messages.append({"role": role, "content": [{"type": "text", "text": text}]})
    return ChatRequest("text", messages, ("", ""), "", max_new_tokens)


# ---- answer parsing ---------------------------------------------------------------------------------------------

_FENCE = re.compile(r"```(?:json)?", re.IGNORECASE)
_RANK_RE = re.compile(
    r"""["']?rank["']?\s*[:=]\s*\[\s*["']?(-?\d+(?:\.\d+)?)["']?\s*,\s*["']?(-?\d+(?:\.\d+)?)"""
)
_REASON_RE = re.compile(r"""["']?reason["']?\s*:\s*"((?:[^"\\]|\\.)*)""", re.DOTALL)
_YES_NO = re.compile(r"^[\s\W]*(?:answer\s*[:=-]?\s*[\W]*)?(yes|no)\b[\s\W]*", re.IGNORECASE)
# A leading cannot-assess answer: the word the templates ask for, and the spellings judges use for it.
_CANNOT_ASSESS = re.compile(
    r"^[\s\W]*(?:(?:answer|rating|score|level|grade)\s*[:=-]?\s*[\W]*)?"
    r"(unknown|n/?a|not applicable|cannot (?:be )?(?:assess(?:ed)?|tell|judged?)|can't tell)(?![\w/])[\s\W]*",
    re.IGNORECASE,
)
# A leading rating, optionally labelled ("Rating: 4") and optionally out of the scale ("4/5", "4 out of 5"); the
# whole number (a "1" starting "10" is not rating 1), never a decimal's integer part ("3.5" is no rating 3), and the
# separator before the reason is consumed. Group 1 is the rating: the text parser and the openai backend's search
# for the rating token (arr.backends.openai) read it the same way.
LEADING_RATING = re.compile(
    r"^[\s\W]*(?:(?:rating|score|level|answer|grade)\s*[:=-]?\s*[\W]*)?(\d+)(?!\d|[.,]\d)"
    r"(?:[\s*_]*(?:/|out\s+of)\s*\d+)?[\s\W]*",
    re.IGNORECASE,
)
_RATING_KEYS = ("rating", "score", "level", "answer", "grade")


def json_objects(text: str) -> Iterable[dict[str, Any]]:
    """Every JSON object that starts at a `{` in `text`, in order (tolerates prose and code fences around it)."""
    decoder = json.JSONDecoder()
    for m in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text, m.start())
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            yield obj


def _rank_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _prob_from_ranks(r1: float, r2: float) -> float:
    # A lower rank is better; equal ranks are a tie.
    return 1.0 if r1 < r2 else 0.0 if r1 > r2 else 0.5


def stated_ranks(text: str) -> tuple[float, float] | None:
    """The ranks [r1, r2] a pairwise answer states (`{"rank": [1, 1], ...}`), or None when it states none.

    A verdict's probability says which image won; the stated ranks also tell a tie of two good images ([1, 1])
    from one of two bad ones ([2, 2]), which the release's rank rewards treat differently."""
    m = _RANK_RE.search(_FENCE.sub("", text))
    return (float(m.group(1)), float(m.group(2))) if m else None


def parse_pair_answer(text: str) -> PairVerdict:
    """Turn a `{"rank": [r1, r2], "reason": ...}` answer into a verdict; unparseable -> prob None with `error`.

    Tolerant of code fences, prose around the JSON, string ranks and answers cut off after the rank.
    """
    cleaned = _FENCE.sub("", text)
    for obj in json_objects(cleaned):
        rank = obj.get("rank")
        if rank is None:
            continue
        reason = obj.get("reason")
        reason = reason if isinstance(reason, str) else ""
        if isinstance(rank, list) and len(rank) == 2:
            r1, r2 = (_rank_number(r) for r in rank)
            if r1 is not None and r2 is not None:
                return PairVerdict(_prob_from_ranks(r1, r2), reason=reason, raw=text)
        return PairVerdict(
            None, reason=reason, raw=text, error=f"judge answer has rank {rank!r}; expected [r1, r2] numbers"
        )
    m = _RANK_RE.search(cleaned)
    if m:
        r = _REASON_RE.search(cleaned, m.end())
        reason = r.group(1).replace('\\"', '"') if r else ""
        return PairVerdict(_prob_from_ranks(float(m.group(1)), float(m.group(2))), reason=reason, raw=text)
    return PairVerdict(
        None, raw=text, error=f'unparseable judge answer (expected {{"rank": [r1, r2], ...}}): {text[:120]!r}'
    )


def _cannot_assess(reason: str, raw: str) -> CriterionVerdict:
    return CriterionVerdict(None, reason=reason, raw=raw, cannot_assess=True)


def _json_cannot_assess(obj: dict[str, Any], keys: Sequence[str]) -> bool:
    return any(isinstance(obj.get(k), str) and _CANNOT_ASSESS.fullmatch(obj[k].strip()) for k in keys)


def parse_criterion_answer(text: str) -> CriterionVerdict:
    """Turn a "yes: reason" / "no: reason" / "unknown: reason" answer into a verdict ("unknown": cannot assess);
    unparseable -> prob None with `error`."""
    cleaned = _FENCE.sub("", text).strip()
    keys = ("answer", "holds", "verdict", "result")
    for obj in json_objects(cleaned):
        reason = obj.get("reason")
        if _json_cannot_assess(obj, keys):
            return _cannot_assess(reason if isinstance(reason, str) else "", text)
        for key in keys:
            value = obj.get(key)
            if isinstance(value, bool):
                value = "yes" if value else "no"
            if isinstance(value, str) and value.strip().lower() in ("yes", "no"):
                reason = obj.get("reason")
                return CriterionVerdict(
                    1.0 if value.strip().lower() == "yes" else 0.0,
                    reason=reason if isinstance(reason, str) else "",
                    raw=text,
                )
    m = _YES_NO.match(cleaned)
    if m:
        return CriterionVerdict(
            1.0 if m.group(1).lower() == "yes" else 0.0, reason=cleaned[m.end() :], raw=text
        )
    m = _CANNOT_ASSESS.match(cleaned)
    if m:
        return _cannot_assess(cleaned[m.end() :], text)
    return CriterionVerdict(
        None,
        raw=text,
        error=f'unparseable judge answer (expected "yes", "no" or "unknown" first): {text[:120]!r}',
    )


def parse_ordinal_answer(text: str, levels: int) -> CriterionVerdict:
    """Turn a "4: reason" rating answer into a verdict carrying the credit (level - 1) / (levels - 1).

    Accepts a labelled rating ("Rating: 2 - ..."), "4/5", markdown around the number and JSON such as
    `{"rating": 4, "reason": ...}`; "unknown" (and its spellings) is a cannot-assess verdict; a rating outside
    1..levels or no leading number -> prob None with `error`.
    """
    cleaned = _FENCE.sub("", text).strip()
    for obj in json_objects(cleaned):
        if _json_cannot_assess(obj, _RATING_KEYS):
            reason = obj.get("reason")
            return _cannot_assess(reason if isinstance(reason, str) else "", text)
        for key in _RATING_KEYS:
            value = obj.get(key)
            if isinstance(value, str) and value.strip().isdigit():
                value = int(value.strip())
            elif isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, int) and not isinstance(value, bool):
                reason = obj.get("reason")
                return _rated(value, levels, reason if isinstance(reason, str) else "", text)
    m = LEADING_RATING.match(cleaned)
    if m:
        return _rated(int(m.group(1)), levels, cleaned[m.end() :], text)
    m = _CANNOT_ASSESS.match(cleaned)
    if m:
        return _cannot_assess(cleaned[m.end() :], text)
    return CriterionVerdict(
        None,
        raw=text,
        error=f'unparseable judge answer (expected a rating 1..{levels} or "unknown" first): {text[:120]!r}',
    )


def _rated(level: int, levels: int, reason: str, raw: str) -> CriterionVerdict:
    if not 1 <= level <= levels:
        return CriterionVerdict(
            None,
            reason=reason,
            raw=raw,
            error=f"judge answered rating {level}; expected 1..{levels}: {raw[:120]!r}",
        )
    return CriterionVerdict((level - 1) / (levels - 1), reason=reason, raw=raw)


# ---- choice-token probabilities ---------------------------------------------------------------------------------


def choice_variants(choice: str) -> list[str]:
    """Spellings of one answer token that count as that answer: case variants, with and without a leading space."""
    cased = dict.fromkeys([choice, choice.lower(), choice.capitalize(), choice.upper()])
    return list(cased) + [" " + c for c in cased]


def normalize_token(token: str) -> str:
    """How a sampled token string is compared with a choice: without surrounding whitespace, lower case."""
    return token.strip().lower()


def sum_choice_probs(token_probs: Iterable[tuple[str, float]], choices: tuple[str, ...]) -> tuple[float, ...]:
    """Sum the probabilities of every token string that spells each choice (e.g. "yes", " Yes", "YES")."""
    targets = [c.lower() for c in choices]
    total = [0.0] * len(choices)
    for token, prob in token_probs:
        norm = normalize_token(token)
        for k, t in enumerate(targets):
            if norm == t:
                total[k] += prob
    return tuple(total)


def prob_of_first(choice_probs: tuple[float, ...]) -> float | None:
    """P(first choice | one of the two choices), or None when the judge put no mass on either."""
    p1, p2 = choice_probs
    total = p1 + p2
    if not math.isfinite(total) or total <= 0.0:
        return None
    return p1 / total


def expected_credit(choice_probs: Sequence[float]) -> float | None:
    """The expected credit (level - 1) / (N - 1) of a 1..N rating under P(level) renormalised over the N choices.

    None when the judge put no mass on any rating (or the probabilities are not finite).
    """
    total = sum(choice_probs)
    if len(choice_probs) < 2 or not math.isfinite(total) or total <= 0.0:
        return None
    top = len(choice_probs) - 1
    return sum(p * k / top for k, p in enumerate(choice_probs)) / total


def _probs_raw(choices: tuple[str, ...], choice_probs: tuple[float, ...]) -> str:
    return json.dumps(dict(zip(choices, choice_probs, strict=True)))


def pair_verdict(result: ChatResult, choices: tuple[str, ...] = PAIR_CHOICES) -> PairVerdict:
    """A pair verdict from choice probabilities when present (reason from the text), else from the text."""
    parsed = parse_pair_answer(result.text) if result.text is not None else None
    if result.choice_probs is not None:
        p = prob_of_first(result.choice_probs)
        if p is not None:
            reason = parsed.reason if parsed is not None else ""
            raw = result.text if result.text is not None else _probs_raw(choices, result.choice_probs)
            return PairVerdict(p, reason=reason, raw=raw)
    if parsed is not None:
        return parsed
    return PairVerdict(None, error=result.error or "judge returned neither text nor choice probabilities")


def criterion_verdict(
    result: ChatResult, choices: tuple[str, ...] = CRITERION_CHOICES, levels: int | None = None
) -> CriterionVerdict:
    """A criterion verdict from choice probabilities when present (reason from the text), else from the text.

    With `levels` (an ordinal request, choices "1".."levels") `prob_yes` is the credit in [0, 1]: the expected
    credit under the choice probabilities, or the parsed rating's credit. When `choices` end with
    `CANNOT_ASSESS_ANSWER`, the verdict is "cannot assess" if that answer holds more probability than all the others
    together; otherwise the others decide, renormalised without it.
    """
    abstain = bool(choices) and choices[-1] == CANNOT_ASSESS_ANSWER
    answers = choices[:-1] if abstain else choices
    if levels is not None and len(answers) != levels:
        raise ValueError(f"ordinal criterion with {levels} levels needs {levels} choices, got {choices!r}")
    if result.text is None:
        parsed = None
    elif levels is None:
        parsed = parse_criterion_answer(result.text)
    else:
        parsed = parse_ordinal_answer(result.text, levels)
    if result.choice_probs is not None:
        probs = tuple(result.choice_probs)
        reason = parsed.reason if parsed is not None else ""
        raw = result.text if result.text is not None else _probs_raw(choices, result.choice_probs)
        if abstain:
            probs, unknown = probs[:-1], probs[-1]
            if math.isfinite(unknown) and unknown > 0.0 and unknown > math.fsum(probs):
                return CriterionVerdict(None, reason=reason, raw=raw, cannot_assess=True)
        p = prob_of_first(probs) if levels is None else expected_credit(probs)
        if p is not None:
            return CriterionVerdict(p, reason=reason, raw=raw)
    if parsed is not None:
        return parsed
    return CriterionVerdict(
        None, error=result.error or "judge returned neither text nor choice probabilities"
    )


# ---- secrets -----------------------------------------------------------------------------------------------------

# A run of this many characters of a secret counts as a leak: a server that cuts its own message (or ours) mid-key
# must not let the first 16 of 17 characters through. Eight random key characters never occur by chance in text.
_MIN_SECRET_FRAGMENT = 8


def redact(text: str, secret: str | None) -> str:
    """`text` with every piece of `secret` replaced by `***`: the whole secret, and any run of at least 8 of its
    characters (a key cut off by a truncation, here or on the server). Redact before shortening a message."""
    if not secret or not text:
        return text
    n = min(_MIN_SECRET_FRAGMENT, len(secret))
    spans = []  # (start, end) of every occurrence of every n-character piece of the secret
    for piece in {secret[i : i + n] for i in range(len(secret) - n + 1)}:
        i = text.find(piece)
        while i >= 0:
            spans.append((i, i + n))
            i = text.find(piece, i + 1)
    if not spans:
        return text
    out: list[str] = []
    pos = 0  # text[:pos] is written
    for start, end in sorted(spans):
        if start > pos:
            out.append(text[pos:start])
        elif out and out[-1] == "***":
            pos = max(pos, end)  # overlaps or touches the run just redacted
            continue
        out.append("***")
        pos = max(pos, end)
    out.append(text[pos:])
    return "".join(out)


# ---- the base class ---------------------------------------------------------------------------------------------


class ChatBackend(ABC):
    """A judge backend for chat VLMs: renders queries, calls `_chat` once per batch, reads the answers.

    Subclasses implement `_chat(requests) -> results` (same length and order) and `fingerprint()`.
    """

    name: str = "chat"
    #: Chat judges read texts as well as images (`RubricJudge` asks the others about images only).
    judges_text: bool = True

    @property
    def token_usage(self) -> TokenUsage:
        """Tokens spent by this backend object so far (created on first use: subclasses keep their own __init__)."""
        usage = self.__dict__.get("_token_usage")
        if usage is None:
            usage = self.__dict__["_token_usage"] = TokenUsage()
        return usage

    @abstractmethod
    def fingerprint(self) -> str: ...

    @abstractmethod
    def _chat(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        """Answer every request, in order; failures are results with `error`, not exceptions."""

    def _secret(self) -> str | None:
        """A credential that must never leave the backend (an API key); None where there is none."""
        return None

    def _redact(self, text: str) -> str:
        return redact(text, self._secret())

    def _ask(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        if not requests:
            return []
        results = self._chat(requests)
        if len(results) != len(requests):
            raise RuntimeError(
                f"{type(self).__name__}._chat returned {len(results)} results for {len(requests)} requests"
            )
        if self._secret():
            # Every string a verdict is made from (its text, reason, raw answer and error) passes through here, so
            # a key that a server or model echoes back never reaches errors, caches, logs or reports.
            results = [
                replace(
                    r,
                    text=None if r.text is None else self._redact(r.text),
                    error=None if r.error is None else self._redact(r.error),
                )
                for r in results
            ]
        if all(r.unreachable for r in results):
            raise JudgeUnavailableError(
                f"judge backend {self.name!r} unreachable: all {len(results)} requests failed ({results[0].error})"
            )
        self.token_usage.add(results)
        return results

    def generate_text(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        """Free-text answers to "text" requests (see `render_text`), e.g. rubric items; failures carry `error`.

        Not part of the `JudgeBackend` protocol: rubric writers (arr/rubrics/generate.py) use it where a backend has it.
        """
        for i, req in enumerate(requests):
            if req.kind != "text":
                raise ValueError(f"generate_text: request {i} has kind {req.kind!r}; expected 'text'")
        return self._ask(requests)

    def judge_pairs(self, queries: Sequence[PairQuery]) -> list[PairVerdict]:
        requests = [render_pair(q) for q in queries]
        return [pair_verdict(r, req.choices) for r, req in zip(self._ask(requests), requests, strict=True)]

    def judge_criteria(self, queries: Sequence[CriterionQuery]) -> list[CriterionVerdict]:
        requests = [render_criterion(q) for q in queries]
        return [
            criterion_verdict(r, req.choices, req.levels)
            for r, req in zip(self._ask(requests), requests, strict=True)
        ]
