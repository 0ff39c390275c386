"""Pretrain the tiny shapes models by rectified flow on procedurally drawn scenes.

    OMP_WAIT_POLICY=PASSIVE python -m arr.shapes.pretrain --task t2i --out /tmp/shapes_t2i --steps 20000

Each training example is a prompt drawn with GenEval's category mix from the *train* split and a scene drawn by
`scene_for_prompt`, so the text fully determines what the image must contain and the held-out prompts measure
composition rather than memorisation. Captions are dropped 10% of the time for classifier-free guidance.
Checkpoints (`OUT/checkpoints/step_N/`) are written atomically and hold the model, its EMA, the optimizer, every RNG
state and the step, so an interrupted run continues exactly where it stopped (same seed + same steps -> identical
weights). `OUT/final/` holds the EMA weights in fp16 in the layout `load_pretrained` reads; export an earlier
checkpoint with `python -m arr.shapes.pretrain --export OUT/checkpoints/step_N --out arr/shapes/assets/t2i`.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from arr.jsonl import append_jsonl
from arr.shapes.models import (
    CONFIG_NAME,
    ShapesFlowModel,
    ShapesModelConfig,
    load_pretrained,
    save_pretrained,
)
from arr.shapes.prompts import CATEGORY_WEIGHTS, PromptSpec, prompts_for_split, scene_for_prompt
from arr.shapes.scene import COLORS, SHAPES, Obj, Scene, render

CKPT_DIR = "checkpoints"


@dataclass
class PretrainConfig:
    """Optimisation settings; `model` holds the architecture."""

    task: str = "t2i"
    steps: int = 20000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 500
    lr_decay: str = "cosine"  # "cosine" to 10% of lr at `steps`, or "constant"
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    t_mean: float = 0.0  # logit-normal timestep sampling: t = sigmoid(N(t_mean, t_std))
    t_std: float = 1.0
    loss: str = "v"  # "v": error on the velocity (x-pred with v-loss, as JiT); "x": error on the clean image
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    init_from: str | None = None  # warm start (e.g. "t2i" for the editing model); see `warm_start`
    model: ShapesModelConfig = field(default_factory=ShapesModelConfig)

    def __post_init__(self) -> None:
        if self.task not in ("t2i", "edit"):
            raise ValueError(f"task must be 't2i' or 'edit', got {self.task!r}")
        if self.model.task != self.task:
            self.model = ShapesModelConfig.from_dict({**asdict(self.model), "task": self.task})
        if self.loss not in ("v", "x"):
            raise ValueError(f"loss must be 'v' or 'x', got {self.loss!r}")
        if self.lr_decay not in ("cosine", "constant"):
            raise ValueError(f"lr_decay must be 'cosine' or 'constant', got {self.lr_decay!r}")
        if self.batch_size < 1 or self.steps < 0:
            raise ValueError(
                f"batch_size must be >= 1 and steps >= 0, got {self.batch_size} and {self.steps}"
            )


class SceneRenderer:
    """Renders scenes to tensors by pasting per-cell sprites: identical to `render` (objects never share a cell
    and never cross their cell), but ~50x faster, which matters when data is drawn on the fly on 2 CPU cores."""

    def __init__(self, grid: int = 4, size: int = 48) -> None:
        self.grid, self.size, self.cell = grid, size, size // grid
        self.sprites: dict[tuple[str, str], torch.Tensor] = {}
        for shape in SHAPES:
            for color in COLORS:
                image = render(Scene((Obj(shape, color, 0, 0),), grid), size)
                full = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(size, size, 3)
                self.sprites[shape, color] = (
                    full[: self.cell, : self.cell].permute(2, 0, 1).float() / 127.5 - 1.0
                )

    def __call__(self, scenes: list[Scene]) -> torch.Tensor:
        out = torch.full((len(scenes), 3, self.size, self.size), -1.0)
        c = self.cell
        for i, scene in enumerate(scenes):
            for o in scene.objects:
                out[i, :, o.row * c : (o.row + 1) * c, o.col * c : (o.col + 1) * c] = self.sprites[
                    o.shape, o.color
                ]
        return out


class T2IData:
    """Batches of (prompt, image) drawn from the train split with GenEval's category mix."""

    def __init__(self, caption_dropout: float) -> None:
        self.pools: dict[str, list[PromptSpec]] = {c: prompts_for_split("train", c) for c in CATEGORY_WEIGHTS}
        self.cats = list(CATEGORY_WEIGHTS)
        self.weights = [CATEGORY_WEIGHTS[c] for c in self.cats]
        self.caption_dropout = caption_dropout
        self.renderer = SceneRenderer()

    def batch(self, rng: random.Random, n: int) -> tuple[list[str], torch.Tensor, None]:
        prompts, scenes = [], []
        for _ in range(n):
            spec = rng.choice(self.pools[rng.choices(self.cats, self.weights)[0]])
            scenes.append(scene_for_prompt(spec, rng))
            prompts.append("" if rng.random() < self.caption_dropout else spec.text)
        return prompts, self.renderer(scenes), None


class EditData:
    """Batches of (instruction, target image, source image) from the train split of `arr.shapes.edits`."""

    def __init__(self, caption_dropout: float) -> None:
        from arr.shapes.edits import sample_edit  # imported lazily: only the editing model needs it

        self.sample_edit = sample_edit
        self.caption_dropout = caption_dropout
        self.renderer = SceneRenderer()

    def batch(self, rng: random.Random, n: int) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        prompts, sources, targets = [], [], []
        for _ in range(n):
            edit = self.sample_edit(rng, "train")
            sources.append(edit.source)
            targets.append(edit.target)
            prompts.append("" if rng.random() < self.caption_dropout else edit.text)
        return prompts, self.renderer(targets), self.renderer(sources)


def flow_loss(
    model: ShapesFlowModel,
    x0: torch.Tensor,
    prompts: list[str],
    source: torch.Tensor | None,
    gen: torch.Generator,
    cfg: PretrainConfig,
) -> torch.Tensor:
    """Rectified-flow loss at logit-normal times; see `PretrainConfig.loss`."""
    b = x0.shape[0]
    t = torch.sigmoid(cfg.t_mean + cfg.t_std * torch.randn(b, generator=gen))
    noise = torch.randn(x0.shape, generator=gen)
    tb = t.view(-1, 1, 1, 1)
    x_t = (1 - tb) * x0 + tb * noise
    states, pooled = model.encode_text(prompts)
    if cfg.loss == "x":
        return torch.mean((model.predict_x0(x_t, t, states, pooled, source) - x0) ** 2)
    return torch.mean((model.velocity(x_t, t, states, pooled, source) - (noise - x0)) ** 2)


def warm_start(model: ShapesFlowModel, source: str) -> list[str]:
    """Copy every weight whose shape matches from a trained model; returns the names that were not copied.

    The editing model starts from the text-to-image model this way: text encoder and transformer carry over, and
    the patch embedding's extra source-image input channels start at zero, so step 0 is the text-to-image model
    that has not yet learned to look at the source. On 2 CPU cores this saves most of an hour of pretraining.
    """
    trained = load_pretrained(source).state_dict()
    own = model.state_dict()
    skipped = []
    with torch.no_grad():
        for name, value in own.items():
            src = trained.get(name)
            if src is not None and src.shape == value.shape:
                value.copy_(src.to(value.dtype))
            elif (
                src is not None
                and src.dim() == value.dim() == 4
                and src.shape[0] == value.shape[0]
                and src.shape[1] < value.shape[1]
                and src.shape[2:] == value.shape[2:]
            ):  # the patch embedding of a model with more input channels
                value.zero_()
                value[:, : src.shape[1]].copy_(src.to(value.dtype))
            else:
                skipped.append(name)
    return skipped


def lr_at(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_decay == "constant":
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass
class _Training:
    """What a pretraining step changes and a checkpoint holds."""

    model: ShapesFlowModel
    ema: ShapesFlowModel
    opt: torch.optim.Optimizer
    rng: random.Random
    gen: torch.Generator
    step: int = 0

    @classmethod
    def fresh(cls, cfg: PretrainConfig) -> _Training:
        torch.manual_seed(cfg.seed)
        model = ShapesFlowModel(cfg.model)
        return cls(
            model=model,
            ema=copy.deepcopy(model).requires_grad_(False),
            opt=torch.optim.AdamW(
                model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99)
            ),
            rng=random.Random(cfg.seed),
            gen=torch.Generator().manual_seed(cfg.seed),
        )

    def restore(self, checkpoint: Path, cfg: PretrainConfig) -> None:
        """Continue exactly where `checkpoint` stopped: weights, EMA, optimizer, both RNGs and the step."""
        # weights_only: no pickle; the state holds only tensors, dicts, tuples and numbers (RNG states included).
        state = torch.load(checkpoint / "state.pt", weights_only=True)
        saved = PretrainConfig(
            **{**state["config"], "model": ShapesModelConfig.from_dict(state["config"]["model"])}
        )
        if asdict(saved.model) != asdict(cfg.model):
            raise ValueError(
                f"checkpoint {checkpoint} holds a different model config; use another --out or resume=False"
            )
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["optimizer"])
        self.rng.setstate(state["python_rng"])
        self.gen.set_state(state["torch_gen"])
        self.step = state["step"]

    def start_from(self, source: str) -> None:
        """Warm start from a trained model (see `warm_start`), the EMA alike."""
        skipped = warm_start(self.model, source)
        if skipped:
            raise ValueError(f"--init-from {source}: no matching weights for {skipped}")
        self.ema.load_state_dict(self.model.state_dict())

    def train_step(self, data: T2IData | EditData, cfg: PretrainConfig) -> tuple[float, float]:
        """One optimizer step and EMA update at `self.step`; returns (loss, gradient norm before clipping)."""
        for group in self.opt.param_groups:
            group["lr"] = lr_at(self.step, cfg)
        prompts, x0, source = data.batch(self.rng, cfg.batch_size)
        loss = flow_loss(self.model, x0, prompts, source, self.gen, cfg)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.opt.step()
        # EMA warm-up: early averages would otherwise be dominated by the random initialisation.
        decay = min(cfg.ema_decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for pe, pm in zip(self.ema.parameters(), self.model.parameters(), strict=True):
                pe.lerp_(pm, 1 - decay)
        self.step += 1
        return loss.item(), grad_norm.item()

    def save_checkpoint(self, out_dir: Path, cfg: PretrainConfig) -> Path:
        """OUT/checkpoints/step_N, written beside and renamed; only the newest `keep_checkpoints` are kept."""
        root = out_dir / CKPT_DIR
        root.mkdir(parents=True, exist_ok=True)
        final = root / f"step_{self.step}"
        tmp = root / f".tmp_step_{self.step}_{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        torch.save(
            {
                "step": self.step,
                "model": self.model.state_dict(),
                "ema": self.ema.state_dict(),
                "optimizer": self.opt.state_dict(),
                "python_rng": self.rng.getstate(),
                "torch_gen": self.gen.get_state(),
                "config": asdict(cfg),
            },
            tmp / "state.pt",
        )
        save_pretrained(self.ema, tmp / "ema", dtype=torch.float32)
        return commit_checkpoint(tmp, final, cfg.keep_checkpoints)


def step_checkpoints(out_dir: Path) -> list[Path]:
    """OUT/checkpoints/step_N folders, oldest first."""
    return sorted((out_dir / CKPT_DIR).glob("step_*"), key=lambda p: int(p.name.split("_")[1]))


def commit_checkpoint(tmp: Path, final: Path, keep: int) -> Path:
    """Move a fully written checkpoint folder `tmp` to `final` (OUT/checkpoints/step_N) and drop all but the newest
    `keep`. The rename is atomic on one filesystem: a crash leaves either the old or the new checkpoint."""
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in step_checkpoints(final.parent.parent)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def pretrain(
    task: str = "t2i",
    out_dir: str | Path = "shapes_pretrain",
    steps: int = 20000,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    resume: bool = True,
    model_config: ShapesModelConfig | None = None,
    progress: bool = True,
    max_minutes: float | None = None,
    stop_after: int | None = None,
    **overrides: Any,
) -> ShapesFlowModel:
    """Train a shapes model for `steps` steps (or until `max_minutes` or step `stop_after`), checkpointing; returns
    the EMA model. `stop_after` ends a phase deterministically while the learning-rate schedule still spans `steps`.

    With `resume`, the latest checkpoint in `out_dir` is loaded and training continues from its step, exactly.
    """
    cfg = PretrainConfig(
        task=task,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        model=model_config or ShapesModelConfig(task=task),
        **overrides,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run = _Training.fresh(cfg)
    checkpoints = step_checkpoints(out_dir) if resume else []
    if checkpoints:
        run.restore(checkpoints[-1], cfg)
    elif cfg.init_from:
        run.start_from(cfg.init_from)
    (out_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=1) + "\n")
    data = T2IData(cfg.caption_dropout) if task == "t2i" else EditData(cfg.caption_dropout)
    t_start = time.monotonic()
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    bar = tqdm(total=end, initial=run.step, disable=not progress, desc=f"pretrain {task}")
    run.model.train()
    while run.step < end:
        t0 = time.monotonic()
        loss, grad_norm = run.train_step(data, cfg)
        dt = time.monotonic() - t0
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", sps=f"{cfg.batch_size / dt:.0f}")
        if run.step % 50 == 0 or run.step == cfg.steps:
            row = {
                "step": run.step,
                "loss": loss,
                "grad_norm": grad_norm,
                "lr": lr_at(run.step - 1, cfg),
                "samples_per_s": cfg.batch_size / dt,
                "elapsed_s": time.monotonic() - t_start,
            }
            append_jsonl(out_dir / "metrics.jsonl", row, fsync=False)
        timed_out = max_minutes is not None and time.monotonic() - t_start > 60 * max_minutes
        if run.step % cfg.checkpoint_every == 0 or run.step == end or timed_out:
            run.save_checkpoint(out_dir, cfg)
        if timed_out:
            break
    bar.close()
    save_pretrained(run.ema, out_dir / "final")
    return run.ema.eval()


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Write a checkpoint's EMA weights in fp16 to `out_dir` (the shipped layout; e.g. arr/shapes/assets/t2i)."""
    ema_dir = Path(checkpoint) / "ema"
    if not (ema_dir / CONFIG_NAME).is_file():
        raise FileNotFoundError(
            f"{checkpoint} is not a pretraining checkpoint: expected {ema_dir / CONFIG_NAME}"
        )
    return save_pretrained(load_pretrained(ema_dir), out_dir, dtype=torch.float16)


def main(argv: list[str] | None = None) -> int:
    """`python -m arr.shapes.pretrain --task t2i --out DIR --steps N` (see the module docstring)."""
    p = argparse.ArgumentParser(prog="arr shapes pretrain", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=("t2i", "edit"), default="t2i")
    p.add_argument(
        "--export", metavar="CHECKPOINT", help="only write CHECKPOINT's EMA weights (fp16) to --out"
    )
    p.add_argument("--out", required=True, help="run folder: checkpoints/, metrics.jsonl, final/")
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-resume", action="store_true", help="start from scratch even if OUT has checkpoints")
    p.add_argument("--max-minutes", type=float, default=None, help="stop (with a checkpoint) after this long")
    p.add_argument(
        "--stop-after", type=int, default=None, help="end this phase (with a checkpoint) at this step"
    )
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument(
        "--model", default="{}", help="JSON overrides of ShapesModelConfig, e.g. '{\"patch_size\": 4}'"
    )
    p.add_argument(
        "--train", default="{}", help="JSON overrides of PretrainConfig, e.g. '{\"ema_decay\": 0.9995}'"
    )
    args = p.parse_args(argv)
    if args.export:
        export_checkpoint(args.export, args.out)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    model_cfg = ShapesModelConfig.from_dict({"task": args.task, **json.loads(args.model)})
    pretrain(
        task=args.task,
        out_dir=args.out,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        resume=not args.no_resume,
        model_config=model_cfg,
        max_minutes=args.max_minutes,
        stop_after=args.stop_after,
        **json.loads(args.train),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
