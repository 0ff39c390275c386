"""Rubric data model round trips, rubric_from_obj variants and errors, and parse_rubric properties (Hypothesis)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arr.rubrics import Criterion, GuideCategory, Rubric, RubricParseError, parse_rubric, rubric_from_obj
from arr.rubrics.parse import clean_text


def _triples(rubric: Rubric) -> list[tuple[str, str, float]]:
    return [(c.id, c.text, c.weight) for c in rubric.criteria]


CANONICAL = {
    "prompt": "a red circle to the left of two blue squares",
    "task": "t2i",
    "criteria": [
        {"id": "c1", "text": "There is a red circle", "weight": 1.0, "category": "objects"},
        {
            "id": "count",
            "text": "There are exactly two blue squares",
            "weight": 2.0,
            "check": {"kind": "count", "shape": "square", "color": "blue", "n": 2},
        },
        {"id": "pen", "text": "There is no text in the image", "weight": -0.5},
    ],
    "guide": [{"theme": "Composition", "tips": ["Check left/right from the viewer's side"]}],
}


# ---- the data model --------------------------------------------------------------------------------------------


def test_to_dict_from_dict_round_trip():
    rubric = Rubric.from_dict(CANONICAL)
    assert rubric.to_dict() == CANONICAL
    assert Rubric.from_dict(rubric.to_dict()) == rubric
    assert rubric.total_weight == 3.0  # penalties do not count toward the total


def test_save_load_round_trip(tmp_path):
    rubric = Rubric.from_dict(CANONICAL)
    path = tmp_path / "rubric.json"
    rubric.save(path)
    assert Rubric.load(path) == rubric
    assert json.loads(path.read_text(encoding="utf-8")) == CANONICAL
    edit = Rubric("make it blue", [Criterion("c1", "The square is blue ✓")], task="edit")
    edit.save(tmp_path / "edit.json")
    assert Rubric.load(tmp_path / "edit.json") == edit


def test_load_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(RubricParseError, match="cannot read rubric file .*nope.json"):
        Rubric.load(missing)
    bad = tmp_path / "bad.json"
    bad.write_text('{"criteria": [{"text": "x", "weight": "heavy"}]}')
    with pytest.raises(RubricParseError, match=r"bad\.json: criteria\[0\]\.weight"):
        Rubric.load(bad)


def test_from_json_uses_the_tolerant_parser():
    rubric = Rubric.from_json('```json\n["The circle is red",]\n```', prompt="a red circle")
    assert rubric.prompt == "a red circle" and _triples(rubric) == [("c1", "The circle is red", 1.0)]


# ---- rubric_from_obj: accepted variants --------------------------------------------------------------------------


def test_bare_list_of_strings_gets_ids_and_prompt():
    rubric = rubric_from_obj(
        ["1. The circle is red", "- The circle is small", "(a) Nothing else"], prompt="p"
    )
    assert rubric.prompt == "p" and rubric.task == "t2i"
    assert _triples(rubric) == [
        ("c1", "The circle is red", 1.0),
        ("c2", "The circle is small", 1.0),
        ("c3", "Nothing else", 1.0),
    ]


def test_alternative_keys_and_numeric_strings():
    obj = {
        "instruction": "remove the square",
        "rubrics": [
            {"criterion": "The square is gone", "weight": "2"},
            {"question": "Is the circle unchanged?", "weight": " -0.5 ", "dimension": "preservation"},
            {"description": "3) The background is untouched", "criterion_id": 7},
        ],
        "themes": {"Preservation": "Compare with Image BASE"},
    }
    rubric = rubric_from_obj(obj)
    assert rubric.task == "edit" and rubric.prompt == "remove the square"  # "instruction" means editing
    assert _triples(rubric) == [
        ("c1", "The square is gone", 2.0),
        ("c2", "Is the circle unchanged?", -0.5),
        ("7", "The background is untouched", 1.0),
    ]
    assert rubric.criteria[1].category == "preservation"
    assert rubric.guide == [GuideCategory("Preservation", ["Compare with Image BASE"])]


def test_prompt_argument_overrides_the_answer():
    rubric = rubric_from_obj({"prompt": "a red circel", "criteria": ["red"]}, prompt="a red circle")
    assert rubric.prompt == "a red circle"


@pytest.mark.parametrize(
    "task,expected", [("T2I", "t2i"), ("editing", "edit"), ("text-to-image", "t2i"), (None, "t2i")]
)
def test_task_spellings(task, expected):
    assert rubric_from_obj({"task": task, "criteria": ["x"]}).task == expected


def test_assigned_ids_skip_explicit_ones():
    rubric = rubric_from_obj(
        [{"text": "a"}, {"id": "c1", "text": "b"}, {"text": "c"}, {"id": " ", "text": "d"}]
    )
    assert [c.id for c in rubric.criteria] == ["c2", "c1", "c3", "c4"]


def test_wrappers_are_looked_through():
    inner = {"prompt": "p", "criteria": ["a", "b"]}
    for obj in ({"rubric": inner}, {"response": {"rubric": inner}}, [inner]):
        assert _triples(rubric_from_obj(obj)) == [("c1", "a", 1.0), ("c2", "b", 1.0)]


def test_clean_text_strips_only_one_list_marker():
    assert clean_text("  1. The circle  ") == "The circle"
    assert clean_text("(12) x") == "x"
    assert clean_text("- 2. x") == "2. x"
    assert clean_text("1.5 circles") == "1.5 circles"  # a number, not a marker
    assert clean_text("A red circle") == "A red circle"
    assert clean_text("1.") == "1."  # nothing would remain


# ---- rubric_from_obj: refused input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "obj,words",
    [
        ({"criteria": [{"text": "a", "weight": "heavy"}]}, ["criteria[0].weight", "heavy"]),
        ({"criteria": ["ok", {"text": "b", "weight": [1]}]}, ["criteria[1].weight", "list"]),
        ({"criteria": 5}, ["criteria", "expected a list", "number"]),
        ({"criteria": "just one sentence"}, ["criteria", "expected a list"]),
        ({"criteria": ["ok", ""]}, ["criteria[1].text", "empty"]),
        ({"criteria": ["ok", "ok2", 3]}, ["criteria[2]", "number"]),
        ({"criteria": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]}, ["duplicate", "'a'"]),
        ({"criteria": [{"id": 1, "text": "x"}, {"id": "1", "text": "y"}]}, ["duplicate", "'1'"]),
        ({"criteria": [{"id": ["x"], "text": "x"}]}, ["criteria[0].id", "list"]),
        ({"criteria": [{"id": True, "text": "x"}]}, ["criteria[0].id", "boolean"]),
        ({"criteria": [{"text": "x", "category": 3}]}, ["criteria[0].category", "number"]),
        ({"criteria": [{"text": "x", "check": "count==2"}]}, ["criteria[0].check", "expected an object"]),
        ({"criteria": [{"weight": 2}]}, ["criteria[0]", "missing text"]),
        ({"criteria": [{"text": "x", "weight": float("inf")}]}, ["criteria[0].weight", "finite"]),
        ({"criteria": ["x"], "guide": "be strict"}, ["guide", "expected a list"]),
        ({"criteria": ["x"], "guide": [{"tips": ["t"]}]}, ["guide[0]", "theme"]),
        ({"criteria": ["x"], "guide": [{"theme": "T", "tips": [1]}]}, ["guide[0].tips[0]", "string"]),
        ({"criteria": ["x"], "task": 3}, ["task"]),
        ({"prompt": 3, "criteria": ["x"]}, ["prompt", "expected a string"]),
        ({"prompt": "p"}, ["criteria", "missing"]),
        ([], ["no criteria"]),
        ("a string", ["expected a JSON object or list", "string"]),
        (None, ["expected a JSON object or list", "null"]),
        ({"criteria": ["x"] * 10_001}, ["too many criteria"]),
    ],
)
def test_rubric_from_obj_errors(obj, words):
    with pytest.raises(RubricParseError) as info:
        rubric_from_obj(obj)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, (word, message)


def test_parse_rubric_rejects_non_text_input():
    with pytest.raises(RubricParseError, match="expected str or bytes, got int"):
        parse_rubric(42)  # type: ignore[arg-type]
    with pytest.raises(RubricParseError, match="prompt: expected a string"):
        parse_rubric('["x"]', prompt=3)  # type: ignore[arg-type]


def test_parse_rubric_picks_the_json_after_a_false_start():
    text = 'Using the format {"id": ..., "text": ...}, here it is: [{"id": "a", "text": "red"}]'
    assert _triples(parse_rubric(text)) == [("a", "red", 1.0)]


def test_parse_rubric_escapes_in_single_quoted_strings():
    rubric = parse_rubric(r"""['it\'s red', 'tab\there', 'caf\u00e9', 'odd \q escape']""")
    assert [c.text for c in rubric.criteria] == ["it's red", "tab\there", "café", "odd q escape"]


# ---- Hypothesis properties -------------------------------------------------------------------------------------

_ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=8)
_clean = st.text(min_size=1, max_size=40).filter(lambda t: clean_text(t) == t and t != "")
_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False)
    | st.text(max_size=10)
)
_checks = st.none() | st.dictionaries(
    st.text(max_size=8),
    st.recursive(
        _json_scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
        max_leaves=6,
    ),
    max_size=4,
)


@st.composite
def rubrics(draw) -> Rubric:
    ids = draw(st.lists(_ids, min_size=1, max_size=6, unique=True))
    criteria = [
        Criterion(
            id=cid,
            text=draw(_clean),
            weight=draw(
                st.floats(allow_nan=False, allow_infinity=False, width=64) | st.integers(-5, 5).map(float)
            ),
            category=draw(st.none() | st.text(min_size=1, max_size=10)),
            check=draw(_checks),
        )
        for cid in ids
    ]
    guide = draw(st.lists(st.builds(GuideCategory, _clean, st.lists(_clean, max_size=3)), max_size=3))
    return Rubric(
        prompt=draw(st.text(max_size=40)),
        criteria=criteria,
        guide=guide,
        task=draw(st.sampled_from(["t2i", "edit"])),
    )


_FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FAST
@given(rubrics(), st.sampled_from([None, 2]))
def test_property_to_json_round_trips(rubric, indent):
    text = rubric.to_json(indent=indent)
    assert parse_rubric(text) == rubric
    assert parse_rubric(text.encode("utf-8")) == rubric
    assert Rubric.from_dict(json.loads(text)) == rubric


@_FAST
@given(rubrics(), st.sampled_from(["```json\n{}\n```", "Here is the rubric:\n{}\nDone.", "{}"]))
def test_property_wrapped_json_round_trips(rubric, wrapper):
    assert parse_rubric(wrapper.replace("{}", rubric.to_json(indent=2))) == rubric


@_FAST
@given(rubrics(), st.data())
def test_property_truncation_keeps_a_prefix_of_complete_criteria(rubric, data):
    """Cut anywhere: the result is an error or exactly the criteria that were complete before the cut."""
    text = rubric.to_json()
    cut = data.draw(st.integers(0, len(text) - 1))
    try:
        repaired = parse_rubric(text[:cut])
    except RubricParseError:
        return
    k = len(repaired.criteria)
    assert 1 <= k <= len(rubric.criteria)
    assert repaired.criteria == rubric.criteria[:k]
    assert repaired.guide == rubric.guide[: len(repaired.guide)]


_SOUP = st.lists(
    st.sampled_from(
        [
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            '"',
            "'",
            "criteria",
            '"criteria"',
            '"text"',
            '"id"',
            '"weight"',
            "1",
            "-",
            "1.",
            "e",
            "True",
            "null",
            "None",
            " ",
            "\n",
            "```json",
            "\u201c",
            "\u201d",
            "//",
            "/*",
            "*/",
            "\\",
            '"a"',
            "1. ",
            "- ",
            "\u2018",
            "NaN",
            '"x"',
            "{{",
            "]]",
        ]
    ),
    max_size=60,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200) | _SOUP)
def test_property_any_text_gives_rubric_or_parse_error(text):
    try:
        rubric = parse_rubric(text)
    except RubricParseError as e:
        assert "\n" not in str(e)
        return
    assert isinstance(rubric, Rubric) and rubric.criteria
    assert all(c.text and c.text == c.text.strip() for c in rubric.criteria)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_property_any_bytes_give_rubric_or_parse_error(raw):
    try:
        parse_rubric(raw)
    except RubricParseError as e:
        assert "\n" not in str(e)
