"""Scorers in the style of the published image reward models users compare rubric rewards against.

Each scorer has `score(prompts, images, source_images=None) -> [float]` (one score per image; per source-edit pair
for editing), so it plugs into `RewardModelReward` (RPOTrainer) and `RewardModelTRLReward` (TRL). Each loads by Hub
id or folder with transformers classes (`from_pretrained`), and is tested here with tiny random configs of the same
classes. How close each is to the official model:

- `CLIPScorer` (PickScore, HPSv2): score = logit_scale.exp() * cos(text embedding, image embedding), with
  `transformers.CLIPModel`. PickScore (`yuvalkirstain/PickScore_v1`, processor
  `laion/CLIP-ViT-H-14-laion2B-s32B-b79K`) is a transformers CLIPModel and is scored exactly this way. HPSv2/v2.1
  ship open_clip checkpoints (`HPS_v2_compressed.pt`), not transformers weights: they need converting first (the
  architecture is the same CLIP ViT-H/14), so here HPSv2 means "the same scoring rule", not its loader.
- `BlipScorer` (ImageReward): BLIP ViT image encoder, BLIP text encoder cross-attending to the image, the [CLS]
  state through an MLP head (1024-128-64-16-1 in ImageReward), then (r - mean) / std, with
  `transformers.BlipForImageTextRetrieval`'s vision model and text encoder. The official ImageReward checkpoint
  (`THUDM/ImageReward`, `ImageReward.pt` + `med_config.json`) is in its own package's format: its BLIP weights and
  MLP head must be converted to transformers names first; `head_path` loads a converted head (safetensors).
- `QwenVLScorer` (HPSv3, EditReward): a Qwen2-VL / Qwen2.5-VL backbone reads a chat prompt with the image(s) and
  the text; the last token's final hidden state goes through a head whose first output is the score (HPSv3's head
  predicts a mean and a spread, and ranks by the mean). Official HPSv3 (`MizzenAI/HPSv3`) and EditReward
  (`TIGER-Lab/EditReward-*`) checkpoints are Qwen-VL models plus head weights saved by their own repositories; the
  backbone loads with transformers, the head needs `head_path` (a safetensors file of the head's state dict) and
  their exact prompt templates; without `head_path` the head is randomly initialised (a warning is logged), which
  is only useful for plumbing tests. `QwenVLScorer.for_editing(...)` shows the source image first, then the
  edited image, as EditReward does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

logger = logging.getLogger(__name__)


def _batches(n: int, size: int):
    for i in range(0, n, size):
        yield slice(i, min(n, i + size))


def _check_lengths(prompts: Sequence[str], images: Sequence[Image.Image], where: str) -> None:
    if len(prompts) != len(images):
        raise ValueError(f"{where}: {len(prompts)} prompts but {len(images)} images")


def mlp_head(dims: Sequence[int]) -> nn.Sequential:
    """Linear layers of sizes dims[0] -> dims[1] -> ... with ReLU between (no activation after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _load_head(head: nn.Module, head_path: str | Path | None, where: str) -> None:
    if head_path is None:
        logger.warning(
            "%s: no head_path given, the reward head is randomly initialised (plumbing only)", where
        )
        return
    from safetensors.torch import load_file

    path = Path(head_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{where}: head weights not found: {path} (a safetensors file of the head's state dict)"
        )
    state = load_file(str(path))
    missing, unexpected = head.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{where}: head weights in {path} do not fit the head: missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]}"
        )


# ---- CLIP: PickScore / HPSv2 -----------------------------------------------------------------------------------


class CLIPScorer:
    """logit_scale.exp() * cos(text, image) with a `transformers.CLIPModel` (PickScore's rule; module docstring)."""

    def __init__(self, model: Any, image_processor: Any, tokenizer: Any, batch_size: int = 32) -> None:
        self.model = model.eval()
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(
        cls, model_id: str, processor_id: str | None = None, device: str = "cpu", **kwargs: Any
    ) -> CLIPScorer:
        """E.g. `CLIPScorer.from_pretrained("yuvalkirstain/PickScore_v1", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K")`."""
        from transformers import AutoProcessor, CLIPModel

        model = CLIPModel.from_pretrained(model_id, **kwargs).to(device)
        processor = AutoProcessor.from_pretrained(processor_id or model_id)
        return cls(model, processor.image_processor, processor.tokenizer)

    @torch.no_grad()
    def score(self, prompts, images, source_images=None) -> list[float]:
        _check_lengths(prompts, images, "CLIPScorer.score")
        device = next(self.model.parameters()).device
        out: list[float] = []
        for sl in _batches(len(images), self.batch_size):
            pixels = self.image_processor(
                images=[im.convert("RGB") for im in images[sl]], return_tensors="pt"
            )
            text = self.tokenizer(list(prompts[sl]), padding=True, truncation=True, return_tensors="pt")
            img = self.model.get_image_features(pixel_values=pixels["pixel_values"].to(device))
            txt = self.model.get_text_features(
                input_ids=text["input_ids"].to(device), attention_mask=text["attention_mask"].to(device)
            )
            img = getattr(img, "pooler_output", img)
            txt = getattr(txt, "pooler_output", txt)
            img = img / img.norm(dim=-1, keepdim=True)
            txt = txt / txt.norm(dim=-1, keepdim=True)
            out.extend((self.model.logit_scale.exp() * (img * txt).sum(-1)).float().tolist())
        return out


# ---- BLIP: ImageReward -------------------------------------------------------------------------------------------

IMAGEREWARD_MEAN = 0.16717362830052426  # ImageReward's reward normalisation (its ImageReward.py)
IMAGEREWARD_STD = 1.0333394966054072


class BlipScorer(nn.Module):
    """ImageReward-style: BLIP image encoder + cross-attending text encoder + MLP on [CLS] (module docstring)."""

    def __init__(
        self,
        blip: Any,
        image_processor: Any,
        tokenizer: Any,
        head_dims: Sequence[int] = (1024, 128, 64, 16, 1),
        head_path: str | Path | None = None,
        mean: float = IMAGEREWARD_MEAN,
        std: float = IMAGEREWARD_STD,
        batch_size: int = 32,
    ) -> None:
        super().__init__()
        self.blip = blip.eval()
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        hidden = blip.config.text_config.hidden_size
        # ImageReward's head takes the text encoder's hidden size in (768 for BLIP base); the first dim is fixed by it.
        self.head = mlp_head([hidden, *head_dims])
        _load_head(self.head, head_path, "BlipScorer")
        self.mean, self.std = mean, std
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(
        cls, model_id: str, head_path: str | Path | None = None, device: str = "cpu", **kwargs: Any
    ) -> BlipScorer:
        from transformers import AutoProcessor, BlipForImageTextRetrieval

        blip = BlipForImageTextRetrieval.from_pretrained(model_id, **kwargs)
        processor = AutoProcessor.from_pretrained(model_id)
        return cls(blip, processor.image_processor, processor.tokenizer, head_path=head_path).to(device)

    @torch.no_grad()
    def score(self, prompts, images, source_images=None) -> list[float]:
        _check_lengths(prompts, images, "BlipScorer.score")
        device = next(self.parameters()).device
        out: list[float] = []
        for sl in _batches(len(images), self.batch_size):
            pixels = self.image_processor(
                images=[im.convert("RGB") for im in images[sl]], return_tensors="pt"
            )
            text = self.tokenizer(list(prompts[sl]), padding=True, truncation=True, return_tensors="pt")
            image_embeds = self.blip.vision_model(pixel_values=pixels["pixel_values"].to(device))[0]
            image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=device)
            states = self.blip.text_encoder(
                input_ids=text["input_ids"].to(device),
                attention_mask=text["attention_mask"].to(device),
                encoder_hidden_states=image_embeds,
                encoder_attention_mask=image_mask,
            )[0]
            r = self.head(states[:, 0]).squeeze(-1)
            out.extend(((r - self.mean) / self.std).float().tolist())
        return out


# ---- Qwen2-VL: HPSv3 / EditReward -------------------------------------------------------------------------------

T2I_TEMPLATE = "Rate how well this image follows the prompt and how good it looks.\nPrompt: {prompt}"
EDIT_TEMPLATE = (
    "The first image is the source, the second is the edited result. Rate how well the edit follows the "
    "instruction while keeping everything else unchanged.\nInstruction: {prompt}"
)


class QwenVLScorer(nn.Module):
    """A Qwen-VL backbone + a head on the last token's hidden state; score = head output 0 (module docstring)."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        head_dims: Sequence[int] = (1024, 16, 2),
        head_path: str | Path | None = None,
        template: str = T2I_TEMPLATE,
        editing: bool = False,
        batch_size: int = 8,
    ) -> None:
        super().__init__()
        self.model = model.eval()
        self.processor = processor
        hidden = model.config.get_text_config().hidden_size
        self.head = mlp_head([hidden, *head_dims])
        _load_head(self.head, head_path, "QwenVLScorer")
        self.template = template
        self.editing = editing
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(
        cls,
        model_id: str,
        head_path: str | Path | None = None,
        editing: bool = False,
        device: str = "cpu",
        trust_remote_code: bool = False,
        **kwargs: Any,
    ) -> QwenVLScorer:
        """E.g. HPSv3: `QwenVLScorer.from_pretrained("Qwen/Qwen2-VL-7B-Instruct", head_path="hpsv3_head.safetensors")`."""
        from transformers import AutoModelForImageTextToText, AutoProcessor

        model = AutoModelForImageTextToText.from_pretrained(
            model_id, trust_remote_code=trust_remote_code, **kwargs
        )
        processor = AutoProcessor.from_pretrained(model_id, trust_remote_code=trust_remote_code)
        template = EDIT_TEMPLATE if editing else T2I_TEMPLATE
        return cls(model, processor, head_path=head_path, template=template, editing=editing).to(device)

    @classmethod
    def for_editing(cls, model: Any, processor: Any, **kwargs: Any) -> QwenVLScorer:
        """An EditReward-style scorer: source image, edited image, instruction."""
        return cls(model, processor, template=EDIT_TEMPLATE, editing=True, **kwargs)

    def _messages(self, prompt: str, n_images: int) -> list[dict[str, Any]]:
        content: list[dict[str, Any]] = [{"type": "image"} for _ in range(n_images)]
        content.append({"type": "text", "text": self.template.format(prompt=prompt)})
        return [{"role": "user", "content": content}]

    @torch.no_grad()
    def score(self, prompts, images, source_images=None) -> list[float]:
        _check_lengths(prompts, images, "QwenVLScorer.score")
        if self.editing and (source_images is None or any(s is None for s in source_images)):
            raise ValueError(
                "an editing scorer (EditReward-style) needs a source image for every edited image"
            )
        device = next(self.model.parameters()).device
        out: list[float] = []
        for sl in _batches(len(images), self.batch_size):
            texts, flat_images = [], []
            for i in range(sl.start, sl.stop):
                pictures = [source_images[i], images[i]] if self.editing else [images[i]]
                texts.append(
                    self.processor.apply_chat_template(
                        self._messages(prompts[i], len(pictures)), tokenize=False, add_generation_prompt=False
                    )
                )
                flat_images.extend(p.convert("RGB") for p in pictures)
            tok = getattr(self.processor, "tokenizer", None)
            if tok is not None:
                tok.padding_side = "left"  # the last position is then every sequence's own last token
            inputs = self.processor(text=texts, images=flat_images, padding=True, return_tensors="pt").to(
                device
            )
            hidden = self.model(**inputs, output_hidden_states=True).hidden_states[-1]
            last = hidden[:, -1]
            out.extend(self.head(last.to(self.head[0].weight.dtype))[:, 0].float().tolist())
        return out


__all__ = [
    "EDIT_TEMPLATE",
    "IMAGEREWARD_MEAN",
    "IMAGEREWARD_STD",
    "T2I_TEMPLATE",
    "BlipScorer",
    "CLIPScorer",
    "QwenVLScorer",
    "mlp_head",
]
