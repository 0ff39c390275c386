"""Text-to-image suites (`arr eval eval/shapes_geneval.yaml`) and trained LoRAs on the command line.

- The suite's summary is GenEval's: strict per-image verdicts (recomputed here with `geneval_correct` from the saved
  images) averaged per category, overall = mean of the categories; a resumed run summarises the same.
- `--lora` applies a LoRA checkpoint: `arr eval` and `arr shapes sample` give the images of the policy that holds
  the LoRA, not the base model's; a LoRA of the other shapes model, or one a pipeline cannot load, is refused.
"""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
import torch
from PIL import Image

from arr.evaluation.edit_results import read_rows
from arr.evaluation.editing import sample_seed
from arr.evaluation.editors import PolicyEditor, build_generator
from arr.evaluation.t2i_suites import geneval_rubric, load_t2i_suite
from arr.policies.shapes import ShapesPolicy
from arr.shapes.benchmarks import spec_from_geneval_record
from arr.shapes.rubrics import geneval_correct
from tests.conftest import ROOT, needs_shipped_t2i

SUITE = ROOT / "eval" / "shapes_geneval.yaml"
FAST = '{"num_steps": 4}'


def lora_checkpoint(folder, seed=0):
    """A non-trivial LoRA (r4, alpha 8) for the shipped t2i model, saved as a checkpoint saves it."""
    policy = ShapesPolicy.from_pretrained("t2i", num_steps=4, guidance_scale=1.5)  # `arr eval`'s settings
    policy.add_lora(4, 8.0)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in policy.transformer.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.3, generator=gen)
    policy.save_lora_weights(folder, base_model="t2i")
    return policy


def eval_args(out, *extra):
    return ["eval", str(SUITE), "--policy", "shapes-t2i", "--policy-kwargs", FAST, "--limit", "6",
            "--no-progress", "--out", str(out), *extra]  # fmt: skip


@pytest.mark.slow  # 56 images sampled and judged, in about 8 CPU seconds
@needs_shipped_t2i
def test_shapes_geneval_suite_scores_like_geneval_and_resumes(run_cli, tmp_path):
    out = tmp_path / "eval"
    code, stdout, stderr = run_cli(*eval_args(out))
    assert code == 0, stderr
    summary = json.loads(stdout)
    suite, prompts = load_t2i_suite(SUITE, out / "data", limit=6)
    assert summary["n_samples"] == summary["n_scored"] == 6 * suite["samples_per_prompt"]

    hits = defaultdict(list)
    rows = read_rows(out / "samples.jsonl")
    for p in prompts:
        spec = spec_from_geneval_record(p.record)
        for k in range(suite["samples_per_prompt"]):
            row = rows[f"{p.id}_{k}"]
            ok = geneval_correct(spec, Image.open(out / row["image"]).convert("RGB"))
            assert row["scores"]["correct"] == float(ok) and row["category"] == p.category
            hits[p.category].append(ok)
    by_hand = {c: sum(v) / len(v) for c, v in hits.items()}
    assert summary["categories"].keys() == by_hand.keys()
    for c, value in by_hand.items():
        assert summary["categories"][c]["correct"] == pytest.approx(value)
    assert summary["headline"]["value"] == pytest.approx(sum(by_hand.values()) / len(by_hand))
    assert (out / "report.html").read_text().count("<img") == summary["n_samples"]

    # Resume: lose two rows and an image; the rerun regenerates the image and summarises the same.
    lines = (out / "samples.jsonl").read_text().splitlines()
    (out / "samples.jsonl").write_text("\n".join(lines[:-2]) + "\n")
    (out / json.loads(lines[-1])["image"]).unlink()
    code, stdout, _ = run_cli(*eval_args(out))
    assert code == 0 and json.loads(stdout)["categories"] == summary["categories"]


@pytest.mark.slow  # 32 images and two grids, in about 6 CPU seconds
@needs_shipped_t2i
def test_lora_flag_evaluates_and_samples_the_trained_model(run_cli, tmp_path):
    ckpt = tmp_path / "run" / "checkpoints" / "step_5"
    trained = lora_checkpoint(ckpt)
    out = tmp_path / "eval"
    code, stdout, stderr = run_cli(*eval_args(out, "--lora", str(ckpt)))
    assert code == 0, stderr
    rows = read_rows(out / "samples.jsonl")
    # The first batch (8 images), made again by the policy that holds the LoRA: the same batch gives the same pixels.
    batch = [rows[f"{p:05d}_{k}"] for p in range(2) for k in range(4)]
    prompts, seeds = [r["prompt"] for r in batch], [sample_seed(r["id"]) for r in batch]
    for row, want in zip(batch, PolicyEditor(trained, "trained").generate(prompts, seeds), strict=True):
        assert Image.open(out / row["image"]).convert("RGB").tobytes() == want.tobytes()
    base = build_generator("shapes-t2i", num_steps=4).generate(prompts, seeds)
    assert base[0].tobytes() != Image.open(out / batch[0]["image"]).convert("RGB").tobytes()
    assert "lora:" in json.loads((out / "settings.json").read_text())["policy"]

    # `arr shapes sample --lora`: the grid of the LoRA's images, not the base model's.
    grids = {}
    for name, extra in (("base", []), ("lora", ["--lora", str(ckpt)])):
        grid = tmp_path / f"{name}.png"
        code, stdout, stderr = run_cli("shapes", "sample", "a red circle", "--n", "2", "--steps", "4",
                                       "--out", str(grid), *extra)  # fmt: skip
        assert code == 0, stderr
        grids[name] = Image.open(grid).convert("RGB").tobytes()
    assert grids["base"] != grids["lora"]
    from arr.report import image_grid
    from arr.shapes.sample import sample

    images = sample(trained.model, ["a red circle"] * 2, [0, 1], steps=4)
    captions = [f"{s:.2f}" for s in json.loads(stdout)["scores"]]
    assert image_grid(images, cols=2, captions=captions, scale=4).convert("RGB").tobytes() == grids["lora"]


@needs_shipped_t2i
def test_lora_errors_name_the_problem(run_cli, tmp_path):
    ckpt = tmp_path / "ckpt"
    lora_checkpoint(ckpt)
    code, _, err = run_cli("shapes", "sample", "a red circle", "--lora", str(tmp_path / "nope"), "--out",
                           str(tmp_path / "g.png"))  # fmt: skip
    assert code == 2 and "--lora" in err and "no such folder" in err
    # A t2i LoRA on the editing model: same attention layers, so only the recorded base model tells.
    code, _, err = run_cli("shapes", "edit", str(ROOT / "examples" / "source.png"), "make the red circle green",
                           "--lora", str(ckpt), "--n", "1", "--steps", "2", "--out", str(tmp_path / "e.png"))  # fmt: skip
    assert code == 2 and "trained on the shapes 't2i' model" in err
    code, _, err = run_cli(*eval_args(tmp_path / "e2", "--no-judge"))
    assert code == 2 and "text-to-image suite" in err
    code, _, err = run_cli(*eval_args(tmp_path / "e3", "--lora", str(tmp_path)))
    assert code == 2 and "no pytorch_lora_weights.safetensors" in err


def test_diffusers_pipeline_lora_loads_or_fails_loudly(tmp_path):
    from arr.evaluation.editors import load_pipeline_lora
    from tests.conftest import build_family_policy, family_pipeline, nonzero_lora

    trained = build_family_policy("sd3")
    trained.add_lora(r=2, alpha=4)
    nonzero_lora(trained)
    trained.save_lora_weights(tmp_path / "ckpt")
    pipe = family_pipeline("sd3", build_family_policy("sd3"))
    stamp = load_pipeline_lora(pipe, tmp_path / "ckpt")
    assert stamp.startswith("lora:") and stamp.endswith(":r2:a4")
    assert sum(len(v) for v in pipe.get_list_adapters().values()) == 1
    # A checkpoint folder without the diffusers file (only arr's resume copy) is refused, not loaded as nothing.
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (tmp_path / "ckpt" / "pytorch_lora_weights.safetensors").rename(legacy / "lora.safetensors")
    with pytest.raises(ValueError, match="no pytorch_lora_weights.safetensors"):
        load_pipeline_lora(pipe, legacy)


def test_geneval_rubric_for_records_outside_the_shapes_world():
    record = {
        "tag": "position",
        "include": [{"class": "dog", "count": 1}, {"class": "cat", "count": 1, "position": ["left of", 0]}],
        "prompt": "a photo of a cat left of a dog",
    }
    rubric = geneval_rubric(record)
    assert [c.text for c in rubric.criteria] == [
        "The image shows at least 1 dog.",
        "The image shows at least 1 cat.",
        "The cat is left of the dog.",
    ]
    counting = {"tag": "counting", "include": [{"class": "apple", "count": 3, "color": "red"}],
                "exclude": [{"class": "apple", "count": 4}], "prompt": "a photo of three red apples"}  # fmt: skip
    assert [c.text for c in geneval_rubric(counting).criteria] == [
        "The image shows at least 3 red apples.",
        "The image shows fewer than 4 apples.",
    ]
    with pytest.raises(ValueError, match="not a GenEval record"):
        geneval_rubric({"prompt": "x"})
