"""Reference-based editing metrics: MagicBrush's L1, L2, CLIP-I and DINO, and Emu Edit's CLIP-dir, CLIP-I, CLIP-T,
L1 and DINO.

Definitions (as the two papers use them):
- L1 / L2: mean absolute / mean squared difference of RGB values in [0, 1] between the edit and the reference
  (the edit is resized to the reference's size, or both to `image_size` when set: MagicBrush uses 512).
- CLIP-I / DINO: cosine similarity of the CLIP image embeddings / the DINO CLS features of the edit and the
  reference.
- CLIP-T: cosine similarity of the edit's CLIP image embedding and the output caption's CLIP text embedding.
- CLIP-dir: cosine similarity of the change in image embedding (edit - source) and the change in text embedding
  (output caption - input caption).
The reference is the ground-truth edit for MagicBrush (`reference: target`) and the source image for Emu Edit
(`reference: source`: there L1, CLIP-I and DINO measure how much of the input is kept).

Feature models are pluggable by Hub id or folder: any `CLIPModel` (default openai/clip-vit-base-patch32) and any
model whose `last_hidden_state[:, 0]` is a CLS feature (DINO ViT `facebook/dino-vits16`, DINOv2 `facebook/dinov2-*`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from arr.evaluation.edit_benchmarks import EditSample

METRICS = ("l1", "l2", "clip_i", "clip_t", "clip_dir", "dino")
DEFAULT_CLIP = "openai/clip-vit-base-patch32"
DEFAULT_DINO = "facebook/dino-vits16"


def _pixels(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    image = image.convert("RGB")
    if image.size != size:
        image = image.resize(size, Image.BICUBIC)
    return np.asarray(image, dtype=np.float32) / 255.0


def l1_distance(edit: Image.Image, reference: Image.Image, image_size: int | None = None) -> float:
    """Mean |edit - reference| over pixels and channels, RGB in [0, 1]."""
    size = (image_size, image_size) if image_size else reference.size
    return float(np.abs(_pixels(edit, size) - _pixels(reference, size)).mean())


def l2_distance(edit: Image.Image, reference: Image.Image, image_size: int | None = None) -> float:
    """Mean (edit - reference)^2 over pixels and channels, RGB in [0, 1] (MagicBrush's L2 is this MSE)."""
    size = (image_size, image_size) if image_size else reference.size
    return float(((_pixels(edit, size) - _pixels(reference, size)) ** 2).mean())


def _embeds(output: Any) -> torch.Tensor:
    # transformers 5 returns a model output from get_*_features (projected embeds in pooler_output), 4.x a tensor.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ClipEncoder:
    """CLIP image and text embeddings, L2-normalised, `[N, D]` float32 on the CPU."""

    def __init__(self, model: Any, image_processor: Any, tokenizer: Any | None = None) -> None:
        self.model = model.eval()
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device

    @classmethod
    def from_pretrained(cls, model_id: str = DEFAULT_CLIP, device: str = "cpu") -> ClipEncoder:
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        try:
            model = CLIPModel.from_pretrained(model_id).to(device)
            return cls(
                model, AutoImageProcessor.from_pretrained(model_id), AutoTokenizer.from_pretrained(model_id)
            )
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot load the CLIP model {model_id!r}: {e}") from None

    @torch.no_grad()
    def images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = self.image_processor([im.convert("RGB") for im in images], return_tensors="pt")[
            "pixel_values"
        ]
        out = _embeds(self.model.get_image_features(pixel_values=pixels.to(self.device)))
        return torch.nn.functional.normalize(out.float(), dim=-1).cpu()

    @torch.no_grad()
    def texts(self, texts: Sequence[str]) -> torch.Tensor:
        if self.tokenizer is None:
            raise ValueError("CLIP-T and CLIP-dir need the CLIP model's tokenizer")
        max_length = self.model.config.text_config.max_position_embeddings
        enc = self.tokenizer(
            list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
        )
        out = _embeds(
            self.model.get_text_features(
                input_ids=enc["input_ids"].to(self.device),
                attention_mask=enc["attention_mask"].to(self.device),
            )
        )
        return torch.nn.functional.normalize(out.float(), dim=-1).cpu()


class DinoEncoder:
    """DINO CLS features (`last_hidden_state[:, 0]`), L2-normalised, `[N, D]` float32 on the CPU."""

    def __init__(self, model: Any, image_processor: Any) -> None:
        self.model = model.eval()
        self.image_processor = image_processor
        self.device = next(model.parameters()).device

    @classmethod
    def from_pretrained(cls, model_id: str = DEFAULT_DINO, device: str = "cpu") -> DinoEncoder:
        from transformers import AutoImageProcessor, AutoModel

        try:
            return cls(
                AutoModel.from_pretrained(model_id).to(device), AutoImageProcessor.from_pretrained(model_id)
            )
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot load the DINO model {model_id!r}: {e}") from None

    @torch.no_grad()
    def images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = self.image_processor([im.convert("RGB") for im in images], return_tensors="pt")[
            "pixel_values"
        ]
        out = self.model(pixel_values=pixels.to(self.device)).last_hidden_state[:, 0]
        return torch.nn.functional.normalize(out.float(), dim=-1).cpu()


def clip_directional(
    source: torch.Tensor, edit: torch.Tensor, input_text: torch.Tensor, output_text: torch.Tensor
) -> torch.Tensor:
    """Per-row cos(edit - source, output_text - input_text) of `[N, D]` embeddings (zero change -> 0)."""
    return torch.nn.functional.cosine_similarity(edit - source, output_text - input_text, dim=-1, eps=1e-8)


class EditMetrics:
    """Computes the requested `names` for a batch of edits; a metric a sample cannot have (no ground truth, no
    captions) is None for that sample."""

    def __init__(
        self,
        names: Sequence[str],
        reference: str = "target",
        clip: ClipEncoder | None = None,
        dino: DinoEncoder | None = None,
        image_size: int | None = None,
    ) -> None:
        unknown = [n for n in names if n not in METRICS]
        if unknown:
            raise ValueError(f"unknown editing metrics {unknown}; expected some of {METRICS}")
        if reference not in ("target", "source"):
            raise ValueError(f"metrics reference must be 'target' or 'source', got {reference!r}")
        needs_clip = any(n.startswith("clip") for n in names)
        if needs_clip and clip is None:
            raise ValueError(f"metrics {list(names)} need a CLIP model")
        if "dino" in names and dino is None:
            raise ValueError("metric 'dino' needs a DINO model")
        self.names, self.reference = list(names), reference
        self.clip, self.dino, self.image_size = clip, dino, image_size

    @classmethod
    def from_config(cls, config: dict[str, Any], device: str = "cpu") -> EditMetrics:
        """From a suite's `metrics:` mapping: names, reference, clip, dino (Hub ids or folders), image_size."""
        names = list(config.get("names", []))
        clip = dino = None
        if any(n.startswith("clip") for n in names):
            clip = ClipEncoder.from_pretrained(config.get("clip", DEFAULT_CLIP), device)
        if "dino" in names:
            dino = DinoEncoder.from_pretrained(config.get("dino", DEFAULT_DINO), device)
        return cls(names, config.get("reference", "target"), clip, dino, config.get("image_size"))

    def fingerprint(self) -> str:
        def model_name(enc: Any) -> str | None:
            return (
                None if enc is None else getattr(enc.model.config, "_name_or_path", type(enc.model).__name__)
            )

        return (
            f"{self.names}/{self.reference}/{model_name(self.clip)}/{model_name(self.dino)}/{self.image_size}"
        )

    def compute(
        self, samples: Sequence[EditSample], edits: Sequence[Image.Image]
    ) -> list[dict[str, float | None]]:
        refs = [s.target if self.reference == "target" else s.source for s in samples]
        out: list[dict[str, float | None]] = [dict.fromkeys(self.names) for _ in samples]
        have = [i for i, r in enumerate(refs) if r is not None]
        for i in have:
            if "l1" in self.names:
                out[i]["l1"] = l1_distance(edits[i], refs[i], self.image_size)
            if "l2" in self.names:
                out[i]["l2"] = l2_distance(edits[i], refs[i], self.image_size)
        if self.clip is not None and samples:
            e = self.clip.images(edits)
            if "clip_i" in self.names and have:
                r = self.clip.images([refs[i] for i in have])
                for k, i in enumerate(have):
                    out[i]["clip_i"] = float((e[i] * r[k]).sum())
            captioned = [
                i
                for i, s in enumerate(samples)
                if s.output_caption is not None and s.input_caption is not None
            ]
            if captioned and ("clip_t" in self.names or "clip_dir" in self.names):
                t_out = self.clip.texts([samples[i].output_caption for i in captioned])
                t_in = self.clip.texts([samples[i].input_caption for i in captioned])
                src = self.clip.images([samples[i].source for i in captioned])
                direction = clip_directional(src, e[captioned], t_in, t_out)
                for k, i in enumerate(captioned):
                    if "clip_t" in self.names:
                        out[i]["clip_t"] = float((e[i] * t_out[k]).sum())
                    if "clip_dir" in self.names:
                        out[i]["clip_dir"] = float(direction[k])
        if self.dino is not None and have:
            e = self.dino.images([edits[i] for i in have])
            r = self.dino.images([refs[i] for i in have])
            for k, i in enumerate(have):
                out[i]["dino"] = float((e[k] * r[k]).sum())
        return out


__all__ = [
    "DEFAULT_CLIP",
    "DEFAULT_DINO",
    "METRICS",
    "ClipEncoder",
    "DinoEncoder",
    "EditMetrics",
    "clip_directional",
    "l1_distance",
    "l2_distance",
]
