"""Self-contained HTML reports: curves as inline SVG, image grids as embedded PNG, tables from plain dicts.

No plotting dependency and no external files, so a report can be mailed or opened from a CI artifact as is.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563"]


def image_grid(
    images: Sequence[Image.Image],
    cols: int,
    captions: Sequence[str] | None = None,
    scale: int = 1,
    pad: int = 2,
    caption_height: int = 12,
) -> Image.Image:
    """Tile images into a grid (upscaled by `scale` with nearest-neighbour, so pixels stay sharp)."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    w, h = images[0].size
    w, h = w * scale, h * scale
    rows = math.ceil(len(images) / cols)
    ch = caption_height if captions else 0
    grid = Image.new("RGB", (cols * (w + pad) + pad, rows * (h + pad + ch) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for k, im in enumerate(images):
        r, c = divmod(k, cols)
        x, y = pad + c * (w + pad), pad + r * (h + pad + ch)
        grid.paste(im.convert("RGB").resize((w, h), Image.NEAREST), (x, y))
        if captions:
            draw.text((x + 1, y + h), str(captions[k])[: max(1, w // 6)], fill=(20, 20, 20))
    return grid


def png_data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def nice_ticks(lo: float, hi: float, target: int = 5, min_step: float = 0.0) -> list[float]:
    """About `target` round tick values (steps of 1, 2, 2.5 or 5 times a power of ten, at least `min_step`)
    inside [lo, hi]."""
    span = hi - lo
    if not (math.isfinite(lo) and math.isfinite(hi) and math.isfinite(span)) or span <= 0:
        return [lo] if math.isfinite(lo) else []
    raw = max(span / target, min_step)
    if not (math.isfinite(raw) and raw > 0):
        return [lo, hi]
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * (1 - 1e-9))
    digits = max(0, 2 - math.floor(math.log10(step)))  # enough to tell neighbouring ticks apart
    tol = 1e-6 * step  # float error of k * step when |lo| is many steps away from 0
    ticks: list[float] = []
    k = math.ceil(lo / step - 1e-6)
    while k * step <= hi + tol and len(ticks) <= 4 * target:
        v = round(k * step, digits)
        if lo - tol <= v <= hi + tol and (not ticks or v != ticks[-1]):
            ticks.append(v)
        k += 1
    return ticks or [lo, hi]


def svg_line_plot(
    series: dict[str, Sequence[tuple[float, float]]],
    title: str,
    xlabel: str = "step",
    width: int = 520,
    height: int = 260,
) -> str:
    """A small line plot as an SVG string: one polyline per named series of (x, y) points."""
    points = [p for pts in series.values() for p in pts if p[1] is not None and math.isfinite(p[1])]
    if not points:
        return f"<p><em>{html.escape(title)}: no data</em></p>"
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pad_y = (y1 - y0) * 0.08
    y0, y1 = y0 - pad_y, y1 + pad_y
    left, right, top, bottom = 48, 12, 24, 34

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def sy(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * (height - top - bottom)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="plot">',
        f'<text x="{width / 2}" y="15" text-anchor="middle" font-size="13" font-weight="600">{html.escape(title)}</text>',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="#999"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#999"/>',
    ]
    for yv in nice_ticks(y0, y1):
        out.append(
            f'<text x="{left - 4}" y="{sy(yv) + 4:.1f}" text-anchor="end" font-size="10">{yv:.6g}</text>'
            f'<line x1="{left}" y1="{sy(yv):.1f}" x2="{width - right}" y2="{sy(yv):.1f}" stroke="#eee"/>'
        )
    for xv in nice_ticks(x0, x1, min_step=1.0 if xlabel == "step" else 0.0):  # no half steps
        out.append(
            f'<text x="{sx(xv):.1f}" y="{height - bottom + 14}" text-anchor="middle" font-size="10">{xv:.6g}</text>'
        )
    out.append(
        f'<text x="{(left + width - right) / 2}" y="{height - 4}" text-anchor="middle" font-size="11">{html.escape(xlabel)}</text>'
    )
    for i, (name, pts) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        good = [(x, y) for x, y in pts if y is not None and math.isfinite(y)]
        if not good:
            continue
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in good)
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{path}"/>')
        for x, y in good if len(good) <= 40 else []:
            out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{color}"/>')
        out.append(
            f'<text x="{width - right - 4}" y="{top + 12 + 13 * i}" text-anchor="end" font-size="11" fill="{color}">{html.escape(name)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def html_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    if not rows:
        return "<p><em>no rows</em></p>"
    columns = list(columns or rows[0].keys())
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for c in columns:
            v = row.get(c, "")
            if isinstance(v, float):
                v = f"{v:.4g}"
            cells.append(f"<td>{html.escape(str(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 24px auto; max-width: 1100px;
       color: #111; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }
.sub { color: #555; margin-top: 0; }
.cards { display: flex; gap: 12px; flex-wrap: wrap; }
.card { border: 1px solid #ddd; border-radius: 8px; padding: 10px 14px; min-width: 140px; }
.card .v { font-size: 22px; font-weight: 650; } .card .k { color: #555; font-size: 12px; }
.plots { display: flex; flex-wrap: wrap; gap: 8px; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; } th { background: #f5f5f5; }
td:first-child, th:first-child { text-align: left; }
img.grid { image-rendering: pixelated; border: 1px solid #ddd; max-width: 100%; }
figure { margin: 8px 0; display: inline-block; vertical-align: top; } figcaption { font-size: 12px; color: #444; }
pre { background: #f7f7f7; padding: 8px; font-size: 12px; overflow-x: auto; }
"""


def write_html(path: str | Path, title: str, subtitle: str, sections: Sequence[tuple[str, str]]) -> Path:
    """Write a report page: `sections` are (heading, inner HTML) pairs."""
    body = "".join(f"<h2>{html.escape(h)}</h2>{inner}" for h, inner in sections)
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p class='sub'>{html.escape(subtitle)}</p>{body}</body></html>"
    )
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path


def cards(values: dict[str, str]) -> str:
    return (
        "<div class='cards'>"
        + "".join(
            f"<div class='card'><div class='v'>{html.escape(v)}</div><div class='k'>{html.escape(k)}</div></div>"
            for k, v in values.items()
        )
        + "</div>"
    )


def figure(image: Image.Image, caption: str) -> str:
    return (
        f"<figure><img class='grid' src='{png_data_url(image)}'>"
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def pre_json(data: Any) -> str:
    return f"<pre>{html.escape(json.dumps(data, indent=2, default=str))}</pre>"
