"""Peak memory of one RPO step for a ~100M-parameter SD3 transformer on CPU, as a multiple of the weights' size.

    OMP_WAIT_POLICY=PASSIVE python bench/rpo_memory.py --out bench/results/rpo_memory.json

Each configuration runs in a fresh subprocess (peak RSS is per process): after the imports it reads VmRSS, builds
a random-init `SD3Transformer2DModel` (12 joint blocks, 8 heads x 64, ~112M parameters, float32; the SD3.5
layout at a smaller width) inside `SD3Policy` with a tiny VAE and a fixed-table text encoder, adds LoRA (r 16),
then runs the RPO step the trainer runs: sample a group of `--group` images (SDE, no grad), then for each trained
step recompute the policy's transition (with grad) and the reference's (LoRA disabled, no grad), the clipped
policy loss + beta * KL, backward, AdamW step. Peak = VmHWM - the RSS before the model existed, so it holds the
weights, LoRA, optimizer state, activations and allocator slack. Target: <= 3x the weights with gradient
checkpointing. The reference is checked to be the same network: the parameter storages seen inside
`policy.reference()` are the policy's, and a reference transition adds no weights-sized memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def child(args: argparse.Namespace) -> dict:
    import torch
    from diffusers import AutoencoderKL, SD3Transformer2DModel

    from arr.policies import make_policy
    from arr.policies.sde import gaussian_kl

    torch.set_num_threads(args.threads)
    base_kib = _status_kib("VmRSS")
    torch.manual_seed(0)
    tr = SD3Transformer2DModel(
        sample_size=args.latent,
        patch_size=2,
        in_channels=16,
        num_layers=args.layers,
        attention_head_dim=64,
        num_attention_heads=args.heads,
        joint_attention_dim=args.text_dim,
        caption_projection_dim=64 * args.heads,
        pooled_projection_dim=256,
        out_channels=16,
    )
    vae = AutoencoderKL(
        block_out_channels=[8, 8, 8, 8],
        in_channels=3,
        out_channels=3,
        latent_channels=16,
        norm_num_groups=8,
        layers_per_block=1,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
    )
    gen = torch.Generator().manual_seed(1)
    table, pool = (
        torch.randn(128, args.text_dim, generator=gen),
        torch.randn(args.text_dim, 256, generator=gen),
    )

    def encode_fn(prompts: list[str]):
        ids = torch.tensor([[ord(c) % 128 for c in (p * args.text_len)[: args.text_len]] for p in prompts])
        e = table[ids]
        return e, e.mean(1) @ pool

    size = args.latent * 8
    policy = make_policy(
        "sd3",
        transformer=tr,
        vae=vae,
        encode_fn=encode_fn,
        height=size,
        width=size,
        num_steps=args.steps,
        guidance_scale=1.0,
        gradient_checkpointing=args.checkpointing,
    )
    weight_bytes = sum(p.numel() * p.element_size() for p in tr.parameters())
    policy.add_lora(args.lora_rank, 2 * args.lora_rank)
    params = policy.trainable_parameters()
    lora_bytes = sum(p.numel() * p.element_size() for p in params)
    opt = torch.optim.AdamW(params, lr=1e-4)
    after_build_kib = _status_kib("VmRSS")

    sde_steps = list(range(args.trained_steps))
    cond = policy.encode(["a red circle left of a blue square"] * 1)
    traj = policy.sample(
        cond, group_size=args.group, num_steps=args.steps, eta=1.0, sde_steps=sde_steps, seed=0
    )
    policy.decode(traj.final)
    adv = torch.tensor([1.0, -0.1] * (args.group // 2) + [0.0] * (args.group % 2))

    ptrs = {p.data_ptr() for p in tr.parameters()}
    with policy.reference():
        same_storage = ptrs == {p.data_ptr() for p in tr.parameters()}
    # A reference transition alone (no grad) must add activations only, nothing weights-sized.
    rss = _status_kib("VmRSS")
    with torch.no_grad(), policy.reference():
        policy.transition(traj, traj.train_steps[0])
    reference_growth = (_status_kib("VmRSS") - rss) * 1024
    before = [p.detach().clone() for p in params]
    loop_rss = _status_kib("VmRSS")
    for j in traj.train_steps:
        tr_ = policy.transition(traj, j)
        with torch.no_grad(), policy.reference():
            ref = policy.transition(traj, j)
        ratio = torch.exp(tr_.log_prob - traj.log_probs[:, j])
        loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(0.8, 1.2))
        kl = gaussian_kl(tr_.mean, ref.mean, tr_.std, reduction=traj.reduction)
        ((loss + 0.01 * kl).mean() / len(traj.train_steps)).backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    # How many LoRA tensors the optimizer step moved (the step really trains the adapters).
    lora_changed = sum(not torch.equal(b, p.detach()) for b, p in zip(before, params, strict=True))
    peak_kib = _status_kib("VmHWM")
    return {
        "checkpointing": args.checkpointing,
        "parameters": sum(p.numel() for p in tr.parameters()),
        "weight_bytes": weight_bytes,
        "lora_bytes": lora_bytes,
        "rss_before_model_mib": base_kib / 1024,
        "rss_after_build_mib": after_build_kib / 1024,
        "peak_rss_mib": peak_kib / 1024,
        "peak_minus_base_bytes": (peak_kib - base_kib) * 1024,
        "peak_over_weights": (peak_kib - base_kib) * 1024 / weight_bytes,
        "reference_same_storage": same_storage,
        "rss_after_build_over_weights": (after_build_kib - base_kib) * 1024 / weight_bytes,
        "reference_call_rss_growth_over_weights": reference_growth / weight_bytes,
        "rss_growth_during_loss_and_backward_mib": (_status_kib("VmRSS") - loop_rss) / 1024,
        "image_tokens": (args.latent // 2) ** 2,
        "lora_tensors_changed": f"{lora_changed}/{len(params)}",
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--text-dim", "--text_dim", type=int, default=512)
    p.add_argument("--text-len", "--text_len", type=int, default=77)
    p.add_argument(
        "--latent", type=int, default=32, help="latent side (image side / 8); 32 -> 256 px, 256 tokens"
    )
    p.add_argument("--group", type=int, default=2)
    p.add_argument("--steps", type=int, default=4, help="sampling steps")
    p.add_argument("--trained-steps", "--trained_steps", type=int, default=2)
    p.add_argument("--lora-rank", "--lora_rank", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default="bench/results/rpo_memory.json")
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a)))  # noqa: T201
        return
    runs = []
    passthrough = [x for x in sys.argv[1:] if x not in ("--child", "--checkpointing")]
    for ckpt in (True, False):
        cmd = [sys.executable, __file__, "--child", *passthrough] + (["--checkpointing"] if ckpt else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ})
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    with_ckpt = runs[0]
    result = {
        "benchmark": "rpo_memory",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.node()}, CPU, float32",
        "args": {k: v for k, v in vars(a).items() if k not in ("child", "checkpointing")},
        "with_checkpointing": runs[0],
        "without_checkpointing": runs[1],
        "peak_over_weights": with_ckpt["peak_over_weights"],
        "target": 3.0,
        "met": with_ckpt["peak_over_weights"] <= 3.0
        and with_ckpt["reference_same_storage"]
        and with_ckpt["reference_call_rss_growth_over_weights"] < 0.5,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))  # noqa: T201


if __name__ == "__main__":
    main()
