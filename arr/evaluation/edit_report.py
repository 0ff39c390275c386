"""`report.html` of an editing evaluation: headline cards, per-category and per-language tables, a bar chart, and
one table row per sample with its source / edit / ground-truth images, sortable by any column.

Images are files beside the report (`edits/`, `thumbs/`), not embedded: a benchmark has hundreds to thousands of
samples, too many for one self-contained page. Click a column header to sort (a few lines of inline JS).
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from arr.evaluation.edit_benchmarks import EditSample
from arr.evaluation.edit_results import HEADLINE, LOWER_IS_BETTER, file_stem
from arr.report import cards, html_table, write_html

THUMB = 160

SORT_JS = """
<script>
function sortTable(th) {
  const table = th.closest('table'), body = table.tBodies[0], col = th.cellIndex;
  const asc = th.dataset.dir !== 'asc';
  th.parentNode.querySelectorAll('th').forEach(h => delete h.dataset.dir);
  th.dataset.dir = asc ? 'asc' : 'desc';
  const key = tr => { const c = tr.cells[col]; const v = c.dataset.v ?? c.textContent;
                      const n = parseFloat(v); return isNaN(n) ? v : n; };
  const rows = Array.from(body.rows).sort((a, b) => {
    const x = key(a), y = key(b);
    if (typeof x === 'number' && typeof y === 'number') return asc ? x - y : y - x;
    return asc ? String(x).localeCompare(String(y)) : String(y).localeCompare(String(x));
  });
  rows.forEach(r => body.appendChild(r));
}
</script>
<style>
table.samples th { cursor: pointer; user-select: none; } table.samples th[data-dir=asc]::after { content: ' \\25B2'; }
table.samples th[data-dir=desc]::after { content: ' \\25BC'; }
table.samples img { width: 72px; height: 72px; object-fit: contain; image-rendering: pixelated; border: 1px solid #ddd; }
table.samples td.text { text-align: left; max-width: 220px; font-size: 12px; }
div.scroll { overflow-x: auto; }
</style>
"""


def _thumb(image: Image.Image, path: Path) -> None:
    image = image.convert("RGB")
    if max(image.size) > THUMB:
        image.thumbnail((THUMB, THUMB))
    image.save(path)


def _fmt(v: Any) -> str:
    return "" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def _score_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    columns: dict[str, None] = {}
    for r in rows:
        for group in ("scores", "metrics"):
            for k, v in (r.get(group) or {}).items():
                if isinstance(v, (int, float)):
                    columns[k] = None
    return list(columns)


def _group_table(groups: dict[str, dict[str, Any]], columns: list[str], label: str) -> str:
    rows = [{label: name, "n": m.get("n"), **{c: m.get(c) for c in columns}} for name, m in groups.items()]
    return html_table(rows, [label, "n", *columns])


def _bar_chart(summary: dict[str, Any]) -> str:
    from arr.evaluation.preference_report import svg_bar_chart

    protocol = summary.get("protocol")
    if protocol not in HEADLINE:
        return ""
    key, scale = HEADLINE[protocol]
    groups = {
        c: {key: (m.get(key) or 0.0) / scale}
        for c, m in summary["categories"].items()
        if m.get(key) is not None
    }
    if not groups:
        return ""
    return svg_bar_chart(
        groups, f"{key} per category (divided by {scale:g})", width=max(420, 70 * len(groups))
    )


def write_edit_report(
    summary: dict[str, Any],
    rows: Sequence[dict[str, Any]],
    samples: Sequence[EditSample],
    out_dir: str | Path,
) -> Path:
    """Write OUT/report.html (and thumbnails of sources and ground truths in OUT/thumbs/)."""
    out = Path(out_dir)
    thumbs = out / "thumbs"
    thumbs.mkdir(parents=True, exist_ok=True)
    by_id = {s.id: s for s in samples}
    columns = _score_columns(rows)
    has_target = any(by_id[r["id"]].target is not None for r in rows if r["id"] in by_id)

    head = ["id", "category", "language", "instruction", "source", "edit"] + (
        ["ground truth"] if has_target else []
    )
    head += ["judge says"] + columns
    body = []
    for r in rows:
        s = by_id.get(r["id"])
        stem = file_stem(r["id"])
        cells = [
            f"<td>{html.escape(r['id'])}</td>",
            f"<td>{html.escape(r.get('category') or '')}</td>",
            f"<td>{html.escape(r.get('language') or '')}</td>",
            f"<td class='text'>{html.escape(r.get('instruction') or '')}</td>",
        ]
        images = []
        if s is not None and s.source is not None:
            _thumb(s.source, thumbs / f"{stem}_source.png")
            images.append(f"thumbs/{stem}_source.png")
        else:
            images.append(None)
        images.append(r.get("edit"))
        if has_target:
            if s is not None and s.target is not None:
                _thumb(s.target, thumbs / f"{stem}_target.png")
                images.append(f"thumbs/{stem}_target.png")
            else:
                images.append(None)
        for src in images:
            cells.append(f"<td><img loading='lazy' src='{html.escape(src)}'></td>" if src else "<td></td>")
        note = r.get("error") or r.get("reason") or ""
        cells.append(f"<td class='text'>{html.escape(note)}</td>")
        values = {**(r.get("scores") or {}), **(r.get("metrics") or {})}
        for c in columns:
            v = values.get(c)
            cells.append(f"<td data-v='{'' if v is None else v}'>{_fmt(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    header = "".join(f"<th onclick='sortTable(this)'>{html.escape(h)}</th>" for h in head)
    sample_table = (
        f"{SORT_JS}<p>Click a column to sort ({', '.join(c for c in columns if c in LOWER_IS_BETTER) or 'every score'}"
        f"{' is lower-is-better' if any(c in LOWER_IS_BETTER for c in columns) else ' is higher-is-better'}).</p>"
        f"<div class='scroll'><table class='samples'><thead><tr>{header}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )

    overall = summary["overall"]
    headline = summary.get("headline") or {}
    card_values = {"samples scored": f"{summary['n_scored']} / {summary['n_samples']}"}
    if headline.get("value") is not None:
        card_values[f"{headline['metric']} (mean)"] = f"{headline['value']:.3f}"
    for c in columns[:5]:
        if c != headline.get("metric") and overall.get(c) is not None:
            card_values[c] = f"{overall[c]:.3f}"
    card_values["skipped rows"] = str(len(summary["skipped"]))
    card_values["failed judgments"] = str(len(summary["failed"]))

    sections = [
        ("Summary", cards(card_values)),
        ("Per category", _bar_chart(summary) + _group_table(summary["categories"], columns, "category")),
    ]
    if len(summary["languages"]) > 1:
        sections.append(("Per language", _group_table(summary["languages"], columns, "language")))
    if summary["skipped"] or summary["failed"]:
        problems = [{"id": x["id"], "problem": "skipped: " + x["reason"]} for x in summary["skipped"]]
        problems += [{"id": x["id"], "problem": "judge failed: " + x["error"]} for x in summary["failed"]]
        sections.append(("Skipped rows and failed judgments", html_table(problems, ["id", "problem"])))
    sections.append(("Samples", sample_table))
    sections.append(
        (
            "Settings",
            f"<pre>{html.escape(json.dumps({k: summary.get(k) for k in ('suite', 'schema', 'source', 'policy', 'protocol', 'judge')}, indent=1, default=str))}</pre>",
        )
    )
    subtitle = f"policy {summary.get('policy')} · judge {summary.get('judge') or 'none'}"
    return write_html(
        out / "report.html", f"Editing benchmark: {summary.get('suite', '')}", subtitle, sections
    )


__all__ = ["write_edit_report"]
