"""`report.html` of an editing evaluation: headline cards, per-category and per-language tables, a bar chart, and
one table row per sample with its source / edit / ground-truth thumbnails, sortable by any column.

Images are thumbnails beside the report (`thumbs/`; a thumbnail of an edit links to the full image in `edits/`):
a benchmark has hundreds to thousands of samples. `self_contained=True` inlines the thumbnails instead (no links),
giving one file to share. Click a column header to sort (a few lines of inline JS); the sample table scrolls in its
own box, so the page keeps its width.
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
from arr.plots import bar_chart
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
table.samples { font-size: 12px; }
table.samples th { position: sticky; top: 0; z-index: 1; }
table.samples td { padding: 3px 5px; }
table.samples img { width: 64px; height: 64px; object-fit: contain; image-rendering: pixelated; border: 1px solid #ddd; }
table.samples td.text { min-width: 140px; max-width: 240px; }
table.samples td.text small { color: #666; }
div.scroll.samples { max-height: 80vh; border: 1px solid #ddd; }
</style>
"""


def _thumb(image: Image.Image, path: Path) -> None:
    image = image.convert("RGB")
    if max(image.size) > THUMB:
        image.thumbnail((THUMB, THUMB))
    image.save(path)


def _load(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


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
    rows = [
        {label: name, "n": m.get("n"), **{c: _fmt(m.get(c)) for c in columns}} for name, m in groups.items()
    ]
    return html_table(rows, [label, "n", *columns])


def _bar_chart(summary: dict[str, Any]) -> str:
    protocol = summary.get("protocol")
    if protocol not in HEADLINE:
        return ""
    key, scale = HEADLINE[protocol]
    groups = {c: {key: m[key]} for c, m in summary["categories"].items() if m.get(key) is not None}
    if not groups:
        return ""
    return bar_chart(
        groups,
        f"{key} per category (mean)",
        f"{key} (0 to {scale:g}, higher is better)",
        ylim=(0.0, scale),
        xlabel="category",
    )


def _image_cells(
    row: dict[str, Any], sample: EditSample | None, out: Path, has_target: bool, self_contained: bool
) -> list[str]:
    """The source, edit and ground-truth thumbnails of one row (the edit's links to the full image unless the
    page is self-contained)."""
    stem = file_stem(row["id"])
    images: list[tuple[Image.Image | None, str, str | None]] = [
        (sample.source if sample is not None else None, "source", None)
    ]
    edit_path = out / row["edit"] if row.get("edit") else None
    edit = _load(edit_path) if edit_path is not None and edit_path.is_file() else None
    images.append((edit, "edit", None if self_contained else row.get("edit")))
    if has_target:
        images.append((sample.target if sample is not None else None, "target", None))
    cells = []
    for image, kind, link in images:
        if image is None:
            cells.append("<td></td>")
            continue
        src = f"thumbs/{stem}_{kind}.png"
        _thumb(image, out / src)
        tag = f"<img loading='lazy' src='{html.escape(src)}' alt='{kind}'>"
        cells.append(f"<td><a href='{html.escape(link)}'>{tag}</a></td>" if link else f"<td>{tag}</td>")
    return cells


def _sample_table(
    rows: Sequence[dict[str, Any]],
    by_id: dict[str, EditSample],
    columns: list[str],
    out: Path,
    self_contained: bool,
) -> str:
    has_target = any(by_id[r["id"]].target is not None for r in rows if r["id"] in by_id)
    languages = {r.get("language") for r in rows}
    head = ["sample", "source", "edit"] + (["ground truth"] if has_target else []) + ["judge says", *columns]
    body = []
    for r in rows:
        where = " · ".join(
            x for x in (r.get("category"), r.get("language") if len(languages) > 1 else None) if x
        )
        cells = [
            f"<td class='text' data-v='{html.escape(r['id'])}'>{html.escape(r.get('instruction') or '')}<br>"
            f"<small>{html.escape(r['id'])}{' · ' + html.escape(where) if where else ''}</small></td>"
        ]
        cells += _image_cells(r, by_id.get(r["id"]), out, has_target, self_contained)
        note = r.get("error") or r.get("reason") or ""
        cells.append(f"<td class='text'>{html.escape(note)}</td>")
        values = {**(r.get("scores") or {}), **(r.get("metrics") or {})}
        for c in columns:
            v = values.get(c)
            cells.append(f"<td class='num' data-v='{'' if v is None else v}'>{_fmt(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    header = "".join(f"<th onclick='sortTable(this)'>{html.escape(h)}</th>" for h in head)
    lower = [c for c in columns if c in LOWER_IS_BETTER]
    direction = (
        f"{', '.join(lower)} lower is better, the rest higher" if lower else "every score is higher-is-better"
    )
    return (
        f"{SORT_JS}<p class='note'>Click a column to sort ({direction}).</p>"
        f"<div class='scroll samples'><table class='samples'><thead><tr>{header}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _summary_cards(summary: dict[str, Any], columns: list[str]) -> str:
    overall = summary["overall"]
    headline = summary.get("headline") or {}
    values = {"samples scored": f"{summary['n_scored']} / {summary['n_samples']}"}
    if headline.get("value") is not None:
        values[f"{headline['metric']} (mean)"] = f"{headline['value']:.3f}"
    for c in columns[:5]:
        if c != headline.get("metric") and overall.get(c) is not None:
            values[c] = f"{overall[c]:.3f}"
    values["skipped rows"] = str(len(summary["skipped"]))
    values["failed judgments"] = str(len(summary["failed"]))
    return cards(values)


def write_edit_report(
    summary: dict[str, Any],
    rows: Sequence[dict[str, Any]],
    samples: Sequence[EditSample],
    out_dir: str | Path,
    self_contained: bool = False,
) -> Path:
    """Write OUT/report.html and the thumbnails it shows (OUT/thumbs/); with `self_contained`, the thumbnails are
    inlined in the page."""
    out = Path(out_dir)
    (out / "thumbs").mkdir(parents=True, exist_ok=True)
    columns = _score_columns(rows)
    sections = [
        ("Summary", _summary_cards(summary, columns)),
        ("Per category", _bar_chart(summary) + _group_table(summary["categories"], columns, "category")),
    ]
    if len(summary["languages"]) > 1:
        sections.append(("Per language", _group_table(summary["languages"], columns, "language")))
    if summary["skipped"] or summary["failed"]:
        problems = [{"id": x["id"], "problem": "skipped: " + x["reason"]} for x in summary["skipped"]]
        problems += [{"id": x["id"], "problem": "judge failed: " + x["error"]} for x in summary["failed"]]
        sections.append(("Skipped rows and failed judgments", html_table(problems, ["id", "problem"])))
    by_id = {s.id: s for s in samples}
    sections.append(("Samples", _sample_table(rows, by_id, columns, out, self_contained)))
    settings = {k: summary.get(k) for k in ("suite", "schema", "source", "policy", "protocol", "judge")}
    sections.append(("Settings", f"<pre>{html.escape(json.dumps(settings, indent=1, default=str))}</pre>"))
    subtitle = f"policy {summary.get('policy')} · judge {summary.get('judge') or 'none'}"
    return write_html(
        out / "report.html",
        f"Editing benchmark: {summary.get('suite', '')}",
        subtitle,
        sections,
        self_contained=self_contained,
    )


__all__ = ["write_edit_report"]
