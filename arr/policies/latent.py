"""The base of the policies that wrap a diffusers pipeline diffusing in a VAE's latent space: SD3, FLUX, Qwen-Image.

What the three families share lives here once: the frozen VAE, the pipeline's scheduler config and text encoding
(`encode_fn`, built on the pipeline's `encode_prompt`), the latent grid (the VAE's downsampling and, for FLUX and
Qwen-Image, 2x2 patches packed into tokens), the initial noise drawn as the pipelines draw it, source images encoded
and final latents decoded with the latent normalisation the pipelines apply, and the resolution-dependent sigma
shift of FLUX and Qwen-Image. An adapter keeps what differs: `_embed` (which text tensors), `_forward` (how its
transformer is called), and where its VAE or schedule is not the common one, `_vae_encode` / `_vae_decode` /
`_sigmas`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from PIL import Image
from torch import Tensor, nn

from arr.policies.base import FlowMatchingPolicy, images_to_pil, pil_to_tensor
from arr.policies.sde import flow_sigmas, flux_mu


def pack_latents(latents: Tensor) -> Tensor:
    """[B, C, h, w] -> [B, (h/2)*(w/2), 4C]: 2x2 patch tokens (FluxPipeline._pack_latents; Qwen-Image alike)."""
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


_Policy = TypeVar("_Policy", bound="LatentFlowPolicy")


class LatentFlowPolicy(FlowMatchingPolicy):
    """A flow-matching policy over a diffusers transformer and VAE, conditioned the way its pipeline does.

    Latents are [B, C, h, w] at the VAE's resolution (`latent_patch = 1`, SD3) or 2x2-packed tokens
    [B, (h/2)*(w/2), 4C] (`latent_patch = 2`, FLUX and Qwen-Image). Editing families condition on the source
    image's latents, `embeds["image_latents"]`, encoded at the output size (FLUX.1-Kontext) unless the adapter
    prepares its sources otherwise.

    Args:
        transformer, vae: the pipeline's modules (the VAE is frozen and moved to the transformer's device).
        encode_fn: the family's text encoding (see each adapter's `...EncodeFn`); by default prompts ->
            (prompt_embeds [B, L, D], pooled_prompt_embeds [B, P]).
        scheduler_config: the pipeline scheduler's config (shift, num_train_timesteps, dynamic-shift settings).
        negative_prompt: the unconditional branch's prompt under CFG.
        height, width: the image size sampled by default.
        kwargs: `FlowMatchingPolicy`'s (num_steps, eta, guidance_scale, shift, reduction, gradient_checkpointing,
            device).
    """

    #: 2 where the transformer takes 2x2-packed latent tokens, 1 where it takes [B, C, h, w].
    latent_patch: int = 1

    def __init__(
        self,
        transformer: nn.Module,
        vae: nn.Module,
        encode_fn: Callable[..., Any],
        *,
        scheduler_config: dict[str, Any] | None = None,
        negative_prompt: str = "",
        height: int = 512,
        width: int = 512,
        **kwargs: Any,
    ) -> None:
        super().__init__(transformer, height=height, width=width, **kwargs)
        self.vae = vae.to(self.device).requires_grad_(False)
        self.encode_fn = encode_fn
        self.scheduler_config = dict(scheduler_config or {})
        self.negative_prompt = negative_prompt
        self.vae_scale_factor = self._vae_scale_factor(vae)

    @classmethod
    def _from_pipeline(
        cls: type[_Policy],
        pipe: Any,
        encode_fn: Callable[..., Any],
        device: torch.device | str,
        **kwargs: Any,
    ) -> _Policy:
        """Wrap a loaded pipeline: text encoders frozen, transformer, VAE and scheduler config handed over."""
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
            module = getattr(pipe, name, None)
            if module is not None:
                module.requires_grad_(False)
        policy = cls(
            pipe.transformer,
            pipe.vae,
            encode_fn,
            scheduler_config=dict(pipe.scheduler.config),
            device=device,
            **kwargs,
        )
        policy.pipeline = pipe  # keeps the text encoders and tokenizers alive
        return policy

    def _embed(self, prompts: list[str], images: list[Image.Image] | None) -> dict[str, Tensor]:
        # SD3 and FLUX: encode_fn gives the sequence embeddings and the pooled ones.
        embeds, pooled = self.encode_fn(prompts)
        return {
            "prompt_embeds": embeds.to(self.device, self.dtype),
            "pooled_prompt_embeds": pooled.to(self.device, self.dtype),
        }

    # --- the latent grid ----------------------------------------------------------------------------------------

    def _vae_scale_factor(self, vae: nn.Module) -> int:
        """Pixels per latent cell, computed from the VAE's config as the pipelines compute it."""
        return 2 ** (len(vae.config.block_out_channels) - 1)

    def _latent_hw(self, height: int, width: int) -> tuple[int, int]:
        """The latent height and width of an image size (which must fill whole latent patches)."""
        multiple = self.latent_patch * self.vae_scale_factor
        if height % multiple or width % multiple:
            raise ValueError(f"height and width must be multiples of {multiple}, got {height}x{width}")
        return height // self.vae_scale_factor, width // self.vae_scale_factor

    def _to_tokens(self, z: Tensor) -> Tensor:
        """[B, C, h, w] latents in the layout the transformer takes."""
        return pack_latents(z) if self.latent_patch == 2 else z

    def _from_tokens(self, x: Tensor, h: int, w: int) -> Tensor:
        """The transformer's layout back to [B, C, h, w] latents of latent size h x w."""
        return unpack_latents(x, h, w) if self.latent_patch == 2 else x

    def _initial_noise(self, n: int, height: int, width: int, generator: torch.Generator | None) -> Tensor:
        # Drawn as [n, C, h, w] and then packed, as the pipelines do: the same generator gives the pipeline's noise
        # (Qwen-Image draws [n, 1, C, h, w], the same numbers in the same order).
        h, w = self._latent_hw(height, width)
        channels = self.transformer.config.in_channels // self.latent_patch**2
        device = generator.device if generator is not None else self.device
        noise = torch.randn((n, channels, h, w), generator=generator, device=device, dtype=torch.float32)
        return self._to_tokens(noise)

    def _sigmas(self, num_steps: int, height: int, width: int) -> Tensor:
        # A fixed `shift`, or with shift=None the scheduler's resolution-dependent one (FLUX and Qwen-Image's
        # use_dynamic_shifting: mu grows with the number of image tokens).
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

    # --- source images and decoding -----------------------------------------------------------------------------

    def _prepare_sources(
        self, source_images: Sequence[Image.Image] | None
    ) -> tuple[list[Image.Image] | None, dict[str, Any]]:
        if source_images is None:
            return None, {}
        return list(source_images), {"source_size": (self.height, self.width)}

    def _source_embeds(self, images: list[Image.Image], extras: dict[str, Any]) -> dict[str, Tensor]:
        return {"image_latents": self.encode_images(images, *extras["source_size"])}

    def _image_sequence(
        self, latents: Tensor, embeds: dict[str, Tensor], extras: dict[str, Any]
    ) -> tuple[Tensor, list[tuple[int, int]]]:
        """The packed image sequence the transformer takes: the noisy tokens, then (editing) the source image's,
        with the (rows, cols) token grid of each part. Cut the output back to `latents.shape[1]` tokens."""
        h, w = self._latent_hw(extras["height"], extras["width"])
        hidden = latents.to(self.dtype)
        grids = [(h // 2, w // 2)]
        if "image_latents" in embeds:
            sh, sw = self._latent_hw(*extras["source_size"])
            hidden = torch.cat([hidden, embeds["image_latents"]], dim=1)
            grids.append((sh // 2, sw // 2))
        return hidden, grids

    @torch.no_grad()
    def encode_images(self, images: Sequence[Image.Image], height: int, width: int) -> Tensor:
        """Source images, resized to height x width, -> normalised latents (VAE mode) in the transformer's layout."""
        pixels = pil_to_tensor(images, height, width).to(self.device, self.vae.dtype)
        return self._to_tokens(self._vae_encode(pixels).float()).to(self.dtype)

    @torch.no_grad()
    def decode(
        self, latents: Tensor, height: int | None = None, width: int | None = None
    ) -> list[Image.Image]:
        h, w = self._latent_hw(height or self.height, width or self.width)
        z = self._from_tokens(latents.to(self.device).float(), h, w)
        return images_to_pil(self._vae_decode(z))

    def _vae_encode(self, pixels: Tensor) -> Tensor:
        """Pixels [B, 3, H, W] in [-1, 1] -> normalised latents [B, C, h, w]: (z - shift_factor) * scaling_factor."""
        z = self.vae.encode(pixels).latent_dist.mode()
        cfg = self.vae.config
        return (z - (getattr(cfg, "shift_factor", None) or 0.0)) * cfg.scaling_factor

    def _vae_decode(self, z: Tensor) -> Tensor:
        """Normalised latents [B, C, h, w] float32 -> decoder output [B, 3, H, W] in [-1, 1]."""
        cfg = self.vae.config
        z = z / cfg.scaling_factor + (getattr(cfg, "shift_factor", None) or 0.0)
        return self.vae.decode(z.to(self.vae.dtype), return_dict=False)[0]


__all__ = ["LatentFlowPolicy", "pack_latents", "unpack_latents"]
