"""Run a text-to-image suite: generate `samples_per_prompt` images per prompt, judge each against its prompt's rubric,
summarise per category, write a report.

    arr eval eval/shapes_geneval.yaml --policy shapes-t2i --out runs/eval/shapes_geneval
    arr eval eval/shapes_geneval.yaml --policy shapes-t2i --lora runs/demo/checkpoints/step_200 --out runs/eval/rpo

Outputs in OUT, as for editing suites: `samples.jsonl` (one row per finished image, append-only, keyed by
`<prompt id>_<k>`), `images/`, `summary.json` (means overall and per category; the headline is GenEval's overall,
the mean over categories of the fraction correct) and `report.html`. A run that stops resumes where it stopped when
started again with the same OUT: finished rows are read back, images on disk are judged without being regenerated,
and the summary is computed from the rows alone.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from PIL import Image

from arr.evaluation.edit_results import (
    ROWS,
    SUMMARY,
    claim_folder,
    file_stem,
    run_pending,
    save_image,
    summarize,
)
from arr.evaluation.editing import sample_seed
from arr.evaluation.editors import Generator
from arr.evaluation.t2i_report import write_t2i_report
from arr.evaluation.t2i_suites import RubricT2IScorer, T2IPrompt
from arr.jsonl import write_text_atomic

IMAGES = "images"
HEADLINE = "geneval_overall"


@dataclass
class _Item:
    """One image to make: sample `k` of `prompt`."""

    prompt: T2IPrompt
    k: int

    @property
    def id(self) -> str:
        return f"{self.prompt.id}_{self.k}"


def _generate_missing(
    generator: Generator, items: Sequence[_Item], paths: list[Path], seeds: list[int]
) -> float:
    """Generate the images not on disk yet; returns the seconds per generated image."""
    todo = [i for i, p in enumerate(paths) if not p.is_file()]
    t0 = time.perf_counter()
    if todo:
        made = generator.generate([items[i].prompt.prompt for i in todo], [seeds[i] for i in todo])
        for i, image in zip(todo, made, strict=True):
            save_image(image.convert("RGB"), paths[i])
    return (time.perf_counter() - t0) / max(len(todo), 1)


def _run_batch(
    items: Sequence[_Item], generator: Generator, scorer: RubricT2IScorer, out: Path, seed: int, rows: IO[str]
) -> None:
    """Generate and judge one batch, then append its rows with one flush: a row on disk has its image on disk."""
    paths = [out / IMAGES / f"{file_stem(it.id)}.png" for it in items]
    seeds = [sample_seed(it.id, seed) for it in items]
    generate_seconds = _generate_missing(generator, items, paths, seeds)
    images = [Image.open(p).convert("RGB") for p in paths]
    t0 = time.perf_counter()
    judged = scorer.score([it.prompt for it in items], images)
    judge_seconds = (time.perf_counter() - t0) / len(items)
    for it, path, sd, j in zip(items, paths, seeds, judged, strict=True):
        row = {
            "id": it.id,
            "prompt_id": it.prompt.id,
            "category": it.prompt.category,
            "prompt": it.prompt.prompt,
            "seed": sd,
            "image": str(path.relative_to(out)),
            "scores": j["scores"],
            "reason": j["reason"],
            "error": j["error"],
            "generate_seconds": round(generate_seconds, 4),
            "judge_seconds": round(judge_seconds, 4),
        }
        rows.write(json.dumps(row, ensure_ascii=False) + "\n")
    rows.flush()
    os.fsync(rows.fileno())


def evaluate_t2i(
    prompts: Sequence[T2IPrompt],
    generator: Generator,
    scorer: RubricT2IScorer,
    out_dir: str | Path,
    *,
    samples_per_prompt: int = 1,
    info: dict[str, Any] | None = None,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
    report: bool = True,
    self_contained_report: bool = False,
) -> dict[str, Any]:
    """Evaluate `generator` on `prompts` into `out_dir` (resumable, see the module docstring); returns the summary.

    Prompts with `error` (unusable rows) are skipped and listed; an image whose judgment failed is written with its
    error and judged again on the next run."""
    if batch_size < 1 or samples_per_prompt < 1:
        raise ValueError(
            f"batch_size and samples_per_prompt must be >= 1, got {batch_size}, {samples_per_prompt}"
        )
    out = Path(out_dir)
    (out / IMAGES).mkdir(parents=True, exist_ok=True)
    settings = {
        "policy": generator.fingerprint(),
        "judge": scorer.fingerprint(),
        "samples_per_prompt": int(samples_per_prompt),
        "seed": int(seed),
    }
    claim_folder(out, settings)
    info = {**(info or {}), "policy": generator.name, "protocol": scorer.protocol, "judge": settings["judge"]}
    valid = [p for p in prompts if not p.error]
    skipped = [{"id": p.id, "reason": p.error or ""} for p in prompts if p.error]
    items = [_Item(p, k) for p in valid for k in range(samples_per_prompt)]
    rows = run_pending(
        items,
        out / ROWS,
        lambda batch, fh: _run_batch(batch, generator, scorer, out, seed, fh),
        item_id=lambda it: it.id,
        batch_size=batch_size,
        unit="image",
        progress=progress,
    )

    summary = summarize(rows, skipped, info)
    summary.pop("languages", None)  # GenEval prompts are English; editing suites group by language
    summary["samples_per_prompt"] = int(samples_per_prompt)
    # GenEval's overall: the mean over categories of the fraction correct (not the mean over images).
    summary["headline"] = {"metric": HEADLINE, "value": summary["macro"].get("correct")}
    write_text_atomic(out / SUMMARY, json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    if report:
        write_t2i_report(summary, rows, out, self_contained=self_contained_report)
    return summary


__all__ = ["HEADLINE", "IMAGES", "evaluate_t2i"]
