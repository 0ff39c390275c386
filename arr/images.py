"""Loading images from user input with one-line errors instead of deep library tracebacks."""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

# Larger than any real generation (FLUX at 2048^2 is 4.2 MP) yet far below decompression-bomb sizes.
MAX_PIXELS = 64_000_000


class ImageLoadError(ValueError):
    """An image could not be read; the message names the file and what to do."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB: alpha is composited on white, 16-bit and CMYK are converted."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits instead of clipping everything above 255 to white.
        return image.point(lambda v: v / 256).convert("L").convert("RGB")
    return image.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    """Open an image file as RGB, refusing missing, corrupt, truncated and oversized files with a clear message."""
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(f"image not found: {path}")
    if path.stat().st_size == 0:
        raise ImageLoadError(f"image file is empty (0 bytes): {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise ImageLoadError(
                        f"image {path} claims {w}x{h} pixels, over the {MAX_PIXELS:,}-pixel limit; resize it first"
                    )
                im.load()
                return to_rgb(im)
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageLoadError(f"image {path} is too large to open safely ({e}); resize it first") from None
    except UnidentifiedImageError:
        raise ImageLoadError(f"not a readable image: {path} (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageLoadError(f"corrupt or truncated image: {path} ({e})") from None
