"""Subprocess smoke tests of the CLI as users run it: demo, train (one and two processes), judge, shapes sample."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from arr.shapes.scene import Obj, Scene, render
from tests.conftest import ROOT, SUBPROCESS_ENV, TINY_RUN, needs_shipped_edit, needs_shipped_t2i
from tests.conftest import run_arr as arr

# Every test here runs the CLI in a child process, as users do.
pytestmark = pytest.mark.slow


@needs_shipped_t2i
def test_demo_runs_and_writes_a_run_directory(tmp_path):
    out = tmp_path / "demo"
    r = arr("demo", "--output_dir", str(out), "--num_processes", "1", *TINY_RUN)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "held-out shapes-GenEval score" in r.stdout
    assert "evaluation noise at 95%" in r.stdout  # the change is printed with its noise band
    for name in ("config.yaml", "metrics.jsonl", "report.html", "checkpoints/step_2/lora.safetensors"):
        assert (out / name).exists(), name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2] and "eval_score" in rows[0] and "eval_score" in rows[-1]


@needs_shipped_t2i
def test_train_with_two_processes_writes_one_set_of_checkpoints(tmp_path):
    out = tmp_path / "two"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "recipes/accelerate/cpu_2proc.yaml"), "-m", "arr", "train",
           str(ROOT / "recipes/shapes_t2i_rpo.yaml"), "--output_dir", str(out), *TINY_RUN]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env=SUBPROCESS_ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_1", "step_2"]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3  # step 0 eval + 2 steps, written once
    state = json.loads((out / "checkpoints/step_2/trainer_state.json").read_text())
    assert state["num_processes"] == 2  # two ranks really ran (a MULTI_CPU config would start one)


@needs_shipped_t2i
def test_demo_with_two_processes_stops_together_on_sigterm_and_resumes(tmp_path):
    """`arr demo` launches its ranks itself; SIGTERM to it checkpoints once, for both ranks, and stops."""
    out = tmp_path / "demo"
    run = ["--max_steps", "60", *TINY_RUN[2:], "--save_steps", "1000"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "arr", "demo", "--output_dir", str(out), "--num_processes", "2", *run],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=SUBPROCESS_ENV,
    )  # fmt: skip
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 240
    try:
        while not (
            metrics.exists() and len(metrics.read_text().splitlines()) >= 3
        ):  # the eval row and 2 steps
            assert proc.poll() is None and time.monotonic() < deadline, "the demo ended or stalled"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=240)
    finally:  # never leave ranks behind (they also die with their parent, on Linux)
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=60)
    assert "training with 2 CPU processes" in stdout
    assert proc.returncode != 0 and "interrupted" in stderr, stderr[-3000:]
    (ckpt,) = (out / "checkpoints").iterdir()
    stopped = int(ckpt.name.removeprefix("step_"))
    assert 2 <= stopped < 60
    assert json.loads((ckpt / "trainer_state.json").read_text())["num_processes"] == 2
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == list(range(stopped + 1))

    r = arr("demo", "--output_dir", str(out), "--num_processes", "2", *run[2:], "--max_steps", str(stopped + 1),
            "--resume_from_checkpoint", "latest")  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == list(range(stopped + 2))


def test_demo_rejects_a_process_count_that_does_not_split_the_batch(tmp_path):
    r = arr("demo", "--output_dir", str(tmp_path / "d"), "--num_processes", "3")
    assert r.returncode == 2 and "does not divide prompts_per_step=16" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "d").exists()


def test_train_rejects_unknown_recipe_keys(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("max_stepz: 3\n")
    r = arr("train", str(recipe))
    assert r.returncode == 2 and "unknown keys ['max_stepz']" in r.stderr and "Traceback" not in r.stderr


def test_judge_pixel_pairwise_prints_json(tmp_path):
    good = render(Scene((Obj("circle", "red", 0, 0),)))
    bad = render(Scene((Obj("square", "red", 0, 0),)))
    good.save(tmp_path / "good.png")
    bad.save(tmp_path / "bad.png")
    rubric = {
        "prompt": "a red circle",
        "criteria": [
            {
                "id": "c1",
                "text": "One red circle.",
                "check": {"type": "count", "shape": "circle", "color": "red", "n": 1},
            }
        ],
    }
    (tmp_path / "r.json").write_text(json.dumps(rubric))
    r = arr("judge", "--backend", "pixel", "--prompt", "a red circle", "--rubric", str(tmp_path / "r.json"),
            str(tmp_path / "bad.png"), str(tmp_path / "good.png"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (
        out["mode"] == "compare"
        and out["preferred"] == 1
        and out["consistent"]
        and out["judge"]["calls"] == 2
    )


@needs_shipped_t2i
def test_shapes_sample_writes_a_scored_grid(tmp_path):
    r = arr("shapes", "sample", "a red circle", "--n", "4", "--out", str(tmp_path / "g.png"))
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["category"] == "colors" and len(out["scores"]) == 4 and (tmp_path / "g.png").stat().st_size > 0


@needs_shipped_edit
def test_shapes_edit_writes_a_grid(tmp_path):
    source = render(Scene((Obj("circle", "red", 0, 0), Obj("square", "blue", 2, 3))))
    source.save(tmp_path / "src.png")
    r = arr("shapes", "edit", str(tmp_path / "src.png"), "make the red circle green", "--n", "2",
            "--out", str(tmp_path / "g.png"))  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["n"] == 2 and (tmp_path / "g.png").stat().st_size > 0


@needs_shipped_edit
def test_eval_shapes_edit_suite_on_the_shipped_model(tmp_path):
    out = tmp_path / "eval"
    r = arr("eval", str(ROOT / "eval/shapes_edit.yaml"), "--policy", "shapes-edit", "--backend", "pixel",
            "--limit", "8", "--no-progress", "--out", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert (out / "report.html").stat().st_size > 0
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and summary
