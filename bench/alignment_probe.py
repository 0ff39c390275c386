"""AlignmentProbe on a shapes RPO run: its share of training time, and how alignment moves with the eval score.

    OMP_WAIT_POLICY=PASSIVE python bench/alignment_probe.py --model t2i --max-steps 20 --align-every 20 \
        --out bench/results/alignment_probe.json

Runs the `arr demo` recipe (pixel judge) with recipe overrides (`--set key=value`, repeatable) and an
AlignmentProbe (default settings unless given). Overhead = probe seconds / (wall seconds - probe seconds): the
time the probe adds to the same run without it. Writes a JSON with the settings, the timings, the align/* rows
and the correlation of each align/* metric with eval_score over steps that log both.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from arr.cli.train import demo_recipe_path
from arr.diagnostics.curves import correlations
from arr.diagnostics.probe import AlignmentProbe
from arr.rpo.build import build_trainer
from arr.rpo.recipe import parse_recipe


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="t2i", help="shipped shapes model name or a save_pretrained folder")
    p.add_argument("--max-steps", "--max_steps", type=int, default=20)
    p.add_argument("--eval-steps", "--eval_steps", type=int, default=20)
    p.add_argument("--align-every", "--align_every", type=int, default=None, help="default: AlignmentProbe's")
    p.add_argument(
        "--num-prompts", "--num_prompts", type=int, default=None, help="probe size; default: AlignmentProbe's"
    )
    p.add_argument("--metrics", default="mutual_knn,cknna")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override")
    p.add_argument(
        "--output-dir", "--output_dir", default="bench/results/alignment_probe", help="the run folder"
    )
    p.add_argument("--out", default="bench/results/alignment_probe.json")
    args = p.parse_args()

    overrides = ["--output_dir", args.output_dir, "--model_name_or_path", args.model, "--report_to", "none"]
    overrides += ["--max_steps", str(args.max_steps), "--eval_steps", str(args.eval_steps)]
    overrides += ["--save_steps", str(10**6), "--sample_steps", str(10**6)]
    for kv in args.set:
        key, _, value = kv.partition("=")
        overrides += [f"--{key}", value]
    recipe = parse_recipe([str(demo_recipe_path()), *overrides])
    kw: dict = {"metrics": args.metrics.split(",")}
    if args.align_every is not None:
        kw["align_every"] = args.align_every
    if args.num_prompts is not None:
        kw["num_prompts"] = args.num_prompts
    probe = AlignmentProbe(**kw)
    trainer = build_trainer(recipe, callbacks=[probe])
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    rows = trainer.history
    aligned = [r for r in rows if "align_seconds" in r]
    result = {
        "model": args.model,
        "overrides": overrides,
        "probe": {
            "num_prompts": probe.num_prompts,
            "align_every": probe.align_every,
            "metrics": probe.metrics,
            "topk": probe.topk,
            "sigma": probe.sigma,
        },
        "wall_seconds": wall,
        "probe_seconds": probe.seconds,
        "probe_calls": len(aligned),
        "overhead": probe.seconds / max(wall - probe.seconds, 1e-9),
        "phase_seconds": trainer.phase_seconds,
        "mean_step_seconds": sum(r.get("step_seconds", 0.0) for r in rows) / max(args.max_steps, 1),
        "correlation_with_eval_score": correlations(rows),
        "rows": [
            {k: v for k, v in r.items() if k == "step" or k == "eval_score" or k.startswith("align")}
            for r in aligned
        ],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=2))


if __name__ == "__main__":
    main()
