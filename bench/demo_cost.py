"""What `arr demo` costs and gains: the demo of this checkout against an older checkout's, run in one script.

    git worktree add /tmp/arr_base BASE_COMMIT
    OMP_WAIT_POLICY=PASSIVE python bench/demo_cost.py --base /tmp/arr_base --seeds 0 --out bench/results/demo_cost.json
    OMP_WAIT_POLICY=PASSIVE python bench/demo_cost.py --versions new --seeds 0 1 2 --repeat 2 \
        --out bench/results/demo_cost_seeds.json

Each run is `python -m arr demo --seed S` as a user runs it (one rank per usable core), with `PYTHONPATH` set to
the checkout under test, run after one another (the two versions alternate, seed by seed, so that a machine that
gets busier or quieter in between moves both alike). Per run: CPU seconds of the demo and every process it started
(`resource.getrusage(RUSAGE_CHILDREN)`), wall seconds, the held-out score before and after, the gain, and its 95%
noise band, unpaired (from the two evaluations' standard errors) and, where the checkout logs it, paired (the same
prompts and seeds compared prompt by prompt). The summary gives the new/old ratios of CPU and wall seconds. With
`--repeat 2` every seed runs twice, and `identical_repeats` says whether the repeats wrote the same metrics (the
timing fields aside).

    python bench/demo_cost.py --recorded old=RUN_DIR:TIME_LOG --recorded new=RUN_DIR:TIME_LOG ...

summarises demos run earlier under `/usr/bin/time -v python -m arr demo ... > TIME_LOG 2>&1` instead (CPU and wall
seconds from time's report, the rest from the run folder), for runs too long to repeat in one sitting; their
ratios then compare runs made at different times, under whatever load the machine had at each.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# metrics.jsonl fields that measure the machine rather than the run.
TIMING_FIELDS = {"judge_seconds", "judge_wait_seconds", "step_seconds", "sample_seconds", "optimize_seconds",
                 "eval_seconds", "align_seconds"}  # fmt: skip


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_demo(checkout: Path, out: Path, seed: int, overrides: list[str]) -> dict[str, Any]:
    """One `arr demo` of `checkout`; its cost and its held-out result."""
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(
        PYTHONPATH=str(checkout), OMP_WAIT_POLICY=env.get("OMP_WAIT_POLICY", "PASSIVE"), HF_HUB_OFFLINE="1"
    )
    cmd = [sys.executable, "-m", "arr", "demo", "--output-dir", str(out), "--seed", str(seed), *overrides]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=checkout, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return run_result(out, seed, cpu, wall, proc.stdout.splitlines())


def run_result(out: Path, seed: int, cpu: float, wall: float, stdout: list[str]) -> dict[str, Any]:
    """A finished demo's cost and its held-out result, from its output folder."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = [r for r in rows if "eval_score" in r]
    first, last = evals[0], evals[-1]
    unpaired = 1.96 * (first["eval_score_se"] ** 2 + last["eval_score_se"] ** 2) ** 0.5
    result = {
        "seed": seed,
        "cpu_seconds": cpu,
        "wall_seconds": wall,
        "eval_before": first["eval_score"],
        "eval_after": last["eval_score"],
        "gain": last["eval_score"] - first["eval_score"],
        "noise_band_unpaired": unpaired,
        "noise_band_paired": 1.96 * last["eval_change_se"] if "eval_change_se" in last else None,
        "eval_prompts": eval_prompts(out),
        "steps": last["step"],
        "printed": [line for line in stdout if line.startswith(("held-out", "arr demo"))],
    }
    result["metrics"] = [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in rows]
    return result


def recorded_run(spec: str) -> tuple[str, Path, dict[str, Any]]:
    """A demo run made earlier under `/usr/bin/time -v` (VERSION=RUN_DIR:TIME_LOG, the log holding the demo's
    output and time's report): CPU seconds (user + system, its ranks included) and wall seconds from the report."""
    import yaml

    version, _, paths = spec.partition("=")
    run_dir, _, time_log = paths.partition(":")
    if not (version and run_dir and time_log):
        raise SystemExit(f"--recorded {spec!r}: expected VERSION=RUN_DIR:TIME_LOG")
    text = Path(time_log).read_text(errors="replace")
    lines = [ln.rpartition("\r")[2] for ln in text.splitlines()]  # a progress bar's line: its last state
    report = {k.strip(): v.strip() for k, _, v in (ln.rpartition(": ") for ln in lines) if k}
    try:
        cpu = float(report["User time (seconds)"]) + float(report["System time (seconds)"])
        clock = report["Elapsed (wall clock) time (h:mm:ss or m:ss)"]
    except KeyError:
        raise SystemExit(f"--recorded: {time_log} holds no /usr/bin/time -v report") from None
    wall = sum(float(x) * 60**i for i, x in enumerate(reversed(clock.split(":"))))
    seed = int(yaml.safe_load((Path(run_dir) / "config.yaml").read_text())["seed"])
    return version, Path(run_dir).resolve(), run_result(Path(run_dir), seed, cpu, wall, lines)


def eval_prompts(run: Path) -> int | None:
    import yaml

    config = yaml.safe_load((run / "config.yaml").read_text())
    return config.get("rpo", config).get("eval_num_prompts")


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for version, rs in runs.items():
        gains = [r["gain"] for r in rs]
        out[version] = {
            "runs": len(rs),
            "cpu_seconds_mean": statistics.mean(r["cpu_seconds"] for r in rs),
            "wall_seconds_mean": statistics.mean(r["wall_seconds"] for r in rs),
            "gain_mean": statistics.mean(gains),
            "gain_sd": statistics.stdev(gains) if len(gains) > 1 else None,
            "noise_band_unpaired_mean": statistics.mean(r["noise_band_unpaired"] for r in rs),
            "noise_band_paired_mean": statistics.mean(r["noise_band_paired"] for r in rs)
            if all(r["noise_band_paired"] is not None for r in rs)
            else None,
        }
    if "old" in out and "new" in out:
        # Ratios over the seeds both versions ran, pairing each seed's runs.
        pairs = [(o, n) for o in runs["old"] for n in runs["new"] if o["seed"] == n["seed"]]
        out["cpu_ratio_new_over_old"] = sum(n["cpu_seconds"] for _, n in pairs) / sum(
            o["cpu_seconds"] for o, _ in pairs
        )
        out["wall_ratio_new_over_old"] = sum(n["wall_seconds"] for _, n in pairs) / sum(
            o["wall_seconds"] for o, _ in pairs
        )
        out["cpu_reduction"] = 1.0 - out["cpu_ratio_new_over_old"]
    return out


def identical_repeats(runs: list[dict[str, Any]]) -> dict[str, bool]:
    """Per seed run more than once: whether every repeat wrote the same metrics (timings aside)."""
    by_seed: dict[int, list[list[dict[str, Any]]]] = {}
    for r in runs:
        by_seed.setdefault(r["seed"], []).append(r["metrics"])
    return {str(s): all(m == ms[0] for m in ms[1:]) for s, ms in by_seed.items() if len(ms) > 1}


def run_versions(
    args: argparse.Namespace, overrides: list[str]
) -> tuple[dict[str, Path], dict[str, list[dict[str, Any]]]]:
    """Every version's demo for every seed (and repeat), one after another: the checkouts and the runs."""
    versions = [v.strip() for v in args.versions.split(",") if v.strip()]
    checkouts = {"new": ROOT}
    if "old" in versions:
        if args.base is None or not (args.base / "arr").is_dir():
            raise SystemExit("--base must be a checkout of the old code (a folder holding arr/) to run 'old'")
        checkouts["old"] = args.base.resolve()
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in versions}
    with tempfile.TemporaryDirectory(prefix="arr_demo_cost_") as tmp:
        for seed in args.seeds:
            for rep in range(args.repeat):
                for version in versions:
                    out = Path(tmp) / f"{version}_seed{seed}_{rep}"
                    r = run_demo(checkouts[version], out, seed, overrides)
                    runs[version].append(r)
                    brief = {k: v for k, v in r.items() if k != "metrics"}
                    print(version, json.dumps(brief), flush=True)  # noqa: T201
    return checkouts, runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--base", type=Path, help="a checkout of the old code (e.g. a git worktree of the base commit)"
    )
    p.add_argument("--versions", default="old,new", help="old,new | new | old")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--repeat", type=int, default=1, help="runs per seed and version")
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/demo_cost.json")
    p.add_argument(
        "--recorded",
        action="append",
        metavar="VERSION=RUN_DIR:TIME_LOG",
        help="summarise demos run earlier under /usr/bin/time -v instead of running any (repeatable)",
    )
    p.add_argument(
        "overrides", nargs=argparse.REMAINDER, help="-- then `arr demo` overrides for both versions"
    )
    args = p.parse_args()
    overrides = [x for x in args.overrides if x != "--"]
    if args.recorded:
        checkouts: dict[str, Path] = {}
        runs: dict[str, list[dict[str, Any]]] = {}
        for spec in args.recorded:
            version, run_dir, r = recorded_run(spec)
            runs.setdefault(version, []).append(r)
            checkouts[f"{version} seed {r['seed']}"] = run_dir
        args.seeds = sorted({r["seed"] for rs in runs.values() for r in rs})
    else:
        checkouts, runs = run_versions(args, overrides)
    result = {
        "benchmark": "demo_cost",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, load average at the end {os.getloadavg()[0]:.1f}",
        "recorded" if args.recorded else "checkouts": {k: str(v) for k, v in checkouts.items()},
        "seeds": args.seeds,
        "repeat": args.repeat,
        "overrides": overrides,
        "summary": summarise(runs),
        "identical_repeats": {v: identical_repeats(rs) for v, rs in runs.items()},
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["summary"], indent=2))  # noqa: T201


if __name__ == "__main__":
    main()
