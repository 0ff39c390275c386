"""Bad input: images, prompts, dataset rows and recipes that are broken or odd get a one-line error naming the input
(or are converted where that is right), never a hang or a traceback from deep inside a library.

tests/test_images_cli.py covers missing / empty / junk / half-PNG files, the 20000x20000 claim and the basic modes;
tests/test_rubric.py has the property tests of rubric JSON parsing. This file adds the rest.
"""

from __future__ import annotations

import io
import json
import struct
import zlib

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from arr import RubricJudge
from arr.backends.openai import OpenAIBackend
from arr.backends.pixel import PixelBackend
from arr.cli import main
from arr.images import ImageLoadError, load_image
from arr.rpo.build import load_records
from arr.rpo.config import ConfigError, RPOConfig
from arr.rpo.recipe import RECIPE_TYPES, parse_recipe
from arr.rubrics import Criterion, Rubric
from arr.testing.faulty_server import FaultyJudgeServer
from tests.fakes import grey

RUBRIC_JSON = {"prompt": "a red circle", "criteria": [{"id": "c1", "text": "There is a red circle."}]}


def one_line(message: str) -> bool:
    return "\n" not in message.strip() and "Traceback" not in message


# ---- images -----------------------------------------------------------------------------------------------------


def _png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def test_png_with_a_broken_checksum_names_the_file(tmp_path):
    data = bytearray(_png_bytes(Image.new("RGB", (16, 16), (1, 2, 3))))
    idat = data.index(b"IDAT")
    data[idat + 6] ^= 0xFF  # flip bits inside the compressed pixels: the CRC no longer matches
    (tmp_path / "crc.png").write_bytes(bytes(data))
    with pytest.raises(ImageLoadError, match="crc.png") as e:
        load_image(tmp_path / "crc.png")
    assert one_line(str(e.value))


def test_truncated_jpeg_names_the_file(tmp_path):
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buf, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageLoadError, match="cut.jpg") as e:
        load_image(tmp_path / "cut.jpg")
    assert one_line(str(e.value))


def test_claimed_20000x20000_is_refused_fast_through_the_cli(tmp_path, capsys):
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )
    (tmp_path / "bomb.png").write_bytes(bomb)
    (tmp_path / "r.json").write_text(json.dumps(RUBRIC_JSON))
    code = main(["judge", "--prompt", "p", "--rubric", str(tmp_path / "r.json"), str(tmp_path / "bomb.png")])
    err = capsys.readouterr().err
    assert code == 2 and "bomb.png" in err and one_line(err), err


@pytest.mark.parametrize(
    ("make", "suffix", "pixel"),
    [
        # 16-bit greyscale PNG: scaled to 8 bits (65535 -> 255), not clipped
        (lambda: Image.new("I;16", (4, 4), 32768), "png", (128, 128, 128)),
        # palette with a transparent index: composited on white
        (lambda: _palette_with_transparency(), "png", (255, 255, 255)),
        # grey + alpha, fully transparent
        (lambda: Image.new("LA", (4, 4), (3, 0)), "png", (255, 255, 255)),
        # CMYK JPEG (as print workflows write them): pure cyan
        (lambda: Image.new("CMYK", (4, 4), (255, 0, 0, 0)), "jpg", None),
        # 1-bit
        (lambda: Image.new("1", (4, 4), 1), "png", (255, 255, 255)),
    ],
)
def test_odd_modes_convert_to_rgb(tmp_path, make, suffix, pixel):
    path = tmp_path / f"x.{suffix}"
    make().save(path)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (4, 4)
    if pixel is not None:
        assert out.getpixel((0, 0)) == pixel
    else:
        r, g, b = out.getpixel((0, 0))
        assert r < 60 and g > 200 and b > 200, (r, g, b)  # cyan stays cyan


def _palette_with_transparency() -> Image.Image:
    im = Image.new("P", (4, 4), 0)
    im.putpalette([200, 0, 0] * 256)
    im.info["transparency"] = 0
    return im


# ---- prompts ----------------------------------------------------------------------------------------------------

NON_UTF8 = b"a red \xff\xfe circle".decode("utf-8", "surrogateescape")  # how Python hands non-UTF-8 argv over


@pytest.mark.parametrize(
    "prompt",
    ["", "x" * 100_000, NON_UTF8, "\x00\x1b[31m\u202e"],
    ids=["empty", "100k", "non-utf8", "control"],
)
def test_odd_prompts_are_judged_over_http(prompt, tmp_path):
    rubric = Rubric(prompt, [Criterion("c1", prompt or "bright")])
    with FaultyJudgeServer(keep_bodies=True) as s:
        judge = RubricJudge(
            OpenAIBackend("canned", base_url=s.base_url, max_retries=0), cache=tmp_path / "c.sqlite"
        )
        assert judge.compare(prompt, grey(200), grey(100), rubric).preferred == 0
        assert judge.score(prompt, grey(255), rubric).score == pytest.approx(1.0)
        sent = json.dumps(s.bodies)
    if prompt == NON_UTF8:
        assert "a red \\ufffd\\ufffd circle" in sent  # undecodable bytes arrive as U+FFFD, not as a crash
    # Cached: asking again costs no request and gives the same answer.
    assert judge.compare(prompt, grey(200), grey(100), rubric).preferred == 0 and judge.stats.cached == 2


def test_odd_prompts_through_the_pixel_judge():
    from arr.shapes.training import t2i_records

    criteria = t2i_records(1, "train")[
        0
    ].rubric.criteria  # machine-checkable criteria; the prompt is only text
    judge = RubricJudge(PixelBackend())
    for prompt in ("", "x" * 100_000, NON_UTF8):
        assert judge.compare(prompt, grey(0), grey(0), Rubric(prompt, criteria)).ok


def test_cli_judge_with_a_non_utf8_prompt(tmp_path, capsys):
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "a.png")
    (tmp_path / "r.json").write_text(json.dumps(RUBRIC_JSON))
    code = main(
        [
            "judge",
            "--backend",
            "pixel",
            "--prompt",
            NON_UTF8,
            "--rubric",
            str(tmp_path / "r.json"),
            str(tmp_path / "a.png"),
        ]
    )
    out = capsys.readouterr()
    assert code in (0, 2) and "Traceback" not in out.err, out.err


# ---- dataset rows -----------------------------------------------------------------------------------------------


def _jsonl(tmp_path, *rows: bytes):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\n".join(rows) + b"\n")
    return path


GOOD_ROW = json.dumps({"prompt": "a red circle", "rubric": RUBRIC_JSON}).encode()


@pytest.mark.parametrize(
    ("row", "words"),
    [
        (b'{"prompt": "a red circle"}', "row 2: a dataset row needs 'prompt' and 'rubric'"),
        (b'{"rubric": {"criteria": []}}', "row 2: a dataset row needs 'prompt' and 'rubric'"),
        (b'{"prompt": "a", "rubric": {"criteria": "nope"}}', "row 2: criteria"),
        (b'{"prompt": "a", "rubric": "no rubric here"}', "row 2: no rubric found"),
        (b"[1, 2]", "row 2: a dataset row needs"),
        (b'{"prompt": "a", "rubric": ', "data.jsonl:2: not valid JSON"),
        (b'{"prompt": "a \xff", "rubric": {}}', "not UTF-8 text"),
    ],
)
def test_bad_dataset_rows_name_the_row(tmp_path, row, words):
    path = _jsonl(tmp_path, GOOD_ROW, row)
    with pytest.raises(ConfigError) as e:
        load_records(str(path), "train")
    assert words in str(e.value) and "data.jsonl" in str(e.value) and one_line(str(e.value)), str(e.value)


@pytest.mark.parametrize(
    "row", [b'{"prompt": 5, "rubric": {"criteria": ["x"]}}', b'{"prompt": "a", "rubric": 7}']
)
def test_wrongly_typed_dataset_fields_name_the_row(tmp_path, row):
    path = _jsonl(tmp_path, GOOD_ROW, row)
    with pytest.raises(ConfigError, match="row 2"):
        load_records(str(path), "train")


# ---- recipes ----------------------------------------------------------------------------------------------------


def _recipe(tmp_path, data) -> list[str]:
    path = tmp_path / "recipe.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return [str(path)]


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"max_stepz": 3}, "unknown keys ['max_stepz']"),
        ("1: 2\nnull: 3\n", "unknown keys ['1', 'None']"),
        ({"max_steps": "ten"}, "max_steps must be int, got 'ten'"),
        ({"max_steps": 3.5}, "max_steps must be int"),
        ({"learning_rate": [1]}, "learning_rate must be float"),
        ({"cpu": "yes"}, "cpu must be bool"),
        ({"judge_model": {"a": 1}}, "judge_model must be str"),
        ({"group_size": 1}, "group_size=1"),
        ({"max_judge_failure_rate": 2}, "max_judge_failure_rate=2"),
        ("- a\n- b\n", "must be a YAML mapping"),
        ("max_steps: [\n", "is not valid YAML"),
        ("max_steps: !!python/object/apply:os.system ['true']\n", "is not valid YAML"),
    ],
)
def test_bad_recipes_are_one_line_config_errors(tmp_path, data, words):
    # A parse first: the argument parser resolves the dataclasses' postponed annotations in place, and the type
    # checks must hold in a process that has parsed a recipe before (a notebook, a sweep, this test session).
    parse_recipe(["--output_dir", str(tmp_path / "first")])
    with pytest.raises(ConfigError) as e:
        parse_recipe(_recipe(tmp_path, data))
    assert words in str(e.value), str(e.value)
    assert "Traceback" not in str(e.value)


@pytest.mark.parametrize("data", ["learning_rate: .nan\n", "learning_rate: .inf\n", "lora_rank: 0\n"])
def test_non_finite_or_zero_hyperparameters_are_refused(tmp_path, data):
    with pytest.raises(ConfigError):
        parse_recipe(_recipe(tmp_path, data))


_FIELDS = {name: f for t in RECIPE_TYPES for name, f in t.__dataclass_fields__.items()}
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.lists(st.integers(), max_size=2)
    | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.dictionaries(
        st.sampled_from(sorted(_FIELDS)) | st.text(max_size=8) | st.integers(), _SCALARS, max_size=4
    )
)
def test_property_any_recipe_mapping_parses_or_is_a_config_error(tmp_path, data):
    try:
        recipe = parse_recipe(_recipe(tmp_path, data))
    except ConfigError as e:
        assert str(e) and "Traceback" not in str(e)
        return
    # What was accepted is what was asked for: bools, ints and strings are never silently changed.
    flat = recipe.to_dict()
    for k, v in data.items():
        if k in flat and k != "resume_from_checkpoint" and isinstance(v, (bool, int, str)):
            assert flat[k] == v, (k, v, flat[k])


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 1000), st.floats(1e-6, 1.0), st.sampled_from(["pairwise", "pointwise"]), st.booleans())
def test_property_valid_values_round_trip_through_yaml(steps, lr, mode, cpu):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "r.yaml"
        path.write_text(
            yaml.safe_dump({"max_steps": steps, "learning_rate": lr, "reward_mode": mode, "cpu": cpu})
        )
        recipe = parse_recipe([str(path), "--seed", "7"])
        again = Path(d) / "again.yaml"
        again.write_text(yaml.safe_dump(recipe.to_dict()))  # the run's config.yaml is itself a valid recipe
        assert parse_recipe([str(again)]).to_dict() == recipe.to_dict()
    rpo = recipe.rpo
    assert (rpo.max_steps, rpo.learning_rate, rpo.reward_mode, rpo.cpu, rpo.seed) == (steps, lr, mode, cpu, 7)
    assert isinstance(rpo, RPOConfig)
