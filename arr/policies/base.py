"""The FlowPolicy protocol, Trajectory and Conditioning, and the sampling/transition loop shared by all families.

A policy samples with the flow SDE (arr.policies.sde), records every latent and the log-probability of every
stochastic transition, and can recompute any stored transition under its current weights (gradients flowing)
or under the reference (the same network with its LoRA disabled). The loop lives here once; a family adapter
(sd3.py, flux.py, qwen_image.py, ...) supplies only what differs: text encoding, latent layout, how the
transformer is called, and decoding.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
from PIL import Image
from torch import Tensor, nn

from arr.policies.lora import LoraWeights, lora_config, read_lora_weights, write_lora_file
from arr.policies.sde import DEFAULT_REDUCTION, Reduction, SDEConvention, ode_step, sde_step

# Attention projections of the joint-attention blocks shared by SD3, FLUX and Qwen-Image (image and text
# streams); the LoRA targets of diffusers' LoRA training scripts for these models.
DEFAULT_LORA_TARGETS: tuple[str, ...] = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
)


def _index_batch(value: Any, idx: Tensor) -> Any:
    if isinstance(value, Tensor):
        return value[idx.to(value.device)]
    if isinstance(value, list):
        return [value[i] for i in idx.tolist()]
    return value


@dataclass
class Conditioning:
    """Everything a policy needs to condition one batch of samples, batch-first.

    `embeds` and `negative` hold family-specific tensors, each [B, ...] (e.g. SD3: prompt_embeds [B, L, D],
    pooled_prompt_embeds [B, P]; editing: image_latents [B, N, C]); `negative` is the unconditional branch of
    classifier-free guidance, or None without CFG.
    """

    prompts: list[str]
    embeds: dict[str, Tensor]
    negative: dict[str, Tensor] | None = None
    source_images: list[Image.Image] | None = None
    extras: dict[str, Any] = field(
        default_factory=dict
    )  # settings shared by the batch (e.g. source latent size)

    def __post_init__(self) -> None:
        n = len(self.prompts)
        for name, group in (("embeds", self.embeds), ("negative", self.negative or {})):
            for key, t in group.items():
                if t.shape[0] != n:
                    raise ValueError(
                        f"Conditioning.{name}[{key!r}] has batch {t.shape[0]}, expected {n} (prompts)"
                    )
        if self.source_images is not None and len(self.source_images) != n:
            raise ValueError(f"Conditioning has {len(self.source_images)} source images for {n} prompts")

    def __len__(self) -> int:
        return len(self.prompts)

    def index(self, idx: Tensor | Sequence[int]) -> Conditioning:
        """The sub-batch `idx` (a [K] long tensor or a list of ints)."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        return Conditioning(
            prompts=_index_batch(self.prompts, idx),
            embeds={k: _index_batch(v, idx) for k, v in self.embeds.items()},
            negative=None
            if self.negative is None
            else {k: _index_batch(v, idx) for k, v in self.negative.items()},
            source_images=None if self.source_images is None else _index_batch(self.source_images, idx),
            extras=dict(self.extras),
        )

    def repeat_interleave(self, group_size: int) -> Conditioning:
        """Each entry repeated `group_size` times in a row: [p0, p0, p1, p1, ...] for a group of 2."""
        return self.index(torch.arange(len(self)).repeat_interleave(group_size))


@dataclass
class Trajectory:
    """A batch of sampled trajectories with every latent and transition log-probability.

    Shapes (B samples, T steps, latent dims `...` of the family): latents [B, T+1, ...] float32 on the policy's
    device (latents[:, 0] is the initial noise x_T, latents[:, -1] the final sample); log_probs [B, T]
    (0 at deterministic steps); sigmas [T+1] float32 from 1 to 0; stochastic [T] bool.
    Samples b and b' with group_ids[b] == group_ids[b'] share the prompt and the initial noise.
    """

    latents: Tensor
    log_probs: Tensor
    sigmas: Tensor
    stochastic: Tensor
    cond: Conditioning
    group_ids: Tensor
    eta: float
    guidance_scale: float
    reduction: Reduction
    seed: int | None = None
    extras: dict[str, Any] = field(
        default_factory=dict
    )  # family settings the transition must repeat (size, true CFG scale)
    convention: SDEConvention = "flow_grpo"  # what eta means (arr.policies.sde)

    @property
    def num_steps(self) -> int:
        return int(self.sigmas.shape[0]) - 1

    @property
    def noise(self) -> Tensor:
        """The initial noise x_T, [B, ...]."""
        return self.latents[:, 0]

    @property
    def final(self) -> Tensor:
        """The final latents x_0, [B, ...]; decode them with the policy."""
        return self.latents[:, -1]

    @property
    def train_steps(self) -> list[int]:
        """Indices of the stochastic steps: the transitions that have a log-probability."""
        return [int(i) for i in torch.nonzero(self.stochastic).flatten().tolist()]

    def __len__(self) -> int:
        return int(self.latents.shape[0])

    def index(self, idx: Tensor | Sequence[int]) -> Trajectory:
        """The trajectories `idx` (e.g. one process's share, or the samples that got a judgment)."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        return replace(
            self,
            latents=self.latents[idx.to(self.latents.device)],
            log_probs=self.log_probs[idx.to(self.log_probs.device)],
            cond=self.cond.index(idx),
            group_ids=self.group_ids[idx.to(self.group_ids.device)],
        )


class Transition(NamedTuple):
    """A stored transition re-evaluated under the current weights (gradients flow through log_prob and mean)."""

    log_prob: Tensor  # [K]
    mean: Tensor  # [K, ...] float32
    std: Tensor  # [K, 1, ...] float32


@runtime_checkable
class FlowPolicy(Protocol):
    """What the RPO trainer, its objectives and evaluation need from a text-to-image or editing policy.

    `FlowMatchingPolicy` implements all of it; a policy of another kind implements these members.
    """

    @property
    def device(self) -> torch.device:
        """Where the network runs (and where the trainer puts latents, advantages and its all-reduced numbers)."""
        ...

    def encode(
        self, prompts: Sequence[str], source_images: Sequence[Image.Image] | None = None
    ) -> Conditioning: ...

    def sample(self, cond: Conditioning, **kwargs: Any) -> Trajectory: ...

    def transition(
        self, traj: Trajectory, step_index: int, sample_indices: Tensor | Sequence[int] | None = None
    ) -> Transition:
        """A stored transition under the current weights (gradients flowing): the policy-gradient objectives."""
        ...

    def velocity(
        self,
        latents: Tensor,
        sigma: Tensor,
        cond: Conditioning,
        guidance_scale: float,
        extras: dict[str, Any],
    ) -> Tensor:
        """The (guided) velocity at latents [B, ...] and noise levels [B]: the flow-matching objectives."""
        ...

    def reference(self) -> contextlib.AbstractContextManager[None]:
        """Within this context the policy is the reference (its LoRA disabled), for the KL term."""
        ...

    def decode(self, latents: Tensor, **kwargs: Any) -> list[Image.Image]: ...

    def trainable_parameters(self) -> list[nn.Parameter]: ...

    @property
    def network(self) -> nn.Module:
        """The module every velocity call goes through, which holds the LoRA: what a distributed engine wraps (DDP)
        or shards (FSDP). See `set_network`."""
        ...

    def set_network(self, network: nn.Module) -> None:
        """Call `network` from now on: this policy's `network` as a distributed engine returned it (DDP's wrapper,
        or the same module sharded in place by FSDP)."""
        ...

    def add_lora(self, r: int, alpha: float, target_modules: Sequence[str] | None = None) -> None: ...

    def lora_state_dict(self) -> dict[str, Tensor]:
        """The LoRA weights by name, for checkpoints (they may alias the live parameters). With sharded parameters
        (FSDP) every process must call it: the weights are gathered."""
        ...

    def load_lora_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load weights saved by `lora_state_dict` into the existing adapter (resume); with sharded parameters,
        on every process."""
        ...

    def save_lora_weights(
        self, folder: str | Path, state: dict[str, Tensor] | None = None, base_model: str | None = None
    ) -> Path | None:
        """Write the LoRA (or `state`, in `lora_state_dict`'s names) in diffusers' format, as
        `folder/pytorch_lora_weights.safetensors` (checkpoints hold one for `pipe.load_lora_weights`); None where
        the policy has no diffusers format."""
        ...

    def load_lora_weights(self, path: str | Path, alpha: float | None = None) -> LoraWeights:
        """Add the LoRA saved in `path` (a checkpoint folder, or a diffusers LoRA folder or file) as the adapter."""
        ...

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute activations in backward (`RPOConfig.gradient_checkpointing`)."""
        ...


class FlowMatchingPolicy(ABC):
    """Base of the family adapters: conditioning, SDE sampling, transition recomputation, CFG, LoRA and the reference.

    Subclasses set `self.transformer` (the network that LoRA adapts) and implement `_embed` (text encoding),
    `decode`, `_sigmas`, `_initial_noise` and `_forward` (one call of the transformer on model-ready latents);
    editing families also override `_prepare_sources` and `_source_embeds`.
    """

    #: LoRA targets used when add_lora gets none.
    lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
    #: Whether CFG runs both branches in one batch (SD3 pipeline) or as two calls (FLUX and Qwen-Image "true
    #: CFG", whose negative prompt may have another text length).
    batch_cfg: bool = True
    #: The unconditional branch's prompt under CFG when `encode` gets none.
    negative_prompt: str = ""
    #: Whether `guidance_scale` is the classifier-free guidance scale, as in StableDiffusion3Pipeline. Families whose
    #: pipeline calls CFG `true_cfg_scale` (FLUX, Qwen-Image) set False: there `guidance_scale` is the guidance the
    #: transformer embeds (FluxPipeline's guidance_scale), one transformer call, and `true_cfg_scale` is the CFG.
    guidance_is_cfg: bool = True
    #: diffusers' LoRA loader of this family (in `diffusers.loaders`: the mixin behind its pipelines'
    #: `load_lora_weights` and `save_lora_weights`), which writes its LoRA files; None: no diffusers format.
    lora_loader: str | None = None
    # True while sampling records log-probabilities: `folded_lora` then leaves the LoRA unfolded.
    _no_folding: bool = False

    def __init__(
        self,
        transformer: nn.Module,
        *,
        height: int,
        width: int,
        num_steps: int = 8,
        eta: float = 0.3,
        guidance_scale: float = 1.0,
        shift: float | None = 3.0,
        reduction: Reduction | None = None,
        sde_convention: SDEConvention = "flow_grpo",
        true_cfg_scale: float = 1.0,
        integer_timesteps: bool = False,
        gradient_checkpointing: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        self.transformer = transformer
        # What `_forward` calls: the transformer itself, or the transformer as a distributed engine wrapped it.
        self._network: nn.Module = transformer
        self.height = int(height)
        self.width = int(width)
        self.num_steps = int(num_steps)
        self.eta = float(eta)
        self.guidance_scale = float(guidance_scale)
        if self.guidance_is_cfg and true_cfg_scale != 1.0:
            raise ValueError(
                f"true_cfg_scale={true_cfg_scale}: {type(self).__name__}'s classifier-free guidance is "
                "guidance_scale; leave true_cfg_scale at 1"
            )
        self.true_cfg_scale = float(true_cfg_scale)
        self.shift = shift
        self.reduction: Reduction = reduction or DEFAULT_REDUCTION
        self.sde_convention: SDEConvention = sde_convention
        # The release of Auto-Rubric-as-Reward fed the transformer int(1000 sigma) / 1000 (integer timesteps, as
        # DanceGRPO stores them); the pipelines feed sigma itself.
        self.integer_timesteps = bool(integer_timesteps)
        if device is not None:
            self.transformer.to(device)
        # Only LoRA weights train: the base network is frozen before any adapter is added.
        self.transformer.requires_grad_(False)
        if gradient_checkpointing:
            self.set_gradient_checkpointing(True)

    # --- what the families supply -------------------------------------------------------------------------

    @abstractmethod
    def _embed(self, prompts: list[str], images: list[Image.Image] | None) -> dict[str, Tensor]:
        """Text conditioning [B, ...] per key for `prompts`; `images` are the prepared source images (editing
        families whose text encoder also sees the source), else None."""

    def _prepare_sources(
        self, source_images: Sequence[Image.Image] | None
    ) -> tuple[list[Image.Image] | None, dict[str, Any]]:
        """The source images as the family conditions on them, and the settings they fix (`Conditioning.extras`).

        Text-to-image families refuse source images; editing families override this and `_source_embeds`."""
        if source_images is not None:
            raise ValueError(f"{type(self).__name__} is text-to-image only: it takes no source images")
        return None, {}

    def _source_embeds(self, images: list[Image.Image], extras: dict[str, Any]) -> dict[str, Tensor]:
        """Conditioning entries [B, ...] for the prepared source images (e.g. their VAE latents)."""
        raise NotImplementedError(f"{type(self).__name__} does not condition on source images")

    @abstractmethod
    def decode(
        self, latents: Tensor, height: int | None = None, width: int | None = None
    ) -> list[Image.Image]:
        """Final latents [B, ...] to PIL images."""

    @abstractmethod
    def _sigmas(self, num_steps: int, height: int, width: int) -> Tensor:
        """The sigma schedule [num_steps + 1] from 1 to 0 for this family and image size."""

    @abstractmethod
    def _initial_noise(self, n: int, height: int, width: int, generator: torch.Generator | None) -> Tensor:
        """n initial latents [n, ...] in float32, laid out as the transformer takes them."""

    @abstractmethod
    def _forward(
        self, latents: Tensor, sigma: Tensor, embeds: dict[str, Tensor], extras: dict[str, Any]
    ) -> Tensor:
        """One transformer call: latents [B, ...] float32, sigma [B] float32 -> velocity [B, ...].

        `extras` merges the trajectory's settings with the conditioning's (`Conditioning.extras`)."""

    def _sample_extras(self, height: int, width: int) -> dict[str, Any]:
        """Family settings recorded in the trajectory so that transitions repeat them exactly."""
        extras: dict[str, Any] = {"height": height, "width": width}
        if not self.guidance_is_cfg:
            extras["true_cfg_scale"] = self.true_cfg_scale
        return extras

    def _combine_cfg(self, v_cond: Tensor, v_uncond: Tensor, scale: float) -> Tensor:
        return v_uncond + scale * (v_cond - v_uncond)

    def check_guidance(self, guidance_scale: float) -> None:  # noqa: B027 - optional hook
        """Raise ValueError for a `guidance_scale` this family cannot apply (every value is valid by default)."""

    def cfg_scale(self, guidance_scale: float, extras: dict[str, Any] | None = None) -> float:
        """The classifier-free guidance scale of a sample with this `guidance_scale`: the same value where it is
        CFG, else the true CFG scale recorded in `extras` (or the policy's)."""
        if self.guidance_is_cfg:
            return guidance_scale
        return float((extras or {}).get("true_cfg_scale", self.true_cfg_scale))

    # --- shared machinery ---------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def network(self) -> nn.Module:
        return self._network

    def set_network(self, network: nn.Module) -> None:
        # DDP wraps the transformer (its `.module`); FSDP2 and a single process return the transformer itself.
        if getattr(network, "module", network) is not self.transformer:
            raise ValueError(
                f"set_network needs this policy's transformer as a distributed engine returned it, got "
                f"{type(network).__name__}"
            )
        self._network = network

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    @torch.no_grad()
    def encode(
        self,
        prompts: Sequence[str],
        source_images: Sequence[Image.Image] | None = None,
        negative_prompt: str | None = None,
    ) -> Conditioning:
        """Text (and, for editing, source-image) conditioning for a batch of prompts.

        With CFG (`cfg_scale` > 1) the negative prompt (default: `self.negative_prompt`) is encoded too, as the
        unconditional branch; it sees the same source images, as in the editing pipelines.
        """
        prompts = list(prompts)
        sources, extras = self._prepare_sources(source_images)
        embeds = self._embed(prompts, sources)
        if sources is not None:
            embeds.update(self._source_embeds(sources, extras))
        negative = None
        if self.cfg_scale(self.guidance_scale) > 1.0:
            text = self.negative_prompt if negative_prompt is None else negative_prompt
            negative = self._embed([text] * len(prompts), sources)
        return Conditioning(
            prompts=prompts,
            embeds=embeds,
            negative=negative,
            source_images=None if source_images is None else list(source_images),
            extras=extras,
        )

    def velocity(
        self,
        latents: Tensor,
        sigma: Tensor,
        cond: Conditioning,
        guidance_scale: float,
        extras: dict[str, Any],
    ) -> Tensor:
        """The (guided) velocity at latents [B, ...], sigma [B]; CFG batches the two branches like the pipelines.

        `guidance_scale` is the pipeline's: CFG where `guidance_is_cfg`, else the embedded guidance, handed to
        `_forward` as `extras["guidance"]` (the CFG scale then comes from `extras["true_cfg_scale"]`).

        Without gradients (sampling, evaluation, an objective's fixed targets) the LoRA is folded into the weights
        for the call (`folded_lora`)."""
        if not torch.is_grad_enabled():
            with self.folded_lora():
                return self._guided_velocity(latents, sigma, cond, guidance_scale, extras)
        return self._guided_velocity(latents, sigma, cond, guidance_scale, extras)

    def _guided_velocity(
        self,
        latents: Tensor,
        sigma: Tensor,
        cond: Conditioning,
        guidance_scale: float,
        extras: dict[str, Any],
    ) -> Tensor:
        extras = {**cond.extras, **extras}
        scale = self.cfg_scale(guidance_scale, extras)
        if not self.guidance_is_cfg:
            extras["guidance"] = guidance_scale
        if self.integer_timesteps:
            sigma = torch.floor(sigma * 1000) / 1000
        if scale > 1.0 and cond.negative is not None:
            if not self.batch_cfg:
                v_cond = self._forward(latents, sigma, cond.embeds, extras)
                neg = {**cond.embeds, **cond.negative}
                return self._combine_cfg(v_cond, self._forward(latents, sigma, neg, extras), scale)
            # Entries without a negative (e.g. an editing source's latents) are shared by both branches.
            both = {k: torch.cat([cond.negative.get(k, v), v]) for k, v in cond.embeds.items()}
            v_uncond, v_cond = self._forward(
                torch.cat([latents, latents]), torch.cat([sigma, sigma]), both, extras
            ).chunk(2)
            return self._combine_cfg(v_cond, v_uncond, scale)
        return self._forward(latents, sigma, cond.embeds, extras)

    @torch.no_grad()
    def sample(
        self,
        cond: Conditioning,
        *,
        group_size: int = 1,
        num_steps: int | None = None,
        eta: float | None = None,
        guidance_scale: float | None = None,
        sde_steps: Iterable[int] | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        generators: Sequence[torch.Generator] | None = None,
        noise: Tensor | None = None,
        height: int | None = None,
        width: int | None = None,
        reduction: Reduction | None = None,
        convention: SDEConvention | None = None,
        shared_noise: bool = True,
    ) -> Trajectory:
        """Sample `group_size` trajectories per prompt, all of a group from the same initial noise (RPO's
        design: a group differs only by its SDE noise) or, with `shared_noise=False`, each from its own
        (flow-GRPO's design: more diverse groups, but part of a comparison is initial-noise luck).

        The batch is [p0 x G, p1 x G, ...]. `sde_steps` picks the stochastic steps (default: all; the others are
        Euler ODE steps with no log-probability, which halves the backward work when training half the steps).
        `eta = 0` samples the ODE everywhere. Noise comes from `generators` (one per prompt: that group's initial
        and step noise then depend only on its generator, so results do not depend on batching or on how prompts
        are split over processes), else `generator`, else a CPU generator seeded with `seed`, else torch's global
        RNG; `noise` [P, ...] fixes the initial noise of each group ([P x G, ...] without `shared_noise`).
        `guidance_scale`, `reduction` and `convention` (what eta means) default to the policy's.
        """
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        n_steps = self.num_steps if num_steps is None else int(num_steps)
        eta = self.eta if eta is None else float(eta)
        scale = self.guidance_scale if guidance_scale is None else float(guidance_scale)
        red = self.reduction if reduction is None else reduction
        conv = self.sde_convention if convention is None else convention
        h, w = height or self.height, width or self.width
        self.check_guidance(scale)
        extras = self._sample_extras(h, w)
        if self.cfg_scale(scale, extras) > 1.0 and cond.negative is None:
            raise ValueError(
                f"classifier-free guidance {self.cfg_scale(scale, extras)} > 1 needs negative embeddings: encode "
                "the prompts with this policy's guidance (or sample without CFG)"
            )
        if generators is not None and len(generators) != len(cond):
            raise ValueError(f"got {len(generators)} generators for {len(cond)} prompts; pass one per prompt")
        if generator is None and seed is not None:
            generator = torch.Generator("cpu").manual_seed(seed)
        device = self.device
        sigmas = self._sigmas(n_steps, h, w).to(device=device, dtype=torch.float32)
        stochastic = _stochastic_steps(n_steps, eta, sde_steps)
        x = self._start_latents(len(cond), group_size, h, w, shared_noise, noise, generator, generators)
        full = cond.repeat_interleave(group_size) if group_size > 1 else cond
        latents = [x]
        log_probs = torch.zeros(
            x.shape[0], n_steps, dtype=torch.float64 if device.type != "mps" else torch.float32, device=device
        )
        # Folded once for every step of the loop, unless the loop records log-probabilities: the policy-gradient
        # update compares them with ones recomputed with gradients (unfolded), and a fold's float rounding would
        # show as an on-policy ratio off 1.
        recording = bool(stochastic.any())
        with self._folding_paused() if recording else self.folded_lora():
            for i in range(n_steps):
                v = self.velocity(x, sigmas[i].expand(x.shape[0]), full, scale, extras)
                if stochastic[i]:
                    step_noise = _step_noise(x, group_size, generator, generators)
                    out = sde_step(
                        v, x, sigmas[i], sigmas[i + 1], eta, noise=step_noise, reduction=red, convention=conv
                    )
                    x = out.prev_latents
                    log_probs[:, i] = out.log_prob.to(log_probs.dtype)
                else:
                    x = ode_step(v, x, sigmas[i], sigmas[i + 1])
                latents.append(x)
        return Trajectory(
            latents=torch.stack(latents, dim=1),
            log_probs=log_probs,
            sigmas=sigmas,
            stochastic=stochastic,
            cond=full,
            group_ids=torch.arange(len(cond), device=device).repeat_interleave(group_size),
            eta=eta,
            guidance_scale=scale,
            reduction=red,
            seed=seed,
            extras=extras,
            convention=conv,
        )

    def _start_latents(
        self,
        n_groups: int,
        group_size: int,
        height: int,
        width: int,
        shared_noise: bool,
        noise: Tensor | None,
        generator: torch.Generator | None,
        generators: Sequence[torch.Generator] | None,
    ) -> Tensor:
        """The initial latents [n_groups x group_size, ...] float32 on the policy's device: one draw per group
        repeated over it (`shared_noise`), or one per sample; `noise` replaces the draw."""
        per_group = 1 if shared_noise else group_size
        if noise is None and generators is not None:
            noise = torch.cat([self._initial_noise(per_group, height, width, g) for g in generators])
        elif noise is None:
            noise = self._initial_noise(n_groups * per_group, height, width, generator)
        elif noise.shape[0] != n_groups * per_group:
            raise ValueError(
                f"noise has batch {noise.shape[0]}, expected {n_groups * per_group} "
                f"({'one per prompt' if shared_noise else 'one per sample'})"
            )
        x = noise.to(device=self.device, dtype=torch.float32)
        return x.repeat_interleave(group_size, dim=0) if shared_noise else x

    def transition(
        self,
        traj: Trajectory,
        step_index: int,
        sample_indices: Tensor | Sequence[int] | None = None,
    ) -> Transition:
        """Log-probability and mean of the stored transition `step_index` under the current weights.

        Gradients flow into the policy's trainable parameters; under `reference()` this gives the reference's
        mean for the KL term. Only stochastic steps have a transition density.
        """
        if not 0 <= step_index < traj.num_steps:
            raise ValueError(f"step_index must lie in [0, {traj.num_steps}), got {step_index}")
        if not bool(traj.stochastic[step_index]):
            raise ValueError(
                f"step {step_index} was an ODE step (stochastic steps: {traj.train_steps}); it has no log-probability"
            )
        if sample_indices is None:
            lat, cond = traj.latents, traj.cond
        else:
            idx = torch.as_tensor(sample_indices, dtype=torch.long)
            lat, cond = traj.latents[idx.to(traj.latents.device)], traj.cond.index(idx)
        device = self.device
        x = lat[:, step_index].to(device)
        prev = lat[:, step_index + 1].to(device)
        sigmas = traj.sigmas.to(device)
        v = self.velocity(x, sigmas[step_index].expand(x.shape[0]), cond, traj.guidance_scale, traj.extras)
        out = sde_step(
            v,
            x,
            sigmas[step_index],
            sigmas[step_index + 1],
            traj.eta,
            prev_latents=prev,
            reduction=traj.reduction,
            convention=traj.convention,
        )
        return Transition(out.log_prob, out.mean, out.std)

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """The reference policy: the same network with every LoRA adapter disabled (restored on exit)."""
        from peft import PeftModel
        from peft.tuners.tuners_utils import BaseTunerLayer

        if isinstance(self.transformer, PeftModel):
            with self.transformer.disable_adapter():
                yield
            return
        layers = [m for m in self.transformer.modules() if isinstance(m, BaseTunerLayer)]
        previous = [m.disable_adapters for m in layers]
        try:
            for m in layers:
                m.enable_adapters(False)
            yield
        finally:
            for m, was_disabled in zip(layers, previous, strict=True):
                m.enable_adapters(not was_disabled)

    @contextlib.contextmanager
    def _folding_paused(self) -> Iterator[None]:
        previous, self._no_folding = self._no_folding, True
        try:
            yield
        finally:
            self._no_folding = previous

    @contextlib.contextmanager
    def folded_lora(self) -> Iterator[None]:
        """Within this context each active LoRA's update is folded into its layer's weight, for passes without
        gradients: one matmul per adapted layer instead of three (the shapes model samples 15% faster). The same
        function up to float rounding. The layers are marked merged the way peft marks them, so peft itself
        unfolds a layer that `reference()` disables inside the context; on exit every layer gets its original
        weight tensor back, so nothing drifts however often this runs.

        A no-op where folding would not be the same function: with gradients enabled, under FSDP, for
        half-precision weights (a small update rounds away against them), and for LoRA variants (DoRA, LoRA bias) or dropout; also while
        sampling records transition log-probabilities. Nested uses find every layer merged already and do nothing.
        """
        # Under FSDP the layers' weights are shards that FSDP gathers from its own storage: a folded update would
        # not reach the pass, while peft would skip the layers marked merged.
        off = torch.is_grad_enabled() or self._no_folding or self._sharded()
        layers = [] if off else _foldable_lora_layers(self.transformer)
        saved = []
        try:
            for layer in layers:
                base = layer.get_base_layer()
                active = [a for a in layer.active_adapters if a in layer.lora_A]
                delta = sum(layer.get_delta_weight(a) for a in active)
                saved.append((layer, base.weight.data))
                base.weight.data = base.weight.data + delta.to(base.weight.dtype)
                layer.merged_adapters = active
            yield
        finally:
            for layer, weight in saved:
                layer.get_base_layer().weight.data = weight
                layer.merged_adapters = []

    def add_lora(
        self,
        r: int,
        alpha: float,
        target_modules: Sequence[str] | None = None,
        *,
        dropout: float = 0.0,
        adapter_name: str = "default",
    ) -> None:
        """Add a trainable LoRA adapter to the transformer with peft (diffusers' `add_adapter`).

        LoRA weights are kept in float32 even when the network is bf16, as diffusers' LoRA training scripts do:
        bf16 updates of size lr * grad round away against weights of order 1e-2.
        """
        from peft import LoraConfig

        config = LoraConfig(
            r=r,
            lora_alpha=alpha,
            lora_dropout=dropout,
            init_lora_weights="gaussian",
            target_modules=list(target_modules or self.lora_targets),
        )
        self._add_adapter(config, adapter_name)

    def _add_adapter(self, config: Any, adapter_name: str = "default") -> None:
        """Add a peft `LoraConfig` adapter with diffusers' `add_adapter`; its weights train in float32."""
        add_adapter = getattr(self.transformer, "add_adapter", None)
        if add_adapter is None:
            raise TypeError(
                f"{type(self.transformer).__name__} has no add_adapter; expected a diffusers model"
            )
        add_adapter(config, adapter_name=adapter_name)
        for p in self.transformer.parameters():
            # float32 LoRA on a half-precision base; float32 and float64 bases keep their own precision.
            if p.requires_grad and p.dtype in (torch.float16, torch.bfloat16):
                p.data = p.data.float()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.transformer.parameters() if p.requires_grad]

    def lora_state_dict(self) -> dict[str, Tensor]:
        """The LoRA weights (peft names), for checkpoints. Sharded (FSDP) weights are gathered whole, so every
        process must call this."""
        from peft import get_peft_model_state_dict

        if not self._sharded():
            return get_peft_model_state_dict(self.transformer)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        whole = get_model_state_dict(
            self.transformer, options=StateDictOptions(full_state_dict=True, ignore_frozen_params=True)
        )
        return get_peft_model_state_dict(self.transformer, state_dict=whole)

    def load_lora_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load weights saved by `lora_state_dict` into the existing adapter; unknown or missing keys are an error.
        Sharded (FSDP) weights take each process's shard of `state`, so every process must call this."""
        from peft import set_peft_model_state_dict

        by_peft_name = self._lora_parameter_names(state)
        if not self._sharded():
            set_peft_model_state_dict(self.transformer, state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(
            self.transformer,
            {by_peft_name[k]: v for k, v in state.items()},
            options=StateDictOptions(full_state_dict=True, strict=False),
        )

    def _sharded(self) -> bool:
        """Whether FSDP sharded the transformer's parameters in place (they are DTensors)."""
        from torch.distributed.tensor import DTensor

        return any(isinstance(p, DTensor) for p in self.transformer.parameters())

    def _lora_parameter_names(self, state: dict[str, Tensor]) -> dict[str, str]:
        """The adapter's parameter name for each of `state`'s peft names; a key the adapter lacks, or an adapter
        weight `state` lacks, is an error (whether or not the weights are sharded)."""
        # peft names drop the adapter's name ("x.lora_A.weight" for the parameter "x.lora_A.default.weight").
        by_peft_name = {
            name.replace(".default.", "."): name
            for name, p in self.transformer.named_parameters()
            if p.requires_grad
        }
        unknown = sorted(set(state) - set(by_peft_name))
        missing = sorted(set(by_peft_name) - set(state))
        if unknown or missing:
            raise ValueError(
                f"LoRA state does not match the adapter: unknown keys {unknown[:3]}, missing keys {missing[:3]} "
                "(add_lora with the same r/targets first)"
            )
        return by_peft_name

    def save_lora_weights(
        self, folder: str | Path, state: dict[str, Tensor] | None = None, base_model: str | None = None
    ) -> Path | None:
        """Write the LoRA (or `state`, in `lora_state_dict`'s names) as `folder/pytorch_lora_weights.safetensors`,
        with the family's own diffusers writer and the adapter's rank, alpha and targets in its header, so that
        `pipe.load_lora_weights(folder)` applies it at full strength (see arr/policies/lora.py). Returns the file,
        or None for a family without a diffusers format (`lora_loader` None)."""
        if self.lora_loader is None:
            return None
        config = lora_config(self.transformer, base_model=base_model)
        return write_lora_file(
            folder, self.lora_state_dict() if state is None else state, config, self.lora_loader
        )

    def load_lora_weights(self, path: str | Path, alpha: float | None = None) -> LoraWeights:
        """Add the LoRA in `path` as this policy's adapter: a checkpoint folder (`RUN/checkpoints/step_N`, or its
        `moving_average/`), a diffusers LoRA folder or file, or a folder holding only arr's resume file (alpha
        then from the run's config.yaml unless given). Keys that do not fit the transformer are an error."""
        from peft import LoraConfig

        weights = read_lora_weights(path, alpha)
        if self.trainable_parameters():
            raise ValueError(
                f"LoRA {path}: the policy already has a trainable adapter; load into a fresh policy"
            )
        try:
            self._add_adapter(LoraConfig(**weights.config))
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"LoRA {weights.path}: its config does not fit {type(self).__name__} ({e})"
            ) from None
        try:
            self.load_lora_state_dict({k: v.to(self.device) for k, v in weights.state.items()})
        except RuntimeError as e:  # a shape mismatch: a LoRA of another model
            first = " ".join(line.strip() for line in str(e).splitlines()[:2])
            raise ValueError(
                f"LoRA {weights.path} does not fit this model (trained on another?): {first}"
            ) from None
        return weights

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute activations in backward: ~25% slower steps for much less memory on large transformers."""
        fn = getattr(
            self.transformer,
            "enable_gradient_checkpointing" if enabled else "disable_gradient_checkpointing",
            None,
        )
        if fn is None:
            raise TypeError(f"{type(self.transformer).__name__} does not support gradient checkpointing")
        fn()


def _foldable_lora_layers(module: nn.Module) -> list[nn.Module]:
    """The active plain-LoRA linear layers of `module` over float32/float64 weights; none if any active adapter
    layer is of another kind (a variant, a LoRA bias, dropout, a non-linear layer): folding is all or nothing."""
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = []
    for m in module.modules():
        if not isinstance(m, BaseTunerLayer) or m.disable_adapters or m.merged:
            continue
        active = [a for a in m.active_adapters if a in getattr(m, "lora_A", {})]
        if not active:
            continue
        plain = (
            isinstance(m, LoraLinear)
            and m.get_base_layer().weight.dtype in (torch.float32, torch.float64)
            and all(isinstance(m.lora_dropout[a], nn.Identity) for a in active)
            and not any(
                a in getattr(m, "lora_variant", {}) or getattr(m, "lora_bias", {}).get(a, False)
                for a in active
            )
        )
        if not plain:
            return []
        layers.append(m)
    return layers


def _stochastic_steps(n_steps: int, eta: float, sde_steps: Iterable[int] | None) -> Tensor:
    """[n_steps] bool: which steps are SDE steps (all by default; none when eta = 0)."""
    stochastic = torch.zeros(n_steps, dtype=torch.bool)
    if eta > 0:
        steps = range(n_steps) if sde_steps is None else sorted(set(int(i) for i in sde_steps))
        for i in steps:
            if not 0 <= i < n_steps:
                raise ValueError(f"sde_steps must lie in [0, {n_steps}), got {i}")
            stochastic[i] = True
    return stochastic


def _step_noise(
    x: Tensor,
    group_size: int,
    generator: torch.Generator | None,
    generators: Sequence[torch.Generator] | None,
) -> Tensor:
    """The standard normal noise of one SDE step, shaped like `x` [B, ...]: each group's from its own generator
    (so it does not depend on batching), else from `generator` on its device, else from torch's global RNG."""
    if generators is not None:
        shape = (group_size, *x.shape[1:])
        return torch.cat([torch.randn(shape, generator=g, device=g.device) for g in generators]).to(x.device)
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device).to(x.device)


def images_to_pil(images: Tensor) -> list[Image.Image]:
    """Decoder output [B, 3, H, W] in [-1, 1] to PIL, as VaeImageProcessor.postprocess(output_type='pil') does."""
    arr = ((images.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray((a * 255).round().astype("uint8")) for a in arr]


def pil_to_tensor(images: Sequence[Image.Image], height: int, width: int) -> Tensor:
    """PIL images, resized to height x width (bicubic, like VaeImageProcessor), to [B, 3, H, W] in [-1, 1]."""
    import numpy as np

    out = []
    for i, im in enumerate(images):
        if not isinstance(im, Image.Image):
            raise TypeError(f"source image {i} must be a PIL image, got {type(im).__name__}")
        im = im.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
        out.append(torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1))
    return torch.stack(out)


__all__ = [
    "DEFAULT_LORA_TARGETS",
    "Conditioning",
    "FlowMatchingPolicy",
    "FlowPolicy",
    "Trajectory",
    "Transition",
    "images_to_pil",
    "pil_to_tensor",
]
