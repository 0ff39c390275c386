"""Bad input to the `arr` command line gets one line that names the input and the fix, never a traceback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from PIL import Image

from arr.shapes.models import ASSETS_DIR, CONFIG_NAME

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
shipped = pytest.mark.skipif(
    not (ASSETS_DIR / "t2i" / CONFIG_NAME).is_file(), reason="shipped weights missing"
)


def one_line_error(err: str, command: str) -> str:
    """The error line of `err`, checking it is the only one (warning lines of the same command may precede it)."""
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith(f"arr {command}: error: ")]
    assert "Traceback" not in err and len(errors) == 1, err[-2000:]
    assert all(line.startswith(f"arr {command}: ") for line in lines), err[-2000:]
    return errors[0]


# ---- arr shapes sample / edit ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--n", "0", "argument --n: must be at least 1, got 0"),
        ("--n", "100000000", "argument --n: must be at most 256"),
        ("--steps", "-3", "argument --steps: must be at least 1, got -3"),
        ("--scale", "0", "argument --scale: must be at least 1, got 0"),
        ("--guidance", "nan", "argument --guidance: must be a finite number, got nan"),
        ("--guidance", "inf", "argument --guidance: must be a finite number, got inf"),
    ],
)
def test_shapes_sample_refuses_bad_numbers(run_cli, tmp_path, option, value, expected):
    code, out, err = run_cli("shapes", "sample", "a red circle", option, value, "--out", tmp_path / "g.png")
    assert code == 2 and out == ""
    assert expected in one_line_error(err, "shapes sample")
    assert not (tmp_path / "g.png").exists()


def test_shapes_sample_refuses_a_folder_as_output(run_cli, tmp_path):
    code, _, err = run_cli("shapes", "sample", "a red circle", "--out", tmp_path)
    assert code == 2 and f"--out {tmp_path} is a folder; give a file path such as" in one_line_error(
        err, "shapes sample"
    )


def test_shapes_sample_refuses_an_output_it_cannot_write(run_cli, unwritable_dir, monkeypatch):
    import arr.shapes.models

    def no_load(*args, **kwargs):
        raise AssertionError("the model loaded before the output was checked")

    monkeypatch.setattr(arr.shapes.models, "load_pretrained", no_load)
    code, _, err = run_cli("shapes", "sample", "a red circle", "--out", unwritable_dir / "sub" / "g.png")
    assert code == 2 and "--out: cannot write to folder" in one_line_error(err, "shapes sample")


def test_shapes_edit_checks_the_source_before_loading_the_model(run_cli, tmp_path, monkeypatch):
    import arr.shapes.models

    def no_load(*args, **kwargs):
        raise AssertionError("the model loaded before the source image was checked")

    monkeypatch.setattr(arr.shapes.models, "load_pretrained", no_load)
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    code, _, err = run_cli("shapes", "edit", tmp_path / "big.png", "make the red circle green")
    assert code == 2 and "is 64x64; the shapes model edits 48x48 scenes" in one_line_error(err, "shapes edit")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    code, _, err = run_cli("shapes", "edit", tmp_path / "junk.png", "make the red circle green")
    assert code == 2 and "not a readable image" in one_line_error(err, "shapes edit")


@shipped
def test_out_of_grammar_prompt_shows_the_grammar_and_still_samples(run_cli, tmp_path):
    code, out, err = run_cli("shapes", "sample", "a red circle above two blue squares", "--n", "2", "--steps", "2",
                             "--out", tmp_path / "g.png")  # fmt: skip
    assert code == 0, err
    assert "is not a shapes-world prompt" in err and "a COLOR SHAPE and a COLOR SHAPE" in err
    assert "RELATION: left of, right of, above, below" in err
    result = json.loads(out)
    assert result["scored"] is False and result["n"] == 2 and (tmp_path / "g.png").stat().st_size > 0
    code, out, err = run_cli(
        "shapes", "sample", "A  Red circle", "--n", "1", "--steps", "2", "--out", tmp_path / "h.png"
    )
    assert code == 0 and err == "" and json.loads(out)["category"] == "colors"  # case and spacing aside


def test_library_sampler_refuses_what_the_options_refuse():
    from arr.shapes.models import ShapesFlowModel, ShapesModelConfig
    from arr.shapes.sample import sample

    model = ShapesFlowModel(ShapesModelConfig())
    for kwargs, match in (
        ({"steps": 0}, "steps must be"),
        ({"guidance": float("nan")}, "guidance must be a finite number"),
        ({"shift": 0.0}, "shift must be"),
    ):
        with pytest.raises(ValueError, match=match):
            sample(model, ["a red circle"], [0], **kwargs)
    with pytest.raises(ValueError, match="at least one prompt"):
        sample(model, [], [])


# ---- arr judge / arr rubric ------------------------------------------------------------------------------------


def test_judge_refuses_a_folder_as_cache(run_cli, tmp_path):
    code, _, err = run_cli("judge", "--prompt", "p", "--rubric", EXAMPLES / "rubric.json", "--cache", tmp_path,
                           EXAMPLES / "good.png")  # fmt: skip
    assert code == 2 and f"--cache {tmp_path} is a folder" in one_line_error(err, "judge")


def test_serve_refuses_a_folder_as_cache(run_cli, tmp_path):
    code, _, err = run_cli("serve", "--port", "0", "--cache", tmp_path)
    assert code == 2 and f"--cache {tmp_path} is a folder" in one_line_error(err, "serve")


@pytest.mark.parametrize("port", ["-5", "65536", "http"])
def test_serve_refuses_a_port_that_cannot_be(run_cli, port):
    code, _, err = run_cli("serve", "--port", port)
    assert code == 2 and "argument --port" in one_line_error(err, "serve")


def _judge_openai(run_cli, port: int, *extra: str):
    return run_cli("judge", "--backend", "openai", "--model", "m", "--base-url", f"http://127.0.0.1:{port}/v1",
                   *extra, "--prompt", "p", "--rubric", EXAMPLES / "rubric.json", EXAMPLES / "good.png")  # fmt: skip


@pytest.mark.slow  # the backend retries 4 times with backoff (about 10 s)
def test_judge_with_an_unreachable_server(run_cli):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, out, err = _judge_openai(run_cli, port)
    assert code == 2 and out == ""
    line = one_line_error(err, "judge")
    assert "unreachable" in line and "check that the server runs and --base-url points at it" in line


@pytest.mark.slow  # 5 attempts of --timeout 0.3 s plus the backoff between them
def test_judge_with_a_hanging_server_stops_at_its_timeout(run_cli):
    import time

    with socket.socket() as s:  # accepts connections (the kernel does) and never answers
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        start = time.monotonic()
        code, _, err = _judge_openai(run_cli, s.getsockname()[1], "--timeout", "0.3")
        seconds = time.monotonic() - start
    line = one_line_error(err, "judge")
    assert code == 2 and "timed out after 0.3 s" in line and "unreachable" in line
    assert seconds < 40  # without --timeout the backend waits 60 s per attempt


def test_rubric_load_reads_no_more_than_its_limit(tmp_path):
    from arr.rubrics import Rubric, RubricParseError
    from arr.rubrics.parse import MAX_INPUT_BYTES

    big = tmp_path / "big.json"
    big.write_bytes(b" " * (20 * MAX_INPUT_BYTES))
    tracemalloc.start()
    try:
        with pytest.raises(RubricParseError, match="over 1,048,576 bytes"):
            Rubric.load(big)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * MAX_INPUT_BYTES, f"read {peak:,} bytes into memory"


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_judge_with_an_endless_rubric_file(run_cli):
    # A file that never ends: reading it whole would grow without bound; the check reads the limit + 1 bytes.
    code, _, err = run_cli("judge", "--prompt", "p", "--rubric", "/dev/zero", EXAMPLES / "good.png")
    assert code == 2 and "rubric file /dev/zero is over" in one_line_error(err, "judge")


def test_rubric_show_escapes_terminal_control_characters(run_cli, tmp_path):
    evil = {
        "prompt": "a red \x1b[31mcircle\x1b[0m",
        "criteria": [
            {"id": "c1", "text": "ok\x1b]0;title\x07 \x9b2J \u202eevil\nsecond line", "category": "\x08x"}
        ],
    }
    path = tmp_path / "evil.json"
    path.write_text(json.dumps(evil), encoding="utf-8")
    code, out, _ = run_cli("rubric", "show", path)
    assert code == 0
    for raw in ("\x1b", "\x07", "\x9b", "\u202e", "\x08"):
        assert raw not in out, repr(raw)
    assert "a red \\x1b[31mcircle" in out and "\\u202eevil\\x0asecond line" in out
    assert len(out.splitlines()) == 2  # the criterion's newline does not break its line
    code, out, _ = run_cli("rubric", "show", "--json", path)
    assert all(raw not in out for raw in ("\x1b", "\x9b", "\u202e"))
    assert json.loads(out)["criteria"][0]["text"] == evil["criteria"][0]["text"]  # still the same JSON


def test_error_messages_quoting_input_stay_one_line(run_cli, tmp_path):
    code, _, err = run_cli(
        "judge", "--prompt", "p", "--rubric", EXAMPLES / "rubric.json", tmp_path / "a\nb\x1b.png"
    )
    assert code == 2 and "a\\x0ab\\x1b.png" in one_line_error(err, "judge")


# ---- arr train --------------------------------------------------------------------------------------------------

BOMB = """a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
max_steps: *f
"""


def test_train_refuses_yaml_aliases_in_a_recipe(run_cli, tmp_path):
    (tmp_path / "bomb.yaml").write_text(BOMB)
    code, _, err = run_cli("train", tmp_path / "bomb.yaml")
    line = one_line_error(err, "train")
    assert code == 2 and "line 2: aliases (*name) are not allowed in recipes" in line and len(line) < 300
    (tmp_path / "typed.yaml").write_text("seed: &s [1, 2]\nmax_steps: *s\n")
    assert "aliases" in one_line_error(run_cli("train", tmp_path / "typed.yaml")[2], "train")


def test_train_quotes_a_long_bad_value_briefly(run_cli, tmp_path):
    (tmp_path / "long.yaml").write_text("max_steps: [" + ", ".join(["1"] * 3000) + "]\n")
    code, _, err = run_cli("train", tmp_path / "long.yaml")
    line = one_line_error(err, "train")
    assert code == 2 and "max_steps must be int" in line and len(line) < 300


def test_train_bad_override_is_one_line(run_cli):
    code, _, err = run_cli("train", ROOT / "recipes/shapes_t2i_rpo.yaml", "--max_steps", "many")
    assert code == 2 and "invalid int value: 'many'" in one_line_error(err, "train")


def test_train_refuses_an_output_folder_it_cannot_write(run_cli, unwritable_dir):
    code, _, err = run_cli(
        "train", ROOT / "recipes/shapes_t2i_rpo.yaml", "--output_dir", unwritable_dir / "run"
    )
    assert code == 2 and "output_dir: cannot write to folder" in one_line_error(err, "train")


@shipped
def test_train_refuses_a_prompt_over_the_text_encoders_length(run_cli, tmp_path):
    rubric = json.loads((EXAMPLES / "rubric.json").read_text())
    long = "a red circle and a blue square " * 5
    with open(tmp_path / "data.jsonl", "w") as f:
        for prompt in ("a red circle and a blue square", long):
            f.write(json.dumps({"prompt": prompt, "rubric": {**rubric, "prompt": prompt}}) + "\n")
    code, _, err = run_cli("train", ROOT / "recipes/shapes_t2i_rpo.yaml", "--dataset", tmp_path / "data.jsonl",
                           "--eval_split", "", "--max_steps", "1", "--prompts_per_step", "2",
                           "--output_dir", tmp_path / "run", "--report_to", "none", "--align_every", "0")  # fmt: skip
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert code == 2 and "Traceback" not in err and len(errors) == 1, err[-2000:]
    assert "training record 2: prompt 'a red circle and a blue square a red" in errors[0]
    assert "longer than the shapes text encoder's 14 words" in errors[0]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # refused before the first step


@pytest.mark.slow  # a subprocess (well under a second)
def test_one_line_errors_reach_the_terminal_without_traceback():
    """The console script path (not only `main()`): argparse errors and CLIErrors are one line on stderr."""
    r = subprocess.run([sys.executable, "-m", "arr", "shapes", "sample", "x", "--n", "0"], capture_output=True,
                       text=True)  # fmt: skip
    assert (
        r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("arr shapes sample: error:")
    )
