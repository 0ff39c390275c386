"""What FSDP saves per process against DDP: two CPU processes over gloo train a ~100M-parameter shapes model (the
SD3 transformer class, 5 joint blocks of 12 heads x 64) for two RPO steps under each engine.

    OMP_WAIT_POLICY=PASSIVE python bench/fsdp_memory.py --out bench/results/fsdp_memory.json

Per process it records the bytes of the frozen base it holds after `accelerator.prepare` (under FSDP its shards,
a DTensor's local part; under DDP every weight), the resident memory after training and its peak (VmRSS, VmHWM),
and the step time. On a CPU accelerate turns FSDP on only when asked in code (a launch config with `cpu: true`
gives DDP), so the FSDP processes set the engine the way the test suite does (tests/conftest.py,
`cpu_fsdp_accelerator`); everything after that is accelerate's and torch's own FSDP2.

The peak includes building the whole model once in each process before it is sharded (as `from_pretrained`
does without `fsdp_cpu_ram_efficient_loading`), so it is the held bytes, not the peak, that show the sharding.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

CHILD = """
import json, sys, time
from pathlib import Path
import torch
from accelerate import Accelerator
from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from arr import RubricJudge
from arr.backends.pixel import PixelBackend
from arr.policies.shapes import ShapesPolicy
from arr.rewards import RubricPairwiseReward
from arr.rpo import RPOConfig, RPOTrainer
from arr.shapes.models import ShapesModelConfig, build_t2i_model
from arr.shapes.training import t2i_records

engine, out = sys.argv[1], Path(sys.argv[2])

def status_kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])

acc = Accelerator(cpu=True, step_scheduler_with_optimizer=False)
if engine == "fsdp":
    acc.state.fsdp_plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2, auto_wrap_policy="transformer_based_wrap", reshard_after_forward=True,
        state_dict_type="SHARDED_STATE_DICT",
    )
    acc.state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
config = ShapesModelConfig(num_layers=5, num_attention_heads=12, attention_head_dim=64)
policy = ShapesPolicy(build_t2i_model(config, seed=0), num_steps=4)
parameters = sum(p.numel() for p in policy.transformer.parameters())
args = RPOConfig(
    output_dir=str(out / "run"), max_steps=2, prompts_per_step=4, num_sampling_steps=4, eval_steps=0,
    save_steps=100, sample_steps=100, report_to="none", guidance_scale=1.0, lora_rank=8, lora_alpha=16,
    cpu=True, gradient_checkpointing=False,
)
trainer = RPOTrainer(
    policy, RubricPairwiseReward(RubricJudge(PixelBackend())), args, t2i_records(16, "train"), accelerator=acc
)
held = 0
for p in trainer.policy.transformer.parameters():
    if not p.requires_grad:
        local = p.to_local() if hasattr(p, "to_local") else p
        held += local.numel() * local.element_size()
start = time.perf_counter()
trainer.train()
seconds = time.perf_counter() - start
(out / f"rank_{acc.process_index}.json").write_text(json.dumps({
    "parameters": parameters, "frozen_bytes_held": held, "rss_mib": status_kib("VmRSS") / 1024,
    "peak_rss_mib": status_kib("VmHWM") / 1024, "train_seconds": seconds,
}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_engine(engine: str, work: Path) -> list[dict]:
    folder = work / engine
    folder.mkdir(parents=True, exist_ok=True)
    script = work / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), str(script), engine, str(folder)]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{engine} run failed:\n{done.stderr[-3000:]}")
    return [json.loads((folder / f"rank_{r}.json").read_text()) for r in (0, 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench/results/fsdp_memory.json")
    parser.add_argument("--work-dir", default="bench/results/fsdp_memory_runs")
    args = parser.parse_args()
    work = Path(args.work_dir)
    ranks = {engine: run_engine(engine, work) for engine in ("ddp", "fsdp")}
    ddp, fsdp = ranks["ddp"], ranks["fsdp"]
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "parameters": ddp[0]["parameters"],
        "ranks": ranks,
        "frozen_held_fsdp_over_ddp": max(r["frozen_bytes_held"] for r in fsdp) / ddp[0]["frozen_bytes_held"],
        "rss_fsdp_over_ddp": max(r["rss_mib"] for r in fsdp) / max(r["rss_mib"] for r in ddp),
        "peak_rss_fsdp_over_ddp": max(r["peak_rss_mib"] for r in fsdp) / max(r["peak_rss_mib"] for r in ddp),
        "train_seconds_fsdp_over_ddp": max(r["train_seconds"] for r in fsdp)
        / max(r["train_seconds"] for r in ddp),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "ranks"}, indent=2))


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"{time.perf_counter() - start:.0f} s")
