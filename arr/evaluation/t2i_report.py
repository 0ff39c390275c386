"""`report.html` of a text-to-image suite: headline cards, the per-category table and bar chart, and one row per
image with its prompt, the judge's reason and scores, sortable by any column (images are files beside the report,
as for editing suites)."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from arr.evaluation.edit_report import SORT_JS
from arr.plots import bar_chart
from arr.report import cards, html_table, write_html

COLUMNS = ("correct", "score")


def _fmt(v: Any) -> str:
    return "" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def _sample_table(rows: Sequence[dict[str, Any]]) -> str:
    head = ["id", "category", "prompt", "image", "judge says", *COLUMNS]
    body = []
    for r in rows:
        scores = r.get("scores") or {}
        cells = [
            f"<td>{html.escape(r['id'])}</td>",
            f"<td>{html.escape(r.get('category') or '')}</td>",
            f"<td class='text'>{html.escape(r.get('prompt') or '')}</td>",
            f"<td><img loading='lazy' src='{html.escape(r['image'])}'></td>"
            if r.get("image")
            else "<td></td>",
            f"<td class='text'>{html.escape(r.get('error') or r.get('reason') or '')}</td>",
        ]
        for c in COLUMNS:
            v = scores.get(c)
            cells.append(f"<td data-v='{'' if v is None else v}'>{_fmt(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    header = "".join(f"<th onclick='sortTable(this)'>{html.escape(h)}</th>" for h in head)
    return (
        f"{SORT_JS}<p>Click a column to sort.</p><div class='scroll'><table class='samples'><thead><tr>{header}"
        f"</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def write_t2i_report(
    summary: dict[str, Any], rows: Sequence[dict[str, Any]], out_dir: str | Path, self_contained: bool = False
) -> Path:
    """Write OUT/report.html (`self_contained`: the images inlined, one file to share)."""
    out = Path(out_dir)
    headline = summary.get("headline") or {}
    values = {"images scored": f"{summary['n_scored']} / {summary['n_samples']}"}
    if headline.get("value") is not None:
        values["GenEval overall (mean of categories)"] = f"{headline['value']:.3f}"
    if summary["overall"].get("score") is not None:
        values["rubric score (mean)"] = f"{summary['overall']['score']:.3f}"
    values["skipped prompts"] = str(len(summary["skipped"]))
    values["failed judgments"] = str(len(summary["failed"]))
    categories = summary["categories"]
    table = html_table(
        [{"category": c, "n": m.get("n"), **{k: m.get(k) for k in COLUMNS}} for c, m in categories.items()],
        ["category", "n", *COLUMNS],
    )
    bars = {c: {"correct": m["correct"]} for c, m in categories.items() if m.get("correct") is not None}
    chart = (
        f"<div class='plots'>{bar_chart(bars, 'Fraction correct per category', 'fraction correct', xlabel='category')}</div>"
        if bars
        else ""
    )
    sections = [("Summary", cards(values)), ("Per category", chart + table)]
    if summary["skipped"] or summary["failed"]:
        problems = [{"id": x["id"], "problem": "skipped: " + x["reason"]} for x in summary["skipped"]]
        problems += [{"id": x["id"], "problem": "judge failed: " + x["error"]} for x in summary["failed"]]
        sections.append(("Skipped prompts and failed judgments", html_table(problems, ["id", "problem"])))
    sections.append(("Images", _sample_table(rows)))
    keys = ("suite", "schema", "source", "policy", "protocol", "judge", "samples_per_prompt")
    settings = json.dumps({k: summary.get(k) for k in keys}, indent=1, default=str)
    sections.append(("Settings", f"<pre>{html.escape(settings)}</pre>"))
    subtitle = f"policy {summary.get('policy')} · judge {summary.get('judge')}"
    title = f"Text-to-image benchmark: {summary.get('suite', '')}"
    return write_html(out / "report.html", title, subtitle, sections, self_contained=self_contained)


__all__ = ["write_t2i_report"]
