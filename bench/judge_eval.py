"""The shapes judge against the pixel judge, on held-out prompts and the shipped models' own held-out samples.

    OMP_WAIT_POLICY=PASSIVE python bench/judge_eval.py --model shapes-judge --out bench/results/judge_eval.json

Every question goes through the real judge path: `load_backend("hf", model=...)` (choice probabilities, shared-prefix
judging) and `RubricJudge`, with the questions the hf and openai backends send. Images come from a held-out sample
pool (`build_sample_pool("heldout", ...)`: held-out prompts and edit instructions, seeds the training never drew)
plus exact renders and corruptions of held-out scenes; the headline figures are on the models' samples.

Measured:
- per-criterion accuracy: P(yes) > P(no) against the pixel verdict (text-to-image and editing criteria);
- pairwise agreement where the pixel judge is decisive (its rubric scores differ), one order at a time;
- the position-flip rate: the fraction of pairs whose single-order verdict names the same *position* in both orders
  (i.e. flips when the images are swapped); with swap-consistent judging (`RubricJudge(swap=True)`: both orders,
  an inconsistent pair becomes a tie) the verdict cannot flip, and what it costs is shown as its tie rate;
- rubric judging against the plain question ("which image better follows the prompt", no rubric), on the same pairs;
- judging speed: criterion questions per second with and without shared-prefix judging, and pairs per second with
  choice probabilities against generating the JSON verdict (CPU seconds of this process, as ratios).
`--fixed-200` also writes the accuracy on the fixed 200-question set the test suite checks
(`tests/test_shapes_judge.py`) to the judge folder's `scores.json`.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

FIXED_200 = {"kind": "criterion_t2i", "n": 200, "pool_seed": 7, "seed": 0, "t2i_per_prompt": 1}


def fixed_200_questions():
    """The fixed 200 criterion questions of the test suite: held-out prompts, one model sample per prompt."""
    from arr.shapes.judge_data import build_sample_pool, fixed_questions

    pool = build_sample_pool("heldout", FIXED_200["t2i_per_prompt"], 0, 0, seed=FIXED_200["pool_seed"])
    return fixed_questions(pool, "heldout", FIXED_200["kind"], FIXED_200["n"], seed=FIXED_200["seed"])


def criterion_accuracy(backend, questions) -> dict[str, Any]:
    verdicts = backend.judge_criteria([q.query for q in questions])
    by: dict[str, list[float]] = defaultdict(list)
    for q, v in zip(questions, verdicts, strict=True):
        hit = float(v.prob_yes is not None and (v.prob_yes > 0.5) == (q.label == 1.0))
        by["all"].append(hit)
        by[f"source/{q.image_source}"].append(hit)
        by[f"category/{q.category}"].append(hit)
        by[f"criterion/{q.meta['criterion'].split('_')[0]}"].append(hit)
    return {k: {"accuracy": sum(v) / len(v), "n": len(v)} for k, v in sorted(by.items())}


def _swapped(query):
    from arr.backends.base import PairQuery

    return PairQuery(query.prompt, (query.images[1], query.images[0]), query.rubric, query.source)


def pair_metrics(backend, questions) -> dict[str, Any]:
    """Single-order agreement, flip rate and swap-consistent agreement, rubric and plain apart, on decisive pairs."""
    from arr.judge import RubricJudge

    decisive = [q for q in questions if q.label != 0.5]
    out: dict[str, Any] = {}
    for plain in (False, True):
        qs = [q for q in decisive if q.plain == plain]
        if not qs:
            continue
        forward = backend.judge_pairs([q.query for q in qs])
        backward = backend.judge_pairs([_swapped(q.query) for q in qs])
        single, flips, model_hits = [], [], []
        for q, f, b in zip(qs, forward, backward, strict=True):
            first_wins = q.label == 1.0
            pf, pb = f.prob_first, b.prob_first
            single += [float(pf is not None and (pf > 0.5) == first_wins)]
            single += [float(pb is not None and (pb > 0.5) == (not first_wins))]
            # A flip: the same position wins in both orders, so the verdict follows the position, not the image.
            flips.append(float(pf is not None and pb is not None and (pf > 0.5) == (pb > 0.5)))
            if "model" in q.image_source:
                model_hits.append(float(pf is not None and (pf > 0.5) == first_wins))
        judge = RubricJudge(backend, swap=True)
        from arr.judge import PairItem

        combined = judge.compare_many(
            [PairItem(q.query.prompt, *q.query.images, q.query.rubric, q.query.source) for q in qs]
        )
        swap_hits = [
            float(j.preferred == (0 if q.label == 1.0 else 1)) for q, j in zip(qs, combined, strict=True)
        ]
        ties = [float(j.preferred is None) for j in combined]
        out["plain" if plain else "rubric"] = {
            "pairs": len(qs),
            "single_order_agreement": sum(single) / len(single),
            "single_order_agreement_model_samples": (sum(model_hits) / len(model_hits))
            if model_hits
            else None,
            "position_flip_rate": sum(flips) / len(flips),
            "swap_consistent_agreement": sum(swap_hits) / len(swap_hits),
            "swap_consistent_tie_rate": sum(ties) / len(ties),
            "swap_consistent_flip_rate": 0.0,
        }
    return out


def _cpu_seconds(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def speed(model: str, criterion_questions, pair_questions, repeats: int) -> dict[str, Any]:
    """CPU seconds per question: shared prefix vs full passes (criteria), probabilities vs generation (pairs)."""
    from arr import load_backend
    from arr.judge import RubricJudge, ScoreItem

    shared = load_backend("hf", model=model, share_prefix=True)
    full = load_backend("hf", model=model, share_prefix=False)
    generate = load_backend("hf", model=model, mode="generate", max_new_tokens=32)
    # Pointwise scoring as RPO asks it: every criterion of an image, one image object per item.
    items, seen = [], set()
    for q in criterion_questions:
        if q.group not in seen:
            seen.add(q.group)
            items.append(ScoreItem(q.query.prompt, q.query.image, q.query.rubric, q.query.source))
    n_criteria = sum(len(it.rubric.criteria) for it in items)
    times: dict[str, list[float]] = defaultdict(list)
    pairs = [q.query for q in pair_questions if not q.plain]
    for _ in range(repeats):
        times["criteria_shared"].append(_cpu_seconds(lambda: RubricJudge(shared).score_many(items)))
        times["criteria_full"].append(_cpu_seconds(lambda: RubricJudge(full).score_many(items)))
        times["pairs_probs"].append(_cpu_seconds(lambda: shared.judge_pairs(pairs)))
        times["pairs_generate"].append(_cpu_seconds(lambda: generate.judge_pairs(pairs)))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "criteria": n_criteria,
        "pairs": len(pairs),
        "criteria_per_cpu_s_shared": n_criteria / med["criteria_shared"],
        "criteria_per_cpu_s_full": n_criteria / med["criteria_full"],
        "shared_prefix_speedup": med["criteria_full"] / med["criteria_shared"],
        "pairs_per_cpu_s_probs": len(pairs) / med["pairs_probs"],
        "pairs_per_cpu_s_generate": len(pairs) / med["pairs_generate"],
        "probs_vs_generate_speedup": med["pairs_generate"] / med["pairs_probs"],
        "cpu_seconds": times,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="shapes-judge", help="judge: shapes-judge or a judge folder")
    p.add_argument("--out", default="bench/results/judge_eval.json")
    p.add_argument("--pool-seed", type=int, default=1, help="seed of the held-out sample pool")
    p.add_argument("--t2i-per-prompt", type=int, default=4)
    p.add_argument("--edits", type=int, default=100)
    p.add_argument("--per-edit", type=int, default=2)
    p.add_argument("--criteria", type=int, default=1000, help="criterion questions per task")
    p.add_argument(
        "--pairs", type=int, default=400, help="pairs per task (each asked with and without rubric)"
    )
    p.add_argument("--speed-repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fixed-200", action="store_true", help="also score the test suite's fixed 200 questions")
    p.add_argument("--write-scores", help="judge folder whose scores.json gets the fixed-200 figure")
    args = p.parse_args()

    import torch

    from arr import load_backend
    from arr.shapes.judge_data import build_sample_pool, fixed_questions

    torch.set_num_threads(args.threads)
    random.seed(0)
    t0 = time.monotonic()
    pool = build_sample_pool("heldout", args.t2i_per_prompt, args.edits, args.per_edit, seed=args.pool_seed)
    backend = load_backend("hf", model=args.model)
    result: dict[str, Any] = {
        "model": args.model,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "args": vars(args),
    }
    kinds = {"t2i": ("criterion_t2i", "pair_t2i"), "edit": ("criterion_edit", "pair_edit")}
    for task, (ck, pk) in kinds.items():
        if task == "edit" and not args.edits:
            continue
        cq = fixed_questions(pool, "heldout", ck, args.criteria, seed=args.pool_seed)
        pq = fixed_questions(pool, "heldout", pk, 2 * args.pairs, seed=args.pool_seed)
        result[f"criterion_{task}"] = criterion_accuracy(backend, cq)
        result[f"pair_{task}"] = pair_metrics(backend, pq)
        if task == "t2i":
            result["speed"] = speed(args.model, cq[:120], pq[:32], args.speed_repeats)
    if args.fixed_200:
        fixed = criterion_accuracy(backend, fixed_200_questions())["all"]
        result["fixed_200"] = {**FIXED_200, **fixed}
        if args.write_scores:
            path = Path(args.write_scores) / "scores.json"
            scores = json.loads(path.read_text()) if path.is_file() else {}
            scores["fixed_200_criterion_accuracy"] = round(fixed["accuracy"], 4)
            scores["fixed_200_command"] = (
                "python bench/judge_eval.py --fixed-200 --write-scores " + args.write_scores
            )
            path.write_text(json.dumps(scores, indent=1) + "\n")
    result["wall_seconds"] = time.monotonic() - t0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("speed",)}, indent=1)[:4000])
    if "speed" in result:
        print(json.dumps({k: v for k, v in result["speed"].items() if k != "cpu_seconds"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
