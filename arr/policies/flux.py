"""FLUX.1 policy (text-to-image, and editing as FLUX.1-Kontext): FluxTransformer2DModel called as FluxPipeline does.

Latents are packed 2x2 into tokens [B, (h/2)*(w/2), 4C] with img_ids (0, row, col) and all-zero txt_ids; the
transformer takes timestep = sigma (the pipeline's t / 1000 after a cast to the latents' dtype) and, for
FLUX.1-dev, the distilled guidance as an embedding. As in FluxPipeline, `guidance_scale` is that embedded guidance
(3.5 for FLUX.1-dev, 2.5 for Kontext; one transformer call per step), and "true" CFG with a negative prompt is a
separate setting, `true_cfg_scale` (a second call per step; 1 turns it off, the pipeline's default). For
Kontext the source image's packed latents follow the noisy ones in the sequence with ids (1, row, col), and the
output is cut back to the noisy tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from arr.policies.latent import LatentFlowPolicy, pack_latents, unpack_latents

#: prompts -> (prompt_embeds [B, L, D] from T5, pooled_prompt_embeds [B, P] from CLIP), as FluxPipeline.encode_prompt.
FluxEncodeFn = Callable[[list[str]], tuple[Tensor, Tensor]]


def image_ids(h2: int, w2: int, first: float = 0.0) -> Tensor:
    """Position ids [h2*w2, 3] = (first, row, col) of the packed tokens (FluxPipeline._prepare_latent_image_ids)."""
    ids = torch.zeros(h2, w2, 3)
    ids[..., 0] = first
    ids[..., 1] = torch.arange(h2)[:, None]
    ids[..., 2] = torch.arange(w2)[None, :]
    return ids.reshape(h2 * w2, 3)


class FluxPolicy(LatentFlowPolicy):
    """FLUX-family policy (FLUX.1-dev/schnell text-to-image, FLUX.1-Kontext editing when given source images).

    `guidance_scale` is FLUX.1-dev's embedded (distilled) guidance, unused by transformers without guidance_embeds
    (FLUX.1-schnell); `true_cfg_scale` > 1 adds "true" CFG. Keyword arguments beyond these are `LatentFlowPolicy`'s.
    """

    batch_cfg = False
    latent_patch = 2
    guidance_is_cfg = False
    lora_loader = "FluxLoraLoaderMixin"

    def __init__(
        self,
        transformer: nn.Module,
        vae: nn.Module,
        encode_fn: FluxEncodeFn,
        *,
        num_steps: int = 8,
        guidance_scale: float = 3.5,
        true_cfg_scale: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            transformer,
            vae,
            encode_fn,
            num_steps=num_steps,
            guidance_scale=guidance_scale,
            true_cfg_scale=true_cfg_scale,
            **kwargs,
        )
        if self.device.type == "cuda":
            # cuDNN SDPA crashes the backward pass of FLUX-shaped LoRA training on H100/H200 ("illegal memory
            # access" inside mha_graph.execute); the forward is fine. This switch is process-wide.
            torch.backends.cuda.enable_cudnn_sdp(False)

    @classmethod
    def from_pretrained(
        cls,
        model_id: str = "black-forest-labs/FLUX.1-dev",
        *,
        torch_dtype: torch.dtype = torch.bfloat16,
        device: torch.device | str = "cuda",
        max_sequence_length: int = 512,
        **kwargs: Any,
    ) -> FluxPolicy:
        """Load FluxPipeline (or FluxKontextPipeline for a Kontext checkpoint) and wrap it."""
        from diffusers import FluxKontextPipeline, FluxPipeline

        pipeline_cls = FluxKontextPipeline if "kontext" in model_id.lower() else FluxPipeline
        pipe = pipeline_cls.from_pretrained(model_id, torch_dtype=torch_dtype).to(device)

        def encode_fn(prompts: list[str]) -> tuple[Tensor, Tensor]:
            embeds, pooled, _ = pipe.encode_prompt(
                prompt=prompts,
                prompt_2=None,
                device=pipe._execution_device,
                max_sequence_length=max_sequence_length,
            )
            return embeds, pooled

        return cls._from_pipeline(pipe, encode_fn, device, **kwargs)

    def _forward(
        self, latents: Tensor, sigma: Tensor, embeds: dict[str, Tensor], extras: dict[str, Any]
    ) -> Tensor:
        hidden, grids = self._image_sequence(latents, embeds, extras)
        # The noisy tokens have ids (0, row, col), the Kontext source's (1, row, col).
        img_ids = torch.cat([image_ids(rows, cols, first=float(k)) for k, (rows, cols) in enumerate(grids)])
        text = embeds["prompt_embeds"]
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full(
                (latents.shape[0],), extras["guidance"], device=self.device, dtype=torch.float32
            )
        out = self.network(
            hidden_states=hidden,
            timestep=(sigma * 1000).to(self.dtype) / 1000,
            guidance=guidance,
            pooled_projections=embeds["pooled_prompt_embeds"],
            encoder_hidden_states=text,
            txt_ids=torch.zeros(text.shape[1], 3, device=self.device, dtype=self.dtype),
            img_ids=img_ids.to(self.device, self.dtype),
            return_dict=False,
        )[0]
        return out[:, : latents.shape[1]]


__all__ = ["FluxEncodeFn", "FluxPolicy", "image_ids", "pack_latents", "unpack_latents"]
