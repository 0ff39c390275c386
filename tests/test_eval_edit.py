"""`arr eval SUITE.yaml --policy ... --judge ...` (arr/evaluation/editing.py): end to end on the shapes suite with a
tiny editing model built in code, exact scores of an oracle editor, interrupt-and-resume giving the same summary
without recomputing finished samples, corrupt fixture rows reported and skipped, per-language / per-type tables
from a scripted VLM judge, the reference-metric suites, and the CLI routing next to `arr eval preference`."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from PIL import Image

from arr.cli import build_parser, main
from arr.evaluation.edit_benchmarks import load_edit_suite
from arr.evaluation.edit_judges import ImgEditJudge, PixelEditJudge, VIEScoreJudge
from arr.evaluation.edit_results import read_rows
from arr.evaluation.editing import evaluate_edits, sample_seed
from arr.evaluation.editors import DiffusersEditor, PolicyEditor, build_editor
from arr.shapes.models import ShapesModelConfig, build_edit_model, save_pretrained
from tests.conftest import save_tiny_feature_models
from tests.fakes import ScriptedVLM, gedit_answers

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "eval" / "shapes_edit.yaml"
TINY = dict(patch_size=12, num_layers=1, num_attention_heads=2, attention_head_dim=8, text_hidden_size=16,
            text_layers=1, text_heads=2)  # fmt: skip


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A folder of shipped-model assets holding a tiny untrained editing model as "edit" (the real one is trained
    separately), and a shared data folder so the suite's records are generated once."""
    root = tmp_path_factory.mktemp("edit_assets")
    save_pretrained(build_edit_model(ShapesModelConfig(task="edit", **TINY)), root / "assets" / "edit")
    return root


@pytest.fixture
def shipped(assets, monkeypatch):
    monkeypatch.setattr("arr.shapes.models.ASSETS_DIR", assets / "assets")
    return assets


def eval_args(assets: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", str(SUITE), "--policy", "shapes-edit", "--judge", "pixel", "--limit", "12", "--batch-size", "4",
            "--policy-kwargs", '{"num_steps": 2}', "--no-progress", "--data-dir", str(assets / "data"),
            "--out", str(out), *extra]  # fmt: skip


def test_shapes_suite_end_to_end(shipped, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(eval_args(shipped, out)) == 0
    printed = json.loads(capsys.readouterr().out)
    summary = json.loads((out / "summary.json").read_text())
    assert printed["overall"] == summary["overall"] and summary["n_scored"] == 12 and summary["skipped"] == []
    rows = list(read_rows(out / "samples.jsonl").values())
    assert len(rows) == 12 and (out / "report.html").is_file()
    for row in rows:
        s = row["scores"]
        # The pixel judge's instruction / preservation scores on GEdit's scales, recombined as VIEScore's O.
        assert s["SC"] == pytest.approx(10 * s["instruction"]) and s["PQ"] == pytest.approx(
            10 * s["preservation"]
        )
        assert s["O"] == pytest.approx(math.sqrt(s["SC"] * s["PQ"]))
        assert (out / row["edit"]).is_file() and row["seed"] == sample_seed(row["id"], 0)
    mean_o = sum(r["scores"]["O"] for r in rows) / 12
    assert summary["headline"] == {"metric": "O", "value": pytest.approx(mean_o)}
    assert sum(c["n"] for c in summary["categories"].values()) == 12
    page = (out / "report.html").read_text()
    assert "sortTable" in page and page.count("<tr>") >= 12 and "thumbs/" in page and "edits/" in page
    # Run again (nothing left to compute) for a report with its images inlined: one file, nothing outside it.
    assert main(eval_args(shipped, out, "--self-contained")) == 0
    page = (out / "report.html").read_text()
    sources = re.findall(r"<img\b[^>]*\bsrc='([^']*)'", page)
    assert len(sources) == 3 * 12 and all(src.startswith("data:image/png;base64,") for src in sources)
    assert "href='edits/" not in page and "thumbs/" not in page


class Oracle:
    """Returns each sample's exact target: every pixel-judge score must be perfect."""

    name = "oracle"

    def __init__(self, samples) -> None:
        self.targets = {(s.instruction, s.source.tobytes()): s.target for s in samples}

    def fingerprint(self) -> str:
        return "oracle"

    def edit(self, sources, instructions, seeds):
        return [self.targets[(i, s.tobytes())] for s, i in zip(sources, instructions, strict=True)]


def test_oracle_edits_score_perfectly(shipped, tmp_path):
    suite, samples = load_edit_suite(SUITE, shipped / "data", limit=40)
    summary = evaluate_edits(
        samples, Oracle(samples), tmp_path, PixelEditJudge(), progress=False, report=False
    )
    assert summary["overall"]["O"] == 10.0 and summary["overall"]["correct"] == 1.0
    assert all(c["SC"] == 10.0 and c["PQ"] == 10.0 for c in summary["categories"].values())


def test_interrupted_eval_resumes_to_the_same_summary(shipped, tmp_path, monkeypatch, capsys):
    full = tmp_path / "full"
    assert main(eval_args(shipped, full)) == 0

    calls = {"judge": 0, "edited": 0}
    judge = PixelEditJudge.judge

    def interrupting(self, samples, edits):
        calls["judge"] += 1
        if calls["judge"] == 2:
            raise KeyboardInterrupt
        return judge(self, samples, edits)

    monkeypatch.setattr(PixelEditJudge, "judge", interrupting)
    part = tmp_path / "part"
    assert main(eval_args(shipped, part)) == 130  # Ctrl-C in the second batch
    assert len(read_rows(part / "samples.jsonl")) == 4 and len(list((part / "edits").glob("*.png"))) == 8
    with (part / "samples.jsonl").open("a") as fh:
        fh.write('{"id": "shapes_edit_000')  # a row torn by a kill mid-write
    monkeypatch.setattr(PixelEditJudge, "judge", judge)
    edit = PolicyEditor.edit

    def counting(self, sources, instructions, seeds):
        calls["edited"] += len(sources)
        return edit(self, sources, instructions, seeds)

    monkeypatch.setattr(PolicyEditor, "edit", counting)
    assert main(eval_args(shipped, part)) == 0
    # 4 samples were finished and 4 more edited before the interrupt: only the last 4 are generated again.
    assert calls["edited"] == 4
    capsys.readouterr()
    assert json.loads((part / "summary.json").read_text()) == json.loads((full / "summary.json").read_text())
    a, b = read_rows(full / "samples.jsonl"), read_rows(part / "samples.jsonl")
    assert {k: r["scores"] for k, r in a.items()} == {k: r["scores"] for k, r in b.items()}
    # A finished run started again recomputes nothing.
    calls["edited"] = 0
    assert main(eval_args(shipped, part)) == 0 and calls["edited"] == 0


def test_other_settings_in_the_same_out_are_refused(shipped, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(eval_args(shipped, out, "--limit", "2")) == 0
    assert main(eval_args(shipped, out, "--limit", "2", "--seed", "1")) == 2
    assert "another evaluation (different seed)" in capsys.readouterr().err


def tiny_editor(assets: Path) -> PolicyEditor:
    return build_editor(str(assets / "assets" / "edit"), num_steps=2)


def test_gedit_fixture_with_vlm_judge_reports_corrupt_rows_and_languages(assets, tmp_path):
    suite, samples = load_edit_suite(ROOT / "eval" / "gedit_sample.yaml", tmp_path / "data")
    backend = ScriptedVLM(gedit_answers)
    summary = evaluate_edits(samples, tiny_editor(assets), tmp_path, VIEScoreJudge(backend), progress=False)
    assert [x["id"] for x in summary["skipped"]] == ["0006_en", "0007_en"]
    assert (
        "input_image" in summary["skipped"][0]["reason"] and "instruction" in summary["skipped"][1]["reason"]
    )
    assert summary["n_samples"] == 8 and summary["n_scored"] == 6 and len(backend.seen) == 12
    assert summary["languages"]["cn"]["n"] == 1 and summary["languages"]["en"]["n"] == 5
    assert summary["overall"]["O"] == pytest.approx(math.sqrt(42)) and summary["overall"]["SC"] == 6
    assert summary["languages"]["cn"]["PQ"] == 7
    # Intersection_exist is true on even rows of the fixture: 0, 2, 4 of the six scored ones.
    assert summary["subsets"]["intersection"]["n"] == 3
    assert "Per language" in (tmp_path / "report.html").read_text()


def test_failed_judgments_are_listed_then_retried(assets, tmp_path):
    suite, samples = load_edit_suite(ROOT / "eval" / "imgedit_sample.yaml", tmp_path / "data")
    flaky = ScriptedVLM(lambda r: "garbled")
    editor = tiny_editor(assets)
    summary = evaluate_edits(samples, editor, tmp_path / "out", ImgEditJudge(flaky), progress=False)
    assert summary["n_scored"] == 0 and len(summary["failed"]) == 6 and len(summary["skipped"]) == 2
    assert "lacks a numeric" in summary["failed"][0]["error"]
    # The same judge (same fingerprint), now answering, judges the failed samples again on the next run.
    good = ScriptedVLM(lambda r: '{"prompt_compliance": 4, "visual_naturalness": 3, "physical_integrity": 5}')
    summary = evaluate_edits(samples, editor, tmp_path / "out", ImgEditJudge(good), progress=False)
    assert summary["n_scored"] == 6 and summary["failed"] == [] and len(good.seen) == 6
    assert summary["overall"]["score"] == pytest.approx(4.0) and set(summary["categories"]) == {
        "add",
        "remove",
        "adjust",
        "action",
    }
    assert summary["macro"]["score"] == pytest.approx(4.0)


@pytest.mark.slow  # tiny CLIP + DINO models, and transformers' model imports
def test_reference_metric_suites_from_the_cli(shipped, tmp_path, capsys):
    clip, dino = save_tiny_feature_models(tmp_path / "models")
    common = ["--policy", "shapes-edit", "--policy-kwargs", '{"num_steps": 2}', "--no-judge", "--no-progress",
              "--clip", str(clip), "--dino", str(dino)]  # fmt: skip
    out = tmp_path / "mb"
    assert main(["eval", str(ROOT / "eval" / "magicbrush_sample.yaml"), *common, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_scored"] == 6 and set(summary["categories"]) == {"turn_1", "turn_2"}
    assert {"l1", "l2", "clip_i", "dino"} <= set(summary["overall"]) and 0 < summary["overall"]["l1"] < 1
    assert "ground truth" in (out / "report.html").read_text()
    out = tmp_path / "emu"
    assert main(["eval", str(ROOT / "eval" / "emu_edit_sample.yaml"), *common, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert all(-1 <= summary["overall"][k] <= 1 for k in ("clip_dir", "clip_i", "clip_t", "dino"))
    capsys.readouterr()


def test_cli_routes_suites_and_keeps_preference():
    parser = build_parser()
    args = parser.parse_args(["eval", "eval/shapes_edit.yaml", "--policy", "shapes-edit", "--limit", "3"])
    assert args.eval_command == "edit" and args.suite == "eval/shapes_edit.yaml" and args.limit == 3
    args = parser.parse_args(["eval", "edit", "x.yaml", "--policy", "p"])
    assert args.eval_command == "edit" and args.suite == "x.yaml"
    args = parser.parse_args(["eval", "preference", "eval/shapes_pairs.yaml", "--judge", "pixel"])
    assert args.eval_command == "preference" and args.backend == "pixel"


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "missing.yaml"), "--policy", "shapes-edit"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["eval", str(SUITE), "--policy", "shapes-edit", "--policy-kwargs", "{oops"]) == 2
    assert "--policy-kwargs is not JSON" in capsys.readouterr().err


class FakePipeline:
    """Records how a diffusers editing pipeline is called; returns the source with a seed-dependent pixel."""

    device = "cpu"

    def __init__(self) -> None:
        self.calls = []

    def __call__(self, image, prompt, generator, **kwargs):
        self.calls.append((prompt, kwargs))
        out = image.copy()
        out.putpixel((0, 0), (int(generator.initial_seed()) % 256, 0, 0))
        return type("Output", (), {"images": [out]})()


def test_diffusers_editor_calls_the_pipeline_per_image_with_its_seed():
    pipe = FakePipeline()
    editor = DiffusersEditor(pipe, "fake/pipeline", true_cfg_scale=4.0, num_inference_steps=3)
    src = [Image.new("RGB", (20, 10)), Image.new("RGB", (8, 8))]
    out = editor.edit(src, ["a", "b"], [7, 300])
    assert [im.size for im in out] == [(20, 10), (8, 8)]  # each source keeps its own size
    assert out[0].getpixel((0, 0)) == (7, 0, 0) and out[1].getpixel((0, 0)) == (300 % 256, 0, 0)
    assert pipe.calls == [("a", {"true_cfg_scale": 4.0, "num_inference_steps": 3})] * 1 + [
        ("b", {"true_cfg_scale": 4.0, "num_inference_steps": 3})
    ]
    assert "true_cfg_scale" in editor.fingerprint()


def test_rpo_checkpoint_lora_is_applied(assets, tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    model_dir = assets / "assets" / "edit"
    trained = build_editor(str(model_dir), num_steps=2)
    trained.policy.add_lora(4, 8.0)
    with torch.no_grad():
        for name, p in trained.policy.transformer.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    ckpt = tmp_path / "run" / "checkpoints" / "step_3"
    ckpt.mkdir(parents=True)
    save_file(
        {k: v.contiguous() for k, v in trained.policy.lora_state_dict().items()}, ckpt / "lora.safetensors"
    )
    (tmp_path / "run" / "config.yaml").write_text("lora_rank: 4\nlora_alpha: 8\n")

    loaded = build_editor(str(model_dir), num_steps=2, lora=str(ckpt))
    base = build_editor(str(model_dir), num_steps=2)
    src = [Image.new("RGB", (48, 48), (0, 0, 0))]
    want = trained.edit(src, ["remove the red circle"], [5])[0]
    assert loaded.edit(src, ["remove the red circle"], [5])[0].tobytes() == want.tobytes()
    assert base.edit(src, ["remove the red circle"], [5])[0].tobytes() != want.tobytes()
    assert loaded.fingerprint() != base.fingerprint() and "lora:" in loaded.fingerprint()
    (tmp_path / "run" / "config.yaml").unlink()
    with pytest.raises(ValueError, match="--lora-alpha"):
        build_editor(str(model_dir), lora=str(ckpt))


@pytest.mark.slow  # a tiny real Qwen2-VL generating answers on CPU
def test_real_hf_judge_runs_the_gedit_protocol(shipped, tiny_vlm_path, tmp_path, capsys):
    out = tmp_path / "gedit"
    args = ["eval", str(ROOT / "eval" / "gedit_sample.yaml"), "--policy", "shapes-edit", "--policy-kwargs",
            '{"num_steps": 2}', "--judge", "hf", "--model", str(tiny_vlm_path), "--trust-remote-code",
            "--limit", "3", "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    # A random tiny VLM rarely writes valid JSON scores: every sample is either scored in range or listed as failed.
    assert summary["n_scored"] + len(summary["failed"]) == 3
    for row in read_rows(out / "samples.jsonl").values():
        assert row["error"] or 0 <= row["scores"]["O"] <= 10
    capsys.readouterr()


def test_openai_judge_requests_go_out_in_parallel_and_an_outage_resumes(assets, tmp_path):
    import threading
    import time

    import httpx

    from arr.backends.chat import JudgeUnavailableError
    from arr.backends.openai import OpenAIBackend

    state = {"now": 0, "peak": 0, "down": True}
    lock = threading.Lock()

    def handler(request: httpx.Request) -> httpx.Response:
        if state["down"]:
            raise httpx.ConnectError("connection refused", request=request)
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.05)
        with lock:
            state["now"] -= 1
        body = json.loads(request.content)
        n_images = sum(
            p.get("type") == "image_url"
            for m in body["messages"]
            for p in m["content"]
            if isinstance(p, dict)
        )
        text = '{"success": 9, "overediting": 8}' if n_images == 2 else '{"naturalness": 6, "artifacts": 7}'
        return httpx.Response(200, json={"id": "x", "object": "chat.completion",
                                         "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]})  # fmt: skip

    def backend() -> OpenAIBackend:
        return OpenAIBackend("judge-model", base_url="http://judge.test/v1", transport=httpx.MockTransport(handler),
                             max_concurrency=4, max_retries=1, backoff=0.001, timeout=2.0)  # fmt: skip

    suite, samples = load_edit_suite(ROOT / "eval" / "gedit_sample.yaml", tmp_path / "data")
    editor = tiny_editor(assets)
    with pytest.raises(JudgeUnavailableError):
        evaluate_edits(
            samples, editor, tmp_path / "out", VIEScoreJudge(backend()), batch_size=8, progress=False
        )
    assert read_rows(tmp_path / "out" / "samples.jsonl") == {}
    assert len(list((tmp_path / "out" / "edits").glob("*.png"))) == 6  # the edits survive the outage
    state["down"] = False
    summary = evaluate_edits(
        samples, editor, tmp_path / "out", VIEScoreJudge(backend()), batch_size=8, progress=False
    )
    assert summary["n_scored"] == 6 and summary["overall"]["O"] == pytest.approx(math.sqrt(8 * 6))
    assert state["peak"] > 1  # the batch's 12 requests were in flight together, up to max_concurrency


def test_shapes_policy_editor_matches_arr_shapes_edit(assets):
    """`arr eval --policy shapes-edit` samples what `arr shapes edit` samples for the same seed and settings."""
    import random

    from arr.shapes.models import load_pretrained
    from arr.shapes.sample import sample
    from arr.shapes.scene import random_scene, render

    src = render(random_scene(random.Random(1), 3))
    prompts = ["remove the red circle", "add a blue square"]
    ours = build_editor(str(assets / "assets" / "edit"), num_steps=3).edit([src, src], prompts, [11, 12])
    theirs = sample(
        load_pretrained(assets / "assets" / "edit"), prompts, [11, 12], steps=3, source_images=[src, src]
    )
    assert [im.tobytes() for im in ours] == [im.tobytes() for im in theirs]
