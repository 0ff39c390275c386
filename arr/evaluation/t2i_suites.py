"""Text-to-image suites: GenEval's `evaluation_metadata.jsonl` as prompts with rubrics, and how each image is scored.

A suite YAML (e.g. eval/shapes_geneval.yaml) names its data: `data.generator` (one of arr's own, deterministic: the
shapes world's `shapes_geneval`) or `data.path` (an `evaluation_metadata.jsonl` next to the suite, or anywhere),
plus `samples_per_prompt` and the judge. GenEval's records are {"tag", "include": [{"class", "count", "color"?,
"position"?}], "exclude"?, "prompt"}; `tag` is the category.

Each image is judged against a rubric made from its record: for shapes-world records the shapes world's own
rubric (`arr.shapes.rubrics.rubric_for_prompt`, whose criteria carry both the text a VLM judge reads and the check
the pixel judge evaluates), for other records one criterion per GenEval requirement (`geneval_rubric`). A sample is
`correct` when every criterion holds (and no penalty does): with the strict pixel judge that is exactly GenEval's
strict verdict (`arr.shapes.rubrics.geneval_correct`); with a VLM judge it is that judge's reading of GenEval's
requirements, not GenEval's detector-based number. `score` is the rubric score in [0, 1]. As in GenEval, a suite's
headline is the mean over categories of the fraction correct.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from arr.jsonl import iter_jsonl
from arr.rubrics import Criterion, Rubric
from arr.shapes.benchmarks import SUITE_KEYS  # the same suite file keys as the shapes world's suites
from arr.suites import read_suite

SCHEMAS = ("geneval",)
PROMPT_VERSION = "v1"  # of `geneval_rubric`'s wording; part of the scorer's fingerprint


@dataclass
class T2IPrompt:
    """One prompt of a suite: `id` is its line index (GenEval's folder name), `record` the suite's own row."""

    id: str
    prompt: str
    category: str
    rubric: Rubric | None
    record: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def read_t2i_suite(path: str | Path) -> dict[str, Any]:
    """Read and check a text-to-image suite YAML (unknown keys are an error, as in recipes)."""
    path = Path(path)
    suite = read_suite(path, SUITE_KEYS)
    if suite.get("task") != "t2i":
        raise ValueError(f"suite {path}: task is {suite.get('task')!r}; a text-to-image suite has task: t2i")
    if str(suite.get("schema", "geneval")) not in SCHEMAS:
        raise ValueError(f"suite {path}: unknown schema {suite.get('schema')!r}; expected one of {SCHEMAS}")
    data = suite.get("data")
    if not isinstance(data, dict) or not ("path" in data or "generator" in data):
        raise ValueError(
            f"suite {path}: 'data' needs 'path' (an evaluation_metadata.jsonl) or 'generator' (a shapes-world "
            "generator)"
        )
    if "generator" in data:
        from arr.shapes.benchmarks import suite_generator

        suite_generator(data, path)  # an unknown generator is refused when the suite is read
    n = suite.get("samples_per_prompt", 1)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"suite {path}: samples_per_prompt must be a whole number >= 1, got {n!r}")
    return suite


def _item_text(item: dict[str, Any]) -> str:
    color = f"{item['color']} " if item.get("color") else ""
    name = str(item["class"])
    return f"{color}{name}"


def geneval_rubric(record: dict[str, Any], where: str = "record") -> Rubric:
    """A rubric with one criterion per requirement of a GenEval record, for VLM judges: at least `count` of each
    included object (in its colour), its position relative to another, and fewer than `count` of each excluded."""
    try:
        include, exclude = record["include"], record.get("exclude") or []
        criteria = []
        for i, item in enumerate(include):
            n = int(item["count"])
            criteria.append(
                Criterion(f"include_{i}", f"The image shows at least {n} {_item_text(item)}{'s' * (n > 1)}.")
            )
            if item.get("position"):
                relation, other = item["position"]
                criteria.append(
                    Criterion(
                        f"position_{i}",
                        f"The {_item_text(item)} is {relation} the {_item_text(include[int(other)])}.",
                    )
                )
        for i, item in enumerate(exclude):
            n = int(item["count"])
            criteria.append(Criterion(f"exclude_{i}", f"The image shows fewer than {n} {_item_text(item)}s."))
        return Rubric(prompt=str(record["prompt"]), criteria=criteria, task="t2i")
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise ValueError(f"{where}: not a GenEval record ({e}): {json.dumps(record)[:200]}") from None


def _prompt(i: int, record: dict[str, Any], where: str) -> T2IPrompt:
    """A suite prompt with its rubric: the shapes world's for a shapes-world record, else `geneval_rubric`."""
    from arr.shapes.benchmarks import spec_from_geneval_record
    from arr.shapes.rubrics import rubric_for_prompt

    pid = f"{i:05d}"
    prompt, tag = record.get("prompt"), record.get("tag")
    if not isinstance(prompt, str) or not prompt.strip():
        return T2IPrompt(pid, "", str(tag or ""), None, record, error=f"{where}: no prompt")
    try:
        rubric = rubric_for_prompt(spec_from_geneval_record(record, where))
    except ValueError:
        try:
            rubric = geneval_rubric(record, where)
        except ValueError as e:
            return T2IPrompt(pid, prompt, str(tag or ""), None, record, error=str(e))
    return T2IPrompt(pid, prompt, str(tag or ""), rubric, record)


def load_geneval_prompts(path: str | Path) -> list[T2IPrompt]:
    """The prompts of a GenEval `evaluation_metadata.jsonl`, each with its rubric (see the module docstring)."""
    return [_prompt(n - 1, record, f"{path}:{n}") for n, record in iter_jsonl(path, strict=True)]


def load_t2i_suite(
    path: str | Path, data_dir: str | Path, limit: int | None = None
) -> tuple[dict[str, Any], list[T2IPrompt]]:
    """The suite and its prompts (at most `limit`); generated suites write their data into `data_dir` first. A row
    that cannot be used (no prompt, not a GenEval record) is a prompt with `error`, reported and skipped."""
    from arr.evaluation.edit_benchmarks import generate_suite_data

    path = Path(path)
    suite = read_t2i_suite(path)
    data = suite["data"]
    if "generator" in data:
        source = generate_suite_data(data, Path(data_dir), path)
    else:
        source = Path(str(data["path"]))
        if not source.is_absolute() and (path.parent / source).exists():
            source = path.parent / source
        if not source.is_file():
            raise ValueError(f"suite {path}: data file {source} not found")
    prompts = load_geneval_prompts(source)
    if limit is not None:
        prompts = prompts[:limit]
    suite["source"] = str(source)
    suite["schema_resolved"] = str(suite.get("schema", "geneval"))
    return suite, prompts


class RubricT2IScorer:
    """Scores images against their prompt's rubric with a `RubricJudge`: {"correct": 0/1, "score": 0..1}."""

    protocol = "geneval"

    def __init__(self, judge: Any) -> None:
        self.judge = judge

    def fingerprint(self) -> str:
        return f"{self.protocol}/{PROMPT_VERSION}/{self.judge.backend.fingerprint()}"

    def score(self, prompts: Sequence[T2IPrompt], images: Sequence[Image.Image]) -> list[dict[str, Any]]:
        from arr.judge import ScoreItem

        judgments = self.judge.score_many(
            [ScoreItem(p.prompt, im, p.rubric) for p, im in zip(prompts, images, strict=True)]
        )
        out = []
        for p, j in zip(prompts, judgments, strict=True):
            if j.score is None:
                out.append({"scores": None, "reason": "", "error": "; ".join(j.errors.values())})
                continue
            # A criterion is met when it holds, a penalty when it does not.
            failed = [c.id for c in p.rubric.criteria if (j.criteria[c.id] >= 0.5) != (c.weight > 0)]
            reason = "; ".join(f"{c}: {j.reasons[c]}" for c in failed if j.reasons.get(c)) or (
                f"fails {', '.join(failed)}" if failed else "every criterion holds"
            )
            scores = {"correct": float(not failed), "score": j.score}
            out.append({"scores": scores, "reason": reason, "error": None})
        return out


__all__ = [
    "SCHEMAS",
    "SUITE_KEYS",
    "RubricT2IScorer",
    "T2IPrompt",
    "geneval_rubric",
    "load_geneval_prompts",
    "load_t2i_suite",
    "read_t2i_suite",
]
