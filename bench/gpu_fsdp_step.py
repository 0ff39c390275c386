"""RPOTrainer steps of an SD3.5-medium-shaped transformer under DDP and under FSDP: memory and step time per process.

    python bench/gpu_fsdp_step.py --out bench/results/gpu_fsdp_step.json                  # 1 GPU, bf16, ~5 minutes
    python bench/gpu_fsdp_step.py --processes 8 --out bench/results/gpu_fsdp_step_8.json  # 8 GPUs: FSDP shards 8 ways
    python bench/gpu_fsdp_step.py --cpu --model cpu100m --processes 2 --out bench/results/cpu_fsdp_memory.json

For each engine (`--engines`, default ddp and fsdp) the script starts `--processes` ranks with torchrun
(`python -m torch.distributed.run`); each rank builds the policy, wraps it the way `accelerate launch` would (DDP, or
FSDP version 2 through accelerate's plugin: `fully_shard` on every transformer block and the root, parameters
resharded after each forward), creates an `RPOTrainer` (which prepares the network, optimizer and scheduler) and
runs `--warmup` + `--steps` training steps (sample, judge, optimize). A world size of 1 still exercises the wrapping:
DDP's reducer and FSDP's all-gathers and reduce-scatters run, over one rank.

Per rank it reports: the frozen base's and the LoRA's bytes held by this rank after `prepare` (FSDP keeps a 1/N
shard of each), the memory in use after `prepare` and the peak during the timed steps (CUDA: allocated bytes;
CPU: resident set size, polled every 5 ms), and the mean step time with its sample/judge/optimize split. The
summary gives each engine's largest rank and the FSDP/DDP ratios.

The policy is arr's `SD3Policy` on a random-init transformer (`--model`: sd35_medium, the 2.24B configuration of
stabilityai/stable-diffusion-3.5-medium; cpu100m, a ~100M-parameter SD3 transformer for CPU runs; tiny, for the
tests), a small random VAE with 16 latent channels and the same 8x downsampling (decoding is not what is measured),
random text embeddings of SD3's widths, and a judge-free pairwise reward (the brighter image of a pair wins). LoRA
on the attention projections, gradient checkpointing on GPU. On CPU, FSDP runs over gloo: accelerate enables FSDP
only for accelerator devices (on a CPU it silently falls back to DDP), so `--cpu` sets the engine accelerate sets on
GPUs; the wrapping, collectives and trainer are the real ones.

On a GPU machine without internet access, bring diffusers' wheel (see bench/gpu_rpo_step.py).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from gpu_rpo_step import SD35_MEDIUM  # the same transformer configuration (bench/ is the script's folder)

# ~100M parameters in five joint blocks of width 768: large enough that the weights dominate a CPU rank's memory.
CPU100M = {
    "sample_size": 8,
    "patch_size": 2,
    "in_channels": 16,
    "num_layers": 5,
    "attention_head_dim": 64,
    "num_attention_heads": 12,
    "joint_attention_dim": 768,
    "caption_projection_dim": 768,
    "pooled_projection_dim": 768,
    "out_channels": 16,
    "pos_embed_max_size": 32,
    "qk_norm": "rms_norm",
}
TINY = {
    "sample_size": 8,
    "patch_size": 2,
    "in_channels": 16,
    "num_layers": 2,
    "attention_head_dim": 8,
    "num_attention_heads": 2,
    "joint_attention_dim": 32,
    "caption_projection_dim": 16,
    "pooled_projection_dim": 16,
    "out_channels": 16,
    "pos_embed_max_size": 32,
    "qk_norm": "rms_norm",
}
MODELS = {"sd35_medium": SD35_MEDIUM, "cpu100m": CPU100M, "tiny": TINY}
TEXT_TOKENS = 77


class RandomText:
    """Text embeddings of the transformer's widths, fixed per prompt (the text encoders are not what is measured)."""

    def __init__(self, width: int, pooled: int, dtype: torch.dtype) -> None:
        self.width, self.pooled, self.dtype = width, pooled, dtype

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        embeds, pooled = [], []
        for p in prompts:
            g = torch.Generator().manual_seed(sum(map(ord, p)))
            embeds.append(torch.randn(TEXT_TOKENS, self.width, generator=g))
            pooled.append(torch.randn(self.pooled, generator=g))
        return torch.stack(embeds).to(self.dtype), torch.stack(pooled).to(self.dtype)


def build_policy(model: str, resolution: int, device: torch.device, dtype: torch.dtype, checkpointing: bool):
    from diffusers import AutoencoderKL, SD3Transformer2DModel

    from arr.policies.sd3 import SD3Policy

    cfg = MODELS[model]
    torch.manual_seed(0)  # every rank builds the same weights, as every rank loads the same checkpoint
    transformer = SD3Transformer2DModel(**cfg).to(dtype)
    vae = AutoencoderKL(
        block_out_channels=[8, 8, 8, 8],
        in_channels=3,
        out_channels=3,
        latent_channels=cfg["in_channels"],
        norm_num_groups=8,
        layers_per_block=1,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
    ).to(dtype)
    text = RandomText(cfg["joint_attention_dim"], cfg["pooled_projection_dim"], dtype)
    return SD3Policy(
        transformer,
        vae,
        text,
        height=resolution,
        width=resolution,
        guidance_scale=1.0,
        gradient_checkpointing=checkpointing,
        device=device,
    )


def brighter_wins_reward():
    """A judge-free pairwise reward: in each group the brighter image of every pair wins (+1 / -0.1)."""
    from arr.rewards import GroupReward, GroupRewardOutput

    class BrighterWins(GroupReward):
        def __call__(self, *, prompts, images, rubrics, source_images=None) -> GroupRewardOutput:
            rewards = []
            for group in images:
                light = [sum(im.convert("L").getdata()) for im in group]
                best = max(range(len(group)), key=light.__getitem__)
                rewards.append([1.0 if k == best else -0.1 for k in range(len(group))])
            return GroupRewardOutput(rewards)

    return BrighterWins()


def make_accelerator(engine: str, cpu: bool, mixed_precision: str) -> Any:
    """The Accelerator `accelerate launch` would give for `engine`, with the trainer's own settings."""
    from accelerate import Accelerator
    from accelerate.state import PartialState
    from accelerate.utils import (
        DistributedDataParallelKwargs,
        DistributedType,
        FullyShardedDataParallelPlugin,
    )

    plugin = None
    if engine == "fsdp":
        plugin = FullyShardedDataParallelPlugin(
            fsdp_version=2,
            auto_wrap_policy="transformer_based_wrap",  # the model's _no_split_modules: its transformer blocks
            reshard_after_forward=True,
            state_dict_type="SHARDED_STATE_DICT",
        )
    acc = Accelerator(
        cpu=cpu,
        mixed_precision=mixed_precision,
        fsdp_plugin=None if cpu else plugin,
        step_scheduler_with_optimizer=False,
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
    )
    if plugin is not None and cpu:
        # accelerate drops the FSDP plugin for CPU processes (MULTI_CPU); set the engine it sets on GPUs.
        acc.state.fsdp_plugin = plugin
        acc.state.distributed_type = DistributedType.FSDP
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    return acc


class MemoryProbe:
    """Memory in use and its peak: CUDA allocated bytes, or on CPU the resident set size polled every 5 ms."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def now(self) -> int:
        if self.cuda:
            return torch.cuda.memory_allocated()
        gc.collect()
        _release_freed_memory()
        return _rss()

    @contextlib.contextmanager
    def peak_during(self):
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            yield
            self.peak = torch.cuda.max_memory_allocated()
            return
        self.peak = _rss()
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        try:
            yield
        finally:
            self._stop.set()
            self._thread.join()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.005)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _release_freed_memory() -> None:
    """Return freed heap pages to the system (glibc keeps them), so the resident size shows what is held."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def local_bytes(params: list[torch.Tensor]) -> int:
    """Bytes of `params` held by this rank: a sharded parameter's local shard, else the whole tensor."""
    total = 0
    for p in params:
        local = p.to_local() if hasattr(p, "to_local") else p
        total += local.numel() * local.element_size()
    return total


def run_rank(a: argparse.Namespace) -> dict[str, Any]:
    """One rank's measurement (called inside torchrun)."""
    import diffusers  # noqa: F401 - imported before the first memory reading, which should count the model only

    from arr.policies.sd3 import SD3Policy  # noqa: F401 - likewise
    from arr.rpo import RPOConfig, RPOTrainer
    from arr.shapes.training import t2i_records

    cpu = a.cpu or not torch.cuda.is_available()
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = torch.device("cpu") if cpu else torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dtype = torch.float32 if cpu else torch.bfloat16
    probe = MemoryProbe(device)
    before = probe.now()
    policy = build_policy(a.model, a.resolution, device, dtype, checkpointing=not cpu)
    params = sum(p.numel() for p in policy.transformer.parameters())
    args = RPOConfig(
        output_dir=a.work_dir,
        overwrite_output_dir=True,
        max_steps=a.warmup + a.steps,
        prompts_per_step=a.prompts_per_rank * world,
        group_size=2,
        num_sampling_steps=a.sampling_steps,
        sample_batch_size=2 * a.prompts_per_rank,
        train_batch_size=a.micro_batch,
        guidance_scale=1.0,
        lora_rank=a.lora_rank,
        lora_alpha=2 * a.lora_rank,
        mixed_precision="no" if cpu else "bf16",
        gradient_checkpointing=not cpu,
        report_to="none",
        sample_steps=10_000,
        save_steps=10_000,
        cpu=cpu,
    )
    accelerator = make_accelerator(a.engine, cpu, args.mixed_precision)
    trainer = RPOTrainer(
        policy, brighter_wins_reward(), args, t2i_records(16, "train"), accelerator=accelerator
    )
    frozen = [p for p in policy.transformer.parameters() if not p.requires_grad]
    after_prepare = probe.now()
    for _ in range(a.warmup):
        trainer.training_step()
        trainer.step += 1
    rows = []
    with probe.peak_during():
        for _ in range(a.steps):
            rows.append(trainer.training_step())
            trainer.step += 1
    mean = {
        k: sum(r[k] for r in rows) / len(rows) for k in ("step_seconds", "sample_seconds", "optimize_seconds")
    }
    return {
        "rank": rank,
        "world_size": world,
        "engine": a.engine,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "network": type(trainer.network).__name__,
        "device": str(device),
        "parameters": params,
        "frozen_bytes_held": local_bytes(frozen),
        "frozen_bytes_whole": sum(p.numel() * p.element_size() for p in frozen),
        "lora_bytes_held": local_bytes(trainer.params),
        "memory_before_model": before,
        "memory_after_prepare": after_prepare,
        "peak_memory_during_steps": probe.peak,
        **mean,
        "loss": [r["loss"] for r in rows],
    }


def summarise(ranks: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per engine the largest rank's figures, and FSDP's over DDP's."""
    keys = ("frozen_bytes_held", "lora_bytes_held", "memory_after_prepare", "peak_memory_during_steps")
    out: dict[str, Any] = {}
    for engine, rows in ranks.items():
        worst = {k: max(r[k] for r in rows) for k in keys}
        # What the model adds to a rank: the memory beyond the process's own before the model was built.
        worst["model_memory_after_prepare"] = max(
            r["memory_after_prepare"] - r["memory_before_model"] for r in rows
        )
        worst["model_peak_memory_during_steps"] = max(
            r["peak_memory_during_steps"] - r["memory_before_model"] for r in rows
        )
        worst["step_seconds"] = max(r["step_seconds"] for r in rows)
        out[engine] = worst
    if "ddp" in out and "fsdp" in out:
        out["fsdp_over_ddp"] = {
            k: out["fsdp"][k] / out["ddp"][k] for k in out["ddp"] if out["ddp"][k] and k != "lora_bytes_held"
        }
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(a: argparse.Namespace, engine: str, folder: Path) -> list[dict[str, Any]]:
    """Run `a.processes` ranks of `engine` under torchrun; returns each rank's measurement."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(a.processes),
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(Path(__file__).resolve()),
           "--rank-job", "--engine", engine, "--work-dir", str(folder / engine)]  # fmt: skip
    for name in ("model", "resolution", "sampling_steps", "prompts_per_rank", "micro_batch", "lora_rank",
                 "warmup", "steps"):  # fmt: skip
        cmd += [f"--{name.replace('_', '-')}", str(getattr(a, name))]
    if a.cpu:
        cmd.append("--cpu")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if a.cpu:
        # glibc keeps freed heap memory, so the resident size would count FSDP's freed all-gather buffers; with a
        # fixed mmap threshold every large block is mapped and unmapped, and the resident size is what is live.
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{engine} ranks failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return [json.loads(p.read_text()) for p in sorted((folder / engine).glob("rank_*.json"))]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path)
    p.add_argument("--engines", nargs="+", default=["ddp", "fsdp"], choices=["ddp", "fsdp"])
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--cpu", action="store_true", help="gloo on CPU (float32), even where a GPU is present")
    p.add_argument("--model", choices=sorted(MODELS), default="sd35_medium")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--sampling-steps", type=int, default=8)
    p.add_argument("--prompts-per-rank", type=int, default=4)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--lora-rank", type=int, default=32)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--rank-job", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--engine", choices=["ddp", "fsdp"], help=argparse.SUPPRESS)
    p.add_argument("--work-dir", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.rank_job:
        result = run_rank(a)
        Path(a.work_dir, f"rank_{result['rank']}.json").write_text(json.dumps(result, indent=1))
        return result
    with tempfile.TemporaryDirectory(prefix="arr_fsdp_") as tmp:
        ranks = {engine: launch(a, engine, Path(tmp)) for engine in a.engines}
    result = {
        "bench": "gpu_fsdp_step",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "machine": platform.node(),
        "device": "cpu" if a.cpu or not torch.cuda.is_available() else torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "settings": {k: v for k, v in vars(a).items() if k not in ("out", "rank_job", "engine", "work_dir")},
        "summary": summarise(ranks),
        "ranks": ranks,
    }
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=1, default=str))
    return result


if __name__ == "__main__":
    main()
