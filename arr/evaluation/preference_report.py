"""The report of a judge evaluation on preference pairs: `results.json` and `report.html` with summary cards, a bar
chart of accuracy and position bias per judge configuration, and the metrics and per-category tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from arr.plots import bar_chart
from arr.report import cards, html_table, write_html

DEFINITIONS = (
    "<p class='note'>accuracy: the labelled winner is picked in both image orders (a flip or a tie is not "
    "correct); single-order accuracy: one question in one order, averaged over both orders; flip rate: verdicts "
    "that change when the images are swapped (position bias); tie rate: swap-consistent ties (flips included); "
    "failures count against accuracy. Cohen's kappa and Krippendorff's alpha: agreement with the labels corrected "
    "for chance (1: perfect, 0: chance), with 95% bootstrap intervals. A configuration in which no pair could be "
    "judged is skipped, with the reason.</p>"
)


def _rate(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _interval(v: dict[str, float] | None) -> str:
    """A statistic with its 95% bootstrap interval."""
    return "-" if v is None else f"{v['value']:.3f} [{v['low']:.3f}, {v['high']:.3f}]"


def _metrics_rows(configs: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, m in configs.items():
        cost = m["cost"]
        tokens = None if cost["prompt_tokens"] is None else cost["prompt_tokens"] + cost["completion_tokens"]
        rows.append(
            {
                "configuration": name,
                "accuracy": _rate(m["accuracy"]),
                "single-order accuracy": _rate(m["single_order_accuracy"]),
                "flip rate": _rate(m["flip_rate"]),
                "tie rate": _rate(m["tie_rate"]),
                "failure rate": _rate(m["failure_rate"]),
                "Cohen's kappa": _interval(m.get("cohen_kappa")),
                "Krippendorff's alpha": _interval(m.get("krippendorff_alpha")),
                "judge calls": cost["calls"],
                "cached": cost["cached"],
                "seconds": f"{cost['seconds']:.2f}",
                "tokens": "-" if tokens is None else tokens,
            }
        )
    return rows


def _category_rows(configs: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per category, the configurations side by side (accuracy and flip rate of each)."""
    categories = list(dict.fromkeys(c for m in configs.values() for c in m["categories"]))
    rows = []
    for cat in categories:
        row: dict[str, Any] = {"category": cat}
        for name, m in configs.items():
            c = m["categories"].get(cat)
            row.setdefault("pairs", c["n"] if c else "-")
            row[f"{name}: accuracy"] = _rate(c["accuracy"]) if c else "-"
            row[f"{name}: flip rate"] = _rate(c["flip_rate"]) if c else "-"
        rows.append(row)
    return rows


def _criteria_rows(validation: dict[str, Any]) -> list[dict[str, Any]]:
    """The judge's per-criterion verdicts against labels: all criteria first, then each criterion."""
    return [
        {
            "criterion": name,
            "n": v["n"],
            "accuracy": _interval(v["accuracy"]),
            "Cohen's kappa": _interval(v["cohen_kappa"]),
            "Krippendorff's alpha": _interval(v["krippendorff_alpha"]),
            "failures": v["failures"],
            "judge unknown": v["judge_unknown"],
        }
        for name, v in [("(all)", validation), *validation["criteria"].items()]
    ]


def write_report(result: dict[str, Any], out_dir: str | Path, title: str) -> tuple[Path, Path]:
    """`results.json` and `report.html` (cards, bar chart, metrics and per-category tables) in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "results.json"
    json_path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    configs, skipped = result["configs"], result.get("skipped") or {}
    summary = {"pairs": str(result["n_pairs"]), "judge": result["judge"]["backend"]}
    for name, m in configs.items():
        if m["accuracy"] is not None:
            summary[f"accuracy ({name})"] = f"{m['accuracy']:.3f}"
    for name in skipped:
        summary[f"accuracy ({name})"] = "skipped"
    sections = [("Summary", cards(summary))]
    if skipped:
        sections.append(
            (
                "Skipped configurations",
                html_table([{"configuration": k, "why": v} for k, v in skipped.items()]),
            )
        )
    if configs:
        chart = bar_chart(
            {
                name: {
                    "accuracy": m["accuracy"],
                    "flip rate": m["flip_rate"],
                    "tie rate": m["tie_rate"],
                    "failure rate": m["failure_rate"],
                }
                for name, m in configs.items()
            },
            "Accuracy and position bias per judge configuration",
            "fraction of pairs",
            xlabel="judge configuration",
        )
        sections += [
            ("Accuracy and flip rate", f"<div class='plots'>{chart}</div>"),
            ("Metrics", html_table(_metrics_rows(configs))),
            ("Per category", html_table(_category_rows(configs))),
        ]
    validation = result.get("criteria_validation")
    if validation:
        sections.append(("Per criterion, against labels", html_table(_criteria_rows(validation))))
    sections.append(("Definitions", DEFINITIONS))
    html_path = write_html(out / "report.html", title, f"judge {result['judge']['fingerprint']}", sections)
    return json_path, html_path


__all__ = ["write_report"]
