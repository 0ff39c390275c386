"""Turn what a VLM (or a rubric file) says into rubric data, repairing the usual damage and refusing the rest.

VLM answers are messy: JSON inside code fences or prose, trailing commas, Python literals, single or smart
quotes, answers cut off at the token limit, or a plain numbered list instead of JSON. `parse_rubric` repairs
these; everything it cannot repair becomes a one-line `RubricParseError` (a `ValueError`) that names the problem,
so callers (generation retries, the judge's failure masking) only ever catch one exception type.

The parser returns plain, validated data (`{"prompt", "task", "criteria": [{"id", "text", ...}], "guide"}`);
`arr.rubrics.model` turns it into `Rubric` objects, so the data model depends on the parser and not the reverse.

The work is bounded: inputs over `MAX_INPUT_BYTES` are refused, nesting is capped, and the scanner tries a
bounded number of candidate JSON starts with a budget proportional to the input length, so a hostile 1 MB
answer costs at most a few linear passes (no backtracking regexes).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

__all__ = ["MAX_INPUT_BYTES", "RubricParseError", "clean_text", "parse_rubric_data", "rubric_data_from_obj"]

RubricData = dict[
    str, Any
]  # {"prompt": str, "task": "t2i" | "edit", "criteria": [CriterionData], "guide": [...]}

MAX_INPUT_BYTES = (
    1 << 20
)  # 1 MiB: far above any real rubric (a few KB), small enough to parse in well under 1 s
_MAX_DEPTH = 64  # rubrics nest 4 levels deep; deeper input is garbage and would only risk recursion limits
_MAX_ITEMS = 10_000  # items per list / object and criteria per rubric (ARR uses at most a few hundred)
_MAX_STARTS = 64  # candidate '{' / '[' positions tried before giving up
_MAX_UNWRAP = 4  # {"output": {"rubric": {...}}}: how many single-key wrappers are looked through

# Keys VLMs use for the list of criteria, in order of preference.
_CRITERIA_KEYS = (
    "criteria",
    "rubric",
    "rubrics",
    "items",
    "rubric_items",
    "criterion",
    "checklist",
    "questions",
)
# Keys for a criterion's text.
_TEXT_KEYS = ("text", "criterion", "description", "question", "item", "statement", "content", "rubric")
_ID_KEYS = ("id", "criterion_id", "key")
_CATEGORY_KEYS = ("category", "dimension")
_GUIDE_KEYS = ("guide", "rubric_guide", "categories", "themes")
_THEME_KEYS = ("theme", "name", "title", "category")
_TASKS = {
    "t2i": "t2i",
    "text-to-image": "t2i",
    "text_to_image": "t2i",
    "txt2img": "t2i",
    "generation": "t2i",
    "edit": "edit",
    "editing": "edit",
    "image-editing": "edit",
    "image_editing": "edit",
}

# "1. ", "1) ", "(1) ", "- ", "* ", "• ", "a) ", "(a) ", "A. ": list markers VLMs put in front of criterion text.
# Every branch is bounded, so a failed match costs O(1).
_NUMBERING = re.compile(r"(?:[-*\u2022\u2013]|\(?\d{1,3}[.)]|\(?[A-Za-z][.)]|\(\w{1,3}\))\s+")
_NUMBERED_LINE = re.compile(r"\(?(\d{1,3})[.)]\s+(\S.*)", re.S)
_BULLET_LINE = re.compile(r"[-*\u2022]\s+(\S.*)", re.S)


class RubricParseError(ValueError):
    """A VLM answer or a rubric file could not be turned into a valid rubric; the message says why."""


class _NoCriteria(RubricParseError):
    """Internal: the rubric has no criteria; lets parse_rubric say "truncated" when the cut removed them all."""


def _short(value: Any, limit: int = 60) -> str:
    """A one-line repr of a bad value for an error message."""
    try:
        text = repr(value)
    except RecursionError:  # a value nested thousands of levels deep
        return f"<{_type_name(value)} nested too deeply to show>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def clean_text(text: str) -> str:
    """Strip surrounding whitespace and one leading list marker ("1. ", "- ", "(a) ") from a criterion text."""
    text = text.strip()
    m = _NUMBERING.match(text)
    if m is not None and m.end() < len(text):
        text = text[m.end() :].strip()
    return text


# ---------------------------------------------------------------------------------------------------------------
# From decoded JSON to a Rubric


def _first_key(obj: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    for k in keys:
        if k in obj:
            return k
    return None


def _criterion_id(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise RubricParseError(
            f"{where}.id: expected a string or integer, got {_type_name(value)} {_short(value)}"
        )
    text = str(value).strip()
    return text or None


def _weight(value: Any, where: str) -> float:
    if value is None:
        return 1.0
    if isinstance(value, bool):
        raise RubricParseError(f"{where}.weight: expected a number, got boolean {value}")
    if isinstance(value, (int, float)):
        weight = float(value)
    elif isinstance(value, str):
        try:
            weight = float(value.strip())
        except ValueError:
            raise RubricParseError(
                f"{where}.weight: expected a number or numeric string, got {_short(value)}"
            ) from None
    else:
        raise RubricParseError(f"{where}.weight: expected a number, got {_type_name(value)} {_short(value)}")
    if not math.isfinite(weight):
        raise RubricParseError(f"{where}.weight: expected a finite number, got {_short(value)}")
    return weight


def _text(value: Any, where: str, field: str = "text") -> str:
    if not isinstance(value, str):
        raise RubricParseError(f"{where}.{field}: expected a string, got {_type_name(value)} {_short(value)}")
    text = clean_text(value)
    if not text:
        raise RubricParseError(f"{where}.{field}: is empty")
    return text


def _levels(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 2:
        raise RubricParseError(
            f"{where}.levels: expected an integer >= 2 (ordinal scale), got {_short(value)}"
        )
    return int(value)


def _criterion(
    item: Any, index: int
) -> tuple[str | None, str, float, str | None, dict[str, Any] | None, int | None]:
    """(id or None, text, weight, category, check, levels) of one criterion item, validated."""
    where = f"criteria[{index}]"
    if isinstance(item, str):
        return None, _text(item, where), 1.0, None, None, None
    if not isinstance(item, dict):
        raise RubricParseError(
            f"{where}: expected an object or a string, got {_type_name(item)} {_short(item)}"
        )
    text_key = _first_key(item, _TEXT_KEYS)
    if text_key is None:
        raise RubricParseError(
            f"{where}: missing text (expected one of {list(_TEXT_KEYS)}), got keys {sorted(item)}"
        )
    text = _text(item[text_key], where, text_key)
    id_key = _first_key(item, _ID_KEYS)
    cid = _criterion_id(item[id_key], where) if id_key else None
    weight = _weight(item.get("weight"), where)
    cat_key = _first_key(item, _CATEGORY_KEYS)
    category = item[cat_key] if cat_key else None
    if category is not None and not isinstance(category, str):
        raise RubricParseError(
            f"{where}.{cat_key}: expected a string, got {_type_name(category)} {_short(category)}"
        )
    check = item.get("check")
    if check is not None and not isinstance(check, dict):
        raise RubricParseError(f"{where}.check: expected an object, got {_type_name(check)} {_short(check)}")
    return cid, text, weight, category or None, check, _levels(item.get("levels"), where)


def _criteria_items(value: Any) -> list[Any]:
    """The list of criterion items, from a list, an {id: text} mapping or a numbered plain-text block."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        # {"c1": "text", "c2": {...}}: the keys are the ids.
        items: list[Any] = []
        for k, v in value.items():
            if isinstance(v, dict):
                items.append({"id": k, **v} if _first_key(v, _ID_KEYS) is None else v)
            else:
                items.append({"id": k, "text": v})
        return items
    if isinstance(value, str):
        lines = _numbered_lines(value)
        if lines:
            return lines
        raise RubricParseError(
            f"criteria: expected a list, got a string without a numbered list: {_short(value)}"
        )
    raise RubricParseError(f"criteria: expected a list of criteria, got {_type_name(value)} {_short(value)}")


def _build_criteria(items: list[Any]) -> list[dict[str, Any]]:
    if not items:
        raise _NoCriteria("criteria: the rubric has no criteria (expected at least one)")
    if len(items) > _MAX_ITEMS:
        raise RubricParseError(f"criteria: too many criteria ({len(items)}; the limit is {_MAX_ITEMS})")
    parsed = [_criterion(item, i) for i, item in enumerate(items)]
    taken: set[str] = set()
    for i, (cid, *_rest) in enumerate(parsed):
        if cid is None:
            continue
        if cid in taken:
            raise RubricParseError(f"criteria[{i}].id: duplicate criterion id {cid!r}")
        taken.add(cid)
    criteria: list[dict[str, Any]] = []
    counter = 0
    for i, (cid, text, weight, category, check, levels) in enumerate(parsed):
        if cid is None:
            # Assign c1, c2, ... by position, skipping ids the rubric already uses explicitly.
            counter = max(counter, i)
            while True:
                counter += 1
                cid = f"c{counter}"
                if cid not in taken:
                    break
            taken.add(cid)
        criteria.append(
            {
                "id": cid,
                "text": text,
                "weight": weight,
                "category": category,
                "check": check,
                "levels": levels,
            }
        )
    return criteria


def _guide(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if isinstance(value, dict):
        # {"Theme": ["tip", ...]} mapping form.
        value = [{"theme": k, "tips": v} for k, v in value.items()]
    if not isinstance(value, list):
        raise RubricParseError(f"guide: expected a list of {{theme, tips}} objects, got {_type_name(value)}")
    guide: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        where = f"guide[{i}]"
        if isinstance(item, str):
            guide.append({"theme": _text(item, where, "theme"), "tips": []})
            continue
        if not isinstance(item, dict):
            raise RubricParseError(f"{where}: expected an object, got {_type_name(item)} {_short(item)}")
        theme_key = _first_key(item, _THEME_KEYS)
        if theme_key is None:
            raise RubricParseError(f"{where}: missing 'theme', got keys {sorted(item)}")
        theme = _text(item[theme_key], where, theme_key)
        tips = item.get("tips", [])
        if tips is None:
            tips = []
        if isinstance(tips, str):
            tips = [tips]
        if not isinstance(tips, list):
            raise RubricParseError(f"{where}.tips: expected a list of strings, got {_type_name(tips)}")
        guide.append({"theme": theme, "tips": [_text(t, where, f"tips[{j}]") for j, t in enumerate(tips)]})
    return guide


def _task(value: Any, default: str) -> str:
    if value is None:
        return default
    if not isinstance(value, str) or value.strip().lower() not in _TASKS:
        raise RubricParseError(f"task: expected 't2i' or 'edit', got {_short(value)}")
    return _TASKS[value.strip().lower()]


def _rubric(prompt: str | None, criteria: list[dict[str, Any]], task: str | None, guide=None) -> RubricData:
    return {"prompt": prompt or "", "task": task or "t2i", "criteria": criteria, "guide": guide or []}


def rubric_data_from_obj(obj: Any, prompt: str | None = None) -> RubricData:
    """Rubric data from decoded JSON: the canonical object or the common VLM variants.

    Accepts `{"prompt", "task", "criteria", "guide"}`, a bare list of criteria (objects or strings), the keys
    VLMs use instead ("rubric", "items", "description", "question", ...), an `{id: text}` mapping, and one level
    of wrapping (`{"rubric": {...}}`, `[{...}]`). Missing ids become c1, c2, ... by position.
    `prompt`, when given, overrides the prompt in `obj`: the caller knows the exact prompt, VLMs paraphrase it.
    """
    if prompt is not None and not isinstance(prompt, str):
        raise RubricParseError(f"prompt: expected a string, got {_type_name(prompt)}")
    return _from_obj(obj, prompt, None, _MAX_UNWRAP)


def _from_obj(obj: Any, prompt: str | None, task: str | None, unwrap: int) -> RubricData:
    if isinstance(obj, list):
        # [{"prompt": ..., "criteria": [...]}]: a single rubric wrapped in a list.
        if len(obj) == 1 and isinstance(obj[0], dict) and _first_key(obj[0], _CRITERIA_KEYS) and unwrap > 0:
            return _from_obj(obj[0], prompt, task, unwrap - 1)
        return _rubric(prompt, _build_criteria(obj), task)
    if not isinstance(obj, dict):
        raise RubricParseError(
            f"expected a JSON object or list for a rubric, got {_type_name(obj)} {_short(obj)}"
        )

    if task is None and "task" in obj:
        task = _task(obj["task"], "t2i")
    own_prompt_key = _first_key(obj, ("prompt", "instruction"))
    if prompt is None and own_prompt_key is not None:
        own = obj[own_prompt_key]
        if not isinstance(own, str):
            raise RubricParseError(
                f"{own_prompt_key}: expected a string, got {_type_name(own)} {_short(own)}"
            )
        prompt = own
        if task is None and own_prompt_key == "instruction":
            task = "edit"

    key = _first_key(obj, _CRITERIA_KEYS)
    if key is not None and isinstance(obj[key], dict) and _first_key(obj[key], _CRITERIA_KEYS) and unwrap > 0:
        # {"rubric": {"prompt": ..., "criteria": [...]}}
        inner = _from_obj(obj[key], prompt, task, unwrap - 1)
        guide_key = _first_key(obj, _GUIDE_KEYS)
        if guide_key is not None and not inner["guide"]:
            inner["guide"] = _guide(obj[guide_key])
        return inner
    if key is None:
        if len(obj) == 1 and unwrap > 0:
            (only,) = obj.values()
            if isinstance(only, (dict, list)):
                return _from_obj(only, prompt, task, unwrap - 1)
        raise _NoCriteria(
            f"criteria: missing (expected a 'criteria' list or one of {list(_CRITERIA_KEYS[1:])}), "
            f"got keys {_short(sorted(obj), 120)}"
        )
    criteria = _build_criteria(_criteria_items(obj[key]))
    guide_key = _first_key(obj, _GUIDE_KEYS)
    guide = _guide(obj[guide_key]) if guide_key is not None else []
    return _rubric(prompt, criteria, task, guide)


# ---------------------------------------------------------------------------------------------------------------
# A tolerant JSON reader


class _Syntax(Exception):
    """Internal: the text at `pos` is not JSON-like; never escapes this module."""

    def __init__(self, pos: int, message: str, deep: bool = False) -> None:
        super().__init__(message)
        self.pos = pos
        self.message = message
        self.deep = deep  # the nesting limit was hit


# Unrolled-loop string patterns: linear, no nested ambiguity.
_DQ = re.compile(r'"([^"\\]*(?:\\.[^"\\]*)*)"', re.S)
_SQ = re.compile(r"'([^'\\]*(?:\\.[^'\\]*)*)'", re.S)
_SMART = {"\u201c": "\u201d\u201c", "\u201d": "\u201d\u201c", "\u201e": "\u201d\u201c", "\u2018": "\u2019"}
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_PARTIAL_NUMBER = re.compile(r"[-+]?\d*\.?\d*(?:[eE][-+]?\d*)?")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")
_WS = re.compile(r"\s*")
_COMMAS = re.compile(r"[\s,]*")
_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|.)", re.S)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "/": "/", "\\": "\\", '"': '"', "'": "'"}
_LITERALS = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}
_STRING_OPENERS = "\"'" + "".join(_SMART)


def _unescape(body: str) -> str:
    try:
        return json.loads('"' + body + '"', strict=False)
    except json.JSONDecodeError:
        pass

    def sub(m: re.Match[str]) -> str:
        esc = m.group(1)
        if esc[0] == "u" and len(esc) == 5:
            return chr(int(esc[1:], 16))
        return _ESCAPES.get(esc, esc)  # an unknown escape keeps its character, as Python does for "\q"

    text = _ESCAPE.sub(sub, body)
    try:
        return text.encode("utf-16", "surrogatepass").decode("utf-16")  # join \ud83d\ude00 pairs
    except UnicodeError:
        return text


class _Reader:
    """A forgiving recursive-descent JSON reader.

    Accepts single-quoted and smart-quoted strings, Python literals, bare keys, trailing / doubled / missing
    commas and `//` or `/* */` comments. At the end of the input (a truncated answer) it returns what is
    complete: containers are closed, cut scalars dropped, and cut objects inside lists (a half-written
    criterion) dropped, with `truncated` set.
    """

    def __init__(self, text: str) -> None:
        self.s = text
        self.n = len(text)

    def ws(self, pos: int) -> int:
        s = self.s
        while True:
            pos = _WS.match(s, pos).end()
            if s.startswith("//", pos):
                end = s.find("\n", pos)
                pos = self.n if end < 0 else end
            elif s.startswith("/*", pos):
                end = s.find("*/", pos + 2)
                pos = self.n if end < 0 else end + 2
            else:
                return pos

    def value(self, pos: int, depth: int) -> tuple[Any, int, bool]:
        """(value, end, complete) of the value starting at `pos` (after whitespace)."""
        if depth > _MAX_DEPTH:
            raise _Syntax(pos, f"nested deeper than {_MAX_DEPTH} levels", deep=True)
        s = self.s
        c = s[pos]
        if c == "{":
            return self.obj(pos + 1, depth)
        if c == "[":
            return self.arr(pos + 1, depth)
        if c in _STRING_OPENERS:
            return self.string(pos)
        if c in "+-.0123456789" and _PARTIAL_NUMBER.match(s, pos).end() >= self.n:
            return (
                None,
                self.n,
                False,
            )  # "weight": 1 (or "-", "1e") at the cut may have been 10 (or "-2", "1e3")
        m = _NUMBER.match(s, pos)
        if m is not None:
            text = m.group()
            if any(ch in text for ch in ".eE"):
                return float(text), m.end(), True
            return int(text), m.end(), True
        m = _WORD.match(s, pos)
        if m is not None:
            word = m.group()
            if word in _LITERALS and m.end() < self.n:
                return _LITERALS[word], m.end(), True
            if m.end() >= self.n and any(lit.startswith(word) for lit in _LITERALS):
                return None, self.n, False
            raise _Syntax(pos, f"expected a value, got {_short(word)}")
        raise _Syntax(pos, f"expected a value, got {_short(s[pos : pos + 20])}")

    def string(self, pos: int) -> tuple[str | None, int, bool]:
        s = self.s
        c = s[pos]
        if c in _SMART:
            closers = _SMART[c]
            ends = [e for e in (s.find(ch, pos + 1) for ch in closers) if e >= 0]
            if not ends:
                return None, self.n, False
            end = min(ends)
            return s[pos + 1 : end], end + 1, True
        m = (_DQ if c == '"' else _SQ).match(s, pos)
        if m is None:
            # Both patterns accept every character between the quotes, so a failed match means the closing
            # quote never came: the answer was cut inside this string.
            return None, self.n, False
        return _unescape(m.group(1)), m.end(), True

    def key(self, pos: int) -> tuple[str | None, int, bool]:
        c = self.s[pos]
        if c in _STRING_OPENERS:
            return self.string(pos)
        m = _WORD.match(self.s, pos)
        if m is None:
            raise _Syntax(pos, f"expected a key, got {_short(self.s[pos : pos + 20])}")
        if m.end() >= self.n:
            return None, self.n, False
        return m.group(), m.end(), True

    def _cut(self, container: Any) -> tuple[Any, int, bool]:
        return container, self.n, False

    def obj(self, pos: int, depth: int) -> tuple[dict[str, Any], int, bool]:
        s = self.s
        out: dict[str, Any] = {}
        while True:
            pos = self.ws(pos)
            if pos >= self.n:
                return self._cut(out)
            c = s[pos]
            if c == "}":
                return out, pos + 1, True
            if c == ",":
                pos = _COMMAS.match(s, pos).end()
                continue
            if len(out) >= _MAX_ITEMS:
                raise _Syntax(pos, f"an object with more than {_MAX_ITEMS} keys")
            key, pos, ok = self.key(pos)
            if not ok:
                return self._cut(out)
            pos = self.ws(pos)
            if pos >= self.n:
                return self._cut(out)
            if s[pos] not in ":=":
                raise _Syntax(pos, f"expected ':' after key {_short(key)}, got {_short(s[pos : pos + 20])}")
            pos = self.ws(pos + 1)
            if pos >= self.n:
                return self._cut(out)
            val, pos, ok = self.value(pos, depth + 1)
            if not ok:
                if isinstance(val, (dict, list)):
                    out[key] = (
                        val  # keep what the cut container holds; the caller decides whether it is enough
                    )
                return self._cut(out)
            out[key] = val  # type: ignore[index]
            pos = self.ws(pos)
            if pos < self.n and s[pos] not in ",}" and s[pos] not in _STRING_OPENERS:
                raise _Syntax(
                    pos, f"expected ',' or '}}' after {_short(key)}, got {_short(s[pos : pos + 20])}"
                )

    def arr(self, pos: int, depth: int) -> tuple[list[Any], int, bool]:
        s = self.s
        out: list[Any] = []
        while True:
            pos = self.ws(pos)
            if pos >= self.n:
                return self._cut(out)
            c = s[pos]
            if c == "]":
                return out, pos + 1, True
            if c == ",":
                pos = _COMMAS.match(s, pos).end()
                continue
            if len(out) >= _MAX_ITEMS:
                raise _Syntax(pos, f"a list with more than {_MAX_ITEMS} items")
            val, pos, ok = self.value(pos, depth + 1)
            if not ok:
                # A cut object inside a list is a half-written criterion: drop it. A cut list may still hold
                # complete items (a rubric wrapped in a list), so keep it.
                if isinstance(val, list):
                    out.append(val)
                return self._cut(out)
            out.append(val)
            pos = self.ws(pos)
            if pos < self.n and s[pos] not in ",]" and s[pos] not in _STRING_OPENERS + "{[":
                raise _Syntax(pos, f"expected ',' or ']' in a list, got {_short(s[pos : pos + 20])}")


# ---------------------------------------------------------------------------------------------------------------
# Plain-text fallback


def _numbered_lines(text: str) -> list[str]:
    """Criteria from a numbered ("1. ...") or, failing that, bulleted ("- ...") plain-text list."""
    numbered: list[str] = []
    bullets: list[str] = []
    current: list[str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            current = None
            continue
        m = _NUMBERED_LINE.match(line)
        if m is not None:
            numbered.append(m.group(2))
            current = numbered
            continue
        m = _BULLET_LINE.match(line)
        if m is not None:
            bullets.append(m.group(1))
            current = bullets
            continue
        if current and raw[:1].isspace():
            current[-1] = current[-1] + " " + line  # an indented continuation of the previous item
        else:
            current = None
    if numbered:
        return numbered
    # A single bullet is too weak a signal: prose often has one dash-led line.
    return bullets if len(bullets) >= 2 else []


# ---------------------------------------------------------------------------------------------------------------
# parse_rubric


def _decode(text: str | bytes) -> str:
    if isinstance(text, (bytes, bytearray, memoryview)):
        raw = bytes(text)
        if len(raw) > MAX_INPUT_BYTES:
            raise RubricParseError(f"rubric input too large: {len(raw)} bytes (limit {MAX_INPUT_BYTES})")
        try:
            return raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise RubricParseError(
                f"rubric input is not valid UTF-8: bad byte 0x{raw[e.start]:02x} at byte offset {e.start}"
            ) from None
    if not isinstance(text, str):
        raise RubricParseError(f"rubric input: expected str or bytes, got {type(text).__name__}")
    if len(text) > MAX_INPUT_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_INPUT_BYTES:
        raise RubricParseError(f"rubric input too large: over {MAX_INPUT_BYTES} bytes of UTF-8")
    return text.removeprefix("\ufeff")


def _line_col(text: str, pos: int) -> str:
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return f"line {line}, column {col}"


_STARTS = re.compile(r"[\[{]")


def parse_rubric_data(text: str | bytes, prompt: str | None = None) -> RubricData:
    """Parse rubric data from a VLM answer or a rubric file, repairing what can be repaired.

    Tries, in order: the whole text as JSON; each `{` / `[` in the text (code fences and prose around the JSON
    are skipped this way) with a forgiving reader that also completes truncated answers; a numbered plain-text
    list. The first candidate that forms a valid rubric wins. Raises `RubricParseError` for everything else.
    """
    s = _decode(text).strip()
    if not s:
        raise RubricParseError("rubric input is empty (expected JSON or a numbered list of criteria)")
    if prompt is not None and not isinstance(prompt, str):
        raise RubricParseError(f"prompt: expected a string, got {_type_name(prompt)}")

    decoder = json.JSONDecoder()
    budget = 4 * len(s) + 10_000  # total characters the candidate attempts may re-read: keeps the work linear
    best_error: tuple[int, RubricParseError, bool] | None = (
        None  # (span, error, complete): largest wrong candidate
    )
    syntax: tuple[int, _Syntax] | None = None  # (span, error) of the syntax error that got furthest
    substantial = False  # did any candidate parse into something that looks like an attempt at a rubric?
    attempts = 0
    skip_to = 0
    for m in _STARTS.finditer(s):
        start = m.start()
        if start < skip_to:
            continue
        if attempts >= _MAX_STARTS or budget <= 0:
            break
        attempts += 1
        complete = True
        try:
            obj, end = decoder.raw_decode(s, start)
        except (json.JSONDecodeError, RecursionError) as e:
            # RecursionError: Python's decoder recurses once per nesting level; the reader below caps the depth.
            budget -= e.pos - start if isinstance(e, json.JSONDecodeError) else 1000
            try:
                obj, end, complete = _Reader(s).value(start, 0)
            except _Syntax as err:
                budget -= err.pos - start
                if err.deep:
                    # Every later start inside this run of brackets is the same garbage: stop here.
                    raise RubricParseError(
                        f"invalid rubric JSON at {_line_col(s, err.pos)}: {err.message}"
                    ) from None
                if syntax is None or err.pos - start > syntax[0]:
                    syntax = (err.pos - start, err)
                continue
        budget -= end - start
        skip_to = end
        if isinstance(obj, dict) or (isinstance(obj, list) and any(isinstance(x, (dict, str)) for x in obj)):
            substantial = True
        try:
            return rubric_data_from_obj(obj, prompt)
        except RubricParseError as e:
            if best_error is None or end - start > best_error[0]:
                best_error = (end - start, e, complete)

    if not substantial:
        lines = _numbered_lines(s)
        if lines:
            return _rubric(prompt, _build_criteria(lines), None)
    if syntax is not None and (best_error is None or syntax[0] > best_error[0]):
        err = syntax[1]
        raise RubricParseError(f"invalid rubric JSON at {_line_col(s, err.pos)}: {err.message}")
    if best_error is not None:
        _span, error, complete = best_error
        if not complete and isinstance(error, _NoCriteria):
            raise RubricParseError(
                f"rubric answer is truncated (cut at character {len(s)}) and no complete criterion precedes the cut"
            )
        if not complete:
            raise RubricParseError(f"{error} (the answer is also truncated: its JSON is cut off at the end)")
        raise RubricParseError(str(error))
    raise RubricParseError(
        f"no rubric found: expected a JSON object or list, or a numbered list of criteria; got {_short(s)}"
    )
