"""Where an RPO step's time goes on the shapes model: sampling, judging, log-prob recompute, backward, optimizer.

    OMP_WAIT_POLICY=PASSIVE python bench/rpo_step.py --steps 5 --out bench/results/rpo_step.json

Builds the trainer from the demo recipe (arr/recipes/shapes_t2i_rpo.yaml, pixel judge, no evaluation) and runs
`--warmup` + `--steps` calls of `RPOTrainer.training_step()`. Each phase is timed from outside by wrapping the
callables the trainer uses, without changing it:
- sampling: `policy.encode`, `policy.sample`, `policy.decode` (the rollout's model work);
- judging: `trainer.judge` (the reward call: pixel judge, rubric scoring);
- log-prob recompute: `policy.transition` under gradient (the policy) and under `policy.reference()` (the KL
  reference, the same network with LoRA disabled);
- backward: `torch.Tensor.backward`; optimizer: gradient clipping, `optimizer.step`, `optimizer.zero_grad`.
Overhead = step wall time - the sum of the phases: data selection, advantages, loss arithmetic between model calls,
`.item()` syncs, logging. The target is overhead <= 10% of the step. A stricter figure counts only the network
calls as model compute (transformer forwards, timed by hooks; the text encoder; the decoder; backward; optimizer),
so the SDE arithmetic and CFG batching inside sampling and the log-prob recompute count as outside
(`outside_model_fraction_strict`, of the whole step; the judge counts as neither). The trainer's own `sample_seconds`,
`judge_wait_seconds` and `optimize_seconds` (written to metrics.jsonl) are reported beside, as a cross-check.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

PHASES = ("sampling", "judging", "logprob_policy", "logprob_reference", "backward", "optimizer")


class PhaseTimer:
    """Accumulates wall seconds per phase; nested calls count once (the outermost timed phase wins)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._depth = 0
        self.in_reference = False

    def wrap(self, phase: str | Callable[[], str], fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self._depth:
                return fn(*args, **kwargs)
            name = phase() if callable(phase) else phase
            self._depth += 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - t0
                self._depth -= 1

        return timed

    def track(self, key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Time every call of `fn` under `key` as well, nested or not."""

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[key] += time.perf_counter() - t0

        return timed


def instrument(trainer: Any, timer: PhaseTimer) -> Callable[[], None]:
    """Wrap the trainer's model calls with `timer`; returns a function that undoes the global patches."""
    policy = trainer.policy
    policy.sample = timer.wrap("sampling", policy.sample)
    for name in ("encode", "decode"):
        setattr(policy, name, timer.wrap("sampling", timer.track("encode_decode", getattr(policy, name))))
    trainer.judge = timer.wrap("judging", trainer.judge)
    policy.transition = timer.wrap(
        lambda: "logprob_reference" if timer.in_reference else "logprob_policy", policy.transition
    )
    reference = policy.reference

    @contextlib.contextmanager
    def flagged_reference(*args: Any, **kwargs: Any):
        with reference(*args, **kwargs):
            timer.in_reference = True
            try:
                yield
            finally:
                timer.in_reference = False

    policy.reference = flagged_reference
    # The network itself (every transformer call, in sampling and in both log-prob recomputes), timed by hooks so
    # that the SDE arithmetic, CFG batching and Python around it count as outside the model.
    starts: list[float] = []

    def pre(*_: Any) -> None:
        starts.append(time.perf_counter())

    def post(*_: Any) -> None:
        timer.seconds["network_forward"] += time.perf_counter() - starts.pop()

    policy.transformer.register_forward_pre_hook(pre)
    policy.transformer.register_forward_hook(post)
    opt = trainer.optimizer
    opt.step = timer.wrap("optimizer", opt.step)
    opt.zero_grad = timer.wrap("optimizer", opt.zero_grad)
    backward, clip = torch.Tensor.backward, torch.nn.utils.clip_grad_norm_
    torch.Tensor.backward = timer.wrap("backward", backward)
    torch.nn.utils.clip_grad_norm_ = timer.wrap("optimizer", clip)

    def undo() -> None:
        torch.Tensor.backward = backward
        torch.nn.utils.clip_grad_norm_ = clip

    return undo


def main() -> None:
    from arr.cli.train import demo_recipe_path
    from arr.rpo.build import build_trainer
    from arr.rpo.recipe import parse_recipe

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default=str(demo_recipe_path()))
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--out", default="bench/results/rpo_step.json")
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="-- then recipe overrides")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    overrides = [x for x in a.overrides if x != "--"]
    workdir = tempfile.mkdtemp(prefix="arr_rpo_step_")
    argv = [a.recipe, "--output_dir", workdir, "--report_to", "none", "--eval_steps", "0"]
    argv += ["--save_steps", "100000", "--sample_steps", "100000", "--align_every", "0"]
    recipe = parse_recipe(argv + overrides)
    recipe.rpo.max_steps = a.warmup + a.steps
    trainer = build_trainer(recipe)
    trainer.callbacks = []

    for _ in range(a.warmup):
        trainer.training_step()
        trainer.step += 1
    timer = PhaseTimer()
    undo = instrument(trainer, timer)
    rows, walls = [], []
    try:
        for _ in range(a.steps):
            t0 = time.perf_counter()
            rows.append(trainer.training_step())
            walls.append(time.perf_counter() - t0)
            trainer.step += 1
    finally:
        undo()
    total = sum(walls)
    phases = {k: timer.seconds.get(k, 0.0) for k in PHASES}
    overhead = total - sum(phases.values())
    # Strict view: only network forwards (transformer, text encoder, decoder), backward and the optimizer count as
    # model compute; the judge is reported apart.
    network = timer.seconds.get("network_forward", 0.0)
    encode_decode = timer.seconds.get("encode_decode", 0.0)
    model = network + encode_decode + phases["backward"] + phases["optimizer"]
    outside = total - phases["judging"] - model
    result = {
        "benchmark": "rpo_step",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.node()} torch {torch.__version__}, {torch.get_num_threads()} thread(s)",
        "recipe": a.recipe,
        "overrides": overrides,
        "steps": a.steps,
        "step_seconds_mean": total / a.steps,
        "phase_seconds_per_step": {k: v / a.steps for k, v in phases.items()},
        "phase_fraction": {k: v / total for k, v in phases.items()},
        "overhead_seconds_per_step": overhead / a.steps,
        "overhead_fraction": overhead / total,
        "model_compute_fraction": sum(v for k, v in phases.items() if k != "judging") / total,
        "network_forward_seconds_per_step": network / a.steps,
        "encode_decode_seconds_per_step": encode_decode / a.steps,
        "outside_model_fraction_strict": outside / total,
        "target_overhead_fraction": 0.10,
        "met": overhead / total <= 0.10,
        "trainer_logged_per_step": {
            k: sum(r[k] for r in rows) / len(rows)
            for k in ("step_seconds", "sample_seconds", "judge_wait_seconds", "optimize_seconds")
        },
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))  # noqa: T201


if __name__ == "__main__":
    main()
