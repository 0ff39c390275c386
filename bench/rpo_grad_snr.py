"""How much signal is in one RPO step's gradient? Batch gradients at the base model, compared with each other.

    OMP_WAIT_POLICY=PASSIVE python bench/rpo_grad_snr.py --batches 16 --name own_noise -- --shared_noise false

Draws `--batches` independent rollouts of the recipe (plus the overrides after `--`), computes each one's gradient
without stepping (`trainer.backward_batch`: the policy gradient, or the forward objective's flow-matching gradient
with `--objective forward`), and reports the mean pairwise cosine between them and the signal-to-noise ratio
|E g|^2 / E|g - E g|^2 of one batch's gradient (the pairwise dot products estimate |E g|^2 without bias). A policy
gradient whose batches barely agree (cosine ~0.01) needs ~1/SNR batches before its direction is reliable; with
Adam, a larger learning rate then only moves the policy faster along noise. This is how the demo recipe's
sampling and advantage settings were chosen; the measured figures are in bench/RESULTS.md. Appends one JSON line
per run to `--out`.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch


def main() -> None:
    from arr.cli.train import demo_recipe_path
    from arr.rpo.build import build_trainer
    from arr.rpo.recipe import parse_recipe

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", required=True, help="label of this run in the output")
    p.add_argument("--recipe", default=str(demo_recipe_path()))
    p.add_argument(
        "--batches", type=int, default=16, help="independent rollouts (steps 0..N-1 of the recipe)"
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    p.add_argument("--out", default="bench/results/rpo_grad_snr.jsonl")
    p.add_argument("--workdir", default="bench/results/rpo_grad_snr", help="the trainer's run folder")
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="-- then recipe overrides")
    a = p.parse_args()
    if a.batches < 2:
        p.error("--batches must be >= 2 (the signal is estimated from pairs of batches)")
    if a.threads:
        torch.set_num_threads(a.threads)
    overrides = [x for x in a.overrides if x != "--"]
    argv = [a.recipe, "--output_dir", a.workdir, "--report_to", "none", "--align_every", "0"]
    trainer = build_trainer(parse_recipe(argv + overrides))

    grads, rewards, ties, t0 = [], [], [], time.perf_counter()
    for k in range(a.batches):
        rollout, batch_rewards, info, _ = trainer.sample_and_judge(k)
        if "tie_rate" in info:
            ties.append(info["tie_rate"])
        adv, mask = trainer.compute_advantages(batch_rewards, rollout.group_size)
        rewards += [r for r in batch_rewards if r is not None]
        members = torch.nonzero(mask).flatten()
        for param in trainer.params:
            param.grad = None
        trainer.step = k
        trainer.backward_batch(rollout, adv, members, 1.0 / len(members))
        grads.append(
            torch.cat(
                [(q.grad if q.grad is not None else torch.zeros_like(q)).flatten() for q in trainer.params]
            ).double()
        )
    seconds = (time.perf_counter() - t0) / a.batches

    g = torch.stack(grads)
    off = ~torch.eye(a.batches, dtype=torch.bool)
    unit = g / g.norm(dim=1, keepdim=True).clamp_min(1e-30)
    cos = (unit @ unit.T)[off]
    signal = (g @ g.T)[off].mean()  # unbiased estimate of |E g|^2
    noise = ((g - g.mean(0)) ** 2).sum(1).mean() * a.batches / (a.batches - 1)
    result = {
        "name": a.name,
        "overrides": overrides,
        "batches": a.batches,
        "samples_per_batch": len(rollout.images),
        "seconds_per_batch": seconds,
        "mean_cosine": float(cos.mean()),
        "mean_cosine_se": float(cos.std() / math.sqrt(len(cos))),
        "snr_per_batch": float(signal / noise),
        "batches_for_snr_1": float(noise / signal) if signal > 0 else None,
        "reward_mean": sum(rewards) / max(len(rewards), 1),
        "tie_rate": sum(ties) / len(ties) if ties else None,  # pairwise: the share of judged pairs that tied
        "torch_threads": torch.get_num_threads(),
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a", encoding="utf-8") as f:
        f.write(json.dumps(result) + "\n")
    print(json.dumps(result))  # noqa: T201


if __name__ == "__main__":
    main()
