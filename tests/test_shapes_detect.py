"""The shapes-world detector: exact on renders, robust on generation-like images, strict about debris."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from arr.shapes.detect import (
    FRAGMENT,
    SPECK_MAX_AREA,
    UNKNOWN,
    analyze,
    classify_pixels,
    detect,
    label_components,
)
from arr.shapes.pairs import perturb_image
from arr.shapes.prompts import prompts_for_split, scene_for_prompt
from arr.shapes.scene import PALETTE, Obj, Scene, random_scene, render


def _key(scene: Scene) -> list[tuple[str, str, tuple[int, int]]]:
    return sorted((o.shape, o.color, (o.row, o.col)) for o in scene.objects)


def _got(image: Image.Image) -> list[tuple[str, str, tuple[int, int]]]:
    return sorted((d.shape, d.color, d.cell) for d in detect(image))


def _heldout_scenes(n: int, seed: int) -> list[Scene]:
    rng = random.Random(seed)
    specs = prompts_for_split("heldout")
    scenes = [scene_for_prompt(rng.choice(specs), rng) for _ in range(n // 2)]
    scenes += [random_scene(rng, rng.randint(1, 8)) for _ in range(n - n // 2)]
    return scenes


def test_single_shapes_hand_computed_geometry():
    # Cell (1, 1) spans pixels 12..23; objects are drawn at 13..22 (10 px).
    for shape, area, fill in (("square", 100, 1.0), ("circle", 76, 0.76), ("triangle", 55, 0.55)):
        (d,) = detect(render(Scene((Obj(shape, "red", 1, 1),))))
        assert (d.shape, d.color, d.cell) == (shape, "red", (1, 1))
        assert d.area == area and d.fill_ratio == pytest.approx(fill)
        assert d.bbox == (13, 13, 22, 22)
    (d,) = detect(render(Scene((Obj("square", "blue", 0, 3),))))
    assert d.centroid == (41.5, 5.5)


def test_round_trip_on_heldout_scenes_is_exact():
    for scene in _heldout_scenes(200, seed=101):
        report = analyze(render(scene))
        assert _got(render(scene)) == _key(scene)
        assert not report.fragments and report.n_specks == 0


@pytest.mark.parametrize(
    "damage",
    [
        lambda im, rng: perturb_image(im, rng, noise=10, max_shift=0, blur=0),
        lambda im, rng: perturb_image(im, rng, noise=0, max_shift=1, blur=0),
        lambda im, rng: im.filter(ImageFilter.GaussianBlur(0.6)),
        lambda im, rng: im.filter(ImageFilter.GaussianBlur(1.0)),
        lambda im, rng: im.filter(ImageFilter.BoxBlur(1)),
        lambda im, rng: perturb_image(im, rng),  # shift + blur 0.5 + noise 10
    ],
    ids=["noise10", "shift1", "blur0.6", "blur1.0", "box1", "all"],
)
def test_robust_to_mild_generation_damage(damage):
    rng = random.Random(7)
    scenes = _heldout_scenes(200, seed=202)
    ok = sum(_got(damage(render(s), rng)) == _key(s) for s in scenes)
    assert ok >= 198, f"only {ok}/200 scenes recovered exactly"


def test_resized_and_other_modes_read_the_same():
    scene = Scene(
        (Obj("circle", "green", 0, 0), Obj("triangle", "purple", 2, 3), Obj("square", "cyan", 3, 1))
    )
    image = render(scene)
    assert _got(image.resize((96, 96), Image.Resampling.NEAREST)) == _key(scene)
    assert _got(image.convert("RGBA")) == _key(scene)
    assert _got(image.convert("P")) == _key(scene)


def test_slightly_off_colours_are_still_named():
    image = render(Scene((Obj("square", "green", 1, 1), Obj("circle", "cyan", 2, 2))))
    arr = np.asarray(image).astype(int)
    arr[arr.sum(axis=2) > 0] += np.array([25, -20, 15])
    (a, b) = detect(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)))
    assert (a.color, b.color) == ("green", "cyan")


def test_specks_are_dropped_but_counted_and_fragments_reported():
    image = render(Scene((Obj("square", "red", 0, 0),)))
    draw = ImageDraw.Draw(image)
    draw.point((30, 30), fill=PALETTE["blue"])  # 1 px speck
    draw.rectangle((40, 40, 42, 42), fill=PALETTE["yellow"])  # 9 px fragment
    report = analyze(image)
    assert report.n_specks == 1 and report.speck_pixels == 1 <= SPECK_MAX_AREA
    assert [d.shape for d in report.detections] == ["square", FRAGMENT]
    frag = report.fragments[0]
    assert (frag.color, frag.area, frag.cell) == ("yellow", 9, (3, 3))
    assert not frag.is_object and len(report.objects) == 1


def test_off_colour_rims_belong_to_their_object_but_large_attachments_do_not():
    image = render(Scene((Obj("square", "purple", 1, 1),)))
    draw = ImageDraw.Draw(image)
    for x0, y0, x1, y1 in ((13, 12, 17, 12), (18, 12, 22, 12), (23, 14, 23, 18)):  # three 5 px rims, grey
        draw.rectangle((x0, y0, x1, y1), fill=(150, 150, 150))
    report = analyze(image)
    assert [(d.shape, d.color) for d in report.detections] == [("square", "purple")]
    assert report.detections[0].area == 115 and report.n_specks == 0
    junk = render(Scene((Obj("square", "purple", 1, 1),)))
    ImageDraw.Draw(junk).rectangle((23, 13, 26, 22), fill=PALETTE["yellow"])  # 40 px glued on: > 30 % of 100
    shapes = sorted(d.shape for d in detect(junk))
    assert shapes == ["square", "unknown"] or FRAGMENT in shapes


def test_merged_objects_and_odd_blobs_are_unknown():
    image = Image.new("RGB", (48, 48))
    draw = ImageDraw.Draw(image)
    draw.rectangle((13, 13, 34, 22), fill=PALETTE["red"])  # two squares' worth, merged across cells
    draw.polygon([(37, 1), (46, 1), (41.5, 10)], fill=PALETTE["blue"])  # apex-down triangle
    draw.rectangle((1, 37, 10, 46), fill=(255, 255, 255))  # white square: no palette colour
    shapes = {(d.shape, d.color) for d in detect(image)}
    assert shapes == {(UNKNOWN, "red"), (UNKNOWN, "blue"), ("square", UNKNOWN)}


def test_full_canvas_fill_is_one_unknown_object():
    for color in PALETTE.values():
        (d,) = detect(Image.new("RGB", (48, 48), color))
        assert d.shape == UNKNOWN and d.area == 48 * 48


def test_label_components_uses_8_connectivity_within_a_class():
    classes = np.zeros((5, 5), dtype=np.int8)
    classes[0, 0] = classes[1, 1] = classes[2, 2] = 1  # diagonal chain: one component
    classes[0, 4] = 2
    classes[1, 4] = 3  # touching but another class: separate
    labels, boxes = label_components(classes)
    assert len(boxes) == 3
    assert labels[0, 0] == labels[1, 1] == labels[2, 2] != labels[0, 4] != labels[1, 4]
    assert boxes[int(labels[0, 0]) - 1] == (0, 0, 2, 2)


def test_dark_and_halo_pixels_are_background():
    rgb = np.array([[[30, 30, 30], [80, 15, 15], [200, 200, 200], [230, 40, 40]]], dtype=np.uint8)
    classes, _ = classify_pixels(rgb)
    assert classes.tolist() == [[0, 0, 7, 1]]  # dark, dim red halo, grey = unknown, red


def test_speed_at_least_200_images_per_second():
    rng = random.Random(3)
    images = [render(random_scene(rng, rng.randint(1, 4))) for _ in range(100)]
    best = float("inf")
    for _ in range(3):  # CPU time, best of three: the bound must hold on a shared, loaded machine too
        t0 = time.process_time()
        for image in images:
            analyze(image)
        best = min(best, time.process_time() - t0)
    assert len(images) / best >= 200, f"{len(images) / best:.0f} images per CPU second"
