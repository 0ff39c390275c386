"""arr's rubric scorer side by side with AutoRubric's on identical verdicts: where they agree, and where arr differs
on purpose.

    pip install "arr-rubric[autorubric]"        # AutoRubric (PyPI `autorubric`) is an optional dependency
    python bench/scorer_vs_autorubric.py --out bench/results/scorer_vs_autorubric.json

Two sets of verdicts are scored by both libraries:
- pixel: the pixel judge's verdicts on the 120 images of 60 shapes preference pairs (both images of each pair),
  against each pair's prompt rubric plus a penalty item ("A green circle is visible", weight -0.5) and a text-only
  item the pixel judge cannot assess ("The image looks pleasant");
- synthetic: seeded random rubrics (positive and penalty weights, penalty-only rubrics, yes/no items and 3- or
  5-level ratings) answered by three judges, with "unknown" (cannot assess) answers.
arr scores them through `RubricJudge` (and `EnsembleBackend` for three judges) over backends that replay the
verdicts; AutoRubric through `autorubric.scoring.score_reports` (one judge) and `CriterionGrader.aggregate` (three).
Compared, for each cannot-assess policy (skip, zero, partial, fail):
- one judge: the normalised and the raw score;
- three judges: the ensemble score, its raw score and every judge's own score, for the yes/no aggregations
  majority, weighted (judge weights 2, 1, 1), unanimous and any, with the ordinal aggregations mean, median, mode
  and the weighted mean (arr: `ordinal="mean"`, `snap=True`).
Then the cases where arr differs on purpose (docs/api.md, "arr and AutoRubric"), each shown on one example.
Prints one line per comparison and writes the details to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any

from arr import Criterion, Rubric, RubricJudge, load_backend
from arr.backends.base import CriterionVerdict
from arr.ensemble import EnsembleBackend
from arr.judge import ScoreItem
from arr.rubrics import NA_POLICIES
from arr.shapes.pairs import make_pairs
from arr.shapes.scene import Scene, render

# AutoRubric imports LiteLLM, which otherwise tries to download a price list on import.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

Answer = float | str | None  # a value, "unknown", or None for a failed question

# ---- verdicts ------------------------------------------------------------------------------------------------------


class Replay:
    """A judge backend that answers every criterion question from recorded verdicts, keyed by (image, criterion)."""

    def __init__(self, name: str, answers: dict[tuple[int, str], Answer]) -> None:
        self.name, self.answers = name, answers

    def fingerprint(self) -> str:
        return f"replay/{self.name}"

    def judge_pairs(self, queries):
        raise NotImplementedError("the comparison scores criteria only")

    def judge_criteria(self, queries):
        out = []
        for q in queries:
            a = self.answers[id(q.image), q.criterion.id]
            if a == "unknown":
                out.append(CriterionVerdict(None, cannot_assess=True))
            elif a is None:
                out.append(CriterionVerdict(None, error="the judge call failed"))
            else:
                out.append(CriterionVerdict(float(a)))
        return out


def pixel_samples(n_pairs: int, seed: int) -> list[tuple[Rubric, Any, list[dict[str, Answer]]]]:
    """(rubric, image, [the pixel judge's verdicts]) for both images of `n_pairs` shapes pairs."""
    pixel = load_backend("pixel", strict=True)
    extra = [
        Criterion(
            "green_circle",
            "A green circle is visible.",
            weight=-0.5,
            check={"type": "count", "shape": "circle", "color": "green", "n": 1, "op": "ge"},
        ),
        Criterion("pleasant", "The image looks pleasant."),  # no check: the pixel judge cannot assess it
    ]
    out = []
    for p in make_pairs(n_pairs, seed=seed, task="t2i", perturb=True):
        rubric = Rubric(p.prompt, [*p.rubric.criteria, *extra])
        for image in (p.image_a, p.image_b):
            judgment = RubricJudge(pixel).score(p.prompt, image, rubric)
            answers = {
                c.id: "unknown" if c.id in judgment.cannot_assess else judgment.criteria[c.id]
                for c in rubric.criteria
            }
            out.append((rubric, image, [answers]))
    return out


def synthetic_samples(
    n: int, seed: int, judges: int = 3
) -> list[tuple[Rubric, Any, list[dict[str, Answer]]]]:
    """Random rubrics and `judges` judges' discrete verdicts (yes/no, levels, "unknown"), seeded."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        penalty_only = rng.random() < 0.15
        criteria = []
        for k in range(rng.randint(1, 6)):
            weight = (
                -rng.choice([0.5, 1.0, 2.0])
                if penalty_only or rng.random() < 0.25
                else rng.choice([0.5, 1.0, 3.0])
            )
            levels = rng.choice([None, None, 3, 5])
            criteria.append(Criterion(f"c{k}", f"criterion {k}", weight=weight, levels=levels))
        rubric = Rubric(f"synthetic {i}", criteria)
        verdicts = []
        for _ in range(judges):
            answers: dict[str, Answer] = {}
            for c in criteria:
                steps = 1 if c.levels is None else c.levels - 1
                answers[c.id] = "unknown" if rng.random() < 0.15 else rng.randint(0, steps) / steps
            verdicts.append(answers)
        out.append((rubric, render(Scene()), verdicts))
    return out


# ---- AutoRubric's side ---------------------------------------------------------------------------------------------


def autorubric_reports(rubric: Rubric, answers: dict[str, Answer]) -> list[Any]:
    """One judge's verdicts as AutoRubric criterion reports: yes/no as MET / UNMET / CANNOT_ASSESS, ratings as
    ordinal options valued (level - 1) / (levels - 1) plus AutoRubric's own "cannot assess" option."""
    from autorubric.types import (
        CANONICAL_NA_OPTION,
        CriterionOption,
        CriterionReport,
        CriterionVerdict,
        MultiChoiceVerdict,
    )

    reports = []
    for c in rubric.criteria:
        a = answers[c.id]
        failed = "infrastructure: the judge call failed" if a is None else None
        if c.levels is None:
            verdict = (
                CriterionVerdict.CANNOT_ASSESS
                if a == "unknown"
                else CriterionVerdict.MET
                if a == 1.0
                else CriterionVerdict.UNMET
            )
            reports.append(
                CriterionReport(
                    weight=c.weight, requirement=c.text, name=c.id, verdict=verdict, reason="", error=failed
                )
            )
            continue
        options = [CriterionOption(label=str(k + 1), value=k / (c.levels - 1)) for k in range(c.levels)]
        options.append(CANONICAL_NA_OPTION)
        if a == "unknown":
            choice = MultiChoiceVerdict(
                selected_index=c.levels, selected_label=CANONICAL_NA_OPTION.label, value=0.0, na=True
            )
        else:
            k = round(float(a or 0.0) * (c.levels - 1))
            choice = MultiChoiceVerdict(selected_index=k, selected_label=str(k + 1), value=k / (c.levels - 1))
        reports.append(
            CriterionReport(
                weight=c.weight,
                requirement=c.text,
                name=c.id,
                options=options,
                scale_type="ordinal",
                multi_choice_verdict=choice,
                reason="",
                error=failed,
            )
        )
    return reports


def autorubric_config(policy: str, partial_credit: float) -> Any:
    from autorubric.types import CannotAssessConfig, CannotAssessStrategy

    return CannotAssessConfig(strategy=CannotAssessStrategy(policy), partial_credit=partial_credit)


def autorubric_single(rubric: Rubric, answers: dict[str, Answer], policy: str, partial: float) -> tuple:
    from autorubric.scoring import score_reports

    reports, config = autorubric_reports(rubric, answers), autorubric_config(policy, partial)
    return score_reports(reports, config, normalize=True), score_reports(reports, config, normalize=False)


def autorubric_ensemble(
    rubric: Rubric,
    verdicts: list[dict[str, Answer]],
    weights: list[float],
    aggregation: str,
    ordinal: str,
    policy: str,
    partial: float,
) -> tuple:
    from autorubric import LLMConfig
    from autorubric.graders.criterion_grader import (
        CriterionGrader,
        CriterionResult,
        JudgeCriterionResults,
        JudgeSpec,
    )

    names = [f"judge{i}" for i in range(len(verdicts))]
    grader = CriterionGrader(
        # The model is never called: aggregate() only combines the recorded verdicts.
        judges=[
            JudgeSpec(LLMConfig(model="openai/unused"), n, weight=w)
            for n, w in zip(names, weights, strict=True)
        ],
        aggregation=aggregation,
        ordinal_aggregation=ordinal,
        cannot_assess_config=autorubric_config(policy, partial),
    )
    results = [
        JudgeCriterionResults(
            judge_id=n,
            weight=w,
            criterion_results=[CriterionResult(r) for r in autorubric_reports(rubric, v)],
        )
        for n, w, v in zip(names, weights, verdicts, strict=True)
    ]
    report = asyncio.run(grader.aggregate(results))
    return report.score, report.raw_score, [report.judge_scores[n] for n in names]


# ---- arr's side ----------------------------------------------------------------------------------------------------


def arr_scores(judge: RubricJudge, rubric: Rubric, image: Any) -> tuple:
    j = judge.score_many([ScoreItem(rubric.prompt, image, rubric)])[0]
    return j.score, j.raw_score, list(j.judge_scores.values())


def replays(rubric: Rubric, image: Any, verdicts: list[dict[str, Answer]]) -> list[Replay]:
    return [
        Replay(f"judge{i}", {(id(image), cid): a for cid, a in v.items()}) for i, v in enumerate(verdicts)
    ]


# ---- comparison ----------------------------------------------------------------------------------------------------


def same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, abs_tol=1e-9)


def compare(name: str, pairs: list[tuple[Any, Any]], rows: list[dict[str, Any]]) -> None:
    agree = sum(same(a, b) for a, b in pairs)
    first = next(((a, b) for a, b in pairs if not same(a, b)), None)
    rows.append({"comparison": name, "n": len(pairs), "agree": agree, "first_difference": first})
    note = "" if first is None else f"   first difference: arr {first[0]} vs AutoRubric {first[1]}"
    print(f"{'AGREE ' if agree == len(pairs) else 'DIFFER'} {agree:4d}/{len(pairs):<4d} {name}{note}")


ENSEMBLES = [
    # (arr aggregation, arr ordinal, AutoRubric aggregation, AutoRubric ordinal, judge weights)
    ("majority", "mean", "majority", "mean", [1.0, 1.0, 1.0]),
    ("majority", "median", "majority", "median", [1.0, 1.0, 1.0]),
    ("majority", "mode", "majority", "mode", [1.0, 1.0, 1.0]),
    ("weighted", "mean", "weighted", "weighted_mean", [2.0, 1.0, 1.0]),
    ("unanimous", "mean", "unanimous", "mean", [1.0, 1.0, 1.0]),
    ("any", "mean", "any", "mean", [1.0, 1.0, 1.0]),
]


def run_comparisons(pixel: list, synthetic: list, partial: float) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for label, samples in (("pixel", pixel), ("synthetic", synthetic)):
        for policy in NA_POLICIES:
            pairs = []
            for rubric, image, verdicts in samples:
                judge = RubricJudge(
                    replays(rubric, image, verdicts[:1])[0], na_policy=policy, partial_credit=partial
                )
                score, raw, _ = arr_scores(judge, rubric, image)
                pairs.append(((score, raw), autorubric_single(rubric, verdicts[0], policy, partial)))
            compare(f"{label}: one judge, score and raw score, cannot-assess {policy}", pairs, rows)
    for policy in NA_POLICIES:
        for agg, ordinal, ar_agg, ar_ordinal, weights in ENSEMBLES:
            pairs = []
            for rubric, image, verdicts in synthetic:
                backend = EnsembleBackend(
                    replays(rubric, image, verdicts), agg, ordinal=ordinal, weights=weights, snap=True
                )
                judge = RubricJudge(backend, na_policy=policy, partial_credit=partial)
                got = arr_scores(judge, rubric, image)
                want = autorubric_ensemble(rubric, verdicts, weights, ar_agg, ar_ordinal, policy, partial)
                pairs.append((got, want))
            name = f"synthetic: 3 judges {weights}, {agg} + ordinal {ordinal} (AutoRubric {ar_agg} + {ar_ordinal})"
            compare(f"{name}, cannot-assess {policy}", pairs, rows)
    return rows


def on_purpose(partial: float) -> list[dict[str, Any]]:
    """One example of each designed difference, scored by both."""
    image = render(Scene())
    cases = []

    def case(name: str, why: str, arr_value: Any, autorubric_value: Any) -> None:
        cases.append({"case": name, "arr": arr_value, "autorubric": autorubric_value, "why": why})
        print(f"ON PURPOSE  {name}: arr {arr_value}, AutoRubric {autorubric_value}\n            {why}")

    flaw = Rubric(
        "p",
        [Criterion("ok", "The circle is red."), Criterion("mark", "A watermark is visible.", weight=-1.0)],
    )
    seen = [{"ok": 1.0, "mark": 1.0}, {"ok": 1.0, "mark": 1.0}, {"ok": 1.0, "mark": 0.0}]
    sceptical = RubricJudge(EnsembleBackend(replays(flaw, image, seen), "min"))
    case(
        "sceptical ensemble, a penalty 2 of 3 judges see",
        "arr's `min` takes the worst answer for the criterion's sign, so a penalty any judge sees applies; "
        "AutoRubric's closest, `unanimous`, applies a penalty only when every judge sees it.",
        arr_scores(sceptical, flaw, image)[0],
        autorubric_ensemble(flaw, seen, [1.0] * 3, "unanimous", "min", "skip", partial)[0],
    )
    rated = Rubric("p", [Criterion("ok", "t"), Criterion("blur", "How blurry is it?", weight=-1.0, levels=5)])
    seen = [{"ok": 1.0, "blur": 0.25}, {"ok": 1.0, "blur": 1.0}, {"ok": 1.0, "blur": 1.0}]
    sceptical = RubricJudge(EnsembleBackend(replays(rated, image, seen), "min"))
    case(
        "sceptical ordinal penalty (levels 2, 5, 5 of 5)",
        "arr's ordinal `min` is the worst level for the sign (5 for a penalty); AutoRubric's ordinal `min` is "
        "always the lowest level, the most lenient one for a penalty.",
        arr_scores(sceptical, rated, image)[0],
        autorubric_ensemble(rated, seen, [1.0] * 3, "majority", "min", "skip", partial)[0],
    )
    logged = Rubric("p", [Criterion("z", "Logged only.", weight=0.0)])
    case(
        "only zero weights",
        "arr gives no score (None) when no scored criterion carries weight; AutoRubric gives 0.0.",
        arr_scores(RubricJudge(replays(logged, image, [{"z": 1.0}])[0]), logged, image)[0],
        autorubric_single(logged, {"z": 1.0}, "skip", partial)[0],
    )
    two = Rubric("p", [Criterion("a", "t"), Criterion("b", "t")])
    case(
        "a failed question (b) beside a judged one (a = yes)",
        "arr leaves the sample without a score (a transient failure is retried or masked, never scored); "
        "AutoRubric scores the verdict that stands in for the failed call (here UNMET).",
        arr_scores(RubricJudge(replays(two, image, [{"a": 1.0, "b": None}])[0]), two, image)[0],
        autorubric_single(two, {"a": 1.0, "b": None}, "skip", partial)[0],
    )
    return cases


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--pairs", type=int, default=60, help="shapes pairs judged by the pixel judge (2 images each)"
    )
    p.add_argument("--synthetic", type=int, default=300, help="random rubrics, each answered by three judges")
    p.add_argument("--partial-credit", type=float, default=0.3, help="the value of the 'partial' policy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/results/scorer_vs_autorubric.json")
    a = p.parse_args()
    start = time.perf_counter()
    import autorubric

    pixel = pixel_samples(a.pairs, a.seed)
    synthetic = synthetic_samples(a.synthetic, a.seed)
    rows = run_comparisons(pixel, synthetic, a.partial_credit)
    cases = on_purpose(a.partial_credit)
    result = {
        "autorubric": getattr(autorubric, "__version__", "unknown"),
        "pixel_images": len(pixel),
        "synthetic_rubrics": len(synthetic),
        "comparisons": rows,
        "all_agree": all(r["agree"] == r["n"] for r in rows),
        "on_purpose": cases,
        "seconds": time.perf_counter() - start,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str) + "\n", encoding="utf-8")
    verdict = "agree on every comparison" if result["all_agree"] else "DIFFER somewhere (see above)"
    print(f"arr and AutoRubric {result['autorubric']} {verdict}; details in {out}")


if __name__ == "__main__":
    main()
