"""Report pages (arr/report.py, arr/rpo/report.py): captioned grids, the training report's curves and captions,
the self-contained option, sample grids in TensorBoard."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from arr.report import (
    image_grid,
    inline_images,
    reward_captions,
    reward_standing,
    wrap_text,
    write_html,
)
from arr.rpo.report import training_panels
from tests.conftest import read_rows

IMG_SRC = re.compile(r"<img\b[^>]*\bsrc=['\"]([^'\"]*)['\"]", re.IGNORECASE)


def external_references(page: str) -> list[str]:
    """Everything a page would load from outside itself: image sources that are not data URLs, local links,
    stylesheets and scripts by URL."""
    refs = [s for s in IMG_SRC.findall(page) if not s.startswith("data:")]
    refs += re.findall(r"<a\b[^>]*\bhref=['\"]([^#'\"][^'\"]*)['\"]", page)
    refs += re.findall(r"<link\b[^>]*>|<script\b[^>]*\bsrc=[^>]*>|url\((?!#)", page)  # url(#id): in the page
    return refs


def test_inline_images_makes_a_page_self_contained(tmp_path):
    Image.new("RGB", (4, 4), (255, 0, 0)).save(tmp_path / "a.png")
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (4, 4), (0, 0, 255)).save(tmp_path / "sub" / "b.png")
    sections = [
        ("Images", "<img src='a.png'><img class='x' src=\"sub/b.png\"><img src='data:image/png;base64,AA'>")
    ]
    linked = write_html(tmp_path / "linked.html", "t", "s", sections).read_text()
    assert external_references(linked) == ["a.png", "sub/b.png"]
    page = write_html(tmp_path / "one.html", "t", "s", sections, self_contained=True).read_text()
    assert external_references(page) == [] and page.count("data:image/png;base64,") == 3
    with pytest.raises(ValueError, match=r"missing.png.*missing"):
        inline_images("<img src='missing.png'>", tmp_path)


def test_captions_wrap_under_each_image():
    images = [Image.new("RGB", (32, 32), (i * 40, 0, 0)) for i in range(4)]
    plain = image_grid(images, cols=2, cell=96)
    short = image_grid(images, cols=2, cell=96, captions=["a"] * 4)
    long = "a red circle to the left of two blue squares and a green triangle"
    wrapped = image_grid(images, cols=2, cell=96, captions=[long, "b", "c", "d"])
    assert plain.width == short.width == wrapped.width == 2 * (96 + 4) + 4
    assert plain.height < short.height < wrapped.height  # caption lines make room under every row
    from arr.report import _caption_font

    lines = wrap_text(long, _caption_font(), 96)
    assert len(lines) >= 3 and " ".join(lines) == long
    assert all(_caption_font().getlength(line) <= 96 for line in lines)
    grouped = image_grid(images, cols=4, cell=96, group=2)  # a wider gap between the two groups of two
    assert grouped.width == image_grid(images, cols=4, cell=96).width + 3 * 4
    assert grouped.getpixel((4 + 2 * 100 + 1, 10)) == (255, 255, 255)  # the gap where group 2 used to start
    with pytest.raises(ValueError, match="2 captions for 4 images"):
        image_grid(images, cols=2, captions=["a", "b"])


def test_reward_captions_name_prompt_reward_and_standing():
    captions = reward_captions(
        ["a red square", "two circles"], [1.0, -1.0, 0.0, 0.0, None, 0.5], group_size=3
    )
    assert captions == [
        "reward +1.00 · best\na red square",
        "reward -1.00 · worst\na red square",
        "reward +0.00\na red square",
        "reward +0.00 · worst\ntwo circles",
        "no verdict\ntwo circles",  # the judge failed on this sample
        "reward +0.50 · best\ntwo circles",
    ]
    assert reward_standing(0.3, [0.3, 0.3]) == "tie" and reward_standing(0.3, [0.3]) == ""


def rows_for(objective: str, steps: int = 4) -> list[dict]:
    rows = [{"step": 0, "eval_score": 0.40, "eval_score_se": 0.02, "eval/counting": 0.3, "eval/colors": 0.5}]
    for s in range(1, steps + 1):
        row = {"step": s, "reward_mean": 0.1 * s, "loss": 0.5 - 0.05 * s, "policy_loss": 0.4 - 0.05 * s,
               "kl": 1e-4 * s, "clip_frac": 0.0, "grad_norm": 0.01, "reward/tie_rate": 0.2}  # fmt: skip
        if objective == "policy_gradient":
            row.update(clip_frac=0.05 * s, ratio_mean=1.0, ratio_max=1.2)
        rows.append(row)
    rows[-1].update(eval_score=0.45, eval_score_se=0.02, **{"eval/counting": 0.35, "eval/colors": 0.55})
    return rows


def test_training_panels_follow_the_objectives_keys():
    panels, notes = training_panels(rows_for("policy_gradient"))
    titles = [p.title for p in panels]
    assert titles == [
        "Held-out score",
        "Held-out score per category",
        "Training reward",
        "Judge verdicts on training pairs",
        "Loss",
        "KL to the reference (LoRA off)",
        "PPO clipping",
        "Gradient norm",
    ]
    assert notes == [] and all(p.ylabel and p.xlabel == "training step" for p in panels)
    by_title = {p.title: p for p in panels}
    assert by_title["PPO clipping"].series["clip_frac"] == [(s, pytest.approx(0.05 * s)) for s in range(1, 5)]
    assert set(by_title["Loss"].series) == {"loss", "policy_loss"}  # the KL term separates them here
    # The 95% band of the held-out score: +-1.96 standard errors.
    assert by_title["Held-out score"].bands["eval_score"][0] == pytest.approx(
        (0, 0.40 - 0.0392, 0.40 + 0.0392)
    )

    forward = rows_for("forward")
    for r in forward[1:]:
        r["reward_mean"] = 0.0  # centred symmetric rewards average 0 in every group
        r["kl"] = 0.0  # beta 0: no KL term
    panels, notes = training_panels(forward)
    titles = [p.title for p in panels]
    assert "PPO clipping" not in titles and "Training reward" not in titles and "Loss" in titles
    assert "KL to the reference (LoRA off)" not in titles
    assert any("no probability ratio" in n for n in notes) and any("reward_mean is 0" in n for n in notes)
    assert any("kl is 0 at every step" in n for n in notes)


def test_monitor_curves_are_running_means_and_coinciding_verdicts_are_one_line():
    rows = rows_for("forward", steps=12)
    for r in rows[1:]:
        s = r["step"]
        r.update({"train/pixel_score": float(s), "train/judge_score": 1.0, "reward/inconsistent_rate": 0.2})
    panels, notes = training_panels(rows)
    by_title = {p.title: p for p in panels}
    monitor = by_title["Training samples, both judges"]
    assert set(monitor.series) == {"pixel_score", "judge_score"}
    # 10-point running mean: steps 1..10 average to 5.5, steps 3..12 to 7.5; fewer points at the start.
    pixel = dict(monitor.series["pixel_score"])
    assert pixel[1] == 1.0 and pixel[2] == 1.5 and pixel[10] == 5.5 and pixel[12] == 7.5
    assert any("judge_score rises and pixel_score does not" in n for n in notes)
    # Every tie order-inconsistent (swap-consistent judging): one line, named for both.
    assert set(by_title["Judge verdicts on training pairs"].series) == {"ties (all order-inconsistent)"}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """Two RPO steps of a tiny shapes policy judged by the pixel judge, evaluated before and after, logging to
    TensorBoard, with the report callback the recipes use."""
    from arr import RubricJudge
    from arr.backends.pixel import PixelBackend
    from arr.rewards import RubricPairwiseReward
    from arr.rpo import RPOTrainer
    from arr.rpo.report import ReportCallback
    from arr.shapes.training import geneval_notes, geneval_scores, t2i_records
    from tests.conftest import make_args, tiny_policy

    tmp = tmp_path_factory.mktemp("report_run")
    args = make_args(
        tmp, max_steps=2, eval_steps=2, sample_steps=1, report_to="tensorboard", eval_num_prompts=6
    )
    callback = ReportCallback(sample_notes=geneval_notes)
    trainer = RPOTrainer(
        tiny_policy(),
        RubricPairwiseReward(RubricJudge(PixelBackend())),
        args,
        train_dataset=t2i_records(16, "train", seed=0),
        eval_dataset=t2i_records(6, "heldout", seed=1),
        evaluator=geneval_scores,
        callbacks=[callback],
    )
    trainer.train()
    return trainer, callback


@pytest.mark.slow
def test_training_report_has_curves_and_captioned_samples(trained_run):
    trainer, _ = trained_run
    out = Path(trainer.output_dir)
    page = (out / "report.html").read_text()
    for title in ("Held-out score", "Loss", "Gradient norm"):
        assert f">{title}<" in page, title
    # The tiny policy's first two steps may train no sample (every pair tied): a KL of 0 is said, not drawn.
    kl = [r["kl"] for r in read_rows(out) if "kl" in r]
    drawn = ">KL to the reference (LoRA off)<" in page
    assert drawn == any(v != 0 for v in kl) and (drawn or "kl is 0 at every step" in page)
    assert page.count("<svg") >= 4 and ">training step<" in page
    # Every held-out prompt shown has its image before and after, each with a verdict and a score.
    cards = re.findall(r"<div class='sample-card'><p>(.*?)</p>(.*?)</div></div>", page)
    held_out = [c for c in cards if "before, step 0" in c[1]]
    prompts = [r.prompt for r in trainer.eval_records[:6]]
    assert [p for p, _ in held_out] == prompts
    for _, body in held_out:
        assert "after, step 2" in body and body.count("class='verdict") == 2 and body.count("rubric ") == 2
        assert re.search(r"verdict (ok|bad)'>(correct|wrong)<", body)
    training = [c for c in cards if "reward " in c[1]]
    assert training and all(body.count("<img") == trainer.args.group_size for _, body in training)
    for src in IMG_SRC.findall(page):
        assert (out / src).is_file()
    grids = sorted(p.name for p in (out / "samples").iterdir())
    assert "train_step_000000.png" in grids and "eval_step_000002.png" in grids


@pytest.mark.slow
def test_self_contained_training_report(trained_run):
    from arr.rpo.report import write_report
    from arr.shapes.training import geneval_notes

    trainer, callback = trained_run
    path = write_report(
        trainer, callback.first_eval, callback.first_eval_step, geneval_notes, self_contained=True
    )
    page = path.read_text()
    assert external_references(page) == [] and page.count("data:image/png;base64,") >= 12


@pytest.mark.slow
def test_sample_grids_go_to_tensorboard(trained_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer, _ = trained_run
    tags: dict[str, list[int]] = {}
    for events in Path(trainer.output_dir).rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"images": 0})
        acc.Reload()
        for tag in acc.Tags()["images"]:
            tags.setdefault(tag, []).extend(e.step for e in acc.Images(tag))
    assert sorted(tags.get("samples/train", [])) == [1, 2]  # one grid per step, at the step its scalars use
    assert sorted(tags.get("samples/eval", [])) == [0, 2]
