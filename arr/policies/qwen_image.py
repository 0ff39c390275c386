"""Qwen-Image policy (text-to-image, and editing as Qwen-Image-Edit): QwenImageTransformer2DModel called as
QwenImagePipeline / QwenImageEditPipeline do, with AutoencoderKLQwenImage.

Latents are packed 2x2 into tokens [B, (h/2)*(w/2), 4C] (the VAE's single frame dropped); the transformer takes
timestep = sigma, the text states of Qwen2.5-VL with their mask (None when nothing is padded), and `img_shapes`
(frames, h/2, w/2) per sample. CFG ("true_cfg_scale") is a second call whose result is rescaled to the
conditional prediction's norm. For editing, the source image's packed latents follow the noisy ones in the
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

from arr.policies.base import Conditioning, FlowMatchingPolicy, images_to_pil, pil_to_tensor
from arr.policies.flux import pack_latents, unpack_latents
from arr.policies.sde import Reduction, flow_sigmas, flux_mu

#: (prompts, source images or None) -> (prompt_embeds [B, L, D], prompt_embeds_mask [B, L] or None), as
#: QwenImagePipeline.encode_prompt / QwenImageEditPipeline.encode_prompt.
QwenEncodeFn = Callable[[list[str], "list[Image.Image] | None"], tuple[Tensor, "Tensor | None"]]


def edit_size(image: Image.Image, area: int) -> tuple[int, int]:
    """(height, width) with about `area` pixels at the image's aspect ratio, multiples of 32 (calculate_dimensions)."""
    ratio = image.width / image.height
    w = math.sqrt(area * ratio)
    h = w / ratio
    return max(32, round(h / 32) * 32), max(32, round(w / 32) * 32)


class QwenImagePolicy(FlowMatchingPolicy):
    """Qwen-Image-family policy; editing (Qwen-Image-Edit) when `encode` gets source images."""

    batch_cfg = False

    def __init__(
        self,
        transformer: nn.Module,
        vae: nn.Module,
        encode_fn: QwenEncodeFn,
        *,
        scheduler_config: dict[str, Any] | None = None,
        height: int = 512,
        width: int = 512,
        num_steps: int = 10,
        eta: float = 0.3,
        guidance_scale: float = 4.0,
        shift: float | None = 3.0,
        negative_prompt: str = " ",
        edit_area: int = 1024 * 1024,
        reduction: Reduction | None = None,
        gradient_checkpointing: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(
            transformer,
            height=height,
            width=width,
            num_steps=num_steps,
            eta=eta,
            guidance_scale=guidance_scale,
            shift=shift,
            gradient_checkpointing=gradient_checkpointing,
            device=device,
            reduction=reduction,
        )
        self.vae = vae.to(self.device).requires_grad_(False)
        self.encode_fn = encode_fn
        self.scheduler_config = dict(scheduler_config or {})
        self.negative_prompt = negative_prompt
        self.edit_area = int(edit_area)
        self.vae_scale_factor = 2 ** len(vae.temperal_downsample)

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
        pipe.text_encoder.requires_grad_(False)

        def encode_fn(prompts: list[str], images: list[Image.Image] | None) -> tuple[Tensor, Tensor | None]:
            kw: dict[str, Any] = {"image": images} if editing else {}
            return pipe.encode_prompt(
                prompt=prompts, device=pipe._execution_device, max_sequence_length=max_sequence_length, **kw
            )

        policy = cls(
            pipe.transformer,
            pipe.vae,
            encode_fn,
            scheduler_config=dict(pipe.scheduler.config),
            device=device,
            **kwargs,
        )
        policy.pipeline = pipe
        return policy

    def _latent_hw(self, height: int, width: int) -> tuple[int, int]:
        if height % (2 * self.vae_scale_factor) or width % (2 * self.vae_scale_factor):
            raise ValueError(
                f"height and width must be multiples of {2 * self.vae_scale_factor}, got {height}x{width}"
            )
        return height // self.vae_scale_factor, width // self.vae_scale_factor

    @torch.no_grad()
    def _embed(self, prompts: list[str], images: list[Image.Image] | None) -> dict[str, Tensor]:
        embeds, mask = self.encode_fn(prompts, images)
        if mask is None:  # the pipeline drops an all-ones mask; keep one so that sub-batches and CFG line up
            mask = torch.ones(embeds.shape[:2], dtype=torch.long)
        return {
            "prompt_embeds": embeds.to(self.device, self.dtype),
            "prompt_embeds_mask": mask.to(self.device),
        }

    def _latent_stats(self, like: Tensor) -> tuple[Tensor, Tensor]:
        cfg = self.vae.config
        shape = (1, cfg.z_dim, 1, 1, 1)
        mean = torch.tensor(cfg.latents_mean, dtype=like.dtype, device=like.device).view(shape)
        std = torch.tensor(cfg.latents_std, dtype=like.dtype, device=like.device).view(shape)
        return mean, std

    @torch.no_grad()
    def encode_images(self, images: Sequence[Image.Image], height: int, width: int) -> Tensor:
        """Source images -> normalised packed latents [B, N, 4C] (VAE mode, (z - mean) / std), as the Edit pipeline."""
        pixels = (
            pil_to_tensor(images, height, width).to(self.device, self.vae.dtype).unsqueeze(2)
        )  # [B, 3, 1, H, W]
        z = self.vae.encode(pixels).latent_dist.mode()
        mean, std = self._latent_stats(z)
        z = ((z - mean) / std)[:, :, 0]
        return pack_latents(z.float()).to(self.dtype)

    def encode(
        self,
        prompts: Sequence[str],
        source_images: Sequence[Image.Image] | None = None,
        negative_prompt: str | None = None,
    ) -> Conditioning:
        prompts = list(prompts)
        extras: dict[str, Any] = {}
        resized = None
        if source_images is not None:
            sizes = {edit_size(im, self.edit_area) for im in source_images}
            if len(sizes) != 1:
                raise ValueError(
                    f"source images of one batch must share an aspect ratio (they resize to {sorted(sizes)}); batch them by size"
                )
            sh, sw = sizes.pop()
            resized = [im.convert("RGB").resize((sw, sh), Image.Resampling.BICUBIC) for im in source_images]
            extras["source_size"] = (sh, sw)
        embeds = self._embed(prompts, resized)
        if resized is not None:
            embeds["image_latents"] = self.encode_images(resized, *extras["source_size"])
        neg = None
        if self.guidance_scale > 1.0:
            text = self.negative_prompt if negative_prompt is None else negative_prompt
            neg = self._embed([text] * len(prompts), resized)
        return Conditioning(
            prompts=prompts,
            embeds=embeds,
            negative=neg,
            source_images=None if source_images is None else list(source_images),
            extras=extras,
        )

    def _sigmas(self, num_steps: int, height: int, width: int) -> Tensor:
        if self.shift is not None:
            return flow_sigmas(num_steps, self.shift)
        h, w = self._latent_hw(height, width)
        cfg = self.scheduler_config
        mu = flux_mu(
            (h // 2) * (w // 2),
            cfg.get("base_image_seq_len", 256),
            cfg.get("max_image_seq_len", 4096),
            cfg.get("base_shift", 0.5),
            cfg.get("max_shift", 1.15),
        )
        return flow_sigmas(num_steps, mu=mu)

    def _initial_noise(self, n: int, height: int, width: int, generator: torch.Generator | None) -> Tensor:
        # The pipeline draws [B, 1, C, h, w] (one video frame) and packs it; the same generator gives its noise.
        h, w = self._latent_hw(height, width)
        channels = self.transformer.config.in_channels // 4
        device = generator.device if generator is not None else self.device
        noise = torch.randn((n, 1, channels, h, w), generator=generator, device=device, dtype=torch.float32)
        return pack_latents(noise.view(n, channels, h, w))

    def _combine_cfg(self, v_cond: Tensor, v_uncond: Tensor, scale: float) -> Tensor:
        combined = v_uncond + scale * (v_cond - v_uncond)
        # Qwen-Image rescales the guided prediction per token to the conditional prediction's norm.
        return combined * (
            torch.norm(v_cond, dim=-1, keepdim=True) / torch.norm(combined, dim=-1, keepdim=True)
        )

    def _forward(
        self, latents: Tensor, sigma: Tensor, embeds: dict[str, Tensor], extras: dict[str, Any]
    ) -> Tensor:
        h, w = self._latent_hw(extras["height"], extras["width"])
        n_tokens = latents.shape[1]
        hidden = latents.to(self.dtype)
        shapes: list[tuple[int, int, int]] = [(1, h // 2, w // 2)]
        if "image_latents" in embeds:
            sh, sw = self._latent_hw(*extras["source_size"])
            hidden = torch.cat([hidden, embeds["image_latents"]], dim=1)
            shapes.append((1, sh // 2, sw // 2))
        mask = embeds["prompt_embeds_mask"]
        out = self.transformer(
            hidden_states=hidden,
            timestep=(sigma * 1000).to(self.dtype) / 1000,
            guidance=None,
            encoder_hidden_states_mask=None if bool(mask.all()) else mask,
            encoder_hidden_states=embeds["prompt_embeds"],
            img_shapes=[shapes] * latents.shape[0],
            return_dict=False,
        )[0]
        return out[:, :n_tokens]

    @torch.no_grad()
    def decode(
        self, latents: Tensor, height: int | None = None, width: int | None = None
    ) -> list[Image.Image]:
        h, w = self._latent_hw(height or self.height, width or self.width)
        z = (
            unpack_latents(latents.to(self.device).float(), h, w).unsqueeze(2).to(self.vae.dtype)
        )  # [B, C, 1, h, w]
        mean, std = self._latent_stats(z)
        images = self.vae.decode(z * std + mean, return_dict=False)[0][:, :, 0]
        return images_to_pil(images)


__all__ = ["QwenEncodeFn", "QwenImagePolicy", "edit_size"]
