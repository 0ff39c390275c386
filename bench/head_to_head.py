"""Head-to-head in the shapes world: which reward makes RPO train the best model, judged by the exact pixel judge?

    OMP_NUM_THREADS=1 python bench/head_to_head.py --steps 60 --seeds 0,1,2 --eval-prompts 300

Every method trains the shipped shapes text-to-image model with the same recipe (arr/recipes/shapes_t2i_rpo.yaml,
read at run time), the same budget and the same seeds; only the reward (and the advantage rule it needs) changes.
The five rows (`--methods`, default all five):
- `vlm_rubric_pairwise` (a): RPO with the shipped VLM judge (shapes-judge, hf backend in process) comparing each
  pair against the prompt's rubric in both orders (swap-consistent: a flip is a tie);
- `vlm_plain_pairwise` (b): the same judge and pairs, asked without a rubric ("judge by the prompt alone");
- `bt_reward_model` (c): a `PairwiseRewardModel` trained with the Bradley-Terry loss on `--bt-pairs` (100) shapes
  preference pairs (training split, generation-like perturbations), its score normalised within each group;
- `rubric_pairwise` (d): RPO with the exact pixel judge as the rubric judge (the oracle);
- `vlm_rubric_pointwise` (e): the VLM judge's rubric score per image, normalised within each group (GRPO-style).
Two pixel-judge rows of an older table can be named too: `rubric_pointwise` (the pixel judge's rubric score) and
`plain_judge` (`HolisticShapesBackend`, one strict yes/no per image: an exact but sparse stand-in for a plain judge).
Each run is evaluated on the same held-out prompts (strict shapes-GenEval per category) every `--eval-every`
steps; besides the held-out score, every evaluation also scores the held-out samples with the BT model and the
rubric, so reward hacking shows as a proxy rising while the strict held-out score falls.

Writes bench/results/head_to_head.json (all curves and final figures), and with --doc the markdown table and the
SVG plot (docs/head_to_head.md, docs/images/head_to_head.svg, drawn with arr.plots). The runs are CPU-heavy: measured 5-11 min per
30-step run with 150 evaluation prompts (one process per seed, 3 in parallel, on a shared 2-core machine at load
~9), and 8 min to train the BT model; `--seeds 0` in three processes plus `--combine` is how the doc's numbers were
made.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

# The paper's five rewards, in its order; two pixel-judge variants of the older table can be asked for by name.
METHODS = (
    "vlm_rubric_pairwise",
    "vlm_plain_pairwise",
    "bt_reward_model",
    "rubric_pairwise",
    "vlm_rubric_pointwise",
)
EXTRA_METHODS = ("rubric_pointwise", "plain_judge")
ALL_METHODS = METHODS + EXTRA_METHODS
LABELS = {
    "vlm_rubric_pairwise": "(a) rubric pairwise, VLM judge",
    "vlm_plain_pairwise": "(b) plain pairwise, VLM judge",
    "bt_reward_model": "(c) Bradley-Terry RM",
    "rubric_pairwise": "(d) rubric pairwise, pixel oracle",
    "vlm_rubric_pointwise": "(e) rubric pointwise, VLM judge",
    "rubric_pointwise": "rubric pointwise, pixel oracle",
    "plain_judge": "plain judge, pixel stand-in",
}


def train_bt(
    n_pairs: int, n_eval: int, epochs: int, out_dir: Path, seed: int = 0
) -> tuple[Any, dict[str, Any]]:
    """Train the Bradley-Terry reward model on `n_pairs` t2i training-split pairs; held-out accuracy on `n_eval`."""
    import torch

    from arr.reward_models.bradley_terry import (
        BradleyTerryConfig,
        BradleyTerryTrainer,
        PairwiseRewardModel,
        PairwiseRewardModelConfig,
    )
    from arr.shapes.pairs import make_pairs

    t = time.perf_counter()
    train = make_pairs(n_pairs, seed=seed + 1, split="train", task="t2i", perturb=True)
    held = make_pairs(n_eval, seed=seed, split="heldout", task="t2i", perturb=True)
    torch.manual_seed(seed)
    model = PairwiseRewardModel(PairwiseRewardModelConfig())
    result = BradleyTerryTrainer(model, BradleyTerryConfig(epochs=epochs, seed=seed), train, held).train()
    model.save_pretrained(out_dir)
    info = {
        "train_pairs": n_pairs,
        "eval_pairs": n_eval,
        "epochs": epochs,
        "train_accuracy": result.train_accuracy,
        "heldout": result.eval,
        "history": result.history,
        "seconds": time.perf_counter() - t,
        "path": str(out_dir),
    }
    return model, info


def make_evaluator(bt_model):
    """Strict shapes-GenEval + the proxies (BT score, rubric score) on the same held-out samples."""
    from arr.shapes.training import geneval_scores

    def evaluate(records, images):
        out = geneval_scores(records, images)
        scores = bt_model.score([r.prompt for r in records], list(images))
        out["eval_bt_score"] = sum(scores) / max(len(scores), 1)
        return out

    return evaluate


def make_judge(method: str):
    """The rubric judge of `method`: the shipped shapes VLM (hf backend, in process) for the VLM rows, the holistic
    stand-in for `plain_judge`, else the exact pixel judge (the BT row's monitor uses it too)."""
    from arr import load_backend
    from arr.backends.pixel import PixelBackend
    from arr.judge import RubricJudge
    from arr.reward_models.plain_judge import HolisticShapesBackend

    if method.startswith("vlm_"):
        return RubricJudge(load_backend("hf", model="shapes-judge"))
    if method == "plain_judge":
        return RubricJudge(HolisticShapesBackend())
    return RubricJudge(PixelBackend())


def make_reward(method: str, rpo, bt_model, judge):
    """The training reward of `method`, asking `judge` (`make_judge`) where it needs a judge."""
    from arr.reward_models.plain_judge import PlainJudgeReward
    from arr.reward_models.rewards import RewardModelReward
    from arr.rewards import RubricPairwiseReward, RubricPointwiseReward

    if method == "bt_reward_model":
        return RewardModelReward(bt_model)
    if method.endswith("pointwise"):
        return RubricPointwiseReward(judge)
    if method in ("vlm_plain_pairwise", "plain_judge"):
        return PlainJudgeReward(judge, rpo.win_reward, rpo.lose_reward)
    return RubricPairwiseReward(judge, rpo.win_reward, rpo.lose_reward)


def run_one(method: str, seed: int, args: argparse.Namespace, bt_model, out_root: Path) -> dict[str, Any]:
    import torch

    from arr.rpo.build import build_data, build_policy
    from arr.rpo.recipe import parse_recipe
    from arr.rpo.trainer import RPOTrainer
    from arr.shapes.training import sample_monitor

    mode = "pointwise" if method.endswith("pointwise") or method == "bt_reward_model" else "pairwise"
    out_dir = out_root / f"{method}_seed{seed}"
    overrides = {
        "output_dir": str(out_dir),
        "seed": seed,
        "max_steps": args.steps,
        "eval_steps": args.eval_every,
        "eval_num_prompts": args.eval_prompts,
        "reward_mode": mode,
        "save_steps": 10**6,
        "sample_steps": 10**6,
        "report_to": "none",
        "align_every": 0,
        "monitor_steps": 1,  # one training sample per group scored by the pixel judge and the method's judge
    }
    argv = [args.recipe]
    for k, v in overrides.items():
        argv += [f"--{k}", str(v)]
    recipe = parse_recipe(argv)
    torch.manual_seed(seed)
    policy = build_policy(recipe.policy, recipe)
    train, evals, _ = build_data(recipe.data, recipe)
    rpo = recipe.rpo
    judge = make_judge(method)
    reward = make_reward(method, rpo, bt_model, judge)
    targets = [t.strip() for t in recipe.policy.lora_target_modules.split(",") if t.strip()]
    trainer = RPOTrainer(
        policy,
        reward,
        rpo,
        train_dataset=train,
        eval_dataset=evals,
        evaluator=make_evaluator(bt_model),
        monitor=sample_monitor(judge),
        lora_target_modules=targets or None,
        run_config=recipe.to_dict(),
    )
    t = time.perf_counter()
    trainer.train()
    rows = trainer.history
    kept = ("reward_mean", "train/pixel_score", "train/judge_score")
    train_curve = [{k: r[k] for k in ("step", *kept) if k in r} for r in rows if "reward_mean" in r]
    if method == "bt_reward_model":  # its monitor's judge is the pixel judge: judge_score repeats pixel_score
        for c in train_curve:
            c.pop("train/judge_score", None)
    eval_curve = [
        {k: v for k, v in r.items() if k == "step" or k.startswith("eval")} for r in rows if "eval_score" in r
    ]
    return {
        "method": method,
        "seed": seed,
        "reward_mode": mode,
        "seconds": time.perf_counter() - t,
        "train_curve": train_curve,
        "eval_curve": eval_curve,
        "before": eval_curve[0],
        "after": eval_curve[-1],
        "best": max(eval_curve, key=lambda e: e["eval_score"]),
    }


def _mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and its standard error over seeds (0 for one seed)."""
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return statistics.fmean(values), se


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per method: mean +- standard error over seeds of the final held-out figures and of the change from the base model."""
    out: dict[str, Any] = {}
    for method in ALL_METHODS:
        mine = [r for r in runs if r["method"] == method]
        if not mine:
            continue
        # Figures of both evaluations (later ones also carry the paired change, eval_change*, which has no "before").
        keys = sorted(k for k in mine[0]["after"] if k.startswith("eval") and k in mine[0]["before"])
        row: dict[str, Any] = {"seeds": [r["seed"] for r in mine]}
        for k in keys:
            row[k] = _mean_se([r["after"][k] for r in mine])
            row[f"delta/{k}"] = _mean_se([r["after"][k] - r["before"][k] for r in mine])
        out[method] = row
    return out


# Short names for the per-method panels.
SHORT = {m: LABELS[m].split(" ")[0] if LABELS[m].startswith("(") else m for m in ALL_METHODS}


def _mean_curve(runs: list[dict[str, Any]], method: str, key: str) -> list[tuple[int, float]]:
    """A method's curve of `key`, the mean over seeds at each step; training-sample figures (`train/...`) as 10-step
    running means (8 prompts per step make single steps noisy)."""
    from arr.rpo.report import running_mean

    by: dict[int, list[float]] = {}
    for r in runs:
        if r["method"] != method:
            continue
        if key.startswith("train/"):
            points = [(c["step"], c[key]) for c in r["train_curve"] if key in c]
            for step, value in running_mean(points, 10):
                by.setdefault(step, []).append(value)
        else:
            for c in r["eval_curve"]:
                if key in c:
                    by.setdefault(c["step"], []).append(c[key])
    return sorted((s, statistics.fmean(v)) for s, v in by.items())


def svg_curves(runs: list[dict[str, Any]], path: Path) -> None:
    """Means over seeds against the step. Top row, comparable across methods (one scale per panel): the held-out
        strict shapes-GenEval score, the pixel judge's rubric score and the BT model's score of the same held-out
        samples (the proxies a policy can hack). Bottom row, one panel per method: its training samples (one per group) as
    the pixel judge and the method's own judge score them; a hacked judge rises above the pixel judge's curve."""
    from arr.plots import COLORS, Panel, panel_figure, save_figure

    methods = [m for m in ALL_METHODS if any(r["method"] == m for r in runs)]
    colors = {LABELS[m]: COLORS[i % len(COLORS)] for i, m in enumerate(ALL_METHODS)}
    judges = {"pixel judge": "#222222", "training judge": "#9a9a9a"}  # the bottom row's two curves
    colors.update(judges)
    held_out = [
        ("eval_score", "Held-out strict shapes-GenEval", "fraction of prompts correct"),
        ("eval_rubric_score", "Held-out rubric score", "pixel-judge rubric score (0-1)"),
        ("eval_bt_score", "Held-out BT reward-model score", "BT score"),
    ]
    panels: list[Panel | None] = [
        Panel(title, {LABELS[m]: _mean_curve(runs, m, key) for m in methods}, unit)
        for key, title, unit in held_out
    ]
    cols = max(len(held_out), len(methods))
    panels += [None] * (cols - len(held_out))
    panels += [
        Panel(
            f"Training samples {SHORT[m]}",
            {
                name: curve
                for name, key in (
                    ("pixel judge", "train/pixel_score"),
                    ("training judge", "train/judge_score"),
                )
                if (curve := _mean_curve(runs, m, key))
            },
            "rubric score of training samples",
        )
        for m in methods
    ]
    fig = panel_figure(
        panels,
        cols=cols,
        panel_size=(3.6, 2.7),
        colors=colors,
        legend=[*(LABELS[m] for m in methods), *judges],
    )
    save_figure(fig, path)


def _rel(path: str) -> str:
    import os

    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def markdown(result: dict[str, Any]) -> str:
    from arr.shapes.prompts import CATEGORIES

    summary, cfg, bt = result["summary"], result["config"], result["bt"]
    lines = [
        f"Budget: {cfg['steps']} steps, seeds {cfg['seeds']}, {cfg['eval_prompts']} held-out prompts, recipe "
        f"`{_rel(cfg['recipe'])}`. Mean ± standard error over seeds of the final held-out figures; Δ is the change from the base "
        f"model on the same prompts and seeds.",
        "",
        "| reward | overall | Δ overall | " + " | ".join(CATEGORIES) + " | rubric score | BT score |",
        "|---|---|---|" + "---|" * len(CATEGORIES) + "---|---|",
    ]
    for m in ALL_METHODS:
        if m not in summary:
            continue
        s = summary[m]
        cells = [f"{s[f'eval/{c}'][0]:.3f}" if f"eval/{c}" in s else "-" for c in CATEGORIES]
        lines.append(
            f"| {LABELS[m]} | {s['eval_score'][0]:.3f} ± {s['eval_score'][1]:.3f} | "
            f"{s['delta/eval_score'][0]:+.3f} ± {s['delta/eval_score'][1]:.3f} | "
            + " | ".join(cells)
            + f" | {s['eval_rubric_score'][0]:.3f} | {s['eval_bt_score'][0]:+.2f} |"
        )
    base = [r["before"] for r in result["runs"] if r["method"] == METHODS[0]] or [
        r["before"] for r in result["runs"]
    ]
    if base:
        cells = [
            f"{statistics.fmean(b[f'eval/{c}'] for b in base):.3f}"
            if all(f"eval/{c}" in b for b in base)
            else "-"
            for c in CATEGORIES
        ]
        lines.append(
            f"| base model | {statistics.fmean(b['eval_score'] for b in base):.3f} | | "
            + " | ".join(cells)
            + f" | {statistics.fmean(b['eval_rubric_score'] for b in base):.3f} | "
            f"{statistics.fmean(b['eval_bt_score'] for b in base):+.2f} |"
        )
    if "heldout" not in bt:
        return "\n".join(lines) + "\n"
    lines += [
        "",
        f"BT reward model: {bt['train_pairs']} training pairs, {bt.get('epochs', bt.get('config', {}).get('epochs', '?'))} epochs; held-out preference accuracy "
        f"{bt['heldout']['accuracy']:.3f} on {bt['eval_pairs']} held-out pairs (train accuracy {bt['train_accuracy']:.3f}).",
    ]
    return "\n".join(lines) + "\n"


def write_doc(result: dict[str, Any], doc: Path = Path("docs/head_to_head.md")) -> None:
    """Put the table between the doc's table markers and redraw docs/images/head_to_head.svg."""
    begin, end = "<!-- head_to_head table begin -->", "<!-- head_to_head table end -->"
    text = doc.read_text(encoding="utf-8") if doc.is_file() else f"# Head-to-head\n\n{begin}\n{end}\n"
    if begin not in text or end not in text:
        text += f"\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(f"{head}{begin}\n{markdown(result)}{end}{tail}", encoding="utf-8")
    svg_curves(result["runs"], doc.parent / "images" / "head_to_head.svg")


def main() -> None:
    from arr.cli.train import demo_recipe_path

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--eval-prompts", type=int, default=300)
    p.add_argument("--eval-every", type=int, default=20)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--recipe", default=str(demo_recipe_path()))
    p.add_argument("--bt-pairs", type=int, default=100)
    p.add_argument("--bt-eval-pairs", type=int, default=200)
    p.add_argument("--bt-epochs", type=int, default=80)
    p.add_argument("--bt-model", help="use this trained reward model folder instead of training one")
    p.add_argument("--out", default="bench/results/head_to_head.json")
    p.add_argument("--runs-dir", default="bench/results/head_to_head", help="training runs and the BT model")
    p.add_argument(
        "--doc", action="store_true", help="also write the table into docs/head_to_head.md and the SVG plot"
    )
    p.add_argument(
        "--combine", help="comma-separated result JSONs (e.g. seeds run in parallel) to merge into --out"
    )
    args = p.parse_args()
    if args.combine:
        parts = [json.loads(Path(f).read_text()) for f in args.combine.split(",")]
        result = parts[0]
        result["runs"] = [r for part in parts for r in part["runs"]]
        result["config"]["seeds"] = sorted({r["seed"] for r in result["runs"]})
        result["summary"] = summarise(result["runs"])
        Path(args.out).write_text(json.dumps(result, indent=1, default=float))
        if args.doc:
            write_doc(result)
        print(json.dumps(result["summary"], indent=1, default=float))
        return
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in ALL_METHODS]
    if bad:
        p.error(f"unknown methods {bad}; choose from {list(ALL_METHODS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    out_root = Path(args.runs_dir)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from arr.reward_models.bradley_terry import PairwiseRewardModel

    if args.bt_model:
        bt_model = PairwiseRewardModel.from_pretrained(args.bt_model)
        info_path = Path(args.bt_model) / "training.json"
        bt_info = json.loads(info_path.read_text()) if info_path.is_file() else {"path": args.bt_model}
    else:
        bt_model, bt_info = train_bt(args.bt_pairs, args.bt_eval_pairs, args.bt_epochs, out_root / "bt_model")
        (out_root / "bt_model" / "training.json").write_text(json.dumps(bt_info, indent=1))
    result: dict[str, Any] = {
        "config": {
            "steps": args.steps,
            "seeds": seeds,
            "eval_prompts": args.eval_prompts,
            "eval_every": args.eval_every,
            "recipe": args.recipe,
            "methods": methods,
        },
        "bt": {k: v for k, v in bt_info.items() if k != "history"},
        "runs": [],
    }
    for seed in seeds:
        for method in methods:
            run = run_one(method, seed, args, bt_model, out_root)
            result["runs"].append(run)
            result["summary"] = summarise(result["runs"])
            out.write_text(json.dumps(result, indent=1, default=float))
            print(
                f"{method} seed {seed}: {run['before']['eval_score']:.3f} -> {run['after']['eval_score']:.3f} "
                f"({run['seconds']:.0f} s)",
                flush=True,
            )
    if args.doc:
        write_doc(result)
    print(json.dumps(result["summary"], indent=1, default=float))
    if any(not math.isfinite(r["after"]["eval_score"]) for r in result["runs"]):
        raise SystemExit("a run ended with a non-finite held-out score")


if __name__ == "__main__":
    main()
