"""bench/gpu_rpo_step.py's logic on CPU (--dry-run): it builds the SD3 policy, runs a full RPO step, counts FLOPs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("diffusers")

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_rpo_step.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_rpo_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # ~6 s of steps and FLOP counting on top of the diffusers and peft imports
def test_dry_run_counts_flops_and_times_a_full_step(tmp_path):
    out = tmp_path / "gpu.json"
    # torch.compile is left out here: even its "eager" backend traces for ~30 s on 2 cores.
    result = _load().main(["--dry-run", "--no-compile", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["parameters"] > result["lora_parameters"] > 0
    # A step is at least the sampling forwards: 2 x params-ish FLOPs per token, 3 steps x 4 samples.
    assert result["flops_per_step"] > 2 * result["parameters"] * 3 * 4
    eager = result["eager"]
    assert eager["best_step"]["sample_seconds"] > 0 and eager["best_step"]["train_seconds"] > 0
    step = eager["best_step"]["step_seconds"]
    assert eager["tflops"] == pytest.approx(result["flops_per_step"] / step / 1e12)
    assert "compiled" not in result
