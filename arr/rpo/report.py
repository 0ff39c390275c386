"""The run report, `report.html`: summary cards; curves of the held-out score, the training reward and the judge's
verdicts, the loss, the KL term, PPO clipping, the gradient norm and policy-judge alignment (whichever
metrics.jsonl has); per-category scores before and after; the held-out samples before and after training (same
prompts and seeds) and the latest training samples, each with its prompt, verdict and score; time per phase and
the resolved config.

Images are PNG files in `report_files/` beside the page; `self_contained=True` inlines them, so the page is one
file to share.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from arr import report as html
from arr.data import PromptRecord
from arr.jsonl import read_jsonl
from arr.plots import Panel, line_chart
from arr.report import SampleNote, Shot
from arr.rpo.checkpoint import REPORT_FILES as FILES
from arr.rpo.trainer import RPOTrainer, TrainerCallback

# Held-out prompts shown before/after, and training groups shown, in the report.
GRID_PROMPTS = 16
TRAIN_GROUPS = 4
# The training-sample monitor scores a few samples per step: its curves are drawn as running means of this many points.
MONITOR_WINDOW = 10

#: (records, images) -> one note (verdict, score) per image, for the captions under the report's samples.
SampleNotes = Callable[[Sequence[PromptRecord], Sequence[Image.Image]], list[SampleNote]]


class ReportCallback(TrainerCallback):
    """Keeps the first evaluation's samples and writes report.html at the end of training.

    Args:
        sample_notes: the verdict and score under each held-out sample (default: the reward's judge, pointwise
            against the prompt's rubric; no verdicts when the reward has no judge).
        self_contained: inline the report's images in report.html (one file to share).
    """

    def __init__(self, sample_notes: SampleNotes | None = None, self_contained: bool = False) -> None:
        self.sample_notes = sample_notes
        self.self_contained = self_contained
        self.first_eval: tuple[list, list, list] | None = None
        self.first_eval_step: int | None = None

    def on_evaluate(self, trainer: RPOTrainer, step: int, metrics: dict[str, Any]) -> None:
        if self.first_eval is None:
            self.first_eval = trainer.last_eval_images
            self.first_eval_step = step

    def on_train_end(self, trainer: RPOTrainer, step: int) -> None:
        notes = self.sample_notes or judge_notes(trainer)
        write_report(trainer, self.first_eval, self.first_eval_step, notes, self.self_contained)


def judge_notes(trainer: RPOTrainer) -> SampleNotes | None:
    """Notes from the reward's judge: its pointwise rubric score, and how many rubric criteria the image meets (a
    penalty criterion is met when it does not hold). None when the reward has no judge."""
    judge = trainer.reward.judge
    if judge is None:
        return None

    def notes(records: Sequence[PromptRecord], images: Sequence[Image.Image]) -> list[SampleNote]:
        from arr.judge import ScoreItem

        items = [
            ScoreItem(r.prompt, im, r.rubric, r.source_image) for r, im in zip(records, images, strict=True)
        ]
        out = []
        for item, j in zip(items, judge.score_many(items), strict=True):
            if j.score is None:
                out.append(SampleNote("not judged"))
                continue
            weights = {c.id: c.weight for c in item.rubric.criteria}
            met = sum(
                (p >= 0.5) == (weights.get(cid, 1.0) >= 0) for cid, p in j.criteria.items() if p is not None
            )
            total = len(j.criteria)
            out.append(SampleNote(f"{met}/{total} criteria met", met == total, j.score, "rubric"))
        return out

    return notes


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl (a row cut by a crash is skipped)."""
    return read_jsonl(path)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _series(rows: list[dict[str, Any]], key: str) -> list[tuple[float, float]]:
    return [(r["step"], r[key]) for r in rows if "step" in r and _number(r.get(key))]


def eval_noise_band(first: dict[str, Any], last: dict[str, Any]) -> float | None:
    """Half-width of a 95% band for the change in `eval_score` from the run's first evaluation to `last`: from the
    paired standard error (`eval_change_se`: the same prompts and seeds, compared prompt by prompt) when the
    evaluator gives per-prompt scores, else from the two evaluations' standard errors (`eval_score_se`) as if they
    were independent, which overstates the noise of a paired evaluation. It is evaluation noise only: another
    training seed moves the result by more (see the README's 3-seed figures)."""
    paired = last.get("eval_change_se")
    if isinstance(paired, (int, float)) and first is not last:
        return 1.96 * paired
    se1, se2 = first.get("eval_score_se"), last.get("eval_score_se")
    if not isinstance(se1, (int, float)) or not isinstance(se2, (int, float)):
        return None
    return 1.96 * (se1**2 + se2**2) ** 0.5


def training_panels(rows: list[dict[str, Any]]) -> tuple[list[Panel], list[str]]:
    """The report's charts from metrics.jsonl rows, and notes on the curves left out and why."""
    panels: list[Panel] = []
    notes: list[str] = []
    scores = _series(rows, "eval_score")
    if scores:
        band = [
            (
                r["step"],
                r["eval_score"] - 1.96 * r["eval_score_se"],
                r["eval_score"] + 1.96 * r["eval_score_se"],
            )
            for r in rows
            if _number(r.get("eval_score")) and _number(r.get("eval_score_se"))
        ]
        panels.append(
            Panel(
                "Held-out score",
                {"eval_score": scores},
                "eval_score (higher is better)",
                bands={"eval_score": band},
                note="shaded: 95% interval" if band else "",
            )
        )
    categories = sorted({k for r in rows for k, v in r.items() if k.startswith("eval/") and _number(v)})
    if categories:
        panels.append(
            Panel("Held-out score per category", {k[5:]: _series(rows, k) for k in categories}, "eval_score")
        )
    rewards = _series(rows, "reward_mean")
    if rewards and all(abs(v) < 1e-9 for _, v in rewards):
        notes.append("reward_mean is 0 at every step (rewards are centred in each group), so it is not drawn")
    elif rewards:
        panels.append(Panel("Training reward", {"reward_mean": rewards}, "mean reward per sample"))
    monitored = sorted({k for r in rows for k, v in r.items() if k.startswith("train/") and _number(v)})
    if monitored:
        panels.append(
            Panel(
                "Training samples, both judges",
                {k[6:]: running_mean(_series(rows, k), MONITOR_WINDOW) for k in monitored},
                f"score ({MONITOR_WINDOW}-point running mean)",
            )
        )
        notes.append(
            "Training samples, both judges: one sample per group, scored by the training judge (judge_score) and the "
            "exact judge (pixel_score, pixel_accuracy). If the policy games the training judge, judge_score rises "
            "and pixel_score does not"
        )
    verdicts = {
        name: _series(rows, f"reward/{key}")
        for key, name in (
            ("tie_rate", "ties"),
            ("inconsistent_rate", "order-inconsistent"),
            ("judge_failure_rate", "judge failures"),
        )
    }
    verdicts = {k: v for k, v in verdicts.items() if v}
    if "ties" in verdicts and _same_curve(verdicts["ties"], verdicts.get("order-inconsistent", [])):
        # Swap-consistent judging: every tie is a pair whose verdict flipped with the order; one line says both.
        verdicts["ties (all order-inconsistent)"] = verdicts.pop("ties")
        del verdicts["order-inconsistent"]
    if verdicts:
        panels.append(
            Panel("Judge verdicts on training pairs", verdicts, "fraction of pairs", ylim=(0, None))
        )
    losses = {k: _series(rows, k) for k in ("loss", "policy_loss")}
    if _same_curve(losses["loss"], losses["policy_loss"]):
        del losses["policy_loss"]  # the KL term is too small to tell them apart: one line says it
    if any(losses.values()):
        panels.append(Panel("Loss", losses, "loss (mean per sample and timestep)"))
    kl = _series(rows, "kl")
    if kl and all(v == 0 for _, v in kl):
        notes.append(
            "kl is 0 at every step (beta 0, or a policy that never left the reference), so it is not drawn"
        )
    elif kl:
        panels.append(Panel("KL to the reference (LoRA off)", {"kl": kl}, "KL estimate"))
    if _series(rows, "ratio_mean"):  # only a ratio-based objective clips
        panels.append(
            Panel(
                "PPO clipping",
                {"clip_frac": _series(rows, "clip_frac")},
                "fraction of ratios clipped",
                ylim=(0, None),
            )
        )
    elif _series(rows, "clip_frac"):
        notes.append("clip_frac is not drawn: this objective has no probability ratio to clip")
    if _series(rows, "grad_norm"):
        panels.append(
            Panel("Gradient norm", {"grad_norm": _series(rows, "grad_norm")}, "L2 norm before clipping")
        )
    align = sorted({k for r in rows for k, v in r.items() if k.startswith("align/") and _number(v)})
    if align:
        panels.append(
            Panel(
                "Policy-judge alignment", {k[6:]: _series(rows, k) for k in align}, "alignment (similarity)"
            )
        )
    return panels, notes


def running_mean(points: list[tuple[float, float]], window: int) -> list[tuple[float, float]]:
    """Each point's value averaged with the `window - 1` points before it (fewer at the start)."""
    out = []
    for i, (x, _) in enumerate(points):
        ys = [y for _, y in points[max(0, i - window + 1) : i + 1]]
        out.append((x, sum(ys) / len(ys)))
    return out


def _same_curve(a: list[tuple[float, float]], b: list[tuple[float, float]], rtol: float = 1e-2) -> bool:
    """Whether two curves coincide on a chart: the same steps, values within `rtol` of the curve's range."""
    if [x for x, _ in a] != [x for x, _ in b] or not a:
        return False
    ys = [y for _, y in a]
    scale = (max(ys) - min(ys)) or abs(ys[0]) or 1.0
    return all(abs(ya - yb) <= rtol * scale for (_, ya), (_, yb) in zip(a, b, strict=True))


def _cards(trainer: RPOTrainer, rows: list[dict[str, Any]]) -> dict[str, str]:
    evals = [r for r in rows if "eval_score" in r]
    cards = {"steps": str(trainer.step)}
    if evals:
        first, last = evals[0], evals[-1]
        cards["eval_score before"] = f"{first['eval_score']:.3f}"
        cards["eval_score after"] = f"{last['eval_score']:.3f}"
        cards["change"] = f"{last['eval_score'] - first['eval_score']:+.3f}"
        band = eval_noise_band(first, last)
        if band is not None:
            cards["95% noise band of the change"] = f"±{band:.3f}"
    train_rows = [r for r in rows if "reward_mean" in r]
    if train_rows:
        cards["judge calls"] = str(sum(r.get("judge_calls", 0) for r in train_rows))
        cached = sum(r.get("judge_cached", 0) for r in train_rows)
        if cached:
            cards["judge answers from the cache"] = str(cached)
        cards["judge seconds"] = f"{sum(r.get('judge_seconds', 0.0) for r in train_rows):.1f}"
    return cards


def _category_table(rows: list[dict[str, Any]]) -> str:
    evals = [r for r in rows if "eval_score" in r]
    cats = sorted({k for r in evals for k in r if k.startswith("eval/")})
    if not cats:
        return ""
    first, last = evals[0], evals[-1]
    nan = float("nan")
    table = [
        {
            "category": c[5:],
            "before": f"{first.get(c, nan):.3f}",
            "after": f"{last.get(c, nan):.3f}",
            "change": f"{last.get(c, nan) - first.get(c, nan):+.3f}",
        }
        for c in cats
    ]
    return html.html_table(table)


def _held_out_cards(
    out_dir: Path,
    evaluations: Sequence[tuple[str, Any, int | None]],
    sample_notes: SampleNotes | None,
) -> str:
    """Cards of the first GRID_PROMPTS held-out prompts, each with its image at every evaluation given."""
    present = [(label, data, step) for label, data, step in evaluations if data and data[2]]
    if not present:
        return ""
    records, idx = present[0][1][0], present[0][1][1][:GRID_PROMPTS]
    shots: dict[int, list[Shot]] = {k: [] for k in idx}
    for k in idx:
        source = records[k].source_image
        if source is not None:
            shots[k].append(
                Shot(html.save_image(source, out_dir, f"{FILES}/heldout_{k:03d}_source.png", 256), "source")
            )
    for label, (_, data_idx, images), step in present:
        position = {k: n for n, k in enumerate(data_idx)}
        chosen = [k for k in idx if k in position]
        chosen_images = [images[position[k]] for k in chosen]
        notes = (
            sample_notes([records[k] for k in chosen], chosen_images)
            if sample_notes
            else [None] * len(chosen)
        )
        for k, image, note in zip(chosen, chosen_images, notes, strict=True):
            src = html.save_image(image, out_dir, f"{FILES}/heldout_{k:03d}_{label}.png", 256)
            shots[k].append(Shot(src, f"{label}, step {step}", note))
    return html.sample_cards([(records[k].prompt, shots[k]) for k in idx])


def _training_cards(out_dir: Path, samples: Any) -> tuple[str, int | None]:
    """Cards of the latest sampled training groups: each image with its reward and standing in its group."""
    if samples is None:
        return "", None
    records, images, rewards, group_size, step = samples
    cards = []
    for g, record in enumerate(records[:TRAIN_GROUPS]):
        group = rewards[g * group_size : (g + 1) * group_size]
        judged = [r for r in group if r is not None]
        shots = []
        for i, reward in enumerate(group):
            standing = html.reward_standing(reward, judged)
            ok = {"best": True, "worst": False}.get(standing)
            src = html.save_image(
                images[g * group_size + i], out_dir, f"{FILES}/train_{g:02d}_{i:02d}.png", 256
            )
            shots.append(Shot(src, f"#{i + 1}", SampleNote(standing, ok, reward, "reward")))
        cards.append((record.prompt, shots))
    return html.sample_cards(cards), step


def write_report(
    trainer: RPOTrainer,
    first_eval=None,
    first_step: int | None = None,
    sample_notes: SampleNotes | None = None,
    self_contained: bool = False,
) -> Path:
    out_dir = trainer.output_dir
    rows = read_metrics(out_dir / "metrics.jsonl")
    sections = [("Summary", html.cards(_cards(trainer, rows)))]

    panels, skipped = training_panels(rows)
    steps = [r["step"] for r in rows if _number(r.get("step"))]
    xlim = (min(steps), max(steps)) if steps else None
    charts = "".join(line_chart(p, xlim) for p in panels)
    notes = "".join(f"<p class='note'>{n}.</p>" for n in skipped)
    sections.append(("Curves", f"<div class='plots'>{charts}</div>{notes}"))

    table = _category_table(rows)
    if table:
        sections.append(("Per-category held-out scores", table))

    evaluations = [("before", first_eval, first_step), ("after", trainer.last_eval_images, trainer.step)]
    held_out = _held_out_cards(out_dir, evaluations, sample_notes)
    if held_out:
        sections.append(("Held-out samples: same prompts and seeds, before and after", held_out))
    training, step = _training_cards(out_dir, trainer.last_train_samples)
    if training:
        sections.append(
            (
                f"Training samples at step {step}",
                "<p class='note'>Each group answers one prompt; the reward is what the update used, and best / "
                f"worst its standing in the group.</p>{training}",
            )
        )

    phases = [{"phase": k, "seconds": v} for k, v in trainer.phase_seconds.items()]
    sections.append(("Time per phase", html.html_table(phases)))
    sections.append(("Configuration", html.pre_json(trainer.run_config)))
    return html.write_html(
        out_dir / "report.html",
        "RPO run report",
        f"{out_dir} — {trainer.step} steps, {trainer.accelerator.num_processes} process(es)",
        sections,
        self_contained=self_contained,
    )
