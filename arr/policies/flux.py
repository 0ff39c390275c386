"""FLUX.1 policy (text-to-image, and editing as FLUX.1-Kontext): FluxTransformer2DModel called as FluxPipeline does.

Latents are packed 2x2 into tokens [B, (h/2)*(w/2), 4C] with img_ids (0, row, col) and all-zero txt_ids; the
transformer takes timestep = sigma (the pipeline's t / 1000 after a cast to the latents' dtype) and, for
FLUX.1-dev, the distilled guidance as an embedding; "true" CFG with a negative prompt is a second call. For
Kontext the source image's packed latents follow the noisy ones in the sequence with ids (1, row, col), and the
output is cut back to the noisy tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from arr.policies.base import Conditioning, FlowMatchingPolicy, images_to_pil, pil_to_tensor
from arr.policies.sde import Reduction, flow_sigmas, flux_mu

#: prompts -> (prompt_embeds [B, L, D] from T5, pooled_prompt_embeds [B, P] from CLIP), as FluxPipeline.encode_prompt.
FluxEncodeFn = Callable[[list[str]], tuple[Tensor, Tensor]]


def pack_latents(latents: Tensor) -> Tensor:
    """[B, C, h, w] -> [B, (h/2)*(w/2), 4C]: FLUX's 2x2 patch tokens (FluxPipeline._pack_latents)."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: Tensor, h: int, w: int) -> Tensor:
    """[B, (h/2)*(w/2), 4C] -> [B, C, h, w] for latent height h and width w (FluxPipeline._unpack_latents)."""
    b, n, c4 = tokens.shape
    if n != (h // 2) * (w // 2):
        raise ValueError(f"{n} tokens do not make a {h}x{w} latent ({(h // 2) * (w // 2)} tokens)")
    x = tokens.view(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c4 // 4, h, w)


def image_ids(h2: int, w2: int, first: float = 0.0) -> Tensor:
    """Position ids [h2*w2, 3] = (first, row, col) of the packed tokens (FluxPipeline._prepare_latent_image_ids)."""
    ids = torch.zeros(h2, w2, 3)
    ids[..., 0] = first
    ids[..., 1] = torch.arange(h2)[:, None]
    ids[..., 2] = torch.arange(w2)[None, :]
    return ids.reshape(h2 * w2, 3)


class FluxPolicy(FlowMatchingPolicy):
    """FLUX-family policy (FLUX.1-dev/schnell text-to-image, FLUX.1-Kontext editing when given source images)."""

    batch_cfg = False

    def __init__(
        self,
        transformer: nn.Module,
        vae: nn.Module,
        encode_fn: FluxEncodeFn,
        *,
        scheduler_config: dict[str, Any] | None = None,
        height: int = 512,
        width: int = 512,
        num_steps: int = 8,
        eta: float = 0.3,
        guidance: float = 3.5,
        guidance_scale: float = 1.0,
        shift: float | None = 3.0,
        negative_prompt: str = "",
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
        self.guidance = float(
            guidance
        )  # the embedded (distilled) guidance of FLUX.1-dev; unused without guidance_embeds
        self.negative_prompt = negative_prompt
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
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
        for module in (pipe.text_encoder, pipe.text_encoder_2):
            module.requires_grad_(False)

        def encode_fn(prompts: list[str]) -> tuple[Tensor, Tensor]:
            embeds, pooled, _ = pipe.encode_prompt(
                prompt=prompts,
                prompt_2=None,
                device=pipe._execution_device,
                max_sequence_length=max_sequence_length,
            )
            return embeds, pooled

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

    @torch.no_grad()
    def _embed(self, prompts: list[str]) -> dict[str, Tensor]:
        embeds, pooled = self.encode_fn(prompts)
        return {
            "prompt_embeds": embeds.to(self.device, self.dtype),
            "pooled_prompt_embeds": pooled.to(self.device, self.dtype),
        }

    def _latent_hw(self, height: int, width: int) -> tuple[int, int]:
        # The VAE downsamples by vae_scale_factor and packing needs even latent sizes.
        if height % (2 * self.vae_scale_factor) or width % (2 * self.vae_scale_factor):
            raise ValueError(
                f"height and width must be multiples of {2 * self.vae_scale_factor}, got {height}x{width}"
            )
        return height // self.vae_scale_factor, width // self.vae_scale_factor

    @torch.no_grad()
    def encode_images(self, images: Sequence[Image.Image], height: int, width: int) -> Tensor:
        """Source images -> normalised packed latents [B, N, 4C] (Kontext: VAE mode, (z - shift) * scale)."""
        pixels = pil_to_tensor(images, height, width).to(self.device, self.vae.dtype)
        z = self.vae.encode(pixels).latent_dist.mode()
        cfg = self.vae.config
        z = (z - (getattr(cfg, "shift_factor", None) or 0.0)) * cfg.scaling_factor
        return pack_latents(z.float()).to(self.dtype)

    def encode(
        self,
        prompts: Sequence[str],
        source_images: Sequence[Image.Image] | None = None,
        negative_prompt: str | None = None,
    ) -> Conditioning:
        prompts = list(prompts)
        embeds = self._embed(prompts)
        if source_images is not None:
            embeds["image_latents"] = self.encode_images(source_images, self.height, self.width)
        neg = None
        if self.guidance_scale > 1.0:
            text = self.negative_prompt if negative_prompt is None else negative_prompt
            neg = self._embed([text] * len(prompts))
        return Conditioning(
            prompts=prompts,
            embeds=embeds,
            negative=neg,
            source_images=None if source_images is None else list(source_images),
            extras={} if source_images is None else {"source_size": (self.height, self.width)},
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
        # Drawn unpacked, then packed, as the pipeline does: the same generator gives the pipeline's noise.
        h, w = self._latent_hw(height, width)
        channels = self.transformer.config.in_channels // 4
        device = generator.device if generator is not None else self.device
        return pack_latents(
            torch.randn((n, channels, h, w), generator=generator, device=device, dtype=torch.float32)
        )

    def _sample_extras(self, height: int, width: int) -> dict[str, Any]:
        return {"height": height, "width": width, "guidance": self.guidance}

    def _forward(
        self, latents: Tensor, sigma: Tensor, embeds: dict[str, Tensor], extras: dict[str, Any]
    ) -> Tensor:
        h, w = self._latent_hw(extras["height"], extras["width"])
        n_tokens = latents.shape[1]
        hidden = latents.to(self.dtype)
        img_ids = image_ids(h // 2, w // 2)
        if "image_latents" in embeds:
            sh, sw = self._latent_hw(*extras["source_size"])
            hidden = torch.cat([hidden, embeds["image_latents"]], dim=1)
            img_ids = torch.cat([img_ids, image_ids(sh // 2, sw // 2, first=1.0)])
        text = embeds["prompt_embeds"]
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full(
                (latents.shape[0],), extras["guidance"], device=self.device, dtype=torch.float32
            )
        out = self.transformer(
            hidden_states=hidden,
            timestep=(sigma * 1000).to(self.dtype) / 1000,
            guidance=guidance,
            pooled_projections=embeds["pooled_prompt_embeds"],
            encoder_hidden_states=text,
            txt_ids=torch.zeros(text.shape[1], 3, device=self.device, dtype=self.dtype),
            img_ids=img_ids.to(self.device, self.dtype),
            return_dict=False,
        )[0]
        return out[:, :n_tokens]

    @torch.no_grad()
    def decode(
        self, latents: Tensor, height: int | None = None, width: int | None = None
    ) -> list[Image.Image]:
        h, w = self._latent_hw(height or self.height, width or self.width)
        cfg = self.vae.config
        z = unpack_latents(latents.to(self.device).float(), h, w)
        z = z / cfg.scaling_factor + (getattr(cfg, "shift_factor", None) or 0.0)
        return images_to_pil(self.vae.decode(z.to(self.vae.dtype), return_dict=False)[0])


__all__ = ["FluxEncodeFn", "FluxPolicy", "image_ids", "pack_latents", "unpack_latents"]
