"""The shapes judge: its tokenizer, questions labelled by the pixel judge, shared-prefix training, resumable
pretraining, and the shipped weights (offline loading, accuracy on a fixed set against the documented figure)."""

from __future__ import annotations

import dataclasses
import json
import random
import subprocess
import sys

import pytest
import torch

from arr.shapes.judge_data import QUESTION_KINDS, QuestionFactory, SamplePool
from arr.shapes.judge_model import JUDGE_DIR, JudgeModelConfig, isolated_words
from arr.shapes.prompts import prompts_for_split, scene_for_prompt
from arr.shapes.scene import render
from tests.conftest import ROOT, SUBPROCESS_ENV

TINY = JudgeModelConfig(
    hidden_size=32,
    intermediate_size=64,
    num_layers=1,
    num_heads=2,
    num_kv_heads=1,
    vision_depth=1,
    vision_embed_dim=16,
    vision_heads=2,
    vocab_size=800,
    min_frequency=2,
)


def rendered_pool(split: str, per_prompt: int = 1, n_edits: int = 6) -> SamplePool:
    """A sample pool of exact renders instead of model samples: the same shape of data, built in milliseconds."""
    from arr.shapes.judge_data import edit_for_seed

    rng = random.Random(0)
    t2i = {
        s.text: [render(scene_for_prompt(s, rng)) for _ in range(per_prompt)]
        for s in prompts_for_split(split)
    }
    edits = [(k, [render(edit_for_seed(k, split).target)]) for k in range(n_edits)]
    return SamplePool(t2i, edits, split)


@pytest.fixture(scope="module")
def tiny_judge():
    """A tiny random judge with a tokenizer trained on a few hundred questions, and a question factory."""
    from arr.shapes.judge_batch import prompt_text
    from arr.shapes.judge_model import (
        CHAT_TEMPLATE,
        build_judge_model,
        build_judge_processor,
        build_judge_tokenizer,
    )

    factory = QuestionFactory(rendered_pool("train"), "train")
    rng = random.Random(1)
    texts = [
        prompt_text(q.request, CHAT_TEMPLATE) + q.answer + "<|im_end|>"
        for k in range(80)
        for q in factory.questions(rng, QUESTION_KINDS[k % 4])
    ]
    processor = build_judge_processor(build_judge_tokenizer(texts, TINY), TINY)
    model = build_judge_model(processor.tokenizer, TINY, seed=0).eval()
    return model, processor, factory


def test_tokenizer_keeps_the_shapes_vocabulary_and_answers_whole(tiny_judge):
    model, processor, factory = tiny_judge
    tok = processor.tokenizer
    for word in [*isolated_words(), *"0123456789"]:
        assert len(tok.encode(word, add_special_tokens=False)) == 1, word
    q = factory.questions(random.Random(5), "criterion_t2i")[0]
    text = processor.apply_chat_template(q.request.messages, add_generation_prompt=True, tokenize=False)
    n = len(processor(text=[text], images=[q.request.images], return_tensors="pt")["input_ids"][0])
    # A template line is one or a few tokens, each image 16: a criterion question is ~100 tokens, not ~1000 bytes.
    assert 16 + 40 <= n <= 300, n


def test_questions_carry_the_pixel_judges_verdicts():
    from arr.backends.pixel import PixelBackend

    factory = QuestionFactory(rendered_pool("train"), "train")
    pixel, rng = PixelBackend(), random.Random(3)
    for kind in QUESTION_KINDS:
        for _ in range(6):
            qs = factory.questions(rng, kind)
            if kind == "describe_t2i":
                (q,) = qs
                assert q.request.images and q.token_weight > 0
                continue
            if kind.startswith("criterion"):
                verdicts = pixel.judge_criteria([q.query for q in qs])
                for q, v in zip(qs, verdicts, strict=True):
                    assert q.label == v.prob_yes
                    assert q.answer.startswith("yes:" if q.label == 1.0 else "no:")
            else:
                rubric_q, plain_q = qs
                assert not rubric_q.plain and plain_q.plain and rubric_q.label == plain_q.label
                assert plain_q.query.rubric.criteria == []
                # The plain question's label is the pixel judge's verdict with the rubric.
                v = pixel.judge_pairs([rubric_q.query])[0]
                assert rubric_q.label == v.prob_first
                rank = json.loads(rubric_q.answer)["rank"]
                both_right = (
                    pixel.score_image(rubric_q.query.images[0], rubric_q.query.rubric, rubric_q.query.source)
                    == 1.0
                )
                tie = [1, 1] if both_right else [2, 2]
                assert rank == {1.0: [1, 2], 0.0: [2, 1], 0.5: tie}[rubric_q.label]


def test_describe_answers_list_what_the_image_shows_and_weigh_every_token(tiny_judge):
    from arr.shapes.judge_batch import JudgeBatcher
    from arr.shapes.judge_data import describe_answer
    from arr.shapes.scene import Obj, Scene

    scene = Scene((Obj("circle", "red", 0, 3), Obj("square", "blue", 2, 1)))
    assert describe_answer(render(scene)) == "red circle at (1, 4); blue square at (3, 2)"
    assert describe_answer(render(Scene(()))) == "nothing"

    _, processor, factory = tiny_judge
    rng = random.Random(0)
    questions = factory.questions(rng, "describe_t2i") + factory.questions(rng, "criterion_t2i")
    batch = JudgeBatcher(processor, rest_weight=0.3).encode(questions)
    weights = batch.rest_weight_mask.sum(1)
    answer_tokens = len(
        processor.tokenizer.encode(questions[0].answer + "<|im_end|>", add_special_tokens=False)
    )
    assert weights[0] == pytest.approx(answer_tokens - 1)  # every token after the first, weight 1 each
    assert all(w == pytest.approx(0.3) for w in weights[1:].tolist())  # a criterion answer's rest: 0.3 in all


def test_shared_prefix_batches_equal_full_passes(tiny_judge):
    """Probabilities equal the hf backend's full passes; the loss and its gradient equal one question per group."""
    from arr.backends.hf import HFBackend
    from arr.shapes.judge_batch import JudgeBatcher, choice_probs, judge_loss

    model, processor, factory = tiny_judge
    rng = random.Random(7)
    judged = [k for k in QUESTION_KINDS if not k.startswith("describe")]  # describe questions are not judging
    questions = [q for kind in judged for q in factory.questions(rng, kind)]
    batcher = JudgeBatcher(processor)
    shared = batcher.encode(questions, with_answers=False)
    assert shared.prefix_ids.shape[0] == 4  # one prefix per group
    ours = choice_probs(model, shared)
    full = HFBackend(model, processor=processor, share_prefix=False)._chat([q.request for q in questions])
    for a, b in zip(ours, full, strict=True):
        assert a == pytest.approx(b.choice_probs, rel=1e-4, abs=1e-7)

    def loss_and_grad(qs):
        model.zero_grad()
        loss, _ = judge_loss(model, batcher.encode(qs))
        loss.backward()
        return (
            loss.item(),
            model.lm_head.weight.grad.clone(),
            model.model.visual.patch_embed.proj.weight.grad.clone(),
        )

    alone = [dataclasses.replace(q, group=1000 + i) for i, q in enumerate(questions)]
    (l1, g1, v1), (l2, g2, v2) = loss_and_grad(questions), loss_and_grad(alone)
    assert l1 == pytest.approx(l2, rel=1e-5)
    assert torch.allclose(g1, g2, atol=1e-6) and torch.allclose(v1, v2, atol=1e-6)
    assert v1.abs().sum() > 0  # the vision tower learns through the shared cache


def test_cell_targets_read_each_cell_and_the_vision_tokens_follow_the_cells(tiny_judge):
    """The cell loss pairs vision token k with grid cell (k // 4, k % 4): true only if the processor orders the
    merged patches row-major over the cells, which this checks on images lit in a single cell."""
    from arr.shapes.judge_vision import CELL_LABELS, cell_targets
    from arr.shapes.scene import Obj, Scene

    targets = cell_targets(render(Scene((Obj("circle", "red", 1, 2), Obj("triangle", "cyan", 3, 0)))))
    named = {k: {CELL_LABELS[j] for j in range(len(CELL_LABELS)) if targets[k, j]} for k in range(16)}
    assert named[6] == {"red", "circle"} and named[12] == {"cyan", "triangle"}
    assert all(not v for k, v in named.items() if k not in (6, 12))

    _, processor, _ = tiny_judge
    merge = processor.image_processor.merge_size
    blank = processor.image_processor(images=[render(Scene(()))], return_tensors="pt")["pixel_values"]
    for row, col in ((0, 0), (1, 2), (3, 1)):
        image = render(Scene((Obj("square", "yellow", row, col),)))
        pixels = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
        lit = (pixels - blank).abs().sum(-1).reshape(16, merge * merge).sum(-1) > 0
        assert lit.nonzero().flatten().tolist() == [row * 4 + col]


def _tiny_run(out, steps, stop_after=None):
    from arr.shapes.pretrain_judge import JudgePretrainConfig, pretrain_judge

    out.mkdir(exist_ok=True)
    rendered_pool("train").save(out / "pool_train.npz")
    rendered_pool("heldout").save(out / "pool_heldout.npz")
    cfg = JudgePretrainConfig(
        steps=steps,
        batch_size=6,
        warmup_steps=1,
        lr=3e-3,
        tokenizer_groups=40,
        eval_every=2,
        eval_questions=8,
        checkpoint_every=2,
        model=TINY,
    )
    return pretrain_judge(out, cfg, progress=False, stop_after=stop_after)


def test_pretraining_resumes_exactly_and_exports_a_loadable_judge(tmp_path):
    from safetensors.torch import load_file

    from arr import load_backend
    from arr.backends.base import CriterionQuery
    from arr.shapes.rubrics import rubric_for_prompt

    once = _tiny_run(tmp_path / "once", steps=4)
    _tiny_run(tmp_path / "twice", steps=4, stop_after=2)
    with open(
        tmp_path / "twice" / "metrics.jsonl", "a"
    ) as f:  # a row logged after the checkpoint, then killed
        f.write(json.dumps({"step": 3, "loss": 123.0}) + "\n")
    twice = _tiny_run(tmp_path / "twice", steps=4)
    resumed = [json.loads(line) for line in (tmp_path / "twice" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumed] == [1, 2, 3, 4] and resumed[2]["loss"] != 123.0
    a, b = load_file(once / "model.safetensors"), load_file(twice / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(t.dtype == torch.float16 for t in a.values())
    rows = [json.loads(line) for line in (tmp_path / "once" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(0.0 <= r["cell_exact"] <= 1.0 and r["cell_loss"] > 0 for r in rows)
    assert any(k.startswith("heldout/criterion_t2i") for k in rows[1])

    spec = prompts_for_split("heldout", "colors")[0]
    backend = load_backend("hf", model=str(once))
    rubric = rubric_for_prompt(spec)
    image = render(scene_for_prompt(spec, random.Random(0)))
    verdicts = backend.judge_criteria([CriterionQuery(spec.text, image, rubric, c) for c in rubric.criteria])
    assert all(v.prob_yes is not None and 0.0 <= v.prob_yes <= 1.0 for v in verdicts)


@pytest.mark.slow
def test_cli_pretrain_judge_help_and_bad_json(tmp_path):
    run = [sys.executable, "-m", "arr", "shapes", "pretrain-judge"]
    ok = subprocess.run([*run, "--help"], capture_output=True, text=True, env=SUBPROCESS_ENV, cwd=ROOT)
    assert ok.returncode == 0 and "--export" in ok.stdout
    bad = subprocess.run(
        [*run, "--out", str(tmp_path), "--model", '{"hidden_sise": 64}'],
        capture_output=True,
        text=True,
        env=SUBPROCESS_ENV,
        cwd=ROOT,
    )
    assert bad.returncode != 0 and "hidden_sise" in bad.stderr and "Traceback" not in bad.stderr


# ---- the shipped judge ------------------------------------------------------------------------------------------------

needs_shipped_judge = pytest.mark.skipif(
    not (JUDGE_DIR / "model.safetensors").is_file(), reason="shipped judge weights missing"
)


@needs_shipped_judge
def test_shipped_judge_loads_offline_by_name(monkeypatch):
    from arr import load_backend

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    backend = load_backend("hf", model="shapes-judge")
    assert backend.model_name == "shapes-judge" and "weights=" in backend.fingerprint()
    for choices in (("yes", "no", "unknown"), ("1", "2")):
        assert all(len(ids) >= 1 for ids in backend.choice_token_ids(choices))
    files = [f for f in JUDGE_DIR.iterdir() if f.is_file()]
    assert all(f.stat().st_size <= 20 * 2**20 for f in files)


@needs_shipped_judge
@pytest.mark.slow
def test_shipped_judge_accuracy_on_the_fixed_200_matches_its_card():
    """The documented figure (scores.json, written by bench/judge_eval.py --fixed-200) within 0.03."""
    sys.path.insert(0, str(ROOT / "bench"))
    from judge_eval import criterion_accuracy, fixed_200_questions

    from arr import load_backend

    documented = json.loads((JUDGE_DIR / "scores.json").read_text())["fixed_200_criterion_accuracy"]
    questions = fixed_200_questions()
    assert len(questions) == 200
    measured = criterion_accuracy(load_backend("hf", model="shapes-judge"), questions)["all"]["accuracy"]
    assert measured == pytest.approx(documented, abs=0.03)


@needs_shipped_judge
@pytest.mark.slow
@pytest.mark.skipif(
    __import__("arr.testing.serve", fromlist=["x"]).transformers_cli() is None,
    reason="needs pip install 'transformers[serving]'",
)
def test_shipped_judge_gives_the_same_verdicts_in_process_and_through_transformers_serve(tmp_path):
    """The same weights behind the two serving paths: the hf backend generating in process, and `transformers
    serve` (started here on 127.0.0.1) asked by the openai backend, both greedy, on 50 held-out pairs."""
    from arr import load_backend
    from arr.shapes.judge_data import build_sample_pool, fixed_questions
    from arr.testing.serve import TransformersServer

    pool = build_sample_pool("heldout", 1, 0, 0, seed=3)
    pairs = [q.query for q in fixed_questions(pool, "heldout", "pair_t2i", 100, seed=3) if not q.plain][:50]
    assert len(pairs) == 50
    local = load_backend("hf", model="shapes-judge", mode="generate", max_new_tokens=48)
    in_process = [v.prob_first for v in local.judge_pairs(pairs)]
    with TransformersServer(JUDGE_DIR, log_path=tmp_path / "serve.log") as server:
        remote = load_backend(
            "openai", model=str(JUDGE_DIR), base_url=server.base_url, max_tokens=48, timeout=60.0
        )
        served = [v.prob_first for v in remote.judge_pairs(pairs)]
    agree = sum(a == b for a, b in zip(in_process, served, strict=True))
    print(f"in process and served verdicts agree on {agree} of 50 pairs")
    assert all(v is not None for v in in_process), "the judge's own answers must parse"
    assert agree >= 48, f"only {agree} of 50 verdicts agree"
