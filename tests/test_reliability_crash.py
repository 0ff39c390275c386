"""Crashes: `kill -9` of a training process at random moments, half of them inside a checkpoint write. Resume must
start from the newest complete checkpoint (never a partial one, never a leftover .tmp_ folder) and the final
metrics.jsonl must equal an uninterrupted run's, row for row (timing fields aside).

Training processes are forked from a "zygote" process that has imported torch, diffusers and arr but run nothing
(importing them takes ~20 s on the shared 2-core machine; a fork takes milliseconds). Each child is a separate
process that trains, checkpoints and is SIGKILLed exactly like a launched one.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, TIMING

CHECKPOINT_FILES = {
    "lora.safetensors",
    "optimizer.bin",
    "scheduler.bin",
    "random_states_0.pkl",
    "trainer_state.json",
}

ZYGOTE = r"""
import json, os, sys, time, traceback
sys.path.insert(0, {root!r})
from pathlib import Path
import torch
from tests.conftest import tiny_policy, make_args
from tests.fakes import BrightnessBackend
from arr import RubricJudge
from arr.rewards import RubricPairwiseReward
from arr.rpo import RPOTrainer
from arr.shapes.training import t2i_records


def run(job):
    markers = Path(job["markers"])
    real_save = torch.save

    def marked_save(obj, f, *a, **kw):
        # A checkpoint write is under way (lora.safetensors is in the .tmp_ folder): say so, and take a moment,
        # so that the parent's kill lands inside the write.
        (markers / ("ckpt_" + Path(f).parent.name.split("_")[2])).touch()
        time.sleep(0.2)
        real_save(obj, f, *a, **kw)

    torch.save = marked_save
    real_load, real_step = RPOTrainer.load_checkpoint, RPOTrainer.training_step

    def load_checkpoint(self, which):
        real_load(self, which)
        (markers / "resumed.json").write_text(json.dumps({{"step": self.step}}))

    def training_step(self):
        (markers / f"step_{{self.step + 1}}").touch()
        return real_step(self)

    RPOTrainer.load_checkpoint, RPOTrainer.training_step = load_checkpoint, training_step
    args = make_args(Path(job["out"]), output_dir=job["out"], max_steps=job["max_steps"], save_steps=1,
                     resume_from_checkpoint="latest")
    RPOTrainer(tiny_policy(), RubricPairwiseReward(RubricJudge(BrightnessBackend())), args,
               t2i_records(16, "train")).train()


print("ready", flush=True)
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        code = 0
        try:
            run(job)
        except BaseException:
            traceback.print_exc()
            code = 1
        os._exit(code)
    print("pid", pid, flush=True)
    _, status = os.waitpid(pid, 0)
    print("exit", pid, status, flush=True)
"""


class Zygote:
    def __init__(self, tmp: Path) -> None:
        script = tmp / "zygote.py"
        script.write_text(ZYGOTE.format(root=str(ROOT)))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
        self.log = open(tmp / "zygote.log", "wb")  # noqa: SIM115 - held open for the zygote's lifetime
        self.proc = subprocess.Popen(
            [sys.executable, str(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=env,
        )
        assert self.proc.stdout.readline().strip() == "ready", (tmp / "zygote.log").read_text()[-3000:]

    def launch(self, out: Path, markers: Path, max_steps: int) -> int:
        job = {"out": str(out), "markers": str(markers), "max_steps": max_steps}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        word, pid = self.proc.stdout.readline().split()
        assert word == "pid"
        return int(pid)

    def wait(self, pid: int) -> int:
        word, got, status = self.proc.stdout.readline().split()
        assert word == "exit" and int(got) == pid
        return int(status)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)
        self.log.close()


def complete_checkpoints(run: Path) -> dict[int, Path]:
    """step -> folder, for every step_N folder holding all five checkpoint files (judged independently of arr)."""
    out = {}
    for p in (run / "checkpoints").glob("step_*"):
        if {f.name for f in p.iterdir()} >= CHECKPOINT_FILES:
            json.loads((p / "trainer_state.json").read_text())
            out[int(p.name[5:])] = p
    return out


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def wait_for(cond, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "the training process made no progress"
        time.sleep(0.01)


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_nothing(tmp_path):
    # Enough steps that 12 kills fit on a fast machine too: an "anywhere in the next two steps" kill sleeps up to
    # 2.5 s, which is several steps where a step takes 0.3 s; with 24 steps the run could finish before the last
    # kill and the test waited for a checkpoint past max_steps.
    max_steps, n_kills = 48, 12
    zygote = Zygote(tmp_path)
    try:
        full_markers = tmp_path / "m_full"
        full_markers.mkdir()
        pid = zygote.launch(tmp_path / "full", full_markers, max_steps)
        assert zygote.wait(pid) == 0, (tmp_path / "zygote.log").read_text()[-3000:]

        run = tmp_path / "crash"
        # A leftover temporary folder that even claims a later step must be ignored by resume (and cleared).
        fake = run / "checkpoints" / ".tmp_step_999_1"
        fake.mkdir(parents=True)
        (fake / "trainer_state.json").write_text(json.dumps({"step": 999}))
        rng = random.Random(0)
        kills = in_checkpoint = launches = 0
        resumed_at = []
        while True:
            expected = max(complete_checkpoints(run), default=0)
            markers = tmp_path / f"m_{launches}"
            markers.mkdir()
            launches += 1
            tmp_before = set((run / "checkpoints").glob(".tmp_*"))
            pid = zygote.launch(run, markers, max_steps)
            if kills == n_kills:
                assert zygote.wait(pid) == 0, (tmp_path / "zygote.log").read_text()[-3000:]
                break
            if kills % 2 == 0:  # inside the write of the second checkpoint after the one resumed from
                wait_for(lambda m=markers, s=expected: (m / f"ckpt_{s + 2}").exists())
                time.sleep(rng.uniform(0.0, 0.25))
            else:  # anywhere in the next two steps
                wait_for(lambda m=markers, s=expected: (m / f"step_{s + 1}").exists())
                time.sleep(rng.uniform(0.0, 2.5))
            os.kill(pid, signal.SIGKILL)
            status = zygote.wait(pid)
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
            kills += 1
            in_checkpoint += bool(set((run / "checkpoints").glob(".tmp_*")) - tmp_before)
            if expected:
                resumed = json.loads((markers / "resumed.json").read_text())["step"]
                assert resumed == expected, (
                    f"launch {launches}: resumed at {resumed}, newest complete {expected}"
                )
                resumed_at.append(resumed)
        assert json.loads((markers / "resumed.json").read_text())["step"] == expected  # the last launch too
    finally:
        zygote.close()

    assert kills == n_kills and in_checkpoint >= n_kills // 2 - 1, (kills, in_checkpoint)
    assert not (run / "checkpoints" / ".tmp_step_999_1").exists()  # never picked, and cleared on resume
    a, b = rows(tmp_path / "full"), rows(run)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, max_steps + 1))
    for ra, rb in zip(a, b, strict=True):
        assert set(ra) == set(rb)
        for k in ra:
            if k not in TIMING:
                assert ra[k] == pytest.approx(rb[k], rel=1e-6, abs=1e-9), (ra["step"], k)
    summary = {
        "kills": kills,
        "kills_inside_checkpoint_write": in_checkpoint,
        "launches": launches,
        "resumed_at": resumed_at,
        "rows_equal": len(a),
    }
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    sys.stderr.write(f"crash summary: {json.dumps(summary)}\n")


def test_metrics_rows_before_the_checkpoint_survive_a_kill_during_resume(tmp_path, monkeypatch):
    """Resume rewrites metrics.jsonl to drop rows past the checkpoint; a kill in that rewrite must not lose the rest.

    The kill is simulated at the worst moment: a file in the run folder was opened for writing and half-written.
    """
    from arr.rpo.checkpoint import truncate_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 0.1 * s}) + "\n" for s in range(1, 6)))
    real = Path.write_text

    def killed_write_text(self, data, *a, **kw):
        if self.parent == tmp_path:
            with open(self, "w", encoding="utf-8") as f:
                f.write(data[: len(data) // 2])
            raise KeyboardInterrupt("SIGKILL simulated mid-write")
        return real(self, data, *a, **kw)

    monkeypatch.setattr(Path, "write_text", killed_write_text)
    with contextlib.suppress(KeyboardInterrupt):
        truncate_metrics(path, 4)
    monkeypatch.undo()
    kept = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a cut row
            kept.append(json.loads(line)["step"])
    assert kept[:4] == [1, 2, 3, 4], kept
