"""A trainable pairwise image reward model: Bradley-Terry loss on (prompt, chosen image, rejected image) pairs.

The conventional baseline the ARR paper compares rubric rewards against (HPSv3, PickScore, ImageReward are all
reward models trained on human preference pairs). This is the same recipe at shapes-world scale, trained the way
TRL's `RewardTrainer` trains text reward models: a scalar score r(prompt, image), and the loss
-log sigmoid(r(chosen) - r(rejected)) (plus TRL's optional `center_rewards_coefficient` * (r_c + r_r)^2).

    from arr.reward_models import BradleyTerryConfig, BradleyTerryTrainer, PairwiseRewardModel
    model = PairwiseRewardModel(PairwiseRewardModelConfig())
    result = BradleyTerryTrainer(model, BradleyTerryConfig(epochs=60), train_pairs, eval_pairs).train()
    model.save_pretrained("runs/rm")                     # config.json + model.safetensors + tokenizer/
    PairwiseRewardModel.from_pretrained("runs/rm").score(["a red circle"], [image])

Architecture (diffusers-like, readable): the shapes world's word-level tokenizer and a tiny `CLIPTextModel`
(optionally initialised from the shipped text-to-image model's text encoder, the analogue of starting from CLIP),
a small conv net over the image (plus x/y coordinate channels, so positions are learnable; editing adds the source
image as 3 more channels) whose stages are FiLM-modulated by the pooled prompt embedding, and a 2-layer
transformer over [score token, prompt tokens, 6x6 image tokens] whose score token feeds a linear head.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from arr.shapes.models import ShapesModelConfig, ShapesTextEncoder, shapes_vocabulary
from arr.shapes.pairs import PreferencePair

CONFIG_NAME = "reward_model_config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class PairwiseRewardModelConfig:
    """Sizes of the reward model. `task` "edit" feeds the source image as 3 extra input channels."""

    task: str = "t2i"
    image_size: int = 48
    channels: tuple[int, ...] = (32, 64, 96)
    hidden_size: int = 96
    fusion_layers: int = 2
    fusion_heads: int = 4
    text_hidden_size: int = 128
    text_layers: int = 2
    text_heads: int = 4
    max_text_length: int = 16
    # "t2i": copy the text encoder of the shipped shapes text-to-image model (needs text_hidden_size 128,
    # text_layers 2); None: random init. Only used at construction; saved weights always win.
    text_init: str | None = "t2i"
    vocab: list[str] = field(default_factory=shapes_vocabulary)

    def __post_init__(self) -> None:
        if self.task not in ("t2i", "edit"):
            raise ValueError(f"PairwiseRewardModelConfig.task must be 't2i' or 'edit', got {self.task!r}")
        self.channels = tuple(int(c) for c in self.channels)
        if len(self.channels) < 1:
            raise ValueError("PairwiseRewardModelConfig.channels needs at least one stage")
        if self.hidden_size % self.fusion_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} must be divisible by fusion_heads={self.fusion_heads}"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PairwiseRewardModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(
                f"unknown keys {sorted(unknown)} in a reward model config; expected {sorted(known)}"
            )
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["channels"] = list(self.channels)
        return out


def images_to_tensor(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """`[B, 3, size, size]` float in [-1, 1] (resized with bilinear filtering where the size differs)."""
    arrs = []
    for im in images:
        im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        arrs.append(np.asarray(im, dtype=np.float32))
    x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2)
    return x / 127.5 - 1.0


class _FiLMBlock(nn.Module):
    """conv (stride 2 unless first) -> GroupNorm -> FiLM(text) -> GELU -> conv, residual."""

    def __init__(self, cin: int, cout: int, text_dim: int, down: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 4 if down else 3, stride=2 if down else 1, padding=1)
        self.norm = nn.GroupNorm(8 if cout % 8 == 0 else 1, cout)
        self.film = nn.Linear(text_dim, 2 * cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.conv1(x))
        scale, shift = self.film(text)[:, :, None, None].chunk(2, dim=1)
        h = F.gelu(h * (1 + scale) + shift)
        return h + self.conv2(h)


class PairwiseRewardModel(nn.Module):
    """r(prompt, image[, source]) -> a scalar score; trained with the Bradley-Terry loss (see the module docstring)."""

    def __init__(self, config: PairwiseRewardModelConfig | None = None) -> None:
        super().__init__()
        config = config or PairwiseRewardModelConfig()
        self.config = config
        self.text_encoder = ShapesTextEncoder(
            ShapesModelConfig(
                text_hidden_size=config.text_hidden_size,
                text_layers=config.text_layers,
                text_heads=config.text_heads,
                max_text_length=config.max_text_length,
                vocab=list(config.vocab),
            )
        )
        if config.text_init is not None:
            self._init_text_from(config.text_init)
        d_text = config.text_hidden_size
        in_ch = (6 if config.task == "edit" else 3) + 2  # + x, y coordinate channels
        chans = config.channels
        self.stem = nn.Conv2d(in_ch, chans[0], 3, padding=1)
        self.blocks = nn.ModuleList(
            _FiLMBlock(cin, cout, d_text, down=True)
            for cin, cout in zip((chans[0], *chans[:-1]), chans, strict=True)
        )
        side = config.image_size // 2 ** len(chans)
        d = config.hidden_size
        self.image_proj = nn.Linear(chans[-1], d)
        self.image_pos = nn.Parameter(torch.randn(side * side, d) * 0.02)
        self.text_proj = nn.Linear(d_text, d)
        self.score_token = nn.Parameter(torch.zeros(1, 1, d))
        layer = nn.TransformerEncoderLayer(
            d, config.fusion_heads, 2 * d, dropout=0.0, batch_first=True, norm_first=True
        )
        self.fusion = nn.TransformerEncoder(layer, config.fusion_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 1)

    def _init_text_from(self, name: str) -> None:
        from arr.shapes.models import load_pretrained

        try:
            source = load_pretrained(name).text_encoder
        except (FileNotFoundError, ValueError) as e:
            raise ValueError(
                f"text_init={name!r}: cannot load that shapes model's text encoder ({e})"
            ) from None
        mine = self.text_encoder.state_dict()
        theirs = source.state_dict()
        if set(mine) != set(theirs) or any(mine[k].shape != theirs[k].shape for k in mine):
            raise ValueError(
                f"text_init={name!r}: its text encoder has other sizes than this config "
                f"(text_hidden_size={self.config.text_hidden_size}, text_layers={self.config.text_layers}); "
                "match them or set text_init to None"
            )
        self.text_encoder.load_state_dict(theirs)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        source_pixel_values: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scores `[B]` for images `[B, 3, H, W]` in [-1, 1] and token ids / mask `[B, L]`."""
        out = self.text_encoder.text_model(input_ids=input_ids, attention_mask=attention_mask)
        states, pooled = out.last_hidden_state, out.pooler_output
        x = pixel_values
        if self.config.task == "edit":
            if source_pixel_values is None:
                raise ValueError("an editing reward model needs source_pixel_values (the source images)")
            x = torch.cat([x, source_pixel_values], dim=1)
        b, _, h, w = x.shape
        ys = torch.linspace(-1, 1, h, device=x.device).view(1, 1, h, 1).expand(b, 1, h, w)
        xs = torch.linspace(-1, 1, w, device=x.device).view(1, 1, 1, w).expand(b, 1, h, w)
        x = self.stem(torch.cat([x, xs, ys], dim=1))
        for block in self.blocks:
            x = block(x, pooled)
        img = self.image_proj(x.flatten(2).transpose(1, 2)) + self.image_pos
        txt = self.text_proj(states)
        tokens = torch.cat([self.score_token.expand(b, -1, -1), txt, img], dim=1)
        pad = torch.cat(
            [
                torch.zeros(b, 1, dtype=torch.bool, device=x.device),
                attention_mask == 0,
                torch.zeros(b, img.shape[1], dtype=torch.bool, device=x.device),
            ],
            dim=1,
        )
        hidden = self.fusion(tokens, src_key_padding_mask=pad)
        return self.head(self.norm(hidden[:, 0])).squeeze(-1)

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.text_encoder.tokenize(list(prompts))
        return ids.to(self.device), mask.to(self.device)

    @torch.no_grad()
    def score(
        self,
        prompts: Sequence[str],
        images: Sequence[Image.Image],
        source_images: Sequence[Image.Image | None] | None = None,
        batch_size: int = 64,
    ) -> list[float]:
        """One score per (prompt, image) pair; editing models need `source_images`."""
        if len(prompts) != len(images):
            raise ValueError(f"score(): {len(prompts)} prompts but {len(images)} images")
        was_training = self.training
        self.eval()
        out: list[float] = []
        size = self.config.image_size
        for i in range(0, len(images), batch_size):
            ids, mask = self.tokenize(prompts[i : i + batch_size])
            px = images_to_tensor(images[i : i + batch_size], size).to(self.device)
            src = None
            if self.config.task == "edit":
                chunk = list(source_images or [])[i : i + batch_size]
                if len(chunk) != len(px) or any(s is None for s in chunk):
                    raise ValueError("an editing reward model needs a source image for every edited image")
                src = images_to_tensor(chunk, size).to(self.device)
            out.extend(self(px, ids, mask, src).float().tolist())
        self.train(was_training)
        return out

    # ---- save / load -----------------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> Path:
        """config JSON + safetensors weights (float32) + tokenizer; `from_pretrained` reads them back exactly."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=1) + "\n")
        state = {k: v.detach().to(torch.float32).contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt", "kind": "arr-bt-reward"})
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str | torch.device = "cpu"
    ) -> PairwiseRewardModel:
        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / CONFIG_NAME).is_file():
            raise FileNotFoundError(
                f"no reward model at {directory}: expected {CONFIG_NAME} and {WEIGHTS_NAME} "
                "(written by `arr reward-model train --out DIR`)"
            )
        data = json.loads((directory / CONFIG_NAME).read_text())
        data["text_init"] = None  # the saved weights hold the text encoder already
        model = cls(PairwiseRewardModelConfig.from_dict(data))
        state = load_file(str(directory / WEIGHTS_NAME))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"weights in {directory} do not match its config: missing {sorted(missing)[:3]}, "
                f"unexpected {sorted(unexpected)[:3]}"
            )
        return model.to(device).eval()


# ---- training ----------------------------------------------------------------------------------------------------


@dataclass
class BradleyTerryConfig:
    """Training hyperparameters of `BradleyTerryTrainer` (defaults measured on shapes pairs; see docs)."""

    epochs: int = 80
    batch_size: int = 32
    learning_rate: float = 3e-4
    text_learning_rate: float = 1e-4  # the (pretrained) text encoder moves slower
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    center_rewards_coefficient: float = (
        0.01  # TRL's: keeps scores near 0 so they stay comparable across prompts
    )
    augment_shift: int = (
        1  # random roll of up to this many pixels (shapes keep a 1 px margin: label-preserving)
    )
    augment_noise: float = 0.04  # Gaussian noise std on the [-1, 1] scale
    # Mirror both images of a pair left-right and swap "left"/"right" in the prompt: label-preserving in the shapes
    # world (shapes are left-right symmetric, triangles point up), and it doubles what 100 pairs teach about layout.
    augment_mirror: bool = True
    eval_every: int = 5  # epochs
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"BradleyTerryConfig.{name}={getattr(self, name)!r} must be >= 1")
        for name in ("learning_rate", "text_learning_rate"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"BradleyTerryConfig.{name}={v!r} must be a positive finite number")
        if self.augment_shift < 0 or self.augment_noise < 0:
            raise ValueError("BradleyTerryConfig.augment_shift and augment_noise must be >= 0")


@dataclass
class _PairTensors:
    chosen: torch.Tensor
    rejected: torch.Tensor
    source: torch.Tensor | None
    ids: torch.Tensor
    mask: torch.Tensor


def _pair_tensors(model: PairwiseRewardModel, pairs: Sequence[PreferencePair]) -> _PairTensors:
    size = model.config.image_size
    ids, mask = model.text_encoder.tokenize([p.prompt for p in pairs])
    source = None
    if model.config.task == "edit":
        missing = [p.id for p in pairs if p.source is None]
        if missing:
            raise ValueError(f"an editing reward model needs source images; pair {missing[0]!r} has none")
        source = images_to_tensor([p.source for p in pairs], size)
    return _PairTensors(
        images_to_tensor([p.chosen for p in pairs], size),
        images_to_tensor([p.rejected for p in pairs], size),
        source,
        ids,
        mask,
    )


def preference_accuracy(model: PairwiseRewardModel, pairs: Sequence[PreferencePair]) -> dict[str, float]:
    """Fraction of pairs whose chosen image scores strictly higher (ties count as wrong), overall and per category."""
    if not pairs:
        return {"accuracy": float("nan"), "n": 0}
    prompts = [p.prompt for p in pairs]
    sources = [p.source for p in pairs] if model.config.task == "edit" else None
    chosen = model.score(prompts, [p.chosen for p in pairs], sources)
    rejected = model.score(prompts, [p.rejected for p in pairs], sources)
    hits = [c > r for c, r in zip(chosen, rejected, strict=True)]
    out: dict[str, float] = {"accuracy": sum(hits) / len(hits), "n": len(hits)}
    by: dict[str, list[bool]] = {}
    for p, h in zip(pairs, hits, strict=True):
        by.setdefault(f"accuracy/{p.category or 'all'}", []).append(h)
        by.setdefault(f"accuracy/corruption={p.corruption or 'unknown'}", []).append(h)
    out.update({k: sum(v) / len(v) for k, v in sorted(by.items())})
    return out


@dataclass
class BradleyTerryResult:
    """Per-epoch history (loss, train accuracy, eval accuracy where evaluated) and the final figures."""

    history: list[dict[str, float]]
    train_accuracy: float
    eval: dict[str, float]


class BradleyTerryTrainer:
    """Fit a `PairwiseRewardModel` to preference pairs with the Bradley-Terry loss (AdamW, full batch epochs)."""

    def __init__(
        self,
        model: PairwiseRewardModel,
        args: BradleyTerryConfig,
        train_pairs: Sequence[PreferencePair],
        eval_pairs: Sequence[PreferencePair] = (),
    ) -> None:
        if not train_pairs:
            raise ValueError("BradleyTerryTrainer needs at least one training pair")
        self.model = model
        self.args = args
        self.train_pairs = list(train_pairs)
        self.eval_pairs = list(eval_pairs)
        text = list(model.text_encoder.parameters())
        text_ids = {id(p) for p in text}
        rest = [p for p in model.parameters() if id(p) not in text_ids]
        self.optimizer = torch.optim.AdamW(
            [
                {"params": rest, "lr": args.learning_rate},
                {"params": text, "lr": args.text_learning_rate},
            ],
            weight_decay=args.weight_decay,
        )

    def _mirror(self, c, r, src, ids, gen):
        """Mirror a random half of the pairs (chosen, rejected and source alike) and swap left/right in their prompts."""
        flip = torch.rand(len(ids), generator=gen) < 0.5
        if not flip.any():
            return c, r, src, ids
        tok = self.model.text_encoder.tokenizer
        left, right = tok.convert_tokens_to_ids("left"), tok.convert_tokens_to_ids("right")
        ids = ids.clone()
        f_ids = ids[flip]
        swapped = f_ids.clone()
        swapped[f_ids == left] = right
        swapped[f_ids == right] = left
        ids[flip] = swapped
        c, r = c.clone(), r.clone()
        c[flip], r[flip] = c[flip].flip(-1), r[flip].flip(-1)
        if src is not None:
            src = src.clone()
            src[flip] = src[flip].flip(-1)
        return c, r, src, ids

    def _augment(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        a = self.args
        if a.augment_shift:
            s = a.augment_shift
            dy, dx = (int(v) for v in torch.randint(-s, s + 1, (2,), generator=gen))
            x = torch.roll(x, (dy, dx), dims=(2, 3))
        if a.augment_noise:
            x = x + a.augment_noise * torch.randn(x.shape, generator=gen)
        return x

    def loss(self, r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
        """-log sigmoid(r_c - r_r), plus TRL's centring term."""
        loss = -F.logsigmoid(r_chosen - r_rejected).mean()
        if self.args.center_rewards_coefficient:
            loss = loss + self.args.center_rewards_coefficient * ((r_chosen + r_rejected) ** 2).mean()
        return loss

    def train(self) -> BradleyTerryResult:
        from tqdm.auto import tqdm

        args, model = self.args, self.model
        torch.manual_seed(args.seed)
        gen = torch.Generator().manual_seed(args.seed)
        order_rng = random.Random(args.seed)
        data = _pair_tensors(model, self.train_pairs)
        n = len(self.train_pairs)
        device = model.device
        history: list[dict[str, float]] = []
        bar = tqdm(range(1, args.epochs + 1), desc="Bradley-Terry", dynamic_ncols=True)
        for epoch in bar:
            model.train()
            order = list(range(n))
            order_rng.shuffle(order)
            losses, hits = [], 0
            for start in range(0, n, args.batch_size):
                idx = torch.tensor(order[start : start + args.batch_size])
                c = self._augment(data.chosen[idx], gen)
                r = self._augment(data.rejected[idx], gen)
                src = data.source[idx] if data.source is not None else None
                ids, mask = data.ids[idx], data.mask[idx]
                if args.augment_mirror:
                    c, r, src, ids = self._mirror(c, r, src, ids, gen)
                c, r, ids, mask = c.to(device), r.to(device), ids.to(device), mask.to(device)
                src = src.to(device) if src is not None else None
                # One forward for both images of every pair: GroupNorm statistics are per sample, so this is exact.
                scores = model(
                    torch.cat([c, r]),
                    ids.repeat(2, 1),
                    mask.repeat(2, 1),
                    None if src is None else src.repeat(2, 1, 1, 1),
                )
                rc, rr = scores.chunk(2)
                loss = self.loss(rc, rr)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                self.optimizer.step()
                losses.append(loss.item() * len(idx))
                hits += int((rc > rr).sum())
            row = {"epoch": epoch, "loss": sum(losses) / n, "train_accuracy": hits / n}
            if self.eval_pairs and (epoch % args.eval_every == 0 or epoch == args.epochs):
                row["eval_accuracy"] = preference_accuracy(model, self.eval_pairs)["accuracy"]
            history.append(row)
            bar.set_postfix(
                loss=f"{row['loss']:.3f}",
                acc=f"{row['train_accuracy']:.2f}",
                eval=row.get("eval_accuracy", "-"),
            )
        model.eval()
        train_acc = preference_accuracy(model, self.train_pairs)["accuracy"]
        result = preference_accuracy(model, self.eval_pairs) if self.eval_pairs else {}
        return BradleyTerryResult(history, train_acc, result)


__all__ = [
    "BradleyTerryConfig",
    "BradleyTerryResult",
    "BradleyTerryTrainer",
    "PairwiseRewardModel",
    "PairwiseRewardModelConfig",
    "images_to_tensor",
    "preference_accuracy",
]
