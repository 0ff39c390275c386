"""RPO step time with a remote judge that answers after an added latency, with and without overlapped judging.

    OMP_WAIT_POLICY=PASSIVE python bench/judge_overlap.py --latency 0.2 --steps 6 --out bench/results/judge_overlap.json

The judge is a real HTTP server in another process (`python -m arr.testing.faulty_server --latency L`: an
OpenAI-compatible /v1/chat/completions endpoint with canned verdicts, no faults) reached through the `openai`
backend, so every request pays a real round trip plus `L` seconds. The policy is the shipped shapes model with the
demo recipe, sampled in chunks of `--sample-batch-size` images so that judging can start before sampling ends.
Three configurations run the same steps, interleaved step by step so machine load hits them alike:

- baseline: a zero-latency server, overlap off (the judge's cost is only its round trips);
- serial: the `L`-latency server, overlap off (sample everything, then wait for every verdict);
- overlap: the `L`-latency server, `overlap_judging=on` (each chunk is judged while the next one samples).

Reported: mean step seconds of each and the growth of serial and overlap over the baseline (target for overlap:
at most 15%). Each configuration has its own judgment cache, so nothing is served from cache.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch


def start_server(latency: float, concurrency_hint: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "arr.testing.faulty_server", "--port", "0", "--latency", str(latency)],
        stdout=subprocess.PIPE,
        text=True,
    )
    base_url = proc.stdout.readline().strip()
    if not base_url.startswith("http"):
        proc.kill()
        raise RuntimeError(f"the judge server did not start (first line {base_url!r})")
    return proc, base_url


def build(name: str, base_url: str, overlap: str, a: argparse.Namespace):
    from arr.cli.train import demo_recipe_path
    from arr.rpo.build import build_trainer
    from arr.rpo.recipe import parse_recipe

    argv = [str(demo_recipe_path()), "--output_dir", f"{a.workdir}/{name}", "--report_to", "none"]
    argv += ["--judge_backend", "openai", "--judge_model", "canned", "--judge_base_url", base_url]
    argv += ["--judge_max_concurrency", str(a.concurrency), "--overlap_judging", overlap]
    argv += ["--sample_batch_size", str(a.sample_batch_size), "--eval_steps", "0", "--save_steps", "100000"]
    argv += ["--sample_steps", "100000", "--align_every", "0", "--max_steps", str(a.steps + 1)]
    return build_trainer(parse_recipe(argv))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--latency", type=float, default=0.2)
    p.add_argument(
        "--steps", type=int, default=6, help="timed steps per configuration (after 1 warm-up step)"
    )
    p.add_argument("--sample-batch-size", "--sample_batch_size", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--workdir", default="bench/results/judge_overlap", help="the runs' folders")
    p.add_argument("--out", default="bench/results/judge_overlap.json")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    fast, fast_url = start_server(0.0, a.concurrency)
    slow, slow_url = start_server(a.latency, a.concurrency)
    try:
        trainers = {
            "baseline": build("baseline", fast_url, "off", a),
            "serial": build("serial", slow_url, "off", a),
            "overlap": build("overlap", slow_url, "on", a),
        }
        rows: dict[str, list[dict]] = {k: [] for k in trainers}
        for i in range(a.steps + 1):
            for name, trainer in trainers.items():
                row = trainer.training_step()
                trainer.step += 1
                if i > 0:  # the first step warms up allocators and connections
                    rows[name].append(row)
                print(  # noqa: T201
                    f"step {i} {name:8s} {row['step_seconds']:.2f}s (sample {row['sample_seconds']:.2f}, "
                    f"judge wait {row['judge_wait_seconds']:.2f}, optimize {row['optimize_seconds']:.2f})",
                    flush=True,
                )
    finally:
        for proc in (fast, slow):
            proc.kill()

    def mean(name: str, key: str) -> float:
        return statistics.mean(r[key] for r in rows[name])

    result = {
        "latency_s": a.latency,
        "sample_batch_size": a.sample_batch_size,
        "concurrency": a.concurrency,
        "timed_steps": a.steps,
        "judge_requests_per_step": rows["baseline"][0]["judge_calls"],
        "step_seconds": {k: mean(k, "step_seconds") for k in rows},
        "sample_seconds": {k: mean(k, "sample_seconds") for k in rows},
        "judge_wait_seconds": {k: mean(k, "judge_wait_seconds") for k in rows},
        "growth_over_baseline": {
            k: mean(k, "step_seconds") / mean("baseline", "step_seconds") - 1 for k in ("serial", "overlap")
        },
        "host": platform.node(),
        "torch_threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))  # noqa: T201


if __name__ == "__main__":
    main()
