"""Judge cache: a second pass over the same samples, served from the sqlite cache, against judging them.

    OMP_WAIT_POLICY=PASSIVE python bench/judge_cache.py --images 8 --criteria 8 --out bench/results/judge_cache.json

The judging cost is the hf backend on the random-init Qwen2-VL of bench/judge_prefix.py (448 px images, shared
prefix on: the faster judge, so the harder baseline). `RubricJudge(backend, cache=path)` scores `--images` images
on `--criteria` criteria each and compares `--images // 2` pairs in both orders (pass 1: every question goes to the
model and is stored), then the same samples again (pass 2: every answer from the cache), then once more through a
fresh `RubricJudge` and `JudgmentCache` opened on the same file (pass 3: a restarted run, cold sqlite connection).
Speedup = pass 1 seconds / pass 2 seconds (target >= 50); the answers of all passes must be identical.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

# `python bench/judge_cache.py` puts bench/ first on the import path: the judge is judge_prefix.py's.
from judge_prefix import CRITERIA, PROMPT, build_bench_judge, machine, random_images


def main() -> None:
    from arr import RubricJudge
    from arr.backends.hf import HFBackend
    from arr.judge import PairItem, ScoreItem
    from arr.rubrics import Criterion, Rubric

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--criteria", type=int, default=8)
    p.add_argument("--image-size", "--image_size", type=int, default=448)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="bench/results/judge_cache.json")
    a = p.parse_args()
    torch.set_num_threads(a.threads)

    tmp = Path(tempfile.mkdtemp(prefix="arr_bench_cache_"))
    backend = HFBackend(str(build_bench_judge(tmp / "judge", a.image_size)), trust_remote_code=True)
    rubric = Rubric(PROMPT, [Criterion(f"c{i}", CRITERIA[i % len(CRITERIA)]) for i in range(a.criteria)])
    images = random_images(a.images, a.image_size, seed=1)
    scores = [ScoreItem(PROMPT, im, rubric) for im in images]
    pairs = [PairItem(PROMPT, images[2 * i], images[2 * i + 1], rubric) for i in range(a.images // 2)]
    cache_path = tmp / "judgments.sqlite"

    def run(judge: RubricJudge) -> tuple[float, list, list]:
        t0 = time.perf_counter()
        s = judge.score_many(scores)
        c = judge.compare_many(pairs)
        return time.perf_counter() - t0, [x.score for x in s], [x.prob_a for x in c]

    judge = RubricJudge(backend, cache=cache_path)
    t1, s1, c1 = run(judge)
    calls_1 = judge.stats.calls
    t2, s2, c2 = run(judge)
    calls_2 = judge.stats.calls - calls_1
    t3, s3, c3 = run(RubricJudge(backend, cache=cache_path))
    same = s1 == s2 == s3 and c1 == c2 == c3
    result = {
        "benchmark": "judge_cache",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "args": vars(a),
        "questions": calls_1,
        "seconds_judging": t1,
        "seconds_cached": t2,
        "seconds_cached_reopened": t3,
        "model_calls_second_pass": calls_2,
        "speedup": t1 / t2,
        "speedup_reopened": t1 / t3,
        "target_speedup": 50,
        "identical_answers": same,
        "met": t1 / t2 >= 50 and same and calls_2 == 0,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))  # noqa: T201


if __name__ == "__main__":
    main()
