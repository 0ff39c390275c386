"""bench/gpu_fsdp_step.py on CPU: two gloo processes train a tiny SD3 policy under DDP and under FSDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_fsdp_step.py"


@pytest.mark.slow  # two engines x two processes, ~1 min on 2 cores
def test_fsdp_holds_half_the_frozen_base_per_process_and_both_engines_train(tmp_path):
    out = tmp_path / "fsdp.json"
    cmd = [sys.executable, str(SCRIPT), "--cpu", "--model", "tiny", "--processes", "2", "--resolution", "64",
           "--sampling-steps", "3", "--prompts-per-rank", "2", "--micro-batch", "2", "--lora-rank", "4",
           "--warmup", "1", "--steps", "1", "--out", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    ddp, fsdp = result["ranks"]["ddp"], result["ranks"]["fsdp"]
    assert [r["network"] for r in ddp] == ["DistributedDataParallel"] * 2
    whole = ddp[0]["frozen_bytes_whole"]
    assert all(r["frozen_bytes_held"] == whole for r in ddp)
    assert sum(r["frozen_bytes_held"] for r in fsdp) == whole  # each weight held once over the two processes
    assert result["summary"]["fsdp_over_ddp"]["frozen_bytes_held"] <= 0.6
    # The same first step under both engines (same seeds, same data): the same loss on each process.
    for a, b in zip(ddp, fsdp, strict=True):
        assert a["loss"][0] == pytest.approx(b["loss"][0], rel=1e-4)
