"""HTML report pages and captioned image grids, shared by the training, editing and preference reports.

A page is a list of (heading, inner HTML) sections. Its images are files beside the page, referenced by relative
paths, so that a report of thousands of samples opens fast; `write_html(..., self_contained=True)` inlines every
one of them as a data URL (charts are inline SVG already), which gives one file to mail or attach. Charts come
from `arr.plots`; the PNG grids here (sample grids of training and evaluation) carry their captions in the image.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

# ---- captioned PNG grids -----------------------------------------------------------------------------------

CAPTION_FONT_SIZE = 11
CAPTION_LINE_HEIGHT = 14


def _caption_font(size: int = CAPTION_FONT_SIZE) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow's built-in scalable font: readable at small sizes, and no font file to find on the system.
    return ImageFont.load_default(size=size)


def wrap_text(text: str, font: Any, width: float, max_lines: int | None = None) -> list[str]:
    """`text` broken into lines no wider than `width` pixels (at word boundaries; explicit newlines kept); a text cut
    at `max_lines` ends with an ellipsis."""
    lines: list[str] = []
    for paragraph in str(text).split("\n"):
        line = ""
        for word in paragraph.split(" "):
            trial = f"{line} {word}" if line else word
            if font.getlength(trial) <= width or not line:
                line = trial
            else:
                lines.append(line)
                line = word
        lines.append(line)
    if max_lines is not None and len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and font.getlength(last + "…") > width:
            last = last[:-1]
        lines = [*lines[: max_lines - 1], last + "…"]
    return lines


def _fit(image: Image.Image, width: int) -> Image.Image:
    """Resize to `width` pixels wide: nearest-neighbour when enlarging (pixels stay sharp), Lanczos when shrinking."""
    image = image.convert("RGB")
    if image.width == width:
        return image
    height = max(1, round(image.height * width / image.width))
    resample = Image.NEAREST if width > image.width else Image.LANCZOS
    return image.resize((width, height), resample)


def image_grid(
    images: Sequence[Image.Image],
    cols: int,
    captions: Sequence[str] | None = None,
    scale: int = 1,
    cell: int | None = None,
    pad: int = 4,
    max_caption_lines: int = 4,
    group: int = 0,
) -> Image.Image:
    """Tile images into a grid, each with its caption wrapped underneath (up to `max_caption_lines` lines).

    Cells are `cell` pixels wide when given, else the first image's width times `scale`. With `group`, a wider gap
    follows every `group` columns (the samples of one prompt stay together).
    """
    if not images:
        raise ValueError("image_grid needs at least one image")
    if captions is not None and len(captions) != len(images):
        raise ValueError(f"image_grid: {len(captions)} captions for {len(images)} images; give one per image")
    width = cell or images[0].width * scale
    tiles = [_fit(im, width) for im in images]
    height = max(t.height for t in tiles)
    font = _caption_font()
    wrapped = [wrap_text(c, font, width, max_caption_lines) for c in captions] if captions else None
    text_h = max(len(w) for w in wrapped) * CAPTION_LINE_HEIGHT + 2 if wrapped else 0
    cols = max(1, min(cols, len(images)))
    rows = math.ceil(len(images) / cols)
    gap = 3 * pad if group else 0
    groups_per_row = math.ceil(cols / group) if group else 1
    grid = Image.new(
        "RGB",
        (cols * (width + pad) + pad + gap * (groups_per_row - 1), rows * (height + text_h + pad) + pad),
        (255, 255, 255),
    )
    draw = ImageDraw.Draw(grid)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, cols)
        x = pad + c * (width + pad) + (gap * (c // group) if group else 0)
        y = pad + r * (height + text_h + pad)
        grid.paste(tile, (x, y))
        for i, line in enumerate(wrapped[k] if wrapped else []):
            draw.text((x, y + height + 1 + i * CAPTION_LINE_HEIGHT), line, fill=(20, 20, 20), font=font)
    return grid


def reward_captions(prompts: Sequence[str], rewards: Sequence[float | None], group_size: int) -> list[str]:
    """Captions for a training grid of groups: each sample's reward, its standing in its group (best, worst, tie)
    and its prompt. `prompts` has one entry per group; `rewards` one per sample, None where the judge failed."""
    out = []
    for g, prompt in enumerate(prompts):
        group = list(rewards[g * group_size : (g + 1) * group_size])
        judged = [r for r in group if r is not None]
        for r in group:
            out.append(f"{_reward_text(r, judged)}\n{prompt}")
    return out


def reward_standing(reward: float | None, judged: Sequence[float]) -> str:
    """ "best" / "worst" / "tie" / "" for a sample among its group's judged rewards; "no verdict" without one."""
    if reward is None:
        return "no verdict"
    if len(judged) < 2:
        return ""
    if max(judged) == min(judged):
        return "tie"
    return "best" if reward == max(judged) else "worst" if reward == min(judged) else ""


def _reward_text(reward: float | None, judged: Sequence[float]) -> str:
    standing = reward_standing(reward, judged)
    if reward is None:
        return standing
    return f"reward {reward:+.2f}" + (f" · {standing}" if standing else "")


# ---- sample cards in HTML ----------------------------------------------------------------------------------


@dataclass
class SampleNote:
    """What a metric or judge says about one sample, shown under its image: a verdict (e.g. "correct", "wrong"),
    whether it is a good one (colours it; None: neutral) and a score."""

    verdict: str = ""
    ok: bool | None = None
    score: float | None = None
    score_name: str = "score"


@dataclass
class Shot:
    """One image of a sample card: where it is (a path relative to the page, or a data URL), a label (e.g.
    "before, step 0") and the note shown under it."""

    src: str
    label: str = ""
    note: SampleNote | None = None


def note_html(note: SampleNote | None) -> str:
    if note is None:
        return ""
    parts = []
    if note.verdict:
        cls = {True: "ok", False: "bad", None: "neutral"}[note.ok]
        parts.append(f"<span class='verdict {cls}'>{html.escape(note.verdict)}</span>")
    if note.score is not None and math.isfinite(note.score):
        parts.append(f"{html.escape(note.score_name)} {note.score:.2f}")
    return " ".join(parts)


def sample_cards(cards: Sequence[tuple[str, Sequence[Shot]]]) -> str:
    """Cards of (prompt, images): the prompt on top, each image with its label, verdict and score underneath."""
    out = []
    for prompt, shots in cards:
        figures = "".join(
            f"<figure><img src='{html.escape(s.src)}' alt='{html.escape(s.label or prompt)}'>"
            f"<figcaption>{'<b>' + html.escape(s.label) + '</b><br>' if s.label else ''}{note_html(s.note)}"
            "</figcaption></figure>"
            for s in shots
        )
        out.append(
            f"<div class='sample-card'><p>{html.escape(prompt)}</p><div class='shots'>{figures}</div></div>"
        )
    return f"<div class='sample-grid'>{''.join(out)}</div>"


def save_image(image: Image.Image, out_dir: str | Path, rel_path: str, max_side: int | None = None) -> str:
    """Write `image` as OUT_DIR/REL_PATH (PNG; shrunk to `max_side` pixels when larger) and return REL_PATH, the
    src of an <img> on a page in OUT_DIR."""
    path = Path(out_dir) / rel_path
    path.parent.mkdir(parents=True, exist_ok=True)
    image = image.convert("RGB")
    if max_side and max(image.size) > max_side:
        image.thumbnail((max_side, max_side))
    image.save(path)
    return rel_path


# ---- HTML pages ---------------------------------------------------------------------------------------------


def png_data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


MIME_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".svg": "image/svg+xml",
}
_IMG_SRC = re.compile(r"(<img\b[^>]*?\bsrc=)(['\"])(.*?)\2", re.IGNORECASE | re.DOTALL)


def inline_images(page: str, base_dir: str | Path) -> str:
    """`page` with every <img> that points at a local file (relative to `base_dir`) replaced by a data URL."""
    base = Path(base_dir)

    def inline(match: re.Match[str]) -> str:
        src = html.unescape(match.group(3))
        if src.startswith("data:") or re.match(r"^[a-z][a-z0-9+.-]*:", src, re.IGNORECASE):
            return match.group(0)
        path = base / src
        mime = MIME_TYPES.get(path.suffix.lower())
        if mime is None or not path.is_file():
            raise ValueError(
                f"cannot inline image {src!r} of a report in {base}: "
                + ("not a PNG, JPEG, WebP, GIF or SVG file" if path.is_file() else "the file is missing")
            )
        data = base64.b64encode(path.read_bytes()).decode()
        return f"{match.group(1)}{match.group(2)}data:{mime};base64,{data}{match.group(2)}"

    return _IMG_SRC.sub(inline, page)


STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 24px auto; max-width: 1100px;
       color: #111; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }
.sub { color: #555; margin-top: 0; } p.note { color: #555; font-size: 13px; }
.cards { display: flex; gap: 12px; flex-wrap: wrap; }
.card { border: 1px solid #ddd; border-radius: 8px; padding: 10px 14px; min-width: 140px; }
.card .v { font-size: 22px; font-weight: 650; } .card .k { color: #555; font-size: 12px; }
.plots { display: flex; flex-wrap: wrap; gap: 8px 16px; }
div.scroll { overflow: auto; max-width: 100%; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f5f5f5; } td.num { text-align: right; white-space: nowrap; }
img.grid { image-rendering: pixelated; border: 1px solid #ddd; max-width: 100%; }
figure { margin: 8px 0; display: inline-block; vertical-align: top; } figcaption { font-size: 12px; color: #444; }
.sample-grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(250px, 1fr)); gap: 10px; }
.sample-card { border: 1px solid #ddd; border-radius: 6px; padding: 6px 8px; }
.sample-card p { margin: 0 0 4px; font-size: 13px; }
.sample-card .shots { display: flex; flex-wrap: wrap; gap: 6px; }
.sample-card figure { margin: 0; width: 112px; } .sample-card figcaption { font-size: 11px; line-height: 1.35; }
.sample-card img { width: 112px; height: 112px; object-fit: contain; image-rendering: pixelated; border: 1px solid #ddd;
              background: #fafafa; }
.verdict { font-weight: 600; } .verdict.ok { color: #15803d; } .verdict.bad { color: #b91c1c; }
pre { background: #f7f7f7; padding: 8px; font-size: 12px; overflow-x: auto; }
"""


def write_html(
    path: str | Path,
    title: str,
    subtitle: str,
    sections: Sequence[tuple[str, str]],
    self_contained: bool = False,
) -> Path:
    """Write a report page: `sections` are (heading, inner HTML) pairs. With `self_contained`, the images the page
    refers to (paths relative to its folder) are inlined, so the page is one file that opens anywhere."""
    body = "".join(f"<h2>{html.escape(h)}</h2>{inner}" for h, inner in sections)
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p class='sub'>{html.escape(subtitle)}</p>{body}</body></html>"
    )
    path = Path(path)
    if self_contained:
        page = inline_images(page, path.parent)
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


# A cell that reads as a number (or a missing one) is right-aligned, so that digits line up; text reads from the left.
NUMBER = re.compile(r"[-+±]?(\d[\d,]*\.?\d*|\.\d+)(e[-+]?\d+)?%?|-|nan", re.IGNORECASE)


def html_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A table of dict rows (floats to 4 significant digits), in a box that scrolls sideways when too wide."""
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
            numeric = isinstance(v, int) or NUMBER.fullmatch(str(v)) is not None
            cells.append(
                f"<td class='num'>{html.escape(str(v))}</td>"
                if numeric
                else f"<td>{html.escape(str(v))}</td>"
            )
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"


def figure(src: str, caption: str) -> str:
    """An image (a path relative to the page, or a data URL) with a caption."""
    return f"<figure><img class='grid' src='{html.escape(src)}'><figcaption>{html.escape(caption)}</figcaption></figure>"


def pre_json(data: Any) -> str:
    return f"<pre>{html.escape(json.dumps(data, indent=2, default=str))}</pre>"


__all__ = [
    "SampleNote",
    "Shot",
    "cards",
    "figure",
    "html_table",
    "image_grid",
    "inline_images",
    "note_html",
    "png_data_url",
    "pre_json",
    "reward_captions",
    "reward_standing",
    "sample_cards",
    "save_image",
    "wrap_text",
    "write_html",
]
