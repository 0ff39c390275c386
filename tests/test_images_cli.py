"""Image loading errors/conversions and the CLI's user-facing behaviour."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib

import pytest
from PIL import Image

from arr.cli import SUBCOMMANDS, main
from arr.images import ImageLoadError, load_image


def test_missing_empty_corrupt_truncated(tmp_path):
    with pytest.raises(ImageLoadError, match="not found"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(tmp_path / "empty.png")
    (tmp_path / "junk.png").write_bytes(b"this is not an image at all")
    with pytest.raises(ImageLoadError, match="not a readable image"):
        load_image(tmp_path / "junk.png")
    Image.new("RGB", (64, 64), (9, 9, 9)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="cut.png"):
        load_image(tmp_path / "cut.png")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header_claiming(w: int, h: int) -> bytes:
    """A tiny PNG file whose header claims w x h pixels (a decompression bomb's calling card)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def test_huge_claimed_size_is_refused_without_decoding(tmp_path):
    (tmp_path / "bomb.png").write_bytes(_png_header_claiming(20000, 20000))
    with pytest.raises(ImageLoadError, match=r"bomb.png is too large.*resize"):
        load_image(tmp_path / "bomb.png")
    (tmp_path / "big.png").write_bytes(_png_header_claiming(9000, 8000))  # under PIL's limit, over ours
    with pytest.raises(ImageLoadError, match="9000x8000"):
        load_image(tmp_path / "big.png")


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "CMYK", "L", "I;16"])
def test_modes_convert_to_rgb(tmp_path, mode):
    im = Image.new(mode, (4, 4))
    path = tmp_path / ("x.tiff" if mode in ("CMYK", "I;16") else "x.png")
    im.save(path)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (4, 4)


def test_transparent_pixels_become_white(tmp_path):
    Image.new("RGBA", (2, 2), (255, 0, 0, 0)).save(tmp_path / "a.png")
    assert load_image(tmp_path / "a.png").getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.slow  # starts child processes
def test_help_lists_every_subcommand():
    out = subprocess.run(
        [sys.executable, "-m", "arr", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in SUBCOMMANDS:
        assert name in out


def test_rubric_show_and_bad_input(tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_text(
        json.dumps({"prompt": "a red circle", "criteria": [{"id": "c1", "text": "A red circle."}]})
    )
    assert main(["rubric", "show", str(path)]) == 0
    assert "A red circle." in capsys.readouterr().out
    path.write_text("nothing like a rubric")
    assert main(["rubric", "show", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("arr rubric show: error:") and "r.json" in err and "Traceback" not in err


def test_judge_missing_image_is_one_line_error(tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"prompt": "p", "criteria": [{"id": "c1", "text": "x"}]}))
    assert main(["judge", "--prompt", "p", "--rubric", str(path), str(tmp_path / "missing.png")]) == 2
    assert "image not found" in capsys.readouterr().err
