"""Seconds per demo step with one process (2 threads, 1 thread) against several CPU ranks, in one run.

    OMP_WAIT_POLICY=PASSIVE python bench/demo_processes.py --steps 12 --out bench/results/demo_processes.json

Runs `arr demo` for `--steps` steps (no intermediate evaluation, checkpoints or alignment probe) in each setting,
one after another on an otherwise idle machine, and reads the per-step time from metrics.jsonl (the first two
steps are dropped as warm-up). The speed-ups are ratios against the 2-thread single process, measured in the same
run, since absolute times on shared machines drift. The final eval scores are printed beside them: the settings
must agree (they differ only by float rounding).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(name: str, out: Path, steps: int, threads: int, processes: int) -> dict[str, float]:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "arr", "demo", "--output_dir", str(out / name),
           "--num_processes", str(processes), "--max_steps", str(steps), "--eval_steps", "0",
           "--save_steps", "100000", "--sample_steps", "100000", "--align_every", "0", "--report_to", "none"]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    steps_s = [r["step_seconds"] for r in rows if "step_seconds" in r][2:]
    evals = [r["eval_score"] for r in rows if "eval_score" in r]
    return {
        "step_seconds": sum(steps_s) / len(steps_s),
        "wall_seconds": wall,
        "eval_score_after": evals[-1],
        "threads_per_process": threads,
        "processes": processes,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--out", type=Path, default=Path("bench/results/demo_processes.json"))
    args = p.parse_args()
    settings = {
        "1 process, 2 threads": (2, 1),
        "1 process, 1 thread": (1, 1),
        "2 processes, 1 thread each": (1, 2),
    }
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (threads, processes) in settings.items():
            results[name] = run(
                name.replace(" ", "_").replace(",", ""), Path(tmp), args.steps, threads, processes
            )
            print(name, json.dumps(results[name]), flush=True)
    base = results["1 process, 2 threads"]["step_seconds"]
    for r in results.values():
        r["speedup_vs_1_process_2_threads"] = base / r["step_seconds"]
    figures = {"steps": args.steps, "cpu_count": os.cpu_count(), "settings": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
