"""Rubrics from prompts, the check language, GenEval's strict verdict, and adversarial images."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
from PIL import Image, ImageDraw

from arr.backends.pixel import PixelBackend
from arr.shapes.detect import Detection, DetectionReport, analyze
from arr.shapes.pairs import perturb_image
from arr.shapes.prompts import (
    CATEGORIES,
    CATEGORY_WEIGHTS,
    ObjectSpec,
    PromptSpec,
    all_prompts,
    is_held_out,
    prompts_for_split,
    relation_holds,
    sample_prompts,
    scene_for_prompt,
)
from arr.shapes.rubrics import (
    SPECK_BUDGET,
    CheckError,
    evaluate_check,
    geneval_correct,
    rubric_for_prompt,
)
from arr.shapes.scene import COLORS, PALETTE, SHAPES, Obj, Scene, render


def det(shape: str, color: str, x: float, y: float, area: int = 80) -> Detection:
    cell = (min(3, int(y // 12)), min(3, int(x // 12)))
    return Detection(shape, color, (int(x) - 5, int(y) - 5, int(x) + 4, int(y) + 4), (x, y), area, 0.8, cell)


def holds(check: dict, dets: list[Detection] | DetectionReport, strict: bool = True) -> bool:
    return evaluate_check(check, dets, strict=strict).holds


# --- check semantics on hand-made detections -----------------------------------------------------------------


def test_count_ops_and_colour_filter():
    dets = [
        det("square", "blue", 5.5, 5.5),
        det("square", "blue", 17.5, 5.5),
        det("square", "red", 29.5, 5.5),
    ]
    assert holds({"type": "count", "shape": "square", "color": "blue", "n": 2}, dets)
    assert not holds({"type": "count", "shape": "square", "n": 2}, dets)  # three squares in all
    assert holds({"type": "count", "shape": "square", "n": 2, "op": "ge"}, dets)
    assert holds({"type": "count", "shape": "circle", "n": 0}, dets)
    assert not holds({"type": "count", "shape": "square", "n": 2, "op": "le"}, dets)


def test_colour_attribution_needs_every_object_of_the_shape():
    assert holds({"type": "color", "shape": "circle", "color": "red"}, [det("circle", "red", 5.5, 5.5)])
    mixed = [det("circle", "red", 5.5, 5.5), det("circle", "blue", 17.5, 5.5)]
    assert not holds({"type": "color", "shape": "circle", "color": "red"}, mixed)
    assert not holds({"type": "color", "shape": "circle", "color": "red"}, [det("square", "red", 5.5, 5.5)])


def test_relations_on_centroids_with_margin():
    a, b = det("circle", "red", 5.5, 17.5), det("square", "blue", 29.5, 41.5)
    check = {"type": "relation", "a": {"shape": "circle"}, "rel": "left of", "b": {"shape": "square"}}
    assert holds(check, [a, b])
    assert holds({**check, "rel": "above"}, [a, b])
    assert not holds({**check, "rel": "right of"}, [a, b])
    assert not holds({**check, "rel": "below"}, [a, b])
    near = det("square", "blue", 7.5, 41.5)  # 2 px to the right: within the 3 px margin, so not "left of"
    assert not holds(check, [a, near])
    assert not holds(check, [a])  # missing object


def test_exact_set_matches_wildcard_colours_and_rejects_extras():
    wanted = {
        "type": "exact_set",
        "objects": [{"shape": "square", "count": 2}, {"shape": "circle", "color": "red", "count": 1}],
    }
    good = [
        det("square", "blue", 5.5, 5.5),
        det("square", "green", 17.5, 5.5),
        det("circle", "red", 29.5, 5.5),
    ]
    assert holds(wanted, good)
    assert not holds(wanted, good[:2])
    assert not holds(wanted, [*good, det("triangle", "red", 41.5, 5.5)])
    assert not holds(wanted, [*good[:2], det("circle", "blue", 29.5, 5.5)])
    assert not holds(wanted, [*good, det("unknown", "red", 41.5, 41.5, area=200)])


def test_strict_checks_fail_on_fragments_and_specks_lenient_ignore_them():
    base = [det("circle", "red", 5.5, 5.5)]
    frag = Detection("fragment", "blue", (40, 40, 42, 42), (41.0, 41.0), 9, 1.0, (3, 3))
    exact = {"type": "exact_set", "objects": [{"shape": "circle", "count": 1}]}
    assert holds(exact, [*base, frag], strict=False)
    assert not holds(exact, [*base, frag], strict=True)
    specky = DetectionReport(tuple(base), n_specks=5, speck_pixels=SPECK_BUDGET + 1)
    assert not holds(exact, specky) and holds(exact, DetectionReport(tuple(base), n_specks=2, speck_pixels=2))
    assert holds({"type": "fragments"}, [*base, frag]) and not holds({"type": "fragments"}, base)
    assert not holds({"type": "cell_empty", "cell": [3, 3]}, [*base, frag], strict=True)
    assert holds({"type": "cell_empty", "cell": [3, 3]}, [*base, frag], strict=False)


def test_object_at_no_extra_and_unchanged_from_source():
    dets = [det("circle", "red", 5.5, 5.5), det("square", "blue", 41.5, 41.5)]
    assert holds({"type": "object_at", "shape": "circle", "color": "red", "cell": [0, 0]}, dets)
    assert not holds({"type": "object_at", "shape": "circle", "color": "red", "cell": [0, 1]}, dets)
    allowed = [{"shape": "circle", "color": "red", "cell": [0, 0]}, {"shape": "square", "color": "blue"}]
    assert holds({"type": "no_extra", "allowed": allowed}, dets)
    assert not holds({"type": "no_extra", "allowed": allowed[:1]}, dets)
    assert not holds({"type": "no_extra", "allowed": allowed}, [*dets, det("square", "blue", 17.5, 5.5)])
    moved = [dets[0], det("square", "blue", 29.5, 41.5)]
    src = {"type": "unchanged_from_source"}
    assert evaluate_check(src, dets, source=dets).holds
    assert not evaluate_check(src, moved, source=dets).holds
    skip = {"type": "unchanged_from_source", "except_cells": [[3, 3], [3, 2]]}
    assert evaluate_check(skip, moved, source=dets).holds
    with pytest.raises(CheckError, match="source image"):
        evaluate_check(src, dets)


@pytest.mark.parametrize(
    ("check", "message"),
    [
        ({"type": "count", "shape": "hexagon", "n": 1}, "unknown shape"),
        ({"type": "count", "shape": "circle", "n": -1}, "non-negative"),
        ({"type": "count", "shape": "circle", "n": 1, "op": "gt"}, "op must be"),
        ({"type": "relation", "a": {"shape": "circle"}, "rel": "near", "b": {}}, "rel must be"),
        ({"type": "object_at", "shape": "circle", "cell": [4, 0]}, "cell must be"),
        ({"type": "teleport"}, "unknown check type"),
        ({"shape": "circle"}, "'type'"),
    ],
)
def test_malformed_checks_raise_clear_errors(check, message):
    with pytest.raises(CheckError, match=message):
        evaluate_check(check, [])


# --- rubrics for prompts ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("category", CATEGORIES)
def test_rubric_structure_and_weights(category):
    for spec in all_prompts(category)[:20]:
        rubric = rubric_for_prompt(spec)
        assert rubric.prompt == spec.text and rubric.task == "t2i"
        assert sum(c.weight for c in rubric.criteria) == pytest.approx(1.0)
        assert all(c.check and c.text.endswith(".") for c in rubric.criteria)
        assert rubric.criteria[-1].check["type"] == "exact_set"
        assert any(c.check["type"] == "relation" for c in rubric.criteria) == (spec.relation is not None)


def test_rubric_texts_read_naturally():
    spec = PromptSpec("counting", (ObjectSpec("square", "blue", 2),))
    texts = [c.text for c in rubric_for_prompt(spec).criteria]
    assert "The image contains exactly two blue squares." in texts
    spec = PromptSpec("position", (ObjectSpec("circle", "red"), ObjectSpec("triangle", "green")), "left of")
    texts = [c.text for c in rubric_for_prompt(spec).criteria]
    assert "The red circle is to the left of the green triangle." in texts
    assert texts[-1] == "There are no other objects, shapes or stray fragments of colour in the image."


# --- agreement with scene ground truth -------------------------------------------------------------------------


def truth(check: dict, scene: Scene) -> bool:
    """Each check evaluated directly on the scene's objects, independently of the detector and evaluator."""
    objs = scene.objects

    def match(o: Obj, sel: dict) -> bool:
        return o.shape == sel.get("shape", o.shape) and o.color == sel.get("color", o.color)

    kind = check["type"]
    if kind == "count":
        n = sum(match(o, check) for o in objs)
        return {"eq": n == check["n"], "ge": n >= check["n"], "le": n <= check["n"]}[check.get("op", "eq")]
    if kind == "color":
        same = [o for o in objs if o.shape == check["shape"]]
        return bool(same) and all(o.color == check["color"] for o in same)
    if kind == "relation":
        return any(
            relation_holds(a, check["rel"], b)
            for a in objs
            if match(a, check["a"])
            for b in objs
            if match(b, check["b"]) and b is not a
        )
    if kind == "exact_set":
        remaining = list(objs)
        # specific colours first, then wildcards: exact for these specs (a wildcard accepts any colour)
        for item in sorted(check["objects"], key=lambda i: "color" not in i):
            for _ in range(item["count"]):
                hit = next((o for o in remaining if match(o, item)), None)
                if hit is None:
                    return False
                remaining.remove(hit)
        return not remaining
    raise AssertionError(kind)


def _mutate(scene: Scene, rng: random.Random) -> Scene:
    objs = list(scene.objects)
    free = scene.free_cells()
    move = rng.choice(["recolor", "reshape", "add", "drop", "swap"])
    if move == "recolor":
        i = rng.randrange(len(objs))
        objs[i] = Obj(objs[i].shape, rng.choice(COLORS), objs[i].row, objs[i].col)
    elif move == "reshape":
        i = rng.randrange(len(objs))
        objs[i] = Obj(rng.choice(SHAPES), objs[i].color, objs[i].row, objs[i].col)
    elif move == "add":
        objs.append(Obj(rng.choice(SHAPES), rng.choice(COLORS), *rng.choice(free)))
    elif move == "drop" and len(objs) > 1:
        objs.pop(rng.randrange(len(objs)))
    elif move == "swap" and len(objs) > 1:
        a, b = objs[0], objs[1]
        objs[0], objs[1] = Obj(a.shape, a.color, b.row, b.col), Obj(b.shape, b.color, a.row, a.col)
    return Scene(tuple(objs))


def agreement(n_scenes: int, seed: int, perturb: bool) -> tuple[int, int, int, int]:
    """(criteria agreeing, criteria, geneval verdicts agreeing, scenes) on fresh held-out scenes."""
    rng = random.Random(seed)
    specs = prompts_for_split("heldout")
    agree = total = gen_agree = 0
    for i in range(n_scenes):
        spec = rng.choice(specs)
        scene = scene_for_prompt(spec, rng)
        if i % 2:  # half the scenes are wrong in some way, so criteria take both values
            scene = _mutate(scene, rng)
        image = render(scene)
        if perturb:
            image = perturb_image(image, rng)
        report = analyze(image)
        rubric = rubric_for_prompt(spec)
        for c in rubric.criteria:
            agree += evaluate_check(c.check, report).holds == truth(c.check, scene)
            total += 1
        gen_agree += geneval_correct(spec, report) == all(truth(c.check, scene) for c in rubric.criteria)
    return agree, total, gen_agree, n_scenes


@pytest.mark.parametrize("perturb", [False, True])
def test_verdicts_agree_with_scene_ground_truth(perturb):
    agree, total, gen_agree, n = agreement(200, seed=2024 + perturb, perturb=perturb)
    assert agree / total >= 0.99, f"{agree}/{total}"
    assert gen_agree / n >= 0.99, f"{gen_agree}/{n}"


@pytest.mark.slow
def test_verdicts_agree_with_scene_ground_truth_1000():
    agree, total, gen_agree, n = agreement(1000, seed=99, perturb=True)
    assert agree / total >= 0.99 and gen_agree / n >= 0.99


def test_geneval_correct_on_every_heldout_prompt():
    rng = random.Random(5)
    for spec in prompts_for_split("heldout"):
        assert geneval_correct(spec, render(scene_for_prompt(spec, rng))), spec.text


# --- adversarial images ------------------------------------------------------------------------------------------

SPEC = PromptSpec("counting", (ObjectSpec("square", "red", 2),))


def _correct() -> tuple[Scene, Image.Image]:
    scene = Scene((Obj("square", "red", 1, 1), Obj("square", "red", 2, 3)))
    return scene, render(scene)


def _adversarial() -> dict[str, Image.Image]:
    rng = np.random.default_rng(0)
    out: dict[str, Image.Image] = {}
    out["uniform_noise"] = Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
    sparse = np.zeros((48, 48, 3), dtype=np.uint8)
    sparse[rng.random((48, 48)) < 0.3] = PALETTE["red"]
    out["red_salt"] = Image.fromarray(sparse)
    frags = Image.new("RGB", (48, 48))
    draw = ImageDraw.Draw(frags)
    for y in range(1, 46, 5):
        for x in range(1, 46, 5):
            draw.rectangle((x, y, x + 2, y + 2), fill=PALETTE["red"])
    out["many_fragments"] = frags
    out["full_red"] = Image.new("RGB", (48, 48), PALETTE["red"])
    out["everything"] = render(
        Scene(
            tuple(Obj(SHAPES[(r + c) % 3], COLORS[(r * 4 + c) % 6], r, c) for r in range(4) for c in range(4))
        )
    )
    out["all_red_squares"] = render(
        Scene(tuple(Obj("square", "red", r, c) for r in range(4) for c in range(4)))
    )
    _, good = _correct()
    with_frag = good.copy()
    ImageDraw.Draw(with_frag).rectangle((40, 2, 42, 4), fill=PALETTE["blue"])
    out["correct_plus_fragment"] = with_frag
    merged = good.copy()
    ImageDraw.Draw(merged).rectangle(
        (13, 13, 34, 22), fill=PALETTE["red"]
    )  # two red squares fused into one blob
    out["merged_pair"] = render(Scene((Obj("square", "red", 2, 3),)))
    ImageDraw.Draw(out["merged_pair"]).rectangle((13, 13, 34, 22), fill=PALETTE["red"])
    return out


@pytest.mark.parametrize("name", list(_adversarial()))
def test_adversarial_images_fail_and_score_low(name):
    image = _adversarial()[name]
    judge = PixelBackend()
    rubric = rubric_for_prompt(SPEC)
    assert not geneval_correct(SPEC, image)
    score = judge.score_image(image, rubric)
    _, good = _correct()
    assert judge.score_image(good, rubric) == 1.0
    # Debris on a correct scene loses the exactness quarter; everything else loses more.
    limit = 0.75 if name == "correct_plus_fragment" else 0.5
    assert score <= limit, f"{name} scored {score}"


def test_lenient_mode_tolerates_a_fragment_but_not_extra_objects():
    image = _adversarial()["correct_plus_fragment"]
    rubric = rubric_for_prompt(SPEC)
    assert PixelBackend(strict=False).score_image(image, rubric) == 1.0
    assert PixelBackend(strict=False).score_image(_adversarial()["all_red_squares"], rubric) <= 0.5


def test_category_multipliers_scale_the_training_mix_and_leave_the_default_alone():
    n = 6000
    default = sample_prompts(n, "train", seed=3)
    assert default == sample_prompts(n, "train", seed=3, category_multipliers={})
    share = {c: k / n for c, k in Counter(s.category for s in default).items()}
    total = sum(CATEGORY_WEIGHTS.values())
    assert share["counting"] == pytest.approx(CATEGORY_WEIGHTS["counting"] / total, abs=0.015)

    doubled = sample_prompts(n, "train", seed=3, category_multipliers={"counting": 2, "position": 0})
    counts = Counter(s.category for s in doubled)
    expected = (
        2
        * CATEGORY_WEIGHTS["counting"]
        / (total + CATEGORY_WEIGHTS["counting"] - CATEGORY_WEIGHTS["position"])
    )
    assert counts["counting"] / n == pytest.approx(expected, abs=0.015)
    assert counts["position"] == 0
    assert not any(is_held_out(s) for s in doubled if s.category == "counting")


@pytest.mark.parametrize(
    ("multipliers", "message"),
    [
        ({"counts": 2.0}, "unknown prompt categories"),
        ({"counting": -1.0}, ">= 0"),
        ({"counting": float("nan")}, "finite"),
        ({"counting": float("inf")}, "finite"),
        (dict.fromkeys(CATEGORIES, 0.0), "no category"),
    ],
)
def test_category_multipliers_reject_bad_values(multipliers, message):
    with pytest.raises(ValueError, match=message):
        sample_prompts(10, "train", category_multipliers=multipliers)
