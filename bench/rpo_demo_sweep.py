"""Short RPO runs on the shapes demo with a paired held-out evaluation: which settings raise the GenEval score?

    OMP_WAIT_POLICY=PASSIVE python bench/rpo_demo_sweep.py --name lr1e-3 --steps 60 \
        --model /path/to/ema --out bench/results/rpo_demo_sweep.jsonl -- --learning_rate 1e-3 --eta 1.0

Each run parses the demo recipe plus the overrides after `--`, trains `--steps` steps (or until `--minutes` pass),
and scores the same `--eval-prompts` held-out prompts with the same per-prompt seeds before and after (the
trainer's own `evaluate`, so the comparison is paired). The base model's score is computed once per (model,
guidance, eval steps, prompts) and cached next to the output. Besides the reward the trainer optimises, every step
logs the pointwise pixel rubric score and the strict GenEval correctness of the training samples, so pairwise and
pointwise runs can be compared on the same scale. Appends one JSON object per run to `--out`.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch


def _eval_key(recipe, n: int) -> str:
    r = recipe.rpo
    return f"{recipe.policy.model_name_or_path}|g{r.guidance_scale}|s{r.eval_num_sampling_steps}|n{n}|seed{r.seed}"


def main() -> None:
    from arr.backends.pixel import PixelBackend
    from arr.cli.train import demo_recipe_path
    from arr.rpo.build import build_trainer
    from arr.rpo.recipe import parse_recipe
    from arr.shapes.detect import analyze
    from arr.shapes.edits import edit_correct
    from arr.shapes.rubrics import geneval_correct

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", required=True, help="label of this run in the output")
    p.add_argument("--model", default=None, help="model_name_or_path (default: the recipe's)")
    p.add_argument("--recipe", default=str(demo_recipe_path()))
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's max_steps)")
    p.add_argument("--minutes", type=float, default=None, help="stop after this much training time")
    p.add_argument("--eval-prompts", "--eval_prompts", type=int, default=300)
    p.add_argument(
        "--eval-every",
        "--eval_every",
        type=int,
        default=0,
        help="also evaluate every N steps (0: only at the end)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    p.add_argument("--out", default="bench/results/rpo_demo_sweep.jsonl")
    p.add_argument("--workdir", default="bench/results/rpo_demo_sweep", help="the runs' folders")
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="-- then recipe overrides")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    overrides = [x for x in a.overrides if x != "--"]
    argv = [a.recipe, "--output_dir", str(Path(a.workdir) / a.name), "--report_to", "none"]
    argv += ["--eval_num_prompts", str(a.eval_prompts), "--save_steps", "100000", "--sample_steps", "100000"]
    if a.model:
        argv += ["--model_name_or_path", a.model]
    recipe = parse_recipe(argv + overrides)
    steps = a.steps or recipe.rpo.max_steps
    recipe.rpo.max_steps = max(steps, 1)
    trainer = build_trainer(recipe)
    trainer.callbacks = []
    eval_records = trainer.eval_records

    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cache_path = out.with_name(out.stem + "_base.json")
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    key = _eval_key(recipe, len(eval_records))
    t = time.perf_counter()
    if key not in cache:
        cache[key] = trainer.evaluate()
        cache_path.write_text(json.dumps(cache, indent=1))
    before = cache[key]
    base_eval_s = time.perf_counter() - t

    # Pointwise view of the training samples, whatever the reward mode: pixel rubric score and strict correctness.
    pixel = PixelBackend()
    seen: dict[str, list[float]] = {"rubric": [], "strict": []}
    judge = trainer.judge

    def judge_and_score(rollout):
        g = rollout.group_size
        rub, strict = [], []
        for i, im in enumerate(rollout.images):
            rec = rollout.records[i // g]
            rub.append(pixel.score_image(im, rec.rubric, rec.source_image))
            if "edit" in rec.extra:  # editing records (recipes/shapes_edit_rpo.yaml)
                strict.append(float(edit_correct(rec.extra["edit"], im)))
            else:
                strict.append(float(geneval_correct(rec.extra["spec"], analyze(im))))
        seen["rubric"].append(sum(rub) / len(rub))
        seen["strict"].append(sum(strict) / len(strict))
        return judge(rollout)

    trainer.judge = judge_and_score
    rows = []
    t0 = time.perf_counter()
    while trainer.step < steps:
        row = trainer.training_step()
        trainer.step += 1
        row.update(step=trainer.step, train_rubric=seen["rubric"][-1], train_strict=seen["strict"][-1])
        if a.eval_every and trainer.step % a.eval_every == 0 and trainer.step < steps:
            row["eval_score"] = trainer.evaluate()["eval_score"]
            row["train_minutes"] = (time.perf_counter() - t0) / 60
            print(f"step {trainer.step}: eval {row['eval_score']:.3f}", flush=True)  # noqa: T201
        rows.append(row)
        if a.minutes and time.perf_counter() - t0 > 60 * a.minutes:
            break
    train_s = time.perf_counter() - t0
    t = time.perf_counter()
    after = trainer.evaluate()
    eval_s = time.perf_counter() - t

    def avg(k: str, part: slice) -> float | None:
        vals = [r[k] for r in rows[part] if isinstance(r.get(k), (int, float))]
        return sum(vals) / len(vals) if vals else None

    q = max(len(rows) // 4, 1)
    result = {
        "name": a.name,
        "overrides": overrides,
        "model": recipe.policy.model_name_or_path,
        "steps": trainer.step,
        "train_minutes": train_s / 60,
        "eval_seconds": eval_s,
        "base_eval_seconds_if_computed": base_eval_s,
        "eval_prompts": len(eval_records),
        "before": before,
        "after": after,
        "gain": after["eval_score"] - before["eval_score"],
        "train_first_quarter": {k: avg(k, slice(0, q)) for k in _TRACKED},
        "train_last_quarter": {k: avg(k, slice(-q, None)) for k in _TRACKED},
        "eval_curve": [(r["step"], r["train_minutes"], r["eval_score"]) for r in rows if "eval_score" in r],
        "host": platform.node(),
        "torch_threads": torch.get_num_threads(),
    }
    with open(out, "a", encoding="utf-8") as f:
        f.write(json.dumps(result) + "\n")
    print(json.dumps({k: result[k] for k in ("name", "steps", "train_minutes", "gain")}))  # noqa: T201
    print(  # noqa: T201
        f"eval {before['eval_score']:.3f} -> {after['eval_score']:.3f}; train rubric "
        f"{result['train_first_quarter']['train_rubric']:.3f} -> {result['train_last_quarter']['train_rubric']:.3f}"
    )


_TRACKED = (
    "train_rubric",
    "train_strict",
    "reward_mean",
    "reward/tie_rate",
    "kl",
    "clip_frac",
    "ratio_mean",
    "grad_norm",
    "step_seconds",
)

if __name__ == "__main__":
    main()
