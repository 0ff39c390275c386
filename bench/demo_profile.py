"""Where `arr demo`'s CPU time goes: one training step and one held-out evaluation, per phase, as the demo runs them.

    OMP_WAIT_POLICY=PASSIVE python bench/demo_profile.py --steps 3 --out bench/results/demo_profile.json
    OMP_WAIT_POLICY=PASSIVE python bench/demo_profile.py --steps 3 --out bench/results/demo_profile_beta.json -- --beta 0.01

Starts `--ranks` processes (default 2, one thread each, over gloo: what `arr demo` runs on a 2-core machine), each
building the trainer from the demo recipe (`arr/recipes/shapes_t2i_rpo.yaml`, recipe overrides after `--`).
Each rank runs `--warmup` training steps, then `--steps` timed ones, then one evaluation of the recipe's held-out
prompts. Phases are timed from outside, by wrapping what the trainer calls (the trainer is unchanged), in CPU
seconds of the rank's process (`time.process_time`), outermost phase first:

- sampling forward: `policy.sample` (the rollout's ODE steps); text encoding and decoding apart;
- judging: `trainer.judge` (the pixel judge: every pair of a group, both orders);
- fixed targets: the objective's `prepare` (the forward objective's velocities of the sampling policy at the noised
  samples, and of the reference, LoRA off, for the KL term);
- loss forward: the policy's velocity with gradients, and the loss arithmetic; backward: `Tensor.backward`;
- optimizer: gradient clipping, `optimizer.step`, `zero_grad`;
- inter-rank traffic: `torch.distributed` collectives and accelerate's `gather_object` (wall seconds too, which
  include waiting for the slower rank);
- evaluation sampling (encode, ODE, decode) and evaluation judging (the evaluator; rank 0 scores every prompt).

The sum over ranks is the CPU cost; "other" is the step's CPU time outside every phase. The main rank also records
a `torch.profiler` operator table of one step (its top operators by self CPU time).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

STEP_PHASES = (
    "text encoding",
    "sampling forward",
    "decoding",
    "judging",
    "fixed targets: sampling policy",
    "fixed targets: reference (KL)",
    "loss forward",
    "backward",
    "optimizer",
    "inter-rank traffic",
)
EVAL_PHASES = tuple(
    f"evaluation: {k}"
    for k in ("text encoding", "sampling forward", "decoding", "judging", "inter-rank traffic")
)


class CPUTimer:
    """CPU seconds (and wall seconds) per phase; a call inside a timed call counts for the outer phase only."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = defaultdict(float)
        self.wall: dict[str, float] = defaultdict(float)
        self.depth = 0
        self.prefix = ""

    def wrap(self, phase: str | Callable[[], str], fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self.depth:
                return fn(*args, **kwargs)
            name = self.prefix + (phase() if callable(phase) else phase)
            self.depth += 1
            c0, w0 = time.process_time(), time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.cpu[name] += time.process_time() - c0
                self.wall[name] += time.perf_counter() - w0
                self.depth -= 1

        return timed


def instrument(trainer: Any, timer: CPUTimer) -> None:
    """Wrap the calls a demo step and an evaluation make; patches stay for the life of this process."""
    import accelerate.utils
    import torch.distributed as dist

    policy, objective = trainer.policy, trainer.objective
    state = {"reference": False, "targets": False}
    policy.sample = timer.wrap("sampling forward", policy.sample)
    policy.encode = timer.wrap("text encoding", policy.encode)
    policy.decode = timer.wrap("decoding", policy.decode)
    trainer.judge = timer.wrap("judging", trainer.judge)
    reference = policy.reference

    @contextlib.contextmanager
    def flagged_reference(*args: Any, **kwargs: Any):
        with reference(*args, **kwargs):
            state["reference"] = True
            try:
                yield
            finally:
                state["reference"] = False

    policy.reference = flagged_reference
    velocity = policy.velocity

    def phase_of_velocity() -> str:
        if torch.is_grad_enabled():
            return "loss forward"
        if state["reference"]:
            return "fixed targets: reference (KL)"
        return "fixed targets: sampling policy"

    policy.velocity = timer.wrap(phase_of_velocity, velocity)
    loss_terms = objective.loss_terms

    def timed_terms(*args: Any, **kwargs: Any):
        it = loss_terms(*args, **kwargs)
        while True:
            try:
                terms = timer.wrap("loss forward", next)(it)
            except StopIteration:
                return
            yield terms

    objective.loss_terms = timed_terms
    opt = trainer.optimizer
    opt.step = timer.wrap("optimizer", opt.step)
    opt.zero_grad = timer.wrap("optimizer", opt.zero_grad)
    torch.Tensor.backward = timer.wrap("backward", torch.Tensor.backward)
    torch.nn.utils.clip_grad_norm_ = timer.wrap("optimizer", torch.nn.utils.clip_grad_norm_)
    dist.all_reduce = timer.wrap("inter-rank traffic", dist.all_reduce)
    accelerate.utils.gather_object = timer.wrap("inter-rank traffic", accelerate.utils.gather_object)
    trainer.evaluator = timer.wrap("judging", trainer.evaluator)


def operator_table(trainer: Any, rows: int) -> list[dict[str, Any]]:
    """The top operators of one training step by self CPU time (torch.profiler; this rank's)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.training_step()
    trainer.step += 1
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [
        {
            "op": e.key,
            "self_cpu_seconds": e.self_cpu_time_total / 1e6,
            "share": e.self_cpu_time_total / total,
            "calls": e.count,
        }
        for e in events[:rows]
    ]


def run_rank(args: argparse.Namespace, overrides: list[str]) -> None:
    from arr.cli.train import demo_recipe_path
    from arr.rpo.build import build_trainer
    from arr.rpo.recipe import parse_recipe

    torch.set_num_threads(1)
    workdir = tempfile.mkdtemp(prefix="arr_demo_profile_")
    argv = [str(demo_recipe_path()), "--output_dir", workdir, "--report_to", "none", "--eval_steps", "0"]
    argv += ["--save_steps", "100000", "--sample_steps", "100000", "--align_every", "0", *overrides]
    recipe = parse_recipe(argv)
    trainer = build_trainer(recipe)
    trainer.callbacks = []
    rank = trainer.accelerator.process_index
    for _ in range(args.warmup):
        trainer.training_step()
        trainer.step += 1
    # Every rank runs the profiled step (its collectives need the others); rank 0's table is reported.
    ops = operator_table(trainer, args.op_rows) if args.op_rows else []
    timer = CPUTimer()
    instrument(trainer, timer)
    step_cpu = []
    for _ in range(args.steps):
        c0 = time.process_time()
        trainer.training_step()
        step_cpu.append(time.process_time() - c0)
        trainer.step += 1
    step_phases = {k: timer.cpu.get(k, 0.0) / args.steps for k in STEP_PHASES}
    collective_wall = timer.wall.get("inter-rank traffic", 0.0) / args.steps
    timer.cpu.clear()
    timer.wall.clear()
    timer.prefix = "evaluation: "
    c0, w0 = time.process_time(), time.perf_counter()
    metrics = trainer.evaluate()
    eval_cpu, eval_wall = time.process_time() - c0, time.perf_counter() - w0
    eval_phases = {k: timer.cpu.get(k, 0.0) for k in EVAL_PHASES}
    result = {
        "rank": rank,
        "step_cpu_seconds": sum(step_cpu) / len(step_cpu),
        "step_phases_cpu_seconds": step_phases,
        "step_collective_wall_seconds": collective_wall,
        "eval_cpu_seconds": eval_cpu,
        "eval_wall_seconds": eval_wall,
        "eval_phases_cpu_seconds": eval_phases,
        "eval_prompts": len(trainer.eval_records[: trainer.args.eval_num_prompts]),
        "eval_score": metrics.get("eval_score"),
        "operators": ops,
    }
    Path(args.rank_out).write_text(json.dumps(result))


def launch(args: argparse.Namespace, overrides: list[str]) -> list[dict[str, Any]]:
    """This script once per rank (gloo over localhost, one OpenMP thread each); their results in rank order."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = Path(tempfile.mkdtemp(prefix="arr_demo_profile_ranks_"))
    procs = []
    for rank in range(args.ranks):
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
            "WORLD_SIZE": str(args.ranks),
            "LOCAL_WORLD_SIZE": str(args.ranks),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        cmd = [sys.executable, __file__, "--rank-out", str(tmp / f"rank{rank}.json")]
        cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup), "--op-rows", str(args.op_rows)]
        procs.append(subprocess.Popen([*cmd, "--", *overrides], env=env))
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"a rank failed (exit codes {codes})")
    return [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(args.ranks)]


def summarise(ranks: list[dict[str, Any]]) -> dict[str, Any]:
    """CPU seconds per phase summed over ranks, with shares of the step (and of the evaluation)."""
    step = sum(r["step_cpu_seconds"] for r in ranks)
    phases = {k: sum(r["step_phases_cpu_seconds"][k] for r in ranks) for k in STEP_PHASES}
    phases["other (outside every phase)"] = step - sum(phases.values())
    evaluation = sum(r["eval_cpu_seconds"] for r in ranks)
    eval_phases = {k: sum(r["eval_phases_cpu_seconds"][k] for r in ranks) for k in EVAL_PHASES}
    eval_phases["evaluation: other"] = evaluation - sum(eval_phases.values())
    return {
        "step_cpu_seconds": step,
        "step_phases": {k: {"cpu_seconds": v, "share": v / step} for k, v in phases.items()},
        "step_collective_wall_seconds_per_rank": [r["step_collective_wall_seconds"] for r in ranks],
        "eval_cpu_seconds": evaluation,
        "eval_wall_seconds": max(r["eval_wall_seconds"] for r in ranks),
        "eval_prompts": ranks[0]["eval_prompts"],
        "eval_phases": {k: {"cpu_seconds": v, "share": v / evaluation} for k, v in eval_phases.items()},
        "eval_score": ranks[0]["eval_score"],
        "operators_one_step_rank0": ranks[0]["operators"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--op-rows", type=int, default=12, help="operators listed from torch.profiler (0: none)")
    p.add_argument("--out", default="bench/results/demo_profile.json")
    p.add_argument("--rank-out", help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="-- then recipe overrides")
    args = p.parse_args()
    overrides = [x for x in args.overrides if x != "--"]
    if args.rank_out:
        run_rank(args, overrides)
        return
    t0 = time.perf_counter()
    ranks = launch(args, overrides)
    result = {
        "benchmark": "demo_profile",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, torch {torch.__version__}",
        "ranks": args.ranks,
        "steps": args.steps,
        "overrides": overrides,
        "wall_seconds": time.perf_counter() - t0,
        **summarise(ranks),
        "per_rank": ranks,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    summary = {k: v for k, v in result.items() if k not in ("per_rank", "operators_one_step_rank0")}
    print(json.dumps(summary, indent=2))  # noqa: T201


if __name__ == "__main__":
    main()
