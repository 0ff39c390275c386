"""One bf16 RPO step of an SD3.5-medium-shaped random-init transformer on CUDA: achieved TFLOP/s, eager and compiled.

    python bench/gpu_rpo_step.py --out bench/results/gpu_rpo_step.json          # a CUDA machine, < 10 minutes
    python bench/gpu_rpo_step.py --dry-run --out bench/results/gpu_rpo_step_dry.json  # tiny config on CPU: the logic only

Needs torch, peft and diffusers. On a GPU machine without internet access, bring diffusers' wheel along:
`pip download diffusers==0.42.1 importlib_metadata zipp --no-deps -d .whl` on a connected machine, then
`pip install --no-deps .whl/*.whl` on the GPU machine (diffusers needs nothing else beside torch).

The step is the trainer's RPO step on `SD3Policy` (arr/policies/sd3.py): `--prompts` x `--group` SDE samples of
`--steps` steps at `--resolution` px (no CFG unless `--guidance-scale` > 1), then for each of the first
`--trained-steps` steps and each micro-batch of `--micro-batch` samples the policy's transition with gradient, the
reference's (LoRA disabled) without, clipped policy loss + beta * KL, backward; then clipping and AdamW. LoRA
r`--lora-rank` on the attention projections, gradient checkpointing on. Text conditioning is random (the text
encoders are not part of the step). FLOPs are counted once with torch's FlopCounterMode (what runs, so the
checkpointed forward recompute included) and divided by the timed steps' seconds. The fractions are of 790
TFLOP/s (an H100's dense bf16 rate, as measured) and of an 8192^3 bf16 matmul timed in the same run.
Attention runs through SDPA restricted to the flash backend (`--attention flash`), or SDPA's own choice
(`--attention default`, cuDNN on H100). `torch.compile` compiles each transformer block (regional compilation;
the blocks repeat, so one graph serves many). `--dry-run`: a two-layer config on CPU in float32, compile with the
"eager" backend, so the tests exercise every stage in seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

PEAK_TFLOPS = 790.0

# SD3.5-medium's transformer (stabilityai/stable-diffusion-3.5-medium, transformer/config.json).
SD35_MEDIUM = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "num_layers": 24,
    "attention_head_dim": 64,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048,
    "out_channels": 16,
    "pos_embed_max_size": 384,
    "dual_attention_layers": tuple(range(13)),
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
    "dual_attention_layers": (0,),
    "qk_norm": "rms_norm",
}


def _import_diffusers():
    try:
        import diffusers
    except ImportError:
        sys.exit(
            "bench/gpu_rpo_step.py needs diffusers: `pip install diffusers`, or offline, install its wheel "
            "(`pip download diffusers==0.42.1 importlib_metadata zipp --no-deps -d .whl` on a connected machine, "
            "then `pip install --no-deps .whl/*.whl`)"
        )
    return diffusers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 10) -> float:
    """Dense matmul rate of this device in this run: the realistic ceiling."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e12


def build_policy(cfg: dict[str, Any], a: argparse.Namespace, device: torch.device, dtype: torch.dtype):
    diffusers = _import_diffusers()
    from arr.policies import make_policy

    with torch.device(device):
        torch.manual_seed(0)
        transformer = diffusers.SD3Transformer2DModel(**cfg).to(dtype)
        # A minimal 16-channel VAE with the SD3 downsampling factor 8: the policy reads its config; the step does
        # not decode (the judge is not part of this benchmark).
        vae = diffusers.AutoencoderKL(
            block_out_channels=[8, 8, 8, 8],
            latent_channels=16,
            norm_num_groups=8,
            layers_per_block=1,
            down_block_types=["DownEncoderBlock2D"] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4,
        )
    gen = torch.Generator(device).manual_seed(1)
    text_len, dim, pooled = a.text_len, cfg["joint_attention_dim"], cfg["pooled_projection_dim"]

    def encode_fn(prompts: list[str]):
        n = len(prompts)
        return (
            torch.randn(n, text_len, dim, generator=gen, device=device, dtype=dtype),
            torch.randn(n, pooled, generator=gen, device=device, dtype=dtype),
        )

    policy = make_policy(
        "sd3",
        transformer=transformer,
        vae=vae,
        encode_fn=encode_fn,
        height=a.resolution,
        width=a.resolution,
        num_steps=a.steps,
        guidance_scale=a.guidance_scale,
        gradient_checkpointing=True,
        device=device,
    )
    policy.add_lora(a.lora_rank, 2 * a.lora_rank)
    return policy


def rpo_step(policy: Any, opt: torch.optim.Optimizer, a: argparse.Namespace) -> dict[str, float]:
    """One RPO step: sample, then PPO-clipped loss + KL on the trained steps, backward, one optimizer step."""
    from arr.policies.sde import gaussian_kl

    device = policy.device
    _sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        cond = policy.encode([f"prompt {i}" for i in range(a.prompts)])
        traj = policy.sample(
            cond,
            group_size=a.group,
            num_steps=a.steps,
            eta=0.7,
            sde_steps=list(range(a.trained_steps)),
            generator=torch.Generator(device).manual_seed(0),  # noise drawn where the model runs
        )
    _sync(device)
    t1 = time.perf_counter()
    n = a.prompts * a.group
    adv = torch.tensor([1.0, -0.1] * (n // 2) + [0.0] * (n % 2), device=device)
    scale = 1.0 / (n * len(traj.train_steps))
    params = policy.trainable_parameters()
    for j in traj.train_steps:
        for start in range(0, n, a.micro_batch):
            idx = torch.arange(start, min(start + a.micro_batch, n))
            with torch.autocast(device.type, dtype=policy.dtype, enabled=device.type == "cuda"):
                tr = policy.transition(traj, j, idx)
                with torch.no_grad(), policy.reference():
                    ref = policy.transition(traj, j, idx)
            ratio = torch.exp(tr.log_prob - traj.log_probs[idx.to(traj.log_probs.device), j].to(device))
            loss = torch.maximum(-adv[idx] * ratio, -adv[idx] * ratio.clamp(0.8, 1.2))
            kl = gaussian_kl(tr.mean, ref.mean, tr.std, reduction=traj.reduction)
            ((loss + 0.01 * kl).sum() * scale).backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    _sync(device)
    t2 = time.perf_counter()
    return {"sample_seconds": t1 - t0, "train_seconds": t2 - t1, "step_seconds": t2 - t0}


def count_flops(fn: Callable[[], Any]) -> tuple[int, Any]:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        out = fn()
    return counter.get_total_flops(), out


def attention_context(kind: str, device: torch.device):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if kind == "flash" and device.type == "cuda":
        return sdpa_kernel([SDPBackend.FLASH_ATTENTION])
    if kind == "flash":  # CPU dry run: flash is CUDA-only; the CPU flash kernel has the same role
        return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.MATH])
    return contextlib.nullcontext()


def measure(policy: Any, a: argparse.Namespace, flops: int, label: str) -> dict[str, Any]:
    opt = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-5)
    t0 = time.perf_counter()
    with attention_context(a.attention, policy.device):
        warm = rpo_step(policy, opt, a)  # compile happens here for the compiled run
        runs = [rpo_step(policy, opt, a) for _ in range(a.repeats)]
    secs = min(r["step_seconds"] for r in runs)
    best = min(runs, key=lambda r: r["step_seconds"])
    tflops = flops / secs / 1e12
    return {
        "label": label,
        "warmup_seconds": time.perf_counter() - t0 - sum(r["step_seconds"] for r in runs),
        "first_step": warm,
        "best_step": best,
        "tflops": tflops,
        "fraction_of_790": tflops / PEAK_TFLOPS,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--dry-run", action="store_true", help="tiny config on CPU, float32: checks the logic only"
    )
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group", type=int, default=2)
    p.add_argument("--steps", type=int, default=10, help="sampling steps")
    p.add_argument(
        "--trained-steps",
        "--trained_steps",
        type=int,
        default=4,
        help="the first N steps are SDE and trained",
    )
    p.add_argument("--micro-batch", "--micro_batch", type=int, default=8)
    p.add_argument("--lora-rank", "--lora_rank", type=int, default=32)
    p.add_argument(
        "--text-len", "--text_len", type=int, default=333, help="77 CLIP + 256 T5 tokens, as the SD3 pipeline"
    )
    p.add_argument("--guidance-scale", "--guidance_scale", type=float, default=1.0)
    p.add_argument("--attention", choices=("flash", "default"), default="flash")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--compile-backend", "--compile_backend", default="inductor")
    p.add_argument("--out", default="bench/results/gpu_rpo_step.json")
    a = p.parse_args(argv)
    if a.dry_run:
        a.resolution, a.prompts, a.steps, a.trained_steps, a.micro_batch = 64, 2, 3, 2, 2
        a.text_len, a.lora_rank, a.repeats, a.compile_backend = 8, 4, 1, "eager"
        device, dtype, cfg = torch.device("cpu"), torch.float32, TINY
    else:
        if not torch.cuda.is_available():
            sys.exit("bench/gpu_rpo_step.py needs CUDA (use --dry-run to check the logic on CPU)")
        device, dtype, cfg = torch.device("cuda"), torch.bfloat16, SD35_MEDIUM
        torch.backends.cuda.matmul.allow_tf32 = True
    started = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "gpu_rpo_step",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU {platform.machine()}",
        "torch": torch.__version__,
        "args": vars(a),
    }
    result["matmul_tflops"] = matmul_tflops(device, dtype, 256 if a.dry_run else 8192)
    policy = build_policy(cfg, a, device, dtype)
    result["parameters"] = sum(p.numel() for p in policy.transformer.parameters())
    result["lora_parameters"] = sum(p.numel() for p in policy.trainable_parameters())

    # FLOPs of one step (one counted, untimed run; the counter slows it down).
    opt = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-5)
    with attention_context(a.attention, device):
        flops, _ = count_flops(lambda: rpo_step(policy, opt, a))
    result["flops_per_step"] = flops
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result["eager"] = measure(policy, a, flops, "eager")
    if device.type == "cuda":
        result["eager"]["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    if a.compile:
        from torch import _dynamo

        _dynamo.config.cache_size_limit = max(_dynamo.config.cache_size_limit, 64)
        try:
            for block in policy.transformer.transformer_blocks:
                block.compile(backend=a.compile_backend, dynamic=False)
            result["compiled"] = measure(policy, a, flops, f"torch.compile ({a.compile_backend}, per block)")
        except (
            Exception
        ) as e:  # a compiler failure is a finding to report, not a reason to lose the eager figure
            result["compiled"] = {"error": f"{type(e).__name__}: {str(e)[:500]}"}
    result["total_seconds"] = time.perf_counter() - started
    for key in ("eager", "compiled"):
        if key in result and "tflops" in result[key]:
            result[key]["fraction_of_matmul"] = result[key]["tflops"] / result["matmul_tflops"]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))  # noqa: T201
    return result


if __name__ == "__main__":
    main()
