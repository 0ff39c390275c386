"""The run report: `report.html` with the eval-score curve, training curves, per-category scores before and after,
before/after sample grids on the same held-out prompts and seeds, the resolved config and time per phase."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from arr import report as html
from arr.jsonl import read_jsonl
from arr.rpo.trainer import RPOTrainer, TrainerCallback

GRID_PROMPTS = 16


class ReportCallback(TrainerCallback):
    """Keeps the first evaluation's samples and writes report.html at the end of training."""

    def __init__(self) -> None:
        self.first_eval: tuple[list, list, list] | None = None
        self.first_eval_step: int | None = None

    def on_evaluate(self, trainer: RPOTrainer, step: int, metrics: dict[str, Any]) -> None:
        if self.first_eval is None:
            self.first_eval = trainer.last_eval_images
            self.first_eval_step = step

    def on_train_end(self, trainer: RPOTrainer, step: int) -> None:
        write_report(trainer, self.first_eval, self.first_eval_step)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl (a row cut by a crash is skipped)."""
    return read_jsonl(path)


def _series(rows: list[dict[str, Any]], key: str) -> list[tuple[float, float]]:
    return [(r["step"], r[key]) for r in rows if key in r and isinstance(r[key], (int, float))]


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


def write_report(trainer: RPOTrainer, first_eval=None, first_step: int | None = None) -> Path:
    out_dir = trainer.output_dir
    rows = read_metrics(out_dir / "metrics.jsonl")
    evals = [r for r in rows if "eval_score" in r]
    first, last = (evals[0], evals[-1]) if evals else ({}, {})
    cards = {"steps": str(trainer.step)}
    if evals:
        cards["eval_score before"] = f"{first['eval_score']:.3f}"
        cards["eval_score after"] = f"{last['eval_score']:.3f}"
        cards["change"] = f"{last['eval_score'] - first['eval_score']:+.3f}"
        band = eval_noise_band(first, last)
        if band is not None:
            cards["95% noise band of the change"] = f"±{band:.3f}"
    train_rows = [r for r in rows if "reward_mean" in r]
    if train_rows:
        cards["judge calls"] = str(sum(r.get("judge_calls", 0) for r in train_rows))
        cards["judge seconds"] = f"{sum(r.get('judge_seconds', 0.0) for r in train_rows):.1f}"
    sections = [("Summary", html.cards(cards))]

    plots = [html.svg_line_plot({"eval_score": _series(rows, "eval_score")}, "Held-out eval score")]
    rewards = _series(rows, "reward_mean")
    if rewards and all(abs(v) < 1e-9 for _, v in rewards) and _series(rows, "reward/tie_rate"):
        # Symmetric pairwise rewards (win +1, loss -1) average 0 in every group: show how often the judge ties.
        plots.append(html.svg_line_plot({"tie_rate": _series(rows, "reward/tie_rate")}, "Judge tie rate"))
    else:
        plots.append(html.svg_line_plot({"reward_mean": rewards}, "Training reward (mean)"))
    plots.append(html.svg_line_plot({"kl": _series(rows, "kl")}, "KL to reference"))
    if _series(rows, "ratio_mean"):  # the forward objective has no ratio to clip
        plots.append(
            html.svg_line_plot(
                {
                    "clip_frac": _series(rows, "clip_frac"),
                    "ratio_mean - 1": [(s, v - 1) for s, v in _series(rows, "ratio_mean")],
                },
                "PPO clipping",
            )
        )
    align = sorted({k for r in rows for k in r if k.startswith("align/")})
    if align:
        plots.append(html.svg_line_plot({k[6:]: _series(rows, k) for k in align}, "Policy-judge alignment"))
    sections.append(("Curves", f"<div class='plots'>{''.join(plots)}</div>"))

    cats = sorted({k for r in evals for k in r if k.startswith("eval/")})
    if cats:
        table = [
            {
                "category": c[5:],
                "before": f"{first.get(c, float('nan')):.3f}",
                "after": f"{last.get(c, float('nan')):.3f}",
                "change": f"{last.get(c, float('nan')) - first.get(c, float('nan')):+.3f}",
            }
            for c in cats
        ]
        sections.append(("Per-category held-out scores", html.html_table(table)))

    grids = []
    latest = trainer.last_eval_images
    for label, data, step in (("before", first_eval, first_step), ("after", latest, trainer.step)):
        if data and data[2]:
            records, idx, images = data
            n = min(GRID_PROMPTS, len(images))
            grid = html.image_grid(images[:n], cols=8, scale=3)
            prompts = "<br>".join(f"{k + 1}. {records[i].prompt}" for k, i in enumerate(idx[:n]))
            grids.append(
                html.figure(grid, f"{label} (step {step})")
                + f"<details><summary>prompts</summary><small>{prompts}</small></details>"
            )
    if grids:
        sections.append(("Held-out samples: same prompts and seeds, before and after", "".join(grids)))

    phases = [{"phase": k, "seconds": v} for k, v in trainer.phase_seconds.items()]
    sections.append(("Time per phase", html.html_table(phases)))
    sections.append(("Configuration", html.pre_json(trainer.run_config)))
    return html.write_html(
        out_dir / "report.html",
        "RPO run report",
        f"{out_dir} — {trainer.step} steps, {trainer.accelerator.num_processes} process(es)",
        sections,
    )
