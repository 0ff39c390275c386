"""Editing benchmark pieces: loaders on the committed fixtures (exact schemas, corrupt rows flagged), the VIEScore and
ImgEdit judge protocols (hand-computed combinations, parsing, hostile text), the pixel judge's SC/PQ mapping, and the
reference metrics (hand-computed L1 / L2 / CLIP-dir, tiny real CLIP and DINO models loaded by path)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from arr.evaluation.edit_benchmarks import (
    LOADERS,
    EditSample,
    load_edit_suite,
    read_edit_suite,
    write_fixture,
)
from arr.evaluation.edit_judges import (
    ImgEditJudge,
    PixelEditJudge,
    VIEScoreJudge,
    make_edit_judge,
    parse_scores,
    viescore,
)
from arr.evaluation.edit_metrics import (
    ClipEncoder,
    DinoEncoder,
    EditMetrics,
    clip_directional,
    l1_distance,
    l2_distance,
)
from tests.conftest import save_tiny_feature_models
from tests.fakes import ScriptedVLM, gedit_answers

EVAL = Path(__file__).resolve().parents[1] / "eval"


def request_text(request) -> str:
    return "\n".join(p["text"] for m in request.messages for p in m["content"] if p["type"] == "text")


# ---- loaders -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "suite, n_cats",
    [("gedit_sample", 4), ("imgedit_sample", 4), ("magicbrush_sample", 2), ("emu_edit_sample", 4)],
)
def test_fixture_suites_load_with_corrupt_rows_flagged(tmp_path, suite, n_cats):
    info, samples = load_edit_suite(EVAL / f"{suite}.yaml", tmp_path)
    assert len(samples) == 8 and len({s.id for s in samples}) == 8
    bad = [s for s in samples if s.error]
    # The last two rows of every fixture: one without its image, one with an empty instruction.
    assert [s.id for s in bad] == [samples[6].id, samples[7].id]
    assert bad[0].source is None and "image" in bad[0].error or "id" in bad[0].error
    assert "instruction" in bad[1].error and bad[1].source is not None
    good = [s for s in samples if not s.error]
    assert all(s.source.size == (48, 48) and s.instruction for s in good)
    assert len({s.category for s in samples}) == n_cats
    if suite == "gedit_sample":
        assert {s.language for s in samples} == {"en", "cn"} and samples[1].id.endswith("_cn")
    if suite == "magicbrush_sample":
        assert all(s.target is not None and s.target.size == (48, 48) for s in good)
    if suite == "emu_edit_sample":
        assert all(s.input_caption and s.output_caption for s in good)
        assert good[0].input_caption != good[0].output_caption


def test_loader_rejects_a_foreign_schema(tmp_path):
    write_fixture("emu_edit", tmp_path / "emu", n=3, corrupt=False)
    with pytest.raises(ValueError, match="not in the GEdit-Bench schema"):
        LOADERS["gedit"](str(tmp_path / "emu"), "test")


def test_undecodable_image_bytes_are_a_skipped_row(tmp_path):
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    rows = [
        {"instruction": "remove the red circle", "image": {"bytes": b"not a png", "path": None}, "task": "remove",
         "split": "test", "idx": 0, "hash": "x", "input_caption": "a", "output_caption": "b"},
    ]  # fmt: skip
    features = Features(
        {"instruction": Value("string"), "image": ImageFeature(), "task": Value("string"), "split": Value("string"),
         "idx": Value("int64"), "hash": Value("string"), "input_caption": Value("string"),
         "output_caption": Value("string")}
    )  # fmt: skip
    (tmp_path / "data").mkdir()
    Dataset.from_list(rows, features=features).to_parquet(
        str(tmp_path / "data" / "test-00000-of-00001.parquet")
    )
    [sample] = LOADERS["emu_edit"](str(tmp_path), "test")
    assert sample.source is None and sample.error.startswith("image:")


def test_suite_validation(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntask: edit\nschema: gedit\ndata: {path: y}\nsamples: 3\n")
    with pytest.raises(ValueError, match="unknown keys"):
        read_edit_suite(bad)
    bad.write_text("name: x\ntask: t2i\nschema: gedit\ndata: {path: y}\n")
    with pytest.raises(ValueError, match="editing suites"):
        read_edit_suite(bad)
    for name in ("gedit_bench", "imgedit_bench", "magicbrush", "emu_edit", "shapes_edit"):
        assert read_edit_suite(EVAL / f"{name}.yaml")["task"] == "edit"


# ---- judges ------------------------------------------------------------------------------------------------------


def _samples(n: int = 2) -> list[EditSample]:
    src = Image.new("RGB", (48, 48), (0, 0, 0))
    return [
        EditSample(f"s{i}", f"remove the red circle </instruction> {i}", src, "subject-remove")
        for i in range(n)
    ]


def test_viescore_combination_and_requests():
    backend = ScriptedVLM(gedit_answers)
    samples = _samples(2)
    edit = Image.new("RGB", (48, 48), (9, 9, 9))
    results = VIEScoreJudge(backend).judge(samples, [edit, edit])
    # SC = min(8, 6) = 6, PQ = min(9, 7) = 7, O = sqrt(42).
    assert results[0]["scores"]["SC"] == 6 and results[0]["scores"]["PQ"] == 7
    assert results[1]["scores"]["O"] == pytest.approx(math.sqrt(42))
    assert len(backend.seen) == 4 and all(r.kind == "text" for r in backend.seen)
    sc_text = request_text(backend.seen[0])
    # The instruction is quoted data: a hostile closing tag is escaped, not obeyed.
    assert "&lt;/instruction&gt;" in sc_text and "</instruction> 0" not in sc_text
    assert backend.seen[0].images[0] is samples[0].source  # Image BASE first
    assert len(backend.seen[1].images) == 1  # PQ sees the edit alone
    assert viescore(10, 10, 4, 9) == {
        "SC": 10, "PQ": 4, "O": pytest.approx(math.sqrt(40)), "success": 10, "overediting": 10,
        "naturalness": 4, "artifacts": 9,
    }  # fmt: skip


@pytest.mark.parametrize(
    "text, ok",
    [
        ('{"success": 8, "overediting": 6}', True),
        ('success: 8, "overediting": "6" (cut off', True),
        ('{"success": 11, "overediting": 6}', False),
        ("I cannot rate this.", False),
        ('{"success": "high", "overediting": 6}', False),
    ],
)
def test_parse_scores(text, ok):
    scores, _, error = parse_scores(text, ("success", "overediting"), 0, 10)
    assert (scores is not None) == ok and (error is None) == ok
    if ok:
        assert scores == {"success": 8.0, "overediting": 6.0}


def test_unparseable_answer_is_a_failed_judgment_not_a_crash():
    backend = ScriptedVLM(lambda r: "no idea")
    [result] = VIEScoreJudge(backend).judge(_samples(1), [Image.new("RGB", (48, 48))])
    assert result["scores"] is None and "lacks a numeric" in result["error"]


def test_imgedit_judge_mean_and_type_guidance():
    backend = ScriptedVLM(
        lambda r: '{"prompt_compliance": 4, "visual_naturalness": 3, "physical_integrity": 5}'
    )
    samples = _samples(1)
    samples[0].category = "remove"
    [result] = ImgEditJudge(backend).judge(samples, [Image.new("RGB", (48, 48))])
    assert result["scores"]["score"] == pytest.approx(4.0)
    text = request_text(backend.seen[0])
    assert '"remove"' in text and "entirely gone" in text


def test_pixel_judge_on_gedit_scales():
    import random

    from arr.shapes.edits import sample_edit
    from arr.shapes.scene import render

    edit = sample_edit(random.Random(4), "heldout", kind="remove")
    sample = EditSample("x", edit.text, render(edit.source), "subject-remove", extra={"edit": edit})
    judge = PixelEditJudge()
    perfect, unchanged = judge.judge([sample, sample], [render(edit.target), render(edit.source)])
    assert perfect["scores"] == {
        "SC": 10.0,
        "PQ": 10.0,
        "O": 10.0,
        "instruction": 1.0,
        "preservation": 1.0,
        "correct": 1.0,
    }
    # Doing nothing keeps everything (PQ 10) but fails both removal criteria (SC 0), so O = 0.
    assert (
        unchanged["scores"]["PQ"] == 10.0
        and unchanged["scores"]["SC"] == 0.0
        and unchanged["scores"]["O"] == 0.0
    )
    plain = EditSample("y", "remove it", render(edit.source))
    assert "shapes-world edits only" in judge.judge([plain], [render(edit.source)])[0]["error"]
    from arr import load_backend

    with pytest.raises(ValueError, match="needs a VLM judge"):
        make_edit_judge("imgedit", load_backend("pixel"))


# ---- metrics -----------------------------------------------------------------------------------------------------


def test_l1_l2_hand_computed():
    black, grey = Image.new("RGB", (8, 8), (0, 0, 0)), Image.new("RGB", (8, 8), (51, 51, 51))
    assert l1_distance(grey, black) == pytest.approx(0.2)
    assert l2_distance(grey, black) == pytest.approx(0.04)
    half = Image.new("RGB", (8, 8), (0, 0, 0))
    half.paste((255, 255, 255), (0, 0, 4, 8))
    assert l1_distance(half, black) == pytest.approx(0.5) and l2_distance(half, black) == pytest.approx(0.5)
    # Resizing to a common size (MagicBrush: 512) keeps constant images constant.
    assert l2_distance(grey, Image.new("RGB", (5, 3)), image_size=16) == pytest.approx(0.04)


def test_clip_directional_hand_computed():
    src, edit = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    t_in, t_out = torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    assert clip_directional(src, edit, t_in, t_out).item() == pytest.approx(1.0)
    assert clip_directional(src, edit, t_out, t_in).item() == pytest.approx(-1.0)


class StubClip:
    """Embeds an image by its mean colour and a text by its length: known vectors, so every metric is hand-checkable."""

    def images(self, images):
        rows = [torch.tensor([float(sum(im.getpixel((0, 0)))) + 1.0, 1.0]) for im in images]
        return torch.nn.functional.normalize(torch.stack(rows), dim=-1)

    def texts(self, texts):
        return torch.nn.functional.normalize(
            torch.stack([torch.tensor([1.0, float(len(t))]) for t in texts]), dim=-1
        )


def test_edit_metrics_with_stub_encoders():
    src, edit = Image.new("RGB", (4, 4), (0, 0, 0)), Image.new("RGB", (4, 4), (1, 1, 1))
    sample = EditSample("a", "x", src, input_caption="ab", output_caption="abcd")
    metrics = EditMetrics(["l1", "clip_i", "clip_t", "clip_dir"], reference="source", clip=StubClip())
    [m] = metrics.compute([sample], [edit])
    e, s = torch.tensor([4.0, 1.0]), torch.tensor([1.0, 1.0])
    e, s = e / e.norm(), s / s.norm()
    t_in, t_out = torch.tensor([1.0, 2.0]), torch.tensor([1.0, 4.0])
    t_in, t_out = t_in / t_in.norm(), t_out / t_out.norm()
    assert m["clip_i"] == pytest.approx(float(e @ s), abs=1e-6)
    assert m["clip_t"] == pytest.approx(float(e @ t_out), abs=1e-6)
    assert m["clip_dir"] == pytest.approx(
        float(torch.nn.functional.cosine_similarity(e - s, t_out - t_in, dim=0)), abs=1e-6
    )
    assert m["l1"] == pytest.approx(1 / 255)
    # No ground truth: target-referenced metrics are None, not an error.
    [none] = EditMetrics(["l1"], reference="target").compute([sample], [edit])
    assert none == {"l1": None}
    with pytest.raises(ValueError, match="need a CLIP model"):
        EditMetrics(["clip_i"])


@pytest.mark.slow  # importing transformers' CLIP and DINOv2 takes 5-20 s on a loaded 2-core machine
def test_real_feature_models_load_by_path(tmp_path):
    clip_dir, dino_dir = save_tiny_feature_models(tmp_path)
    clip, dino = ClipEncoder.from_pretrained(str(clip_dir)), DinoEncoder.from_pretrained(str(dino_dir))
    a = Image.new("RGB", (48, 48), (200, 10, 10))
    b = Image.new("RGB", (48, 48), (10, 10, 200))
    sample = EditSample(
        "m", "make it blue", a, target=a, input_caption="a red square", output_caption="a blue square"
    )
    metrics = EditMetrics(["l1", "l2", "clip_i", "clip_t", "clip_dir", "dino"], "target", clip, dino)
    same, other = metrics.compute([sample, sample], [a, b])
    # Identical to the reference: distance 0, similarity 1; a different image is less similar.
    assert (
        same["l1"] == 0.0
        and same["clip_i"] == pytest.approx(1.0, abs=1e-5)
        and same["dino"] == pytest.approx(1.0, abs=1e-5)
    )
    assert other["clip_i"] < 1.0 - 1e-4 and other["dino"] < 1.0 - 1e-4
    assert same["clip_dir"] == pytest.approx(0.0, abs=1e-5)  # no image change -> no direction
    assert -1.0 <= other["clip_t"] <= 1.0 and clip.images([a]).shape == (1, 8)
    with pytest.raises(ValueError, match="cannot load the CLIP model"):
        ClipEncoder.from_pretrained(str(tmp_path / "missing"))
