"""Editing instructions: exact targets, deterministic splits, and rubrics that separate instruction from preservation."""

from __future__ import annotations

import random

import pytest

from arr.backends.pixel import PixelBackend
from arr.shapes.edits import (
    EDIT_KINDS,
    EditSpec,
    edit_correct,
    is_held_out_edit,
    rubric_for_edit,
    sample_edit,
)
from arr.shapes.pairs import perturb_image
from arr.shapes.scene import COLORS, Obj, Scene, render

JUDGE = PixelBackend()


@pytest.mark.parametrize("kind", EDIT_KINDS)
def test_target_scores_one_source_fails_instruction_but_keeps_preservation(kind):
    rng = random.Random(hash(kind) % 1000)
    for _ in range(40):
        edit = sample_edit(rng, "heldout", kind)
        assert edit.kind == kind and edit.target != edit.source
        rubric = rubric_for_edit(edit)
        assert rubric.task == "edit" and rubric.prompt == edit.text
        target = JUDGE.score_details(render(edit.target), rubric)
        source = JUDGE.score_details(render(edit.source), rubric)
        assert target["score"] == 1.0, edit.text
        assert source["instruction"] == 0.0 and source["preservation"] == 1.0 and source["score"] == 0.0, (
            edit.text
        )
        assert edit_correct(edit, render(edit.target)) and not edit_correct(edit, render(edit.source))


def test_an_extra_change_fails_preservation():
    rng = random.Random(11)
    checked = 0
    while checked < 30:
        edit = sample_edit(rng, "train")
        if not edit.unchanged:
            continue
        o = edit.unchanged[0]
        used = {x.color for x in (*edit.source.objects, *edit.target.objects)}
        fresh = next(c for c in COLORS if c not in used)  # a colour no instruction criterion mentions
        damaged = Scene(
            tuple(x if x != o else Obj(x.shape, fresh, x.row, x.col) for x in edit.target.objects)
        )
        details = JUDGE.score_details(render(damaged), rubric_for_edit(edit))
        assert details["instruction"] == 1.0 and details["preservation"] < 1.0, edit.text
        assert not edit_correct(edit, render(damaged))
        free = damaged.free_cells()[0]
        added = Scene((*edit.target.objects, Obj("triangle", "yellow", *free)))
        assert JUDGE.score_details(render(added), rubric_for_edit(edit))["preservation"] < 1.0
        checked += 1


def test_hand_built_recolor_rubric_texts_and_checks():
    source = Scene((Obj("circle", "red", 0, 0), Obj("square", "blue", 3, 3)))
    target = Scene((Obj("circle", "blue", 0, 0), Obj("square", "blue", 3, 3)))
    edit = EditSpec(
        "recolor",
        "make the red circle blue",
        source,
        target,
        Obj("circle", "red", 0, 0),
        Obj("circle", "blue", 0, 0),
    )
    rubric = rubric_for_edit(edit)
    texts = {c.id: c.text for c in rubric.criteria}
    assert texts["recolored"] == "The circle in the top-left corner is now blue."
    assert texts["old_color_gone"] == "There is no red circle left in the image."
    assert texts["kept_33"] == "The blue square in the bottom-right corner is unchanged."
    assert [c.category for c in rubric.criteria] == [
        "instruction",
        "instruction",
        "preservation",
        "preservation",
    ]
    wrong = Scene((Obj("circle", "green", 0, 0), Obj("square", "blue", 3, 3)))
    details = JUDGE.score_details(render(wrong), rubric)
    # The green circle is neither the source nor the target state: instruction half done, an unrequested object.
    assert details["instruction"] == 0.5 and details["preservation"] == 0.5


def test_free_add_accepts_any_cell_but_not_two():
    source = Scene((Obj("circle", "red", 1, 1),))
    new = Obj("square", "yellow", 0, 3)
    edit = EditSpec("add", "add a yellow square", source, Scene((*source.objects, new)), new, new, free=True)
    elsewhere = Scene((*source.objects, Obj("square", "yellow", 3, 0)))
    assert edit_correct(edit, render(elsewhere))
    twice = Scene((*elsewhere.objects, new))
    assert not edit_correct(edit, render(twice))


def test_relation_add_checks_the_relation_not_the_exact_cell():
    source = Scene((Obj("circle", "red", 1, 2),))
    new = Obj("triangle", "green", 1, 1)
    edit = EditSpec(
        "add",
        "add a green triangle to the left of the red circle",
        source,
        Scene((*source.objects, new)),
        new,
        new,
        anchor=source.objects[0],
        relation="left of",
    )
    assert edit_correct(edit, render(Scene((*source.objects, Obj("triangle", "green", 3, 0)))))
    assert not edit_correct(edit, render(Scene((*source.objects, Obj("triangle", "green", 0, 3)))))


def test_sampling_is_deterministic_and_splits_are_disjoint():
    a = [sample_edit(random.Random(5), "train") for _ in range(3)]
    b = [sample_edit(random.Random(5), "train") for _ in range(3)]
    assert a == b
    rng = random.Random(0)
    train = {sample_edit(rng, "train").text for _ in range(300)}
    held = {sample_edit(rng, "heldout").text for _ in range(300)}
    assert not train & held
    assert all(not is_held_out_edit(t) for t in train) and all(is_held_out_edit(t) for t in held)
    with pytest.raises(ValueError, match="split"):
        sample_edit(rng, "test")


def test_named_objects_are_unique_in_the_source():
    rng = random.Random(3)
    for _ in range(200):
        edit = sample_edit(rng, "train")
        same = [
            o for o in edit.source.objects if (o.shape, o.color) == (edit.subject.shape, edit.subject.color)
        ]
        assert len(same) == (0 if edit.kind == "add" else 1), edit.text


def test_edits_are_judged_right_on_perturbed_images():
    rng = random.Random(8)
    ok = total = 0
    for _ in range(150):
        edit = sample_edit(rng, "heldout")
        ok += edit_correct(edit, perturb_image(render(edit.target), rng))
        ok += not edit_correct(edit, perturb_image(render(edit.source), rng))
        total += 2
    assert ok / total >= 0.99
