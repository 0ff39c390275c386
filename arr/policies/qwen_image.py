"""Qwen-Image policy (text-to-image, and editing as Qwen-Image-Edit): QwenImageTransformer2DModel called as
QwenImagePipeline / QwenImageEditPipeline do, with AutoencoderKLQwenImage.

Latents are packed 2x2 into tokens [B, (h/2)*(w/2), 4C] (the VAE's single frame dropped); the transformer takes
timestep = sigma, the text states of Qwen2.5-VL with their mask (None when nothing is padded), and `img_shapes`
(frames, h/2, w/2) per sample. CFG is `true_cfg_scale`, as QwenImagePipeline names it: a second call whose result
is rescaled to the conditional prediction's norm. `guidance_scale` is, as in the pipeline, the embedded guidance of
guidance-distilled checkpoints only; Qwen-Image and Qwen-Image-Edit have none, so it must stay 1. For editing, the source image's packed latents follow the noisy ones in the
sequence, its shape is appended to img_shapes, and the output is cut back to the noisy tokens; the source is
resized to `edit_area` pixels at its aspect ratio, like the pipeline.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from arr.policies.latent import LatentFlowPolicy

#: (prompts, source images or None) -> (prompt_embeds [B, L, D], prompt_embeds_mask [B, L] or None), as
#: QwenImagePipeline.encode_prompt / QwenImageEditPipeline.encode_prompt.
QwenEncodeFn = Callable[[list[str], "list[Image.Image] | None"], tuple[Tensor, "Tensor | None"]]


def edit_size(image: Image.Image, area: int) -> tuple[int, int]:
    """(height, width) with about `area` pixels at the image's aspect ratio, multiples of 32 (calculate_dimensions)."""
    ratio = image.width / image.height
    w = math.sqrt(area * ratio)
    h = w / ratio
    return max(32, round(h / 32) * 32), max(32, round(w / 32) * 32)


class QwenImagePolicy(LatentFlowPolicy):
    """Qwen-Image-family policy; editing (Qwen-Image-Edit) when `encode` gets source images, which are resized to
    about `edit_area` pixels at their aspect ratio. Keyword arguments beyond these are `LatentFlowPolicy`'s."""

    batch_cfg = False
    latent_patch = 2
    guidance_is_cfg = False
    lora_loader = "QwenImageLoraLoaderMixin"

    def __init__(
        self,
        transformer: nn.Module,
        vae: nn.Module,
        encode_fn: QwenEncodeFn,
        *,
        num_steps: int = 10,
        guidance_scale: float = 1.0,
        true_cfg_scale: float = 4.0,
        negative_prompt: str = " ",
        edit_area: int = 1024 * 1024,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            transformer,
            vae,
            encode_fn,
            num_steps=num_steps,
            guidance_scale=guidance_scale,
            true_cfg_scale=true_cfg_scale,
            negative_prompt=negative_prompt,
            **kwargs,
        )
        self.edit_area = int(edit_area)
        self.check_guidance(self.guidance_scale)

    def check_guidance(self, guidance_scale: float) -> None:
        if guidance_scale != 1.0 and not self.transformer.config.get("guidance_embeds", False):
            raise ValueError(
                f"guidance_scale={guidance_scale}: this Qwen-Image transformer has no guidance embedding, so "
                "guidance_scale has no effect (QwenImagePipeline ignores it too); set guidance_scale to 1, and "
                "true_cfg_scale for classifier-free guidance"
            )

    @classmethod
    def from_pretrained(
        cls,
        model_id: str = "Qwen/Qwen-Image",
        *,
        torch_dtype: torch.dtype = torch.bfloat16,
        device: torch.device | str = "cuda",
        max_sequence_length: int = 1024,
        **kwargs: Any,
    ) -> QwenImagePolicy:
        """Load QwenImagePipeline (QwenImageEditPipeline for an -Edit checkpoint) and wrap it."""
        from diffusers import QwenImageEditPipeline, QwenImagePipeline

        editing = "edit" in model_id.lower()
        pipeline_cls = QwenImageEditPipeline if editing else QwenImagePipeline
        pipe = pipeline_cls.from_pretrained(model_id, torch_dtype=torch_dtype).to(device)

        def encode_fn(prompts: list[str], images: list[Image.Image] | None) -> tuple[Tensor, Tensor | None]:
            kw: dict[str, Any] = {"image": images} if editing else {}
            return pipe.encode_prompt(
                prompt=prompts, device=pipe._execution_device, max_sequence_length=max_sequence_length, **kw
            )

        return cls._from_pipeline(pipe, encode_fn, device, **kwargs)

    def _vae_scale_factor(self, vae: nn.Module) -> int:
        return 2 ** len(vae.temperal_downsample)

    def _embed(self, prompts: list[str], images: list[Image.Image] | None) -> dict[str, Tensor]:
        embeds, mask = self.encode_fn(prompts, images)
        if mask is None:  # the pipeline drops an all-ones mask; keep one so that sub-batches and CFG line up
            mask = torch.ones(embeds.shape[:2], dtype=torch.long)
        return {
            "prompt_embeds": embeds.to(self.device, self.dtype),
            "prompt_embeds_mask": mask.to(self.device),
        }

    def _prepare_sources(
        self, source_images: Sequence[Image.Image] | None
    ) -> tuple[list[Image.Image] | None, dict[str, Any]]:
        # Resized once, as the Edit pipeline does: the text encoder and the VAE both see the resized source.
        if source_images is None:
            return None, {}
        sizes = {edit_size(im, self.edit_area) for im in source_images}
        if len(sizes) != 1:
            raise ValueError(
                f"source images of one batch must share an aspect ratio (they resize to {sorted(sizes)}); batch them by size"
            )
        sh, sw = sizes.pop()
        resized = [im.convert("RGB").resize((sw, sh), Image.Resampling.BICUBIC) for im in source_images]
        return resized, {"source_size": (sh, sw)}

    def _latent_stats(self, like: Tensor) -> tuple[Tensor, Tensor]:
        cfg = self.vae.config
        shape = (1, cfg.z_dim, 1, 1, 1)
        mean = torch.tensor(cfg.latents_mean, dtype=like.dtype, device=like.device).view(shape)
        std = torch.tensor(cfg.latents_std, dtype=like.dtype, device=like.device).view(shape)
        return mean, std

    def _vae_encode(self, pixels: Tensor) -> Tensor:
        # A video VAE: one frame [B, 3, 1, H, W] in, (z - latents_mean) / latents_std per channel, the frame dropped.
        z = self.vae.encode(pixels.unsqueeze(2)).latent_dist.mode()
        mean, std = self._latent_stats(z)
        return ((z - mean) / std)[:, :, 0]

    def _vae_decode(self, z: Tensor) -> Tensor:
        z = z.unsqueeze(2).to(self.vae.dtype)  # [B, C, 1, h, w]
        mean, std = self._latent_stats(z)
        return self.vae.decode(z * std + mean, return_dict=False)[0][:, :, 0]

    def _combine_cfg(self, v_cond: Tensor, v_uncond: Tensor, scale: float) -> Tensor:
        combined = v_uncond + scale * (v_cond - v_uncond)
        # Qwen-Image rescales the guided prediction per token to the conditional prediction's norm.
        return combined * (
            torch.norm(v_cond, dim=-1, keepdim=True) / torch.norm(combined, dim=-1, keepdim=True)
        )

    def _forward(
        self, latents: Tensor, sigma: Tensor, embeds: dict[str, Tensor], extras: dict[str, Any]
    ) -> Tensor:
        hidden, grids = self._image_sequence(latents, embeds, extras)
        mask = embeds["prompt_embeds_mask"]
        out = self.network(
            hidden_states=hidden,
            timestep=(sigma * 1000).to(self.dtype) / 1000,
            guidance=self._guidance_embedding(latents, extras),
            encoder_hidden_states_mask=None if bool(mask.all()) else mask,
            encoder_hidden_states=embeds["prompt_embeds"],
            img_shapes=[[(1, rows, cols) for rows, cols in grids]] * latents.shape[0],
            return_dict=False,
        )[0]
        return out[:, : latents.shape[1]]

    def _guidance_embedding(self, latents: Tensor, extras: dict[str, Any]) -> Tensor | None:
        # Only guidance-distilled checkpoints embed it (as QwenImagePipeline passes it).
        if not self.transformer.config.get("guidance_embeds", False):
            return None
        return torch.full((latents.shape[0],), extras["guidance"], device=self.device, dtype=torch.float32)


__all__ = ["QwenEncodeFn", "QwenImagePolicy", "edit_size"]
