"""Preference pairs with known winners, and the benchmark files in GenEval / GEdit / HPDv3 schemas."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from arr.backends import PairQuery
from arr.backends.pixel import PixelBackend
from arr.shapes.benchmarks import (
    edit_summary,
    geneval_record,
    geneval_summary,
    load_edit_benchmark,
    load_geneval_metadata,
    load_preference_pairs,
    load_suite,
    prepare_suite,
    spec_from_geneval_record,
    write_edit_benchmark,
    write_geneval_metadata,
    write_preference_pairs,
)
from arr.shapes.edits import edit_correct
from arr.shapes.pairs import EDIT_CORRUPTIONS, T2I_CORRUPTIONS, make_pairs
from arr.shapes.prompts import CATEGORIES, ObjectSpec, PromptSpec, all_prompts
from arr.shapes.scene import render

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "eval" / "data"


def _bytes(image) -> bytes:
    return np.asarray(image).tobytes()


@pytest.mark.parametrize("task", ["t2i", "edit"])
def test_pairs_are_deterministic_balanced_and_cover_corruptions(task):
    pairs = make_pairs(70, seed=3, task=task)
    again = make_pairs(70, seed=3, task=task)
    assert [(_bytes(p.image_a), _bytes(p.image_b), p.winner) for p in pairs] == [
        (_bytes(p.image_a), _bytes(p.image_b), p.winner) for p in again
    ]
    assert Counter(p.winner for p in pairs) == {"A": 35, "B": 35}
    kinds = T2I_CORRUPTIONS if task == "t2i" else EDIT_CORRUPTIONS
    assert set(Counter(p.corruption for p in pairs)) == set(kinds)
    assert all((p.source is not None) == (task == "edit") for p in pairs)


@pytest.mark.parametrize("perturb", [False, True])
def test_pixel_judge_prefers_winners_in_both_orders(perturb):
    pairs = make_pairs(40, seed=9, task="both", perturb=perturb)
    backend = PixelBackend()
    shown = [PairQuery(p.prompt, (p.image_a, p.image_b), p.rubric, p.source) for p in pairs]
    swapped = [PairQuery(p.prompt, (p.image_b, p.image_a), p.rubric, p.source) for p in pairs]
    for p, v, w in zip(pairs, backend.judge_pairs(shown), backend.judge_pairs(swapped), strict=True):
        assert v.prob_first == (1.0 if p.winner == "A" else 0.0), (p.prompt, p.corruption)
        assert w.prob_first == 1.0 - v.prob_first


def test_edit_pair_losers_fail_and_winners_pass():
    for p in make_pairs(30, seed=1, task="edit"):
        assert p.task == "edit" and p.rubric.task == "edit"
        assert PixelBackend().score_image(p.chosen, p.rubric) == 1.0
        assert PixelBackend().score_image(p.rejected, p.rubric) < 1.0


# --- GenEval ------------------------------------------------------------------------------------------------------


def test_geneval_records_round_trip_every_prompt():
    for category in CATEGORIES:
        for spec in all_prompts(category):
            record = geneval_record(spec)
            assert spec_from_geneval_record(json.loads(json.dumps(record))) == spec
            assert record["prompt"] == spec.text and record["tag"] == category


def test_geneval_record_layout_matches_geneval():
    spec = PromptSpec("position", (ObjectSpec("circle", "red"), ObjectSpec("square")), "left of")
    assert geneval_record(spec) == {
        "tag": "position",
        "include": [
            {"class": "square", "count": 1},
            {"class": "circle", "count": 1, "color": "red", "position": ["left of", 0]},
        ],
        "prompt": "a red circle left of a square",
    }
    counting = geneval_record(PromptSpec("counting", (ObjectSpec("triangle", None, 3),)))
    assert counting["exclude"] == [{"class": "triangle", "count": 4}]


def test_geneval_metadata_file_and_committed_sample(tmp_path):
    path = write_geneval_metadata(
        tmp_path / "evaluation_metadata.jsonl", n_prompts=24, split="heldout", seed=0
    )
    assert path.read_bytes() == (DATA / "shapes_geneval_sample.jsonl").read_bytes()
    specs = load_geneval_metadata(path)
    assert len(specs) == 24
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"tag": "colors", "include": [{"class": "dog", "count": 1}], "prompt": "a dog"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: not a shapes-world GenEval record"):
        load_geneval_metadata(bad)


def test_geneval_summary_averages_categories():
    a = PromptSpec("single_object", (ObjectSpec("circle"),))
    b = PromptSpec("colors", (ObjectSpec("circle", "red"),))
    summary = geneval_summary([(a, True), (a, False), (b, True)])
    assert summary["categories"] == {"single_object": 0.5, "colors": 1.0}
    assert summary["overall"] == 0.75 and summary["n"] == 3


# --- editing and pairs files --------------------------------------------------------------------------------------


def test_edit_benchmark_round_trip_and_committed_sample(tmp_path):
    path = write_edit_benchmark(tmp_path / "records.jsonl", n=6, split="heldout", seed=0)
    assert path.read_bytes() == (DATA / "shapes_edit_sample" / "records.jsonl").read_bytes()
    for (record, edit), committed in zip(
        load_edit_benchmark(path),
        load_edit_benchmark(DATA / "shapes_edit_sample" / "records.jsonl"),
        strict=True,
    ):
        assert set(record) >= {"key", "task_type", "instruction", "instruction_language", "input_image"}
        assert record["instruction_language"] == "en" and edit.text == record["instruction"]
        assert Path(record["input_image"]).read_bytes() == Path(committed[0]["input_image"]).read_bytes()
        assert edit == committed[1]
        assert edit_correct(edit, render(edit.target)) and not edit_correct(edit, render(edit.source))


def test_edit_summary_means():
    rows = [
        ("color_alter", {"instruction": 1.0, "preservation": 1.0, "score": 1.0, "correct": True}),
        ("color_alter", {"instruction": 0.0, "preservation": 1.0, "score": 0.0, "correct": False}),
    ]
    summary = edit_summary(rows)
    assert summary["overall"] == {"instruction": 0.5, "preservation": 1.0, "score": 0.5, "correct": 0.5}


def test_preference_pair_file_is_hpdv3_shaped_and_round_trips(tmp_path):
    path = write_preference_pairs(
        tmp_path / "pairs.json", n=4, split="heldout", seed=0, task="both", perturb=False
    )
    assert path.read_bytes() == (DATA / "shapes_pairs_sample" / "pairs.json").read_bytes()
    records = json.loads(path.read_text())
    for r in records:
        assert {"prompt", "path1", "path2", "model1", "model2", "confidence", "choice_dist"} <= set(r)
    loaded = load_preference_pairs(path)
    original = make_pairs(4, seed=0, split="heldout", task="both")
    for got, want in zip(loaded, original, strict=True):
        assert got.winner == want.winner and got.prompt == want.prompt
        assert _bytes(got.image_a) == _bytes(want.image_a) and _bytes(got.image_b) == _bytes(want.image_b)
        assert got.rubric.to_dict() == want.rubric.to_dict()


# --- suites -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["shapes_geneval", "shapes_edit", "shapes_pairs"])
def test_suites_load(name):
    suite = load_suite(ROOT / "eval" / f"{name}.yaml")
    assert suite["name"] == name and suite["judge"] == "pixel"


def test_prepare_suite_writes_data_and_rejects_unknown_keys(tmp_path):
    suite = prepare_suite(ROOT / "eval" / "shapes_geneval.yaml", tmp_path)
    assert len(load_geneval_metadata(suite["data_path"])) == 600
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntask: t2i\njudge: pixel\ndata: {generator: a:b, file: f}\nsamples: 3\n")
    with pytest.raises(ValueError, match="unknown keys"):
        load_suite(bad)
