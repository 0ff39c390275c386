"""Policy around the shapes world's pixel-space flow model (arr.shapes.models.ShapesFlowModel).

Pixel space: the latents are the images themselves, [B, 3, S, S] in [-1, 1], and decoding converts them to PIL.
LoRA and the reference act on the model's SD3Transformer2DModel; the text encoder stays frozen. The schedule and
CFG (negative prompt "", both branches in one batch) follow arr.shapes.sample, so ODE samples of this policy are
those of the shapes sampler.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from arr.policies.base import FlowMatchingPolicy, images_to_pil, pil_to_tensor
from arr.policies.lora import LoraWeights
from arr.policies.sde import Reduction, SDEConvention, flow_sigmas
from arr.shapes.models import ShapesFlowModel, load_pretrained

# The shipped models by name; their task has the same name.
SHIPPED_TASKS = ("t2i", "edit")


class ShapesPolicy(FlowMatchingPolicy):
    """The shapes text-to-image or editing model (task "t2i" / "edit") as a FlowPolicy."""

    # The network is an SD3Transformer2DModel: its LoRA files have SD3's layout (`transformer.<peft name>`).
    lora_loader = "SD3LoraLoaderMixin"

    def __init__(
        self,
        model: ShapesFlowModel,
        *,
        num_steps: int = 10,
        eta: float = 0.3,
        guidance_scale: float = 1.0,
        shift: float | None = 1.0,
        negative_prompt: str = "",
        reduction: Reduction | None = None,
        sde_convention: SDEConvention = "flow_grpo",
        true_cfg_scale: float = 1.0,
        integer_timesteps: bool = False,
        gradient_checkpointing: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        size = model.config.image_size
        super().__init__(
            model.transformer,
            height=size,
            width=size,
            num_steps=num_steps,
            eta=eta,
            guidance_scale=guidance_scale,
            shift=shift,
            gradient_checkpointing=gradient_checkpointing,
            device=device,
            reduction=reduction,
            sde_convention=sde_convention,
            true_cfg_scale=true_cfg_scale,
            integer_timesteps=integer_timesteps,
        )
        self.model = model.to(self.device).requires_grad_(False)
        self.negative_prompt = negative_prompt

    @classmethod
    def from_pretrained(
        cls, model_id: str | Path = "t2i", *, device: torch.device | str = "cpu", **kwargs: Any
    ) -> ShapesPolicy:
        """A shipped shapes model by name ("t2i", "edit") or a folder written by arr.shapes.models.save_pretrained."""
        return cls(load_pretrained(model_id), device=device, **kwargs)

    def load_lora_weights(self, path: str | Path, alpha: float | None = None) -> LoraWeights:
        """`FlowMatchingPolicy.load_lora_weights`, refusing a LoRA recorded as trained on the other shipped model:
        the text-to-image and editing models share their attention layers, so it would load without complaint."""
        weights = super().load_lora_weights(path, alpha)
        if weights.base_model in SHIPPED_TASKS and weights.base_model != self.model.task:
            raise ValueError(
                f"LoRA {weights.path} was trained on the shapes {weights.base_model!r} model, but this is the "
                f"{self.model.task!r} model; load it into the {weights.base_model!r} model"
            )
        return weights

    def _embed(self, prompts: list[str], images: list[Image.Image] | None) -> dict[str, Tensor]:
        states, pooled = self.model.encode_text(prompts)
        return {
            "token_states": states.to(self.device, self.dtype),
            "pooled": pooled.to(self.device, self.dtype),
        }

    def _prepare_sources(
        self, source_images: Sequence[Image.Image] | None
    ) -> tuple[list[Image.Image] | None, dict[str, Any]]:
        editing = self.model.task == "edit"
        if editing != (source_images is not None):
            raise ValueError(
                f"the shapes {self.model.task!r} model {'needs' if editing else 'takes no'} source images"
                f" (got {'none' if source_images is None else len(source_images)})"
            )
        return (None if source_images is None else list(source_images)), {}

    def _source_embeds(self, images: list[Image.Image], extras: dict[str, Any]) -> dict[str, Tensor]:
        # Pixel space: the source image itself, in the model's [-1, 1] range.
        return {"source": pil_to_tensor(images, self.height, self.width).to(self.device, self.dtype)}

    def _sigmas(self, num_steps: int, height: int, width: int) -> Tensor:
        # linspace(1, 1/n, n) + [0] is arr.shapes.sample.timesteps' linspace(1, 0, n + 1), shifted the same way.
        return flow_sigmas(num_steps, 1.0 if self.shift is None else self.shift)

    def _initial_noise(self, n: int, height: int, width: int, generator: torch.Generator | None) -> Tensor:
        device = generator.device if generator is not None else self.device
        return torch.randn((n, 3, height, width), generator=generator, device=device, dtype=torch.float32)

    def _forward(
        self, latents: Tensor, sigma: Tensor, embeds: dict[str, Tensor], extras: dict[str, Any]
    ) -> Tensor:
        x = latents.to(self.dtype)
        return self.model.velocity(
            x,
            sigma.to(self.dtype),
            embeds["token_states"],
            embeds["pooled"],
            embeds.get("source"),
            network=self.network,
        )

    @torch.no_grad()
    def decode(
        self, latents: Tensor, height: int | None = None, width: int | None = None
    ) -> list[Image.Image]:
        return images_to_pil(latents)


__all__ = ["ShapesPolicy"]
