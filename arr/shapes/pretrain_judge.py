"""Pretrain the shapes judge (arr/shapes/judge_model.py) on questions labelled by the pixel judge.

    OMP_WAIT_POLICY=PASSIVE arr shapes pretrain-judge --out runs/judge --steps 6000

A run folder holds `pool_train.npz` and `pool_heldout.npz` (the shipped models' samples, drawn once, see
`arr.shapes.judge_data.build_sample_pool`), `processor/` (the tokenizer trained on the judge's own questions, the
image processor and chat template), `checkpoints/step_N/` (model, EMA, optimizer, step; written atomically),
`metrics.jsonl` (training loss and, every `eval_every` steps, held-out accuracy per question kind) and `final/`
(the EMA weights in fp16 with the processor: a judge folder `load_backend("hf", model=...)` loads).

Two objectives besides the answers teach the judge to read its images. Trained on answers alone, a judge learns
their text priors and never the pictures (held-out accuracy stayed at the majority rate for 2,500 steps while
training accuracy rose, and replacing every image by a black one changed P(yes) by 2e-7). So the vision tower's
tokens also predict what each grid cell holds (`cell_weight`, arr/shapes/judge_vision.py), and `describe_t2i`
questions ask the language model to list the objects with their cells (judge_data.py).

Each step draws one question kind (`mix`) and whole question groups of it until `batch_size` questions, from an RNG
seeded by (seed, step): the data of a step does not depend on what ran before, so a resumed run continues exactly
(same seed, steps and threads -> the same weights). Export a checkpoint with
`arr shapes pretrain-judge --export OUT/checkpoints/step_N --out arr/shapes/assets/judge`.
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
from arr.rpo.checkpoint import truncate_metrics
from arr.shapes.judge_batch import JudgeBatcher, choice_probs, judge_loss, prompt_text
from arr.shapes.judge_data import (
    QUESTION_KINDS,
    Question,
    QuestionFactory,
    SamplePool,
    build_sample_pool,
    fixed_questions,
    seed_of,
)
from arr.shapes.judge_model import (
    CHAT_TEMPLATE,
    JudgeModelConfig,
    build_judge_model,
    build_judge_processor,
    build_judge_tokenizer,
    load_judge_processor,
    save_judge,
)
from arr.shapes.judge_vision import CELL_LABELS, VisionTap, batch_cell_targets, cell_loss
from arr.shapes.pretrain import CKPT_DIR, commit_checkpoint, step_checkpoints

PROCESSOR_DIR = "processor"


@dataclass
class JudgePretrainConfig:
    """Optimisation, data and pool settings; `model` holds the architecture."""

    steps: int = 6000
    batch_size: int = 32  # questions per step (whole groups, so a few more at times)
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decay to lr * this at `steps`
    warmup_steps: int = 200
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.998
    rest_weight: float = 0.3  # loss weight of the answer's other tokens (reason, end), see judge_batch
    # Weight of the vision tower's per-cell loss (arr/shapes/judge_vision.py); 0: off.
    cell_weight: float = 1.0
    mix: dict[str, float] = field(
        default_factory=lambda: {
            "criterion_t2i": 0.35,
            "pair_t2i": 0.3,
            "criterion_edit": 0.07,
            "pair_edit": 0.08,
            "describe_t2i": 0.2,
        }
    )
    seed: int = 0
    t2i_per_prompt: int = 16  # training pool: samples of the t2i model per training prompt
    n_edits: int = 600  # training pool: edits sampled with the edit model
    per_edit: int = 4
    heldout_t2i_per_prompt: int = 4  # held-out pool (held-out prompts and edits), for the evaluations below
    heldout_edits: int = 100
    heldout_per_edit: int = 2
    tokenizer_groups: int = 400  # question groups whose text trains the tokenizer
    eval_every: int = 250
    eval_questions: int = 200  # per question kind
    checkpoint_every: int = 250
    keep_checkpoints: int = 3
    model: JudgeModelConfig = field(default_factory=JudgeModelConfig)

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = JudgeModelConfig.from_dict(self.model)
        unknown = set(self.mix) - set(QUESTION_KINDS)
        if unknown or not self.mix or any(w < 0 for w in self.mix.values()) or sum(self.mix.values()) <= 0:
            raise ValueError(
                f"mix must give weights >= 0 (not all 0) to some of {QUESTION_KINDS}, got {self.mix}"
            )
        if self.batch_size < 1 or self.steps < 0 or self.warmup_steps < 0:
            raise ValueError(
                f"batch_size must be >= 1 and steps, warmup_steps >= 0; got {self.batch_size}, {self.steps}, "
                f"{self.warmup_steps}"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JudgePretrainConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(
                f"unknown keys {sorted(unknown)} in a judge pretraining config; expected {sorted(known)}"
            )
        return cls(**data)


def lr_at(step: int, cfg: JudgePretrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def step_questions(factory: QuestionFactory, cfg: JudgePretrainConfig, step: int) -> list[Question]:
    """The questions of training step `step`: one kind, whole groups, from an RNG seeded by (seed, step)."""
    rng = random.Random(seed_of(cfg.seed, "step", step))
    kinds = sorted(cfg.mix)
    kind = rng.choices(kinds, [cfg.mix[k] for k in kinds])[0]
    out: list[Question] = []
    while len(out) < cfg.batch_size:
        out.extend(factory.questions(rng, kind))
    return out


# ---- the run folder -------------------------------------------------------------------------------------------------


def _pool(out_dir: Path, split: str, cfg: JudgePretrainConfig, progress: bool) -> SamplePool:
    path = out_dir / f"pool_{split}.npz"
    if path.is_file():
        return SamplePool.load(path)
    if split == "train":
        sizes = (cfg.t2i_per_prompt, cfg.n_edits, cfg.per_edit)
    else:
        sizes = (cfg.heldout_t2i_per_prompt, cfg.heldout_edits, cfg.heldout_per_edit)
    pool = build_sample_pool(split, *sizes, seed=cfg.seed, progress=progress)
    pool.save(path)
    return pool


def _processor(out_dir: Path, factory: QuestionFactory, cfg: JudgePretrainConfig) -> Any:
    """The run's processor: loaded if the run has one, else with a tokenizer trained on the run's questions."""
    folder = out_dir / PROCESSOR_DIR
    if (folder / "processor_config.json").is_file():
        return load_judge_processor(folder)
    rng = random.Random(seed_of(cfg.seed, "tokenizer"))
    kinds = sorted(cfg.mix)
    texts = []
    for k in range(cfg.tokenizer_groups):
        for q in factory.questions(rng, kinds[k % len(kinds)]):
            texts.append(prompt_text(q.request, CHAT_TEMPLATE) + q.answer + "<|im_end|>")
    processor = build_judge_processor(build_judge_tokenizer(texts, cfg.model), cfg.model)
    tmp = out_dir / f".tmp_{PROCESSOR_DIR}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    processor.save_pretrained(tmp)
    tmp.rename(folder)
    return load_judge_processor(folder)


@dataclass
class _Training:
    """What a step changes and a checkpoint holds."""

    model: Any
    ema: Any
    cell_head: torch.nn.Linear  # reads the vision tower's tokens for the cell loss; not part of the judge
    opt: torch.optim.Optimizer
    step: int = 0

    @classmethod
    def fresh(cls, processor: Any, cfg: JudgePretrainConfig) -> _Training:
        model = build_judge_model(processor.tokenizer, cfg.model, seed=cfg.seed)
        model.train()
        torch.manual_seed(seed_of(cfg.seed, "cell_head"))
        head = torch.nn.Linear(model.config.text_config.hidden_size, len(CELL_LABELS))
        return cls(
            model=model,
            ema=copy.deepcopy(model).requires_grad_(False).eval(),
            cell_head=head,
            opt=torch.optim.AdamW(
                [*model.parameters(), *head.parameters()],
                lr=cfg.lr,
                weight_decay=cfg.weight_decay,
                betas=(0.9, 0.98),
            ),
        )

    def restore(self, checkpoint: Path, cfg: JudgePretrainConfig) -> None:
        # weights_only: no pickle; the state holds only tensors, dicts, lists and numbers.
        state = torch.load(checkpoint / "state.pt", weights_only=True)
        if state["model_config"] != cfg.model.to_dict():
            raise ValueError(f"checkpoint {checkpoint} holds a different model config; use another --out")
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.cell_head.load_state_dict(state["cell_head"])
        self.opt.load_state_dict(state["optimizer"])
        self.step = int(state["step"])

    def train_step(self, batcher: JudgeBatcher, questions: list[Question], cfg: JudgePretrainConfig) -> dict:
        for group in self.opt.param_groups:
            group["lr"] = lr_at(self.step, cfg)
        batch = batcher.encode(questions)
        tap = VisionTap(self.model) if cfg.cell_weight and batch.images else None
        try:
            loss, stats = judge_loss(self.model, batch)
            if tap is not None:
                cells, cell_stats = cell_loss(self.cell_head, tap.take(), batch_cell_targets(batch.images))
                loss = loss + cfg.cell_weight * cells
                stats.update(cell_stats)
        finally:
            if tap is not None:
                tap.remove()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [*self.model.parameters(), *self.cell_head.parameters()], cfg.grad_clip
        )
        self.opt.step()
        # EMA warm-up: early averages would otherwise be dominated by the random initialisation.
        decay = min(cfg.ema_decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for pe, pm in zip(self.ema.parameters(), self.model.parameters(), strict=True):
                pe.lerp_(pm, 1 - decay)
        self.step += 1
        return {"loss": loss.item(), "grad_norm": grad_norm.item(), **stats}

    def save_checkpoint(self, out_dir: Path, cfg: JudgePretrainConfig) -> Path:
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
                "cell_head": self.cell_head.state_dict(),
                "optimizer": self.opt.state_dict(),
                "model_config": cfg.model.to_dict(),
                "config": {k: v for k, v in asdict(cfg).items() if k != "model"},
            },
            tmp / "state.pt",
        )
        return commit_checkpoint(tmp, final, cfg.keep_checkpoints)


# ---- evaluation -------------------------------------------------------------------------------------------------------


def accuracy(
    model: Any, batcher: JudgeBatcher, questions: list[Question], batch_size: int = 64
) -> dict[str, float]:
    """Agreement with the pixel judge on `questions`, reading choice probabilities as the hf backend does.

    Criteria: P(yes) > P(no) against the pixel verdict. Pairs: P(rank 1) > P(rank 2) against the pixel judge's
    winner, over the pairs where it is decisive (ties are left out; plain and rubric questions reported apart).
    """
    was_training = model.training
    model.eval()
    probs: list[tuple[float, ...]] = []
    at = 0
    while at < len(questions):
        end = min(len(questions), at + batch_size)
        while end < len(questions) and questions[end].group == questions[end - 1].group:
            end += 1  # keep groups whole
        probs.extend(choice_probs(model, batcher.encode(questions[at:end], with_answers=False)))
        at = end
    model.train(was_training)
    hits: dict[str, list[float]] = {}
    for q, p in zip(questions, probs, strict=True):
        if q.kind.startswith("pair") and q.label == 0.5:
            continue
        name = q.kind + ("_plain" if q.plain else "")
        hits.setdefault(name, []).append(float((p[0] > p[1]) == (q.label == 1.0)))
    return {name: sum(v) / len(v) for name, v in sorted(hits.items())}


# ---- the loop ---------------------------------------------------------------------------------------------------------


def pretrain_judge(
    out_dir: str | Path,
    cfg: JudgePretrainConfig | None = None,
    resume: bool = True,
    progress: bool = True,
    max_minutes: float | None = None,
    stop_after: int | None = None,
) -> Path:
    """Train the judge for `cfg.steps` steps (or until `max_minutes` / step `stop_after`); returns OUT/final."""
    cfg = cfg or JudgePretrainConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=1) + "\n")
    train_pool = _pool(out_dir, "train", cfg, progress)
    heldout_pool = _pool(out_dir, "heldout", cfg, progress)
    factory = QuestionFactory(train_pool, "train")
    processor = _processor(out_dir, factory, cfg)
    batcher = JudgeBatcher(processor, rest_weight=cfg.rest_weight)
    evals = {  # describe questions teach; what is measured is the judging
        k: fixed_questions(heldout_pool, "heldout", k, cfg.eval_questions)
        for k in sorted(cfg.mix)
        if not k.startswith("describe")
    }
    run = _Training.fresh(processor, cfg)
    checkpoints = step_checkpoints(out_dir) if resume else []
    if checkpoints:
        run.restore(checkpoints[-1], cfg)
    # Rows after the checkpoint (a run killed between checkpoints) are logged again: drop them, as RPO runs do.
    truncate_metrics(out_dir / "metrics.jsonl", run.step)
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    t_start = time.monotonic()
    bar = tqdm(total=end, initial=run.step, disable=not progress, desc="pretrain judge")
    while run.step < end:
        t0, c0 = time.monotonic(), time.process_time()
        questions = step_questions(factory, cfg, run.step)
        row = run.train_step(batcher, questions, cfg)
        row.update(
            step=run.step,
            kind=questions[0].kind,
            questions=len(questions),
            lr=lr_at(run.step - 1, cfg),
            step_s=time.monotonic() - t0,
            step_cpu_s=time.process_time() - c0,
        )
        bar.update(1)
        bar.set_postfix(
            loss=f"{row['loss']:.3f}",
            acc=f"{row['decisive_acc']:.2f}",
            cells=f"{row.get('cell_exact', float('nan')):.2f}",
        )
        if run.step % cfg.eval_every == 0 or run.step == end:
            for qs in evals.values():
                row.update({f"heldout/{k}": v for k, v in accuracy(run.ema, batcher, qs).items()})
        append_jsonl(out_dir / "metrics.jsonl", row, fsync=False)
        timed_out = max_minutes is not None and time.monotonic() - t_start > 60 * max_minutes
        if run.step % cfg.checkpoint_every == 0 or run.step == end or timed_out:
            run.save_checkpoint(out_dir, cfg)
        if timed_out:
            break
    bar.close()
    return save_judge(run.ema, processor, out_dir / "final", dtype=torch.float16)


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Write a checkpoint's EMA weights in fp16 with the run's processor to `out_dir` (a loadable judge folder)."""
    checkpoint = Path(checkpoint)
    state_path = checkpoint / "state.pt"
    run_dir = checkpoint.parent.parent
    if not state_path.is_file() or not (run_dir / PROCESSOR_DIR).is_dir():
        raise FileNotFoundError(
            f"{checkpoint} is not a judge pretraining checkpoint: expected {state_path} and {run_dir / PROCESSOR_DIR}"
        )
    state = torch.load(state_path, weights_only=True)
    processor = load_judge_processor(run_dir / PROCESSOR_DIR)
    model = build_judge_model(processor.tokenizer, JudgeModelConfig.from_dict(state["model_config"]))
    model.load_state_dict(state["ema"])
    return save_judge(model.eval(), processor, out_dir, dtype=torch.float16)


def main(argv: list[str] | None = None) -> int:
    """`arr shapes pretrain-judge --out DIR --steps N` (see the module docstring)."""
    p = argparse.ArgumentParser(prog="arr shapes pretrain-judge", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--out", required=True, help="run folder (pools, processor/, checkpoints/, metrics.jsonl, final/)"
    )
    p.add_argument(
        "--export", metavar="CHECKPOINT", help="only write CHECKPOINT's EMA weights (fp16) to --out"
    )
    p.add_argument("--steps", type=int, default=None, help="training steps (default 6000)")
    p.add_argument("--batch-size", type=int, default=None, help="questions per step (default 32)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 1e-3)")
    p.add_argument(
        "--seed", type=int, default=None, help="seed of the model, pools and questions (default 0)"
    )
    p.add_argument("--no-resume", action="store_true", help="start from scratch even if OUT has checkpoints")
    p.add_argument("--max-minutes", type=float, default=None, help="stop (with a checkpoint) after this long")
    p.add_argument("--stop-after", type=int, default=None, help="stop (with a checkpoint) at this step")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument(
        "--model", default="{}", help="JSON overrides of JudgeModelConfig, e.g. '{\"num_layers\": 6}'"
    )
    p.add_argument(
        "--train", default="{}", help="JSON overrides of JudgePretrainConfig, e.g. '{\"eval_every\": 100}'"
    )
    args = p.parse_args(argv)
    if args.export:
        export_checkpoint(args.export, args.out)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        overrides = json.loads(args.train)
        model_overrides = json.loads(args.model)
    except json.JSONDecodeError as e:
        p.error(f"--train / --model must be JSON objects: {e}")
    for key in ("steps", "batch_size", "lr", "seed"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    try:
        cfg = JudgePretrainConfig.from_dict(
            {**overrides, "model": JudgeModelConfig.from_dict(model_overrides)}
        )
    except (TypeError, ValueError) as e:
        p.error(str(e))
    pretrain_judge(
        args.out, cfg, resume=not args.no_resume, max_minutes=args.max_minutes, stop_after=args.stop_after
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
