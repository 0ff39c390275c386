"""The report of a judge evaluation on preference pairs: `results.json` and `report.html` with summary cards, a bar
chart of accuracy and position bias per judge configuration, and the metrics and per-category tables."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any


def svg_bar_chart(
    groups: dict[str, dict[str, float | None]], title: str, width: int = 560, height: int = 280
) -> str:
    """Grouped bars in [0, 1]: one group per key of `groups`, one bar per metric (missing values are left out)."""
    from arr.report import PALETTE

    metrics = list(dict.fromkeys(m for values in groups.values() for m in values))
    left, right, top, bottom = 44, 12, 28, 58
    plot_w, plot_h = width - left - right, height - top - bottom
    group_w = plot_w / max(len(groups), 1)
    bar_w = group_w * 0.8 / max(len(metrics), 1)
    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' font-family='sans-serif' "
        f"font-size='11'><text x='{width / 2}' y='16' text-anchor='middle' font-size='13'>{html.escape(title)}</text>"
    ]
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = top + plot_h * (1 - tick)
        parts.append(f"<line x1='{left}' x2='{width - right}' y1='{y:.1f}' y2='{y:.1f}' stroke='#e5e5e5'/>")
        parts.append(f"<text x='{left - 6}' y='{y + 4:.1f}' text-anchor='end'>{tick:g}</text>")
    for g, (name, values) in enumerate(groups.items()):
        x0 = left + g * group_w + group_w * 0.1
        for m, metric in enumerate(metrics):
            v = values.get(metric)
            if v is None:
                continue
            h = plot_h * min(max(v, 0.0), 1.0)
            x, y = x0 + m * bar_w, top + plot_h - h
            color = PALETTE[m % len(PALETTE)]
            parts.append(
                f"<rect x='{x:.1f}' y='{y:.1f}' width='{bar_w * 0.92:.1f}' height='{h:.1f}' fill='{color}'>"
                f"<title>{html.escape(name)} {html.escape(metric)}: {v:.3f}</title></rect>"
            )
            parts.append(
                f"<text x='{x + bar_w * 0.46:.1f}' y='{y - 3:.1f}' text-anchor='middle'>{v:.2f}</text>"
            )
        parts.append(
            f"<text x='{left + (g + 0.5) * group_w:.1f}' y='{top + plot_h + 16}' text-anchor='middle'>"
            f"{html.escape(name)}</text>"
        )
    for m, metric in enumerate(metrics):
        x = left + m * 120
        y = height - 14
        parts.append(f"<rect x='{x}' y='{y - 9}' width='10' height='10' fill='{PALETTE[m % len(PALETTE)]}'/>")
        parts.append(f"<text x='{x + 14}' y='{y}'>{html.escape(metric)}</text>")
    parts.append(
        f"<line x1='{left}' x2='{width - right}' y1='{top + plot_h}' y2='{top + plot_h}' stroke='#333'/>"
    )
    parts.append("</svg>")
    return "".join(parts)


def write_report(result: dict[str, Any], out_dir: str | Path, title: str) -> tuple[Path, Path]:
    """`results.json` and `report.html` (cards, bar chart, metrics and per-category tables) in `out_dir`."""
    from arr.report import cards, html_table, write_html

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "results.json"
    json_path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    def fmt(v: Any) -> Any:
        return "-" if v is None else v

    def ci(v: dict[str, float] | None) -> str:
        return "-" if v is None else f"{v['value']:.3f} [{v['low']:.3f}, {v['high']:.3f}]"

    configs = result["configs"]
    rows = []
    for name, m in configs.items():
        cost = m["cost"]
        rows.append(
            {
                "configuration": name,
                "accuracy": fmt(m["accuracy"]),
                "single-order accuracy": fmt(m["single_order_accuracy"]),
                "flip rate": fmt(m["flip_rate"]),
                "tie rate": fmt(m["tie_rate"]),
                "failure rate": fmt(m["failure_rate"]),
                "Cohen's kappa": ci(m.get("cohen_kappa")),
                "Krippendorff's alpha": ci(m.get("krippendorff_alpha")),
                "judge calls": cost["calls"],
                "cached": cost["cached"],
                "seconds": round(cost["seconds"], 3),
                "tokens": "-"
                if cost["prompt_tokens"] is None
                else cost["prompt_tokens"] + cost["completion_tokens"],
            }
        )
    cat_rows = []
    for name, m in configs.items():
        for cat, c in m["categories"].items():
            cat_rows.append(
                {
                    "configuration": name,
                    "category": cat,
                    "n": c["n"],
                    "accuracy": fmt(c["accuracy"]),
                    "flip rate": fmt(c["flip_rate"]),
                }
            )
    chart = svg_bar_chart(
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
    )
    summary = {"pairs": str(result["n_pairs"]), "judge": result["judge"]["backend"]}
    for name, m in configs.items():
        if m["accuracy"] is not None:
            summary[f"accuracy ({name})"] = f"{m['accuracy']:.3f}"
    sections = [
        ("Summary", cards(summary)),
        ("Accuracy and flip rate", f"<div class='plots'>{chart}</div>"),
        ("Metrics", html_table(rows)),
    ]
    if result.get("skipped"):
        sections.append(
            ("Skipped", html_table([{"configuration": k, "why": v} for k, v in result["skipped"].items()]))
        )
    sections.append(("Per category", html_table(cat_rows)))
    validation = result.get("criteria_validation")
    if validation:
        crit_rows = [
            {
                "criterion": name,
                "n": v["n"],
                "accuracy": ci(v["accuracy"]),
                "Cohen's kappa": ci(v["cohen_kappa"]),
                "Krippendorff's alpha": ci(v["krippendorff_alpha"]),
                "failures": v["failures"],
                "judge unknown": v["judge_unknown"],
            }
            for name, v in [("(all)", validation), *validation["criteria"].items()]
        ]
        sections.append(("Per criterion, against labels", html_table(crit_rows)))
    sections.append(
        (
            "Definitions",
            "<p>accuracy: the labelled winner is picked in both image orders (a flip or a tie is not correct); "
            "single-order accuracy: one question in one order, averaged over both orders; flip rate: verdicts that "
            "change when the images are swapped; tie rate: swap-consistent ties (flips included); failures count "
            "against accuracy. Cohen's kappa and Krippendorff's alpha: agreement with the labels corrected for "
            "chance (1: perfect, 0: chance), with 95% bootstrap intervals.</p>",
        )
    )
    html_path = write_html(out / "report.html", title, f"judge {result['judge']['fingerprint']}", sections)
    return json_path, html_path


__all__ = ["svg_bar_chart", "write_report"]
