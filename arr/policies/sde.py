"""The flow SDE step, its exact Gaussian log-probability, the Euler ODE step and the sigma schedules.

Rectified flow: x_sigma = (1 - sigma) * x_0 + sigma * eps, the network predicts v = eps - x_0, and sampling runs
sigma from 1 (noise) to 0 (data). The ODE step is x' = x + (sigma' - sigma) * v. To make a policy gradient
possible, Flow-GRPO-style trainers replace it with the reverse-time SDE that has the same marginals,

    dx = [v + g(sigma)^2 / (2 sigma) * (x + (1 - sigma) v)] dsigma + g(sigma) dW,
    g(sigma) = eta * sqrt(sigma / (1 - sigma)),

(the drift adds the score term -(x + (1 - sigma) v) / sigma^2 implied by v), discretised by Euler-Maruyama:
each transition x_t -> x_{t-1} is Gaussian with a mean that depends on the network and a fixed std, so its
log-density is exact and cheap. Everything here is a pure function of tensors; every model family shares it.

Two conventions give `eta` a different meaning (`SDEConvention`):

- "flow_grpo" (Flow-GRPO): g(sigma) = eta * sqrt(sigma / (1 - sigma)), so std = eta * sqrt(sigma / (1 - sigma))
  * sqrt(sigma - sigma'). The noise grows without bound towards sigma = 1.
- "dance_grpo" (DanceGRPO, and the Auto-Rubric-as-Reward release built on it): g(sigma) = eta, so
  std = eta * sqrt(sigma - sigma'). The release writes the step with the predicted clean sample
  x0_hat = x - sigma v and the score -(x - (1 - sigma) x0_hat) / sigma^2 as
  mean = x + dsigma v + dsigma (-eta^2 / 2) score, which is the drift above with g = eta.

At eta = 0.3 on the 8-step shift-3 grid, flow_grpo's std is 4.7x to 0.65x dance_grpo's, step by step (up to 22x
the variance), so the same eta is a different sampler.

Shapes: `latents`, `velocity`, `prev_latents` are [B, ...] with any trailing dims (SD3 [B, C, h, w], FLUX and
Qwen-Image packed [B, N, C*4], pixel models [B, 3, H, W]); `sigma`, `sigma_next` are floats or [B] tensors; the
log-probability is [B].

Precision: the steps compute in float32, whatever the network's dtype (bf16 and fp16 velocities are upcast), and
in float64 when the velocity or the latents are float64 (a float64 model, as the tests use to compare runs
exactly); see `compute_dtype`.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from torch import Tensor

Reduction = Literal["sum", "mean"]
SDEConvention = Literal["flow_grpo", "dance_grpo"]
SDE_CONVENTIONS: tuple[str, ...] = ("flow_grpo", "dance_grpo")

#: Default reduction of the per-dimension log-density to one number per sample: "sum", the exact log-density of
#: the transition. Then exp(new - old) is the true importance ratio and a PPO clip range such as 0.2 is a real
#: trust region. "mean" (flow_grpo's choice) divides the log-ratio by the number of dimensions D (65,536 for a
#: 512 px FLUX latent): ratios stay within ~0.01 of 1, so a 0.2 clip never acts (flow_grpo compensates with a
#: clip range of 1e-4). With AdamW, and the KL reduced the same way, the two differ only in what the clip
#: range means, since Adam is invariant to the gradient's overall scale.
DEFAULT_REDUCTION: Reduction = "sum"

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 when any input is float64, else float32 (half-precision inputs are upcast, never computed in)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


class SDEStep(NamedTuple):
    """One stochastic transition: the next latents, their log-probability and the Gaussian's parameters."""

    prev_latents: Tensor  # [B, ...] float32 (float64 inputs: float64): x_{t-1}, sampled or the one given
    log_prob: Tensor  # [B] float64 (float32 on MPS): log N(x_{t-1}; mean, std^2), reduced over dims
    mean: Tensor  # [B, ...] as prev_latents: the transition mean (carries gradients from `velocity`)
    std: Tensor  # [B, 1, ...] as prev_latents: the transition std (no network dependence)


def _per_sample(value: float | Tensor, like: Tensor) -> Tensor:
    """Broadcast a float or [B] tensor to [B, 1, ..., 1] in `like`'s compute dtype, on `like`'s device."""
    t = torch.as_tensor(value, dtype=compute_dtype(like), device=like.device)
    if t.ndim == 0:
        t = t.expand(like.shape[0])
    if t.ndim != 1 or t.shape[0] != like.shape[0]:
        raise ValueError(
            f"sigma must be a float or a [B] tensor with B={like.shape[0]}, got shape {tuple(t.shape)}"
        )
    return t.view(-1, *([1] * (like.ndim - 1)))


def _reduce(per_dim: Tensor, reduction: Reduction) -> Tensor:
    """Reduce [B, ...] to [B], accumulating in float64 where the device has it.

    A sum over 10^5 dimensions reaches ~10^5 in magnitude, where float32's spacing (~0.008) would put a 1% error
    into exp(new - old); float64 accumulation keeps the importance ratio exact. MPS has no float64.
    """
    acc = torch.float32 if per_dim.device.type == "mps" else torch.float64
    flat = per_dim.reshape(per_dim.shape[0], -1).to(acc)
    if reduction == "sum":
        return flat.sum(dim=1)
    if reduction == "mean":
        return flat.mean(dim=1)
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")


def _diffusion(s: Tensor, dt: Tensor, eta: float, convention: SDEConvention) -> Tensor:
    """The diffusion coefficient g(sigma) [B, 1, ...] of a step of length -dt from s (see `sde_std`)."""
    if eta <= 0:
        raise ValueError(f"eta must be > 0 for a stochastic step (use ode_step for eta = 0), got {eta}")
    if bool((dt >= 0).any()):
        raise ValueError(
            f"sigma_next must be < sigma, got sigma={s.flatten().tolist()} "
            f"sigma_next={(s + dt).flatten().tolist()}"
        )
    if convention == "dance_grpo":
        return torch.full_like(s, eta)
    if convention != "flow_grpo":
        raise ValueError(f"convention must be one of {SDE_CONVENTIONS}, got {convention!r}")
    one_minus = torch.where(s >= 1.0, -dt, 1.0 - s)
    return eta * torch.sqrt(s / one_minus)


def sde_std(
    sigma: float | Tensor,
    sigma_next: float | Tensor,
    eta: float,
    like: Tensor,
    convention: SDEConvention = "flow_grpo",
) -> Tensor:
    """Std of the transition sigma -> sigma_next: g(sigma) * sqrt(sigma - sigma_next), with the diffusion coefficient
    g = eta * sqrt(sigma / (1 - sigma)) ("flow_grpo") or g = eta ("dance_grpo").

    flow_grpo: at sigma = 1 the diffusion coefficient is infinite, so 1 - sigma is replaced by the step length
    sigma - sigma_next (flow_grpo uses the next schedule sigma the same way); the first step's std is then
    exactly eta * sqrt(sigma) = eta, whatever the schedule. Returns [B, 1, ...] in `like`'s compute dtype.
    """
    s = _per_sample(sigma, like)
    dt = _per_sample(sigma_next, like) - s  # negative: sigma decreases
    return _diffusion(s, dt, eta, convention) * torch.sqrt(-dt)


def sde_step(
    velocity: Tensor,
    latents: Tensor,
    sigma: float | Tensor,
    sigma_next: float | Tensor,
    eta: float,
    *,
    prev_latents: Tensor | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    reduction: Reduction = DEFAULT_REDUCTION,
    convention: SDEConvention = "flow_grpo",
) -> SDEStep:
    """One Euler-Maruyama step of the flow SDE with the log-probability of the transition.

    `convention` sets what `eta` means (see the module docstring); the release of Auto-Rubric-as-Reward ran
    "dance_grpo" with `reduction="mean"`. With `prev_latents` the step evaluates that given x_{t-1} (recomputing the log-probability of a stored
    transition under current weights); otherwise it samples x_{t-1} = mean + std * noise, with `noise` if given
    (same shape as `latents`) or drawn with `generator` (on the generator's device, so a CPU generator gives the
    same noise on every accelerator).
    """
    # float32 at least: with bf16 velocities the mean's small correction terms (std^2 / (2 sigma) * dt) round
    # away and (x - mean)^2 / std^2 overflows or loses all precision, which would make the importance ratio of a
    # transition recomputed under the same weights differ from 1. float64 inputs stay float64.
    dtype = compute_dtype(velocity, latents)
    v = velocity.to(dtype)
    x = latents.to(dtype)
    if v.shape != x.shape:
        raise ValueError(f"velocity {tuple(v.shape)} and latents {tuple(x.shape)} must have the same shape")
    s = _per_sample(sigma, x)
    dt = _per_sample(sigma_next, x) - s
    # The diffusion coefficient g(sigma): eta * sqrt(sigma / (1 - sigma)) (flow_grpo) or eta (dance_grpo). Both
    # conventions share the drift v + g^2 / (2 sigma) * (x + (1 - sigma) v), written as flow_grpo writes it.
    std_dev_t = _diffusion(s, dt, eta, convention)
    mean = x * (1 + std_dev_t**2 / (2 * s) * dt) + v * (1 + std_dev_t**2 * (1 - s) / (2 * s)) * dt
    std = std_dev_t * torch.sqrt(-dt)

    if prev_latents is None:
        if noise is None:
            # Drawn in float32 whatever the compute dtype, so a float64 run sees the float32 run's noise.
            gen_device = generator.device if generator is not None else x.device
            noise = torch.randn(x.shape, generator=generator, device=gen_device, dtype=torch.float32).to(
                x.device
            )
        elif noise.shape != x.shape:
            raise ValueError(f"noise {tuple(noise.shape)} must have the latents' shape {tuple(x.shape)}")
        prev = (mean + std * noise.to(dtype)).detach()
    else:
        if prev_latents.shape != x.shape:
            raise ValueError(
                f"prev_latents {tuple(prev_latents.shape)} must have the latents' shape {tuple(x.shape)}"
            )
        prev = prev_latents.detach().to(dtype)
    log_prob = gaussian_log_prob(prev, mean, std, reduction=reduction)
    return SDEStep(prev, log_prob, mean, std)


def gaussian_log_prob(
    x: Tensor, mean: Tensor, std: Tensor, reduction: Reduction = DEFAULT_REDUCTION
) -> Tensor:
    """log N(x; mean, std^2) per dimension, reduced to [B]. `std` broadcasts against `x` ([B, 1, ...])."""
    dtype = compute_dtype(x, mean, std)
    per_dim = -((x.to(dtype) - mean.to(dtype)) ** 2) / (2 * std**2) - torch.log(std) - _LOG_SQRT_2PI
    return _reduce(per_dim, reduction)


def gaussian_kl(
    mean: Tensor, ref_mean: Tensor, std: Tensor, reduction: Reduction = DEFAULT_REDUCTION
) -> Tensor:
    """KL(N(mean, std^2) || N(ref_mean, std^2)) = (mean - ref_mean)^2 / (2 std^2), reduced to [B].

    Both transitions share the std (it does not depend on the network), so the KL between the policy's and the
    reference's steps is a scaled squared distance between their means; reduce it the same way as the
    log-probability so that the KL weight keeps its meaning relative to the policy-gradient term.
    """
    dtype = compute_dtype(mean, ref_mean, std)
    per_dim = (mean.to(dtype) - ref_mean.to(dtype)) ** 2 / (2 * std**2)
    return _reduce(per_dim, reduction)


def ode_step(velocity: Tensor, latents: Tensor, sigma: float | Tensor, sigma_next: float | Tensor) -> Tensor:
    """Deterministic Euler step x + (sigma_next - sigma) * v (FlowMatchEulerDiscreteScheduler.step), in float32 or,
    for float64 inputs, float64."""
    dtype = compute_dtype(velocity, latents)
    x = latents.to(dtype)
    dt = _per_sample(sigma_next, x) - _per_sample(sigma, x)
    return x + dt * velocity.to(dtype)


def flux_mu(
    image_seq_len: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """Resolution-dependent shift mu of FLUX / Qwen-Image, linear in the number of image tokens."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * m + (base_shift - m * base_seq_len)


def flow_sigmas(
    num_steps: int,
    shift: float | None = 3.0,
    *,
    mu: float | None = None,
    last: float | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Shifted flow-matching sigmas [num_steps + 1], from 1 down to 0 (the final 0 appended).

    The base grid is linspace(1, last, num_steps) with `last` = 1 / num_steps (the FLUX and Qwen-Image pipelines;
    the SD3 pipeline uses its scheduler's sigma_min). It is then shifted: with `mu` the exponential time shift
    e^mu / (e^mu + 1/s - 1) of FLUX's dynamic shifting, else shift * s / (1 + (shift - 1) * s), as
    FlowMatchEulerDiscreteScheduler.set_timesteps does.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    end = 1.0 / num_steps if last is None else float(last)
    grid = torch.linspace(1.0, end, num_steps, dtype=torch.float64)
    if mu is not None:
        sig = math.exp(mu) / (math.exp(mu) + (1.0 / grid - 1.0))
    elif shift is not None:
        if shift <= 0:
            raise ValueError(f"shift must be > 0, got {shift}")
        sig = shift * grid / (1.0 + (shift - 1.0) * grid)
    else:
        raise ValueError("flow_sigmas needs a shift or a mu")
    sig = torch.cat([sig, sig.new_zeros(1)]).to(torch.float32)
    return sig.to(device) if device is not None else sig


__all__ = [
    "DEFAULT_REDUCTION",
    "SDE_CONVENTIONS",
    "SDEConvention",
    "SDEStep",
    "compute_dtype",
    "flow_sigmas",
    "flux_mu",
    "gaussian_kl",
    "gaussian_log_prob",
    "ode_step",
    "sde_std",
    "sde_step",
]
