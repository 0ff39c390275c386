"""Judge evaluation on labelled preference pairs: accuracy, position bias, ties, per-category accuracy and cost.

    arr eval preference eval/shapes_pairs.yaml --backend pixel --out runs/eval/shapes_pairs

Every pair is asked in both image orders, each order on its own, so one run gives:
- `single_order_accuracy`: how often one question in one order picks the labelled winner (averaged over the two
  orders, i.e. a judge shown pairs in random order);
- `flip_rate`: the fraction of pairs whose verdict changes when the images are swapped (position bias; the paper
  reports 34.6% for a plain Qwen3-VL-8B judge, 10.3% with ARR and its rubric guide);
- `accuracy` (swap-consistent, what `RubricJudge(swap=True)` reports): the winner must be picked in both orders;
  a verdict that flips, or an exact tie, is a tie and is not correct. `tie_rate` counts those.
Failed questions (backend errors, unparseable answers, rubrics the judge cannot use) count against accuracy and
are reported as `failure_rate`; a configuration in which every question failed is reported as skipped, with the
first error as the reason, not as an accuracy of 0. Each judge configuration is evaluated on the same pairs:
- `plain`: no criteria, no guide (the judge decides from the prompt alone);
- `rubric`: the pair's prompt-specific rubric (from the data, or generated zero-shot: `arr rubric prompts`);
- `rubric+guide`: the same rubric plus an ARR rubric guide as the system prompt (`arr rubric generate`).
Against the labels, each configuration also reports `cohen_kappa` and `krippendorff_alpha` (nominal) between the
swap-consistent verdict (A, B or tie) and the labelled winner, over the pairs judged, and bootstrap intervals
(`accuracy_ci`, and `low` / `high` with each agreement figure).

Pairs that carry per-criterion labels (`PreferencePair.labels`; shapes pairs do) also validate the judge criterion
by criterion on both images of every pair (`criteria_validation`: accuracy, Cohen's kappa and Krippendorff's alpha
per criterion, with intervals; see `arr.evaluation.validation`).

The pairs and suites are loaded by `arr.evaluation.preference_benchmarks` (HPDv3, MMRB2, EditReward-Bench) and the
report is written by `arr.evaluation.preference_report`; both are importable from here too.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from arr.agreement import cohen_kappa, krippendorff_alpha
from arr.backends.base import JudgeBackend
from arr.backends.fewshot import LabelledCriterion
from arr.evaluation.preference_benchmarks import (
    SCHEMAS,
    load_editreward_bench,
    load_hpdv3,
    load_mmrb2,
    load_pairs,
    load_preference_suite,
)
from arr.evaluation.preference_report import write_report
from arr.evaluation.validation import validate_judge
from arr.judge import PairItem, PairJudgment, RubricJudge
from arr.rubrics import GuideCategory, Rubric
from arr.shapes.pairs import PreferencePair
from arr.stats import bootstrap_items

CONFIGS: tuple[str, ...] = ("plain", "rubric", "rubric+guide")


def _pick(j: PairJudgment, swapped: bool) -> int | None:
    """The verdict as an index into the pair's own order (0 = image_a), or None for a tie."""
    if j.preferred is None:
        return None
    return 1 - j.preferred if swapped else j.preferred


def _rubric_for(
    pair: PreferencePair,
    config: str,
    rubrics: dict[str, Rubric] | None,
    guide: Sequence[GuideCategory] | None,
) -> Rubric | None:
    task = pair.task if pair.task in ("t2i", "edit") else "t2i"
    if config == "plain":
        return Rubric(pair.prompt, [], task=task)
    rubric = (rubrics or {}).get(pair.prompt)
    if rubric is None and pair.rubric.criteria:
        rubric = pair.rubric
    if rubric is None:
        return None
    guide_part = list(guide or []) if config == "rubric+guide" else []
    return Rubric(pair.prompt, list(rubric.criteria), guide_part, task)


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def _agreement_with_labels(
    rows: list[dict[str, Any]], resamples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Accuracy's bootstrap interval and chance-corrected agreement between the swap-consistent verdict (A, B or
    tie) and the labelled winner; failed pairs count against accuracy and are left out of the agreement."""
    correct = np.array(
        [
            float("picks" in r and r["picks"][0] == r["picks"][1] == (0 if r["winner"] == "A" else 1))
            for r in rows
        ]
    )
    ok = [r for r in rows if "picks" in r]
    labels = [r["winner"] for r in ok]
    verdicts = [
        ("AB"[r["picks"][0]] if r["picks"][0] == r["picks"][1] and r["picks"][0] is not None else "tie")
        for r in ok
    ]
    out: dict[str, Any] = {}
    ci = bootstrap_items(len(rows), lambda idx: float(correct[idx].mean()), resamples, seed=seed)
    out["accuracy_ci"] = None if ci is None else [ci.low, ci.high]
    stats = {
        "cohen_kappa": lambda idx: cohen_kappa([labels[i] for i in idx], [verdicts[i] for i in idx]),
        "krippendorff_alpha": lambda idx: krippendorff_alpha([(labels[i], verdicts[i]) for i in idx]),
    }
    for name, stat in stats.items():
        ci = bootstrap_items(len(ok), stat, resamples, seed=seed)
        out[name] = None if ci is None else {"value": ci.value, "low": ci.low, "high": ci.high}
    return out


def labelled_criteria(pairs: Sequence[PreferencePair]) -> list[LabelledCriterion]:
    """Every labelled criterion of both images of every pair (pairs without `labels` give none)."""
    out = []
    for p in pairs:
        by_id = {c.id: c for c in p.rubric.criteria}
        for side, image in (("chosen", p.chosen), ("rejected", p.rejected)):
            for cid, label in ((p.labels or {}).get(side) or {}).items():
                out.append(LabelledCriterion(image, by_id[cid], label, p.prompt, source=p.source))
    return out


def evaluate_config(
    pairs: Sequence[PreferencePair],
    backend: JudgeBackend,
    config: str,
    rubrics: dict[str, Rubric] | None = None,
    guide: Sequence[GuideCategory] | None = None,
    cache: Any = None,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Metrics of one judge configuration on `pairs` (see the module docstring for their definitions)."""
    if config not in CONFIGS:
        raise ValueError(f"unknown judge configuration {config!r}; expected one of {CONFIGS}")
    if config == "rubric+guide" and not guide:
        raise ValueError(
            "configuration 'rubric+guide' needs a rubric guide (pass guide=, e.g. from guide.json)"
        )
    judge = RubricJudge(backend, cache=cache, swap=False)
    usage = getattr(backend, "token_usage", None)
    usage_before = usage.copy() if usage is not None else None
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for lo in range(0, len(pairs), batch_size):
        chunk = pairs[lo : lo + batch_size]
        items: list[PairItem] = []
        index: list[int] = []
        for k, p in enumerate(chunk):
            rubric = _rubric_for(p, config, rubrics, guide)
            if rubric is None:
                rows.append(
                    {
                        "id": p.id,
                        "category": p.category,
                        "winner": p.winner,
                        "error": "no rubric for this prompt",
                    }
                )
                continue
            items.append(PairItem(p.prompt, p.image_a, p.image_b, rubric, p.source))
            items.append(PairItem(p.prompt, p.image_b, p.image_a, rubric, p.source))
            index.append(k)
        judgments = judge.compare_many(items) if items else []
        for n, k in enumerate(index):
            p = chunk[k]
            j1, j2 = judgments[2 * n], judgments[2 * n + 1]
            row: dict[str, Any] = {"id": p.id, "category": p.category, "winner": p.winner}
            if not (j1.ok and j2.ok):
                row["error"] = "; ".join(e for e in (j1.error, j2.error) if e)
            else:
                row["picks"] = [_pick(j1, False), _pick(j2, True)]
            rows.append(row)
    seconds = time.perf_counter() - start

    def summarise(subset: list[dict[str, Any]]) -> dict[str, Any]:
        ok = [r for r in subset if "picks" in r]
        want = [0 if r["winner"] == "A" else 1 for r in ok]
        flips = sum(r["picks"][0] != r["picks"][1] for r in ok)
        consistent = [r["picks"][0] if r["picks"][0] == r["picks"][1] else None for r in ok]
        correct = sum(c is not None and c == w for c, w in zip(consistent, want, strict=True))
        single = sum(p == w for r, w in zip(ok, want, strict=True) for p in r["picks"])
        return {
            "n": len(subset),
            "accuracy": _rate(correct, len(subset)),
            "single_order_accuracy": _rate(single, 2 * len(subset)),
            "flip_rate": _rate(flips, len(ok)),
            "tie_rate": _rate(sum(c is None for c in consistent), len(ok)),
            "failure_rate": _rate(len(subset) - len(ok), len(subset)),
        }

    result = summarise(rows)
    result.update(_agreement_with_labels(rows))
    by_cat: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_cat[r["category"] or "(none)"].append(r)
    result["categories"] = {c: summarise(v) for c, v in sorted(by_cat.items())}
    cost: dict[str, Any] = {**judge.stats.to_dict(), "seconds": seconds}
    cost["prompt_tokens"] = cost["completion_tokens"] = None
    if usage is not None and usage_before is not None:
        known = (usage.requests - usage.unknown) - (usage_before.requests - usage_before.unknown)
        if known:
            cost["prompt_tokens"] = usage.prompt_tokens - usage_before.prompt_tokens
            cost["completion_tokens"] = usage.completion_tokens - usage_before.completion_tokens
    result["cost"] = cost
    errors = [r["error"] for r in rows if "error" in r]
    if errors:
        result["first_error"] = errors[0][:300]
    return result


def evaluate_preference(
    pairs: Sequence[PreferencePair],
    backend: JudgeBackend,
    configs: Iterable[str] = CONFIGS,
    rubrics: dict[str, Rubric] | None = None,
    guide: Sequence[GuideCategory] | None = None,
    cache: Any = None,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Evaluate each judge configuration on the same pairs; configurations that cannot run are listed as skipped.

    "rubric+guide" without a guide is skipped, and so is a configuration in which every judgment failed (its
    reason is the first error: e.g. the pixel judge cannot judge without criteria, so it skips "plain"); otherwise
    pairs without a rubric (none in the data and none in `rubrics`) count as failures. Pairs with per-criterion
    labels add `criteria_validation`.
    """
    out: dict[str, Any] = {
        "n_pairs": len(pairs),
        "judge": {"backend": backend.name, "fingerprint": backend.fingerprint()},
        "configs": {},
        "skipped": {},
    }
    for config in configs:
        if config == "rubric+guide" and not guide:
            out["skipped"][config] = "no rubric guide given (run `arr rubric generate` and pass --guide)"
            continue
        metrics = evaluate_config(pairs, backend, config, rubrics, guide, cache, batch_size)
        if metrics["n"] and metrics["failure_rate"] == 1.0:
            # Nothing was judged (e.g. the pixel judge has no criteria to check in the plain configuration): an
            # accuracy of 0 would read as a judge that is always wrong.
            first = metrics.get("first_error", "").split("; ")[0]
            out["skipped"][config] = f"the {backend.name} judge could not judge any pair: {first}"
            continue
        out["configs"][config] = metrics
    labelled = labelled_criteria(pairs)
    if labelled:
        judge = RubricJudge(backend, cache=cache)
        report = validate_judge(judge, labelled, batch_size=batch_size)
        report.pop("items")  # one row per image and criterion: too long for a summary
        out["criteria_validation"] = report
    return out


def binomial_stderr(p: float, n: int) -> float:
    """Standard error of a rate p measured on n independent trials."""
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n else float("inf")


__all__ = [
    "CONFIGS",
    "SCHEMAS",
    "binomial_stderr",
    "evaluate_config",
    "evaluate_preference",
    "labelled_criteria",
    "load_editreward_bench",
    "load_hpdv3",
    "load_mmrb2",
    "load_pairs",
    "load_preference_suite",
    "write_report",
]
