"""Tighter held-out (or training-prompt) scores of RPO checkpoints: several seeds per prompt, base model alongside.

    OMP_WAIT_POLICY=PASSIVE python bench/rpo_checkpoint_eval.py --split heldout --prompts 300 --seeds 4 \\
        RUN/checkpoints/step_100/lora.safetensors RUN/checkpoints/step_200/lora.safetensors

A training-time evaluation draws one sample per prompt, so its score carries binomial noise of about +-0.02
(600 prompts) and a before/after change about +-0.05 at 95%. Averaging `--seeds` samples per prompt narrows that,
and scoring `--split train` beside `--split heldout` separates "RPO did not learn" from "what it learnt does not
transfer to new compositions". Strict shapes-GenEval, ODE sampling as in the trainer's evaluation. Appends one
JSON line per model (base first) to `--out`.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    from safetensors.torch import load_file

    from arr.policies.shapes import ShapesPolicy
    from arr.shapes.detect import analyze
    from arr.shapes.rubrics import geneval_correct
    from arr.shapes.training import balanced_t2i_records

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("loras", nargs="*", help="lora.safetensors files of checkpoints (LoRA r/alpha as given)")
    p.add_argument("--model", default="t2i", help="base shapes model (the one the checkpoints adapt)")
    p.add_argument("--split", choices=("heldout", "train"), default="heldout")
    p.add_argument("--prompts", type=int, default=300)
    p.add_argument("--seeds", type=int, default=4, help="samples per prompt")
    p.add_argument("--steps", type=int, default=10, help="ODE sampling steps (the demo evaluates with 10)")
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--lora-rank", "--lora_rank", type=int, default=16)
    p.add_argument("--lora-alpha", "--lora_alpha", type=int, default=32)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default="bench/results/rpo_checkpoint_eval.jsonl")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    policy = ShapesPolicy.from_pretrained(a.model, num_steps=a.steps, guidance_scale=a.guidance, device="cpu")
    policy.add_lora(a.lora_rank, a.lora_alpha)
    # A seed distinct from the trainer's eval set (EVAL_SEED 1234), so this is a second, independent prompt set.
    records = balanced_t2i_records(a.prompts, a.split, seed=4321)

    def score() -> dict[str, float]:
        hits = np.zeros((len(records), a.seeds))
        for c in range(0, len(records), 50):
            chunk = records[c : c + 50]
            cond = policy.encode([r.prompt for r in chunk])
            for s in range(a.seeds):
                gens = [torch.Generator("cpu").manual_seed(7919 * s + c + i) for i in range(len(chunk))]
                with torch.no_grad():
                    traj = policy.sample(
                        cond,
                        group_size=1,
                        num_steps=a.steps,
                        eta=0.0,
                        guidance_scale=a.guidance,
                        generators=gens,
                    )
                for i, (r, im) in enumerate(zip(chunk, policy.decode(traj.final), strict=True)):
                    hits[c + i, s] = float(geneval_correct(r.extra["spec"], analyze(im)))
        per_cat: dict[str, list[float]] = defaultdict(list)
        for r, h in zip(records, hits, strict=True):
            per_cat[r.category].append(float(h.mean()))
        cats = {f"eval/{k}": float(np.mean(v)) for k, v in sorted(per_cat.items())}
        return {"eval_score": float(np.mean(list(cats.values()))), **cats}

    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with policy.reference():
        rows = [("base", score())]
    for path in a.loras:
        policy.load_lora_state_dict(load_file(path))
        rows.append((path, score()))
    with open(out, "a", encoding="utf-8") as f:
        for name, result in rows:
            row = {"model": name, "split": a.split, "prompts": a.prompts, "seeds": a.seeds, **result}
            f.write(json.dumps(row) + "\n")
            print(json.dumps(row))  # noqa: T201


if __name__ == "__main__":
    main()
