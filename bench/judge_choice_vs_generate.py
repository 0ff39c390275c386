"""Pairwise judging from choice-token probabilities (one forward pass) against generating a JSON verdict with reasons.

    OMP_WAIT_POLICY=PASSIVE python bench/judge_choice_vs_generate.py --out bench/results/judge_choice_vs_generate.json

Two parts, because a random-init judge can be timed but cannot agree with itself in any meaningful way:
- speed: the random-init Qwen2-VL of bench/judge_prefix.py (448 px images, 256 tokens each) judges `--pairs`
  pairs with `HFBackend(mode="probs")` (the answer teacher-forced to `{"rank": [`, then P("1") vs P("2") read
  from one forward pass) and with `mode="generate"` (greedy decoding of up to `--max-new-tokens` tokens: the JSON
  verdict with its reason), batched (all pairs at once) and one pair at a time. Speedup = generate seconds /
  probs seconds. The random model rarely stops early, so generation runs the full budget, as a real judge writing
  a reason of that length would.
- agreement: the tiny test judge (arr.testing.tiny_vlm) is first fine-tuned for `--train-steps` steps to answer
  pair questions about two grey images with `{"rank": [1, 2], "reason": "Image 1 is brighter."}` (the brighter
  image wins). Held-out pairs are then judged both ways; agreement = share of pairs where the probability verdict
  (P(Image 1) > 0.5) and the parsed generated verdict pick the same image; accuracy of each against the truth is
  reported beside it. With greedy decoding the two can differ only where the model does not write the
  `{"rank": [` prefix first, or where its top token after it is neither "1" nor "2"; a model trained on the format
  agrees by construction, so this figure checks the plumbing, not a real judge's consistency.
Reasons stay available on demand: `HFBackend(mode="generate")` gives them with every verdict.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

# `python bench/judge_choice_vs_generate.py` puts bench/ first on the import path: the judge is judge_prefix.py's.
from judge_prefix import PROMPT, build_bench_judge, machine, random_images
from PIL import Image


def _speed(a: argparse.Namespace) -> dict:
    from arr.backends.base import PairQuery
    from arr.backends.hf import HFBackend
    from arr.rubrics import Criterion, Rubric

    folder = build_bench_judge(tempfile.mkdtemp(prefix="arr_bench_judge_"), a.image_size)
    rubric = Rubric(PROMPT, [Criterion("c1", "the circle is red"), Criterion("c2", "the circle is left")])
    images = random_images(2 * a.pairs, a.image_size, seed=2)
    queries = [PairQuery(PROMPT, (images[2 * i], images[2 * i + 1]), rubric) for i in range(a.pairs)]
    out: dict = {}
    for batch in (a.pairs, 1):
        probs = HFBackend(str(folder), trust_remote_code=True, batch_size=batch, mode="probs")
        gen = HFBackend(
            str(folder),
            trust_remote_code=True,
            batch_size=batch,
            mode="generate",
            max_new_tokens=a.max_new_tokens,
        )
        probs.judge_pairs(queries[:1])  # warm-up
        t0 = time.perf_counter()
        probs.judge_pairs(queries)
        t_probs = time.perf_counter() - t0
        t0 = time.perf_counter()
        gen.judge_pairs(queries)
        t_gen = time.perf_counter() - t0
        out[f"batch_{batch}"] = {
            "seconds_probs": t_probs,
            "seconds_generate": t_gen,
            "speedup": t_gen / t_probs,
            "generated_tokens_mean": gen.token_usage.completion_tokens / a.pairs,
            "prompt_tokens_mean": probs.token_usage.prompt_tokens / (a.pairs + 1),
        }
    return out


def _grey_pair(rng: np.random.Generator) -> tuple[Image.Image, Image.Image, int]:
    """Two noisy grey 32 px images whose mean brightness differs by at least 50 levels; returns the brighter one."""
    while True:
        a, b = rng.integers(30, 226, size=2)
        if abs(int(a) - int(b)) >= 50:
            break

    def image(level: int) -> Image.Image:
        px = np.clip(level + rng.normal(0, 12, (32, 32, 1)), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(px, 3, axis=2))

    return image(int(a)), image(int(b)), 0 if a > b else 1


def _answer(better: int) -> str:
    rank = [1, 2] if better == 0 else [2, 1]
    return json.dumps({"rank": rank, "reason": f"Image {better + 1} is brighter."})


def _agreement(a: argparse.Namespace) -> dict:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from arr.backends.base import PairQuery
    from arr.backends.chat import parse_pair_answer, render_pair
    from arr.backends.hf import HFBackend
    from arr.rubrics import Criterion, Rubric
    from arr.testing.tiny_vlm import build_tiny_qwen2vl

    folder = build_tiny_qwen2vl(tempfile.mkdtemp(prefix="arr_tiny_judge_"), init_range=0.02)
    model = AutoModelForImageTextToText.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    tok = processor.tokenizer
    rubric = Rubric("a grey image", [Criterion("b", "the image is bright")])
    rng = np.random.default_rng(0)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr)
    model.train()
    losses = []
    t0 = time.perf_counter()
    for _ in range(a.train_steps):
        texts, prompt_lens, images = [], [], []
        for _ in range(a.train_batch):
            i1, i2, better = _grey_pair(rng)
            req = render_pair(PairQuery(rubric.prompt, (i1, i2), rubric))
            prompt = processor.apply_chat_template(req.messages, add_generation_prompt=True, tokenize=False)
            texts.append(prompt + _answer(better) + tok.eos_token)
            prompt_lens.append(len(tok(prompt)["input_ids"]))
            images.append(req.images)
        tok.padding_side = "right"
        batch = processor(text=texts, images=images, padding=True, return_tensors="pt")
        labels = batch["input_ids"].clone()
        labels[batch["attention_mask"] == 0] = -100
        image_tokens = (batch["input_ids"] == model.config.image_token_id).sum(dim=1)
        for row, (n, extra) in enumerate(zip(prompt_lens, image_tokens.tolist(), strict=True)):
            # The processor expanded each image placeholder into its image tokens: the prompt grew by that much.
            labels[row, : n + extra - len(images[row])] = -100
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    train_seconds = time.perf_counter() - t0
    model.eval()

    probs = HFBackend(model, processor=processor, mode="probs", batch_size=8)
    gen = HFBackend(model, processor=processor, mode="generate", batch_size=8, max_new_tokens=48)
    truth, queries = [], []
    for _ in range(a.eval_pairs):
        i1, i2, better = _grey_pair(rng)
        queries.append(PairQuery(rubric.prompt, (i1, i2), rubric))
        truth.append(better)
    p_verdicts = probs.judge_pairs(queries)
    g_verdicts = gen.judge_pairs(queries)
    pick_p = [
        None if v.prob_first is None or v.prob_first == 0.5 else int(v.prob_first < 0.5) for v in p_verdicts
    ]
    pick_g = [
        None if v.prob_first is None or v.prob_first == 0.5 else int(v.prob_first < 0.5) for v in g_verdicts
    ]
    parsed = sum(v.prob_first is not None for v in g_verdicts)
    agree = sum(p is not None and p == g for p, g in zip(pick_p, pick_g, strict=True))
    return {
        "train_steps": a.train_steps,
        "train_seconds": train_seconds,
        "loss_first": losses[0],
        "loss_last": float(np.mean(losses[-10:])),
        "eval_pairs": a.eval_pairs,
        "generated_parsed": parsed,
        # A generated verdict is a tie when both ranks are equal ([1, 1]): the second rank is its own token, which
        # the probability readout never looks at.
        "generate_ties": sum(v.prob_first == 0.5 for v in g_verdicts),
        "probs_ties": sum(v.prob_first == 0.5 for v in p_verdicts),
        "agreement": agree / a.eval_pairs,
        "accuracy_probs": sum(p == t for p, t in zip(pick_p, truth, strict=True)) / a.eval_pairs,
        "accuracy_generate": sum(g == t for g, t in zip(pick_g, truth, strict=True)) / a.eval_pairs,
        "example_generated": g_verdicts[0].raw[:200],
        "example_reason": g_verdicts[0].reason,
        "example_unparsed": next(
            (parse_pair_answer(v.raw).error for v in g_verdicts if v.prob_first is None), None
        ),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--image-size", "--image_size", type=int, default=448)
    p.add_argument("--max-new-tokens", "--max_new_tokens", type=int, default=128)
    p.add_argument("--train-steps", "--train_steps", type=int, default=200)
    p.add_argument("--train-batch", "--train_batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--eval-pairs", "--eval_pairs", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip", choices=("speed", "agreement"), default=None)
    p.add_argument("--out", default="bench/results/judge_choice_vs_generate.json")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    result = {
        "benchmark": "judge_choice_vs_generate",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "args": vars(a),
    }
    if a.skip != "speed":
        result["speed"] = _speed(a)
    if a.skip != "agreement":
        result["agreement"] = _agreement(a)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))  # noqa: T201


if __name__ == "__main__":
    main()
