"""Tiny pretrained models of the shapes world: a word-level text encoder and a pixel-space flow transformer.

The classes are the real ones of SD3 (`diffusers.SD3Transformer2DModel`) and CLIP (`transformers.CLIPTextModel`)
with tiny configs, so every code path that serves real models (LoRA targets, the SDE sampler, the RPO policy
adapter) is exercised by models that train and sample on a laptop CPU.

Conventions (SD3 / FLUX rectified flow, `FlowMatchEulerDiscreteScheduler`): images are `[B, 3, 48, 48]` float
tensors in `[-1, 1]`; `x_t = (1 - t) * x0 + t * noise`, so `t = 1` is pure noise and `t = 0` is data (sigma = t);
the velocity is `dx_t/dt = noise - x0` and sampling integrates from `t = 1` down to `t = 0`.

The transformer predicts the clean image ("x-prediction", as in "Back to Basics: Let Denoising Generative Models
Denoise"): large pixel patches work far better that way because the data lies on a low-dimensional set, while a
noise or velocity target is full-dimensional. `ShapesFlowModel.velocity` converts the prediction to a velocity, so
samplers and RL policies see the same velocity field as with SD3 or FLUX.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from diffusers import SD3Transformer2DModel
from diffusers.models.activations import GELU
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

from arr.shapes.prompts import NUMBER_WORDS, PLURALS, RELATIONS
from arr.shapes.scene import COLORS, IMAGE_SIZE, SHAPES

ASSETS_DIR = Path(__file__).parent / "assets"
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")
# Words of editing instructions, so that one vocabulary serves both the text-to-image and the editing model.
EDIT_WORDS = (
    "add", "change", "make", "turn", "recolor", "recolour", "color", "colour", "remove", "delete", "erase",
    "move", "put", "place", "shift", "swap", "replace", "into", "to", "the", "it", "with", "from", "cell",
    "top", "bottom", "left", "right", "up", "down", "one", "row", "column", "corner", "center", "of", "in",
    "on", "at", "next", "by", "instead", "keep", "everything", "else", "same", "all", "that", "is", "be",
    "object", "objects", "shape", "shapes", "image", "each", "every", "other", "another", "new", "empty",
)  # fmt: skip
CONFIG_NAME = "shapes_config.json"
WEIGHTS_NAME = "model.safetensors"


def shapes_vocabulary() -> list[str]:
    """Every word the prompt and instruction generators can produce, special tokens first (ids 0-3)."""
    words: set[str] = {"a", "an", "and"}
    words.update(COLORS, SHAPES, PLURALS.values(), NUMBER_WORDS.values(), EDIT_WORDS)
    for rel in RELATIONS:
        words.update(rel.split())
    words.update({".", ",", "'", "-"})
    return [*SPECIAL_TOKENS, *sorted(words)]


def build_tokenizer(vocab: list[str] | None = None, max_length: int = 16) -> PreTrainedTokenizerFast:
    """A word-level tokenizer (lower-cased, split on whitespace and punctuation) that adds [BOS] ... [EOS]."""
    vocab = vocab or shapes_vocabulary()
    ids = {w: i for i, w in enumerate(vocab)}
    tok = Tokenizer(models.WordLevel(vocab=ids, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", ids["[BOS]"]), ("[EOS]", ids["[EOS]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        bos_token="[BOS]",
        eos_token="[EOS]",
        model_max_length=max_length,
        padding_side="right",
    )


@dataclass
class ShapesModelConfig:
    """Sizes of the text encoder and the flow transformer. `task` is "t2i" or "edit" (source image concatenated
    to the noisy image along channels, so the transformer sees 6 input channels and predicts 3)."""

    task: str = "t2i"
    image_size: int = IMAGE_SIZE
    patch_size: int = 6
    num_layers: int = 6
    num_attention_heads: int = 4
    attention_head_dim: int = 32
    text_hidden_size: int = 128
    text_layers: int = 2
    text_heads: int = 4
    max_text_length: int = 16
    prediction: str = "x"  # "x": the transformer predicts the clean image; "v": it predicts the velocity
    t_min: float = 0.05  # clamp of t in v = (x_t - x0_hat) / t, where the conversion would divide by ~0
    vocab: list[str] = field(default_factory=shapes_vocabulary)

    def __post_init__(self) -> None:
        if self.task not in ("t2i", "edit"):
            raise ValueError(f"task must be 't2i' or 'edit', got {self.task!r}")
        if self.prediction not in ("x", "v"):
            raise ValueError(f"prediction must be 'x' or 'v', got {self.prediction!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"patch_size {self.patch_size} does not divide image_size {self.image_size}")

    @property
    def in_channels(self) -> int:
        return 6 if self.task == "edit" else 3

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShapesModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(
                f"unknown keys {sorted(unknown)} in a shapes model config; expected {sorted(known)}"
            )
        return cls(**data)


class ShapesTextEncoder(nn.Module):
    """Word-level tokenizer + tiny CLIP text transformer, trained from scratch with the flow model."""

    def __init__(self, config: ShapesModelConfig) -> None:
        super().__init__()
        self.tokenizer = build_tokenizer(config.vocab, config.max_text_length)
        text_config = CLIPTextConfig(
            vocab_size=len(config.vocab),
            hidden_size=config.text_hidden_size,
            intermediate_size=4 * config.text_hidden_size,
            num_hidden_layers=config.text_layers,
            num_attention_heads=config.text_heads,
            max_position_embeddings=config.max_text_length,
            pad_token_id=self.tokenizer.pad_token_id,
            bos_token_id=self.tokenizer.bos_token_id,
            eos_token_id=self.tokenizer.eos_token_id,  # pooled output = state at the first [EOS]
        )
        self.text_model = CLIPTextModel(text_config)
        self.max_length = config.max_text_length

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask, `[B, max_text_length]` each (padded to a fixed length)."""
        enc = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        )
        lengths = [len(ids) for ids in self.tokenizer(list(prompts))["input_ids"]]
        too_long = [p for p, n in zip(prompts, lengths, strict=True) if n > self.max_length]
        if too_long:
            raise ValueError(f"prompt longer than {self.max_length - 2} words: {too_long[0]!r}")
        return enc["input_ids"], enc["attention_mask"]

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`(token_states [B, L, D], pooled [B, D], attention_mask [B, L])` for a list of prompts."""
        device = next(self.parameters()).device
        ids, mask = self.tokenize(prompts)
        ids, mask = ids.to(device), mask.to(device)
        out = self.text_model(input_ids=ids, attention_mask=mask)
        return out.last_hidden_state, out.pooler_output, mask


# GELU's tanh approximation: 0.5 x (1 + tanh(u)) with u = sqrt(2 / pi) (x + 0.044715 x^3). Since
# 0.5 (1 + tanh(u)) = sigmoid(2u), it is x * sigmoid(K (x + C x^3)) with K = 2 sqrt(2 / pi).
_GELU_K = 2.0 * math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715


def _gelu_gate(x: torch.Tensor) -> torch.Tensor:
    """sigmoid(K (x + C x^3)), computed in place on one new tensor."""
    s = x * x
    return s.mul_(_GELU_C * _GELU_K).add_(_GELU_K).mul_(x).sigmoid_()


class _SigmoidTanhGELU(torch.autograd.Function):
    """x * s with s = sigmoid(K (x + C x^3)); the derivative is s + x s (1 - s) K (1 + 3 C x^2)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        s = _gelu_gate(x)
        ctx.save_for_backward(x, s)
        return x * s

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        x, s = ctx.saved_tensors
        d = x * x
        d.mul_(3.0 * _GELU_C * _GELU_K).add_(_GELU_K).mul_(x).mul_(1.0 - s).add_(1.0).mul_(s)
        return grad * d


class CPUTanhGELU(GELU):
    """diffusers' `GELU(approximate="tanh")` (a projection, then the activation), computed faster on CPU.

    torch's CPU tanh is slow, and this activation took a sixth of a shapes forward pass and more of a backward. In
    its sigmoid form (above; the same function, within 5e-7 of torch's, gradients within 3e-6) a forward without
    gradients takes 0.6x the time (in place) and a forward with backward 0.75x (one autograd node that keeps
    sigmoid's output for the derivative). On other devices it is torch's own.
    """

    def gelu(self, gate: torch.Tensor) -> torch.Tensor:
        if self.approximate != "tanh" or gate.device.type != "cpu":
            return super().gelu(gate)
        if torch.is_grad_enabled():
            return _SigmoidTanhGELU.apply(gate)
        return _gelu_gate(gate).mul_(gate)


def _use_cpu_tanh_gelu(module: nn.Module) -> None:
    """Swap every tanh-approximate `GELU` in `module` for `CPUTanhGELU`, keeping its projection (and weight names)."""
    for parent in list(module.modules()):
        for name, child in parent.named_children():
            if type(child) is GELU and child.approximate == "tanh":
                fast = CPUTanhGELU(1, 1, approximate="tanh")
                fast.proj = child.proj
                setattr(parent, name, fast)


class ShapesFlowModel(nn.Module):
    """Text encoder + `SD3Transformer2DModel` in pixel space; `velocity` is the function samplers and policies use."""

    def __init__(self, config: ShapesModelConfig) -> None:
        super().__init__()
        self.config = config
        self.text_encoder = ShapesTextEncoder(config)
        tokens_per_side = config.image_size // config.patch_size
        self.transformer = SD3Transformer2DModel(
            sample_size=config.image_size,
            patch_size=config.patch_size,
            in_channels=config.in_channels,
            num_layers=config.num_layers,
            attention_head_dim=config.attention_head_dim,
            num_attention_heads=config.num_attention_heads,
            joint_attention_dim=config.text_hidden_size,
            caption_projection_dim=config.num_attention_heads * config.attention_head_dim,
            pooled_projection_dim=config.text_hidden_size,
            out_channels=3,
            pos_embed_max_size=tokens_per_side,
        )
        _use_cpu_tanh_gelu(self.transformer)

    @property
    def task(self) -> str:
        return self.config.task

    def encode_text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """`(token_states [B, L, D], pooled [B, D])`: the text conditioning `velocity` takes."""
        states, pooled, _ = self.text_encoder.encode(prompts)
        return states, pooled

    def predict_x0(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        token_states: torch.Tensor,
        pooled: torch.Tensor,
        source: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The clean image `[B, 3, H, W]` predicted from `x_t` at times `t` (`[B]` or scalar, in [0, 1])."""
        raw, t = self._raw(x_t, t, token_states, pooled, source)
        if self.config.prediction == "x":
            return raw
        return x_t - t.view(-1, 1, 1, 1) * raw

    def velocity(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        token_states: torch.Tensor,
        pooled: torch.Tensor,
        source: torch.Tensor | None = None,
        network: nn.Module | None = None,
    ) -> torch.Tensor:
        """Velocity `dx_t/dt = noise - x0` at `x_t` `[B, 3, H, W]`, times `t` (`[B]` or scalar in [0, 1], 1 = noise).

        `token_states` `[B, L, D]` and `pooled` `[B, D]` come from `encode_text`; `source` `[B, 3, H, W]` in [-1, 1] is
        the image to edit (required for the editing model, refused by the text-to-image model). `network` is the
        transformer to call instead of `self.transformer`: the same one as a distributed engine wrapped it (DDP).
        """
        raw, t = self._raw(x_t, t, token_states, pooled, source, network)
        if self.config.prediction == "v":
            return raw
        # x_t = (1 - t) x0 + t eps  =>  v = eps - x0 = (x_t - x0) / t; clamp t because the division blows up at 0.
        return (x_t - raw) / t.clamp(min=self.config.t_min).view(-1, 1, 1, 1)

    forward = velocity

    def _raw(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        token_states: torch.Tensor,
        pooled: torch.Tensor,
        source: torch.Tensor | None,
        network: nn.Module | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.config.image_size
        if x_t.ndim != 4 or x_t.shape[1:] != (3, size, size):
            raise ValueError(f"x_t must be [B, 3, {size}, {size}], got {list(x_t.shape)}")
        t = torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        if self.config.task == "edit":
            if source is None or source.shape != x_t.shape:
                got = None if source is None else list(source.shape)
                raise ValueError(
                    f"the editing model needs source images shaped like x_t {list(x_t.shape)}, got {got}"
                )
            hidden = torch.cat([x_t, source.to(x_t.dtype)], dim=1)
        else:
            if source is not None:
                raise ValueError(
                    "the text-to-image model takes no source image; load the 'edit' model for editing"
                )
            hidden = x_t
        # SD3 embeds timesteps on the scheduler's 0-1000 scale.
        out = (network or self.transformer)(
            hidden_states=hidden,
            encoder_hidden_states=token_states.to(x_t.dtype),
            pooled_projections=pooled.to(x_t.dtype),
            timestep=t * 1000.0,
            return_dict=False,
        )[0]
        return out, t


def build_t2i_model(config: ShapesModelConfig | None = None, seed: int = 0) -> ShapesFlowModel:
    """A freshly initialised text-to-image model (deterministic for a seed)."""
    config = config or ShapesModelConfig(task="t2i")
    if config.task != "t2i":
        raise ValueError(f"build_t2i_model needs task 't2i', got {config.task!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ShapesFlowModel(config)


def build_edit_model(config: ShapesModelConfig | None = None, seed: int = 0) -> ShapesFlowModel:
    """A freshly initialised editing model: the source image enters as 3 extra input channels."""
    config = config or ShapesModelConfig(task="edit")
    if config.task != "edit":
        raise ValueError(f"build_edit_model needs task 'edit', got {config.task!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ShapesFlowModel(config)


def save_pretrained(
    model: ShapesFlowModel, directory: str | Path, dtype: torch.dtype = torch.float16
) -> Path:
    """Write config, weights (safetensors, `dtype`) and tokenizer to `directory`; returns it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_NAME).write_text(json.dumps(asdict(model.config), indent=1) + "\n")
    # Fixed buffers (sin-cos position tables) are rebuilt by the constructor, so only parameters are stored.
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.named_parameters()}
    save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt", "task": model.config.task})
    model.text_encoder.tokenizer.save_pretrained(str(directory / "tokenizer"))
    return directory


def load_pretrained(name: str | Path = "t2i", dtype: torch.dtype = torch.float32) -> ShapesFlowModel:
    """Load a shipped model by name ("t2i", "edit") or a folder written by `save_pretrained`, offline."""
    directory = Path(name)
    if not (directory / CONFIG_NAME).is_file():
        directory = ASSETS_DIR / str(name)
    if not (directory / CONFIG_NAME).is_file():
        shipped = (
            sorted(p.name for p in ASSETS_DIR.iterdir() if (p / CONFIG_NAME).is_file())
            if ASSETS_DIR.is_dir()
            else []
        )
        raise FileNotFoundError(
            f"no shapes model at {name!r}: expected a folder with {CONFIG_NAME} or one of the shipped names {shipped}"
        )
    config = ShapesModelConfig.from_dict(json.loads((directory / CONFIG_NAME).read_text()))
    model = ShapesFlowModel(config)
    state = load_file(str(directory / WEIGHTS_NAME))
    expected = dict(model.named_parameters())
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    if missing or unexpected:
        raise ValueError(
            f"weights in {directory} do not match its config: missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}"
        )
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=False)
    return model.to(dtype).eval()
