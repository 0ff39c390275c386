"""Shapes-world benchmark files in the schemas of GenEval, GEdit-Bench and HPDv3, written on demand.

Suites are defined by small YAML files (eval/shapes_geneval.yaml, eval/shapes_edit.yaml, eval/shapes_pairs.yaml);
the data they need is generated deterministically into a folder by `prepare_suite`, never committed:

    python -c "from arr.shapes.benchmarks import prepare_suite; print(prepare_suite('eval/shapes_geneval.yaml', '/tmp/sg'))"

Schemas:
- GenEval `evaluation_metadata.jsonl`: {"tag", "include": [{"class", "count", "color"?, "position"?}],
  "exclude"?, "prompt"}. As in GenEval, a relation sits on the *second* include entry: {"class": "circle",
  "position": ["left of", 0]} means this circle is left of include[0]. Counting prompts exclude count n + 1.
- GEdit-Bench-like `records.jsonl`: {"key", "task_type", "instruction", "instruction_language": "en",
  "input_image": path relative to the file}, plus our fields "source_scene", "target_scene" and "edit" (enough to
  rebuild the `EditSpec` and score exactly). Task types: color_alter, subject-remove, subject-add and
  position_change (moving objects has no GEdit category).
- HPDv3-style `pairs.json` (a JSON list): {"prompt", "path1" (preferred), "path2" (rejected), "model1",
  "model2", "confidence", "choice_dist", "source"} as in HPDv3, where path1 is always the preferred image,
  plus our fields "id", "task", "category", "corruption", "position" (where the winner was shown: "A" = first),
  "source_image" (editing) and "rubric".
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import random
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from arr.images import load_image
from arr.jsonl import iter_jsonl
from arr.rubrics import Rubric, as_rubric
from arr.shapes.edits import EDIT_KINDS, EditSpec, sample_edit, scene_from_dict, scene_to_dict
from arr.shapes.pairs import PreferencePair, make_pairs, pair_labels
from arr.shapes.prompts import CATEGORIES, RELATIONS, ObjectSpec, PromptSpec, sample_prompts
from arr.shapes.scene import COLORS, SHAPES, Obj, render
from arr.suites import read_suite

SUITE_KEYS = {
    "name",
    "task",
    "schema",
    "data",
    "samples_per_prompt",
    "judge",
    "judge_kwargs",
    "metric",
    "notes",
}


# ---------------------------------------------------------------------------------------------------------------
# GenEval


def geneval_record(spec: PromptSpec) -> dict[str, Any]:
    """One evaluation_metadata.jsonl record for a prompt."""

    def item(o: ObjectSpec) -> dict[str, Any]:
        out: dict[str, Any] = {"class": o.shape, "count": o.count}
        if o.color:
            out["color"] = o.color
        return out

    record: dict[str, Any] = {"tag": spec.category}
    if spec.relation:
        subject, reference = spec.objects[0], spec.objects[1]
        record["include"] = [item(reference), {**item(subject), "position": [spec.relation, 0]}]
    else:
        record["include"] = [item(o) for o in spec.objects]
    if spec.category == "counting":
        o = spec.objects[0]
        record["exclude"] = [{**item(o), "count": o.count + 1}]
    record["prompt"] = spec.text
    return record


def spec_from_geneval_record(record: dict[str, Any], where: str = "record") -> PromptSpec:
    """Rebuild the PromptSpec of a record written by `geneval_record` (shapes-world classes and colours only)."""
    try:
        tag, include = record["tag"], record["include"]
        if tag not in CATEGORIES:
            raise ValueError(f"tag {tag!r} is not one of {CATEGORIES}")
        objects, relation = [], None
        for entry in include:
            if entry["class"] not in SHAPES or entry.get("color") not in (None, *COLORS):
                raise ValueError(
                    f"class {entry['class']!r} / colour {entry.get('color')!r} is not in the shapes world"
                )
            objects.append(ObjectSpec(entry["class"], entry.get("color"), int(entry["count"])))
            if "position" in entry:
                relation, index = entry["position"]
                if relation not in RELATIONS or index != 0 or len(include) != 2:
                    raise ValueError(
                        f"position {entry['position']!r} must be [relation, 0] on the second of two"
                    )
        if relation is not None:
            objects = [objects[1], objects[0]]  # GenEval stores the reference object first
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(
            f"{where}: not a shapes-world GenEval record ({e}): {json.dumps(record)[:200]}"
        ) from None
    spec = PromptSpec(tag, tuple(objects), relation)
    if record.get("prompt") not in (None, spec.text):
        raise ValueError(
            f"{where}: prompt {record['prompt']!r} does not match its include list ({spec.text!r})"
        )
    return spec


def write_geneval_metadata(
    path: str | Path, n_prompts: int = 600, split: str = "heldout", seed: int = 0
) -> Path:
    """Write `n_prompts` prompts (GenEval's category mix, from `split`) as evaluation_metadata.jsonl."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(geneval_record(s)) for s in sample_prompts(n_prompts, split, seed)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def load_geneval_metadata(path: str | Path) -> list[PromptSpec]:
    """The prompts of an evaluation_metadata.jsonl written by `write_geneval_metadata`; errors name the line."""
    return [
        spec_from_geneval_record(record, where=f"{path}:{n}") for n, record in iter_jsonl(path, strict=True)
    ]


def geneval_summary(results: Iterable[tuple[PromptSpec, bool]]) -> dict[str, Any]:
    """GenEval scores: strict accuracy per category and overall = mean of the category accuracies."""
    per: dict[str, list[bool]] = defaultdict(list)
    for spec, ok in results:
        per[spec.category].append(bool(ok))
    cats = {c: sum(v) / len(v) for c, v in per.items() if v}
    return {
        "overall": sum(cats.values()) / len(cats) if cats else 0.0,
        "categories": cats,
        "n": sum(len(v) for v in per.values()),
    }


# ---------------------------------------------------------------------------------------------------------------
# GEdit-Bench-like editing records


def _obj(o: Obj | None) -> list[Any] | None:
    return None if o is None else [o.shape, o.color, o.row, o.col]


def edit_record(edit: EditSpec, key: str, input_image: str) -> dict[str, Any]:
    return {
        "key": key,
        "task_type": edit.task_type,
        "instruction": edit.text,
        "instruction_language": "en",
        "input_image": input_image,
        "source_scene": scene_to_dict(edit.source),
        "target_scene": scene_to_dict(edit.target),
        "edit": {
            "kind": edit.kind,
            "subject": _obj(edit.subject),
            "result": _obj(edit.result),
            "anchor": _obj(edit.anchor),
            "relation": edit.relation,
            "free": edit.free,
        },
    }


def edit_from_record(record: dict[str, Any], where: str = "record") -> EditSpec:
    try:
        e = record["edit"]
        if e["kind"] not in EDIT_KINDS:
            raise ValueError(f"kind {e['kind']!r} is not one of {EDIT_KINDS}")

        def obj(v: list[Any] | None) -> Obj | None:
            return None if v is None else Obj(*v)

        subject = obj(e["subject"])
        if subject is None:
            raise ValueError("an edit needs a subject")
        return EditSpec(
            kind=e["kind"],
            text=record["instruction"],
            source=scene_from_dict(record["source_scene"]),
            target=scene_from_dict(record["target_scene"]),
            subject=subject,
            result=obj(e.get("result")),
            anchor=obj(e.get("anchor")),
            relation=e.get("relation"),
            free=bool(e.get("free", False)),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{where}: not a shapes-world edit record ({err})") from None


def write_edit_benchmark(path: str | Path, n: int = 200, split: str = "heldout", seed: int = 0) -> Path:
    """Write `n` edits as records.jsonl at `path`, with source PNGs in `input_images/` beside it."""
    path = Path(path)
    images = path.parent / "input_images"
    images.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        edit = sample_edit(rng, split)
        key = f"shapes_edit_{i:05d}"
        render(edit.source).save(images / f"{key}.png")
        lines.append(json.dumps(edit_record(edit, key, f"input_images/{key}.png")))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def load_edit_benchmark(path: str | Path) -> list[tuple[dict[str, Any], EditSpec]]:
    """Records with their EditSpec; `record["input_image"]` is resolved to an absolute path."""
    path = Path(path)
    out = []
    for n, record in iter_jsonl(path, strict=True):
        edit = edit_from_record(record, where=f"{path}:{n}")
        record["input_image"] = str((path.parent / record["input_image"]).resolve())
        out.append((record, edit))
    return out


def edit_summary(results: Iterable[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """GEdit-style means of (task_type, pixel-judge details) pairs: instruction, preservation, overall, correct."""
    per: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for task_type, d in results:
        per[task_type].append(d)

    def means(rows: list[dict[str, Any]]) -> dict[str, float]:
        keys = ("instruction", "preservation", "score")
        out = {k: sum(float(r[k] if r.get(k) is not None else 1.0) for r in rows) / len(rows) for k in keys}
        out["correct"] = sum(bool(r.get("correct")) for r in rows) / len(rows)
        return out

    everything = [r for rows in per.values() for r in rows]
    return {
        "overall": means(everything) if everything else {},
        "task_types": {t: means(rows) for t, rows in per.items()},
        "n": len(everything),
    }


# ---------------------------------------------------------------------------------------------------------------
# HPDv3-style preference pairs


def write_preference_pairs(
    path: str | Path,
    n: int = 200,
    split: str = "heldout",
    seed: int = 0,
    task: str = "both",
    perturb: bool = True,
) -> Path:
    """Write `n` labelled pairs as an HPDv3-style pairs.json at `path`, images in `images/` beside it."""
    path = Path(path)
    images = path.parent / "images"
    images.mkdir(parents=True, exist_ok=True)
    records = []
    for p in make_pairs(n, seed=seed, split=split, task=task, perturb=perturb):
        chosen, rejected = f"images/{p.id}_chosen.png", f"images/{p.id}_rejected.png"
        p.chosen.save(path.parent / chosen)
        p.rejected.save(path.parent / rejected)
        record: dict[str, Any] = {
            "prompt": p.prompt,
            "path1": chosen,
            "path2": rejected,
            "model1": "shapes-render",
            "model2": f"shapes-render+{p.corruption}",
            "confidence": 1.0,
            "choice_dist": [1, 0],
            "source": "arr-shapes",
            "id": p.id,
            "task": p.task,
            "category": p.category,
            "corruption": p.corruption,
            "position": p.winner,
            "rubric": p.rubric.to_dict(),
        }
        if p.labels:
            record["labels"] = p.labels
        if p.source is not None:
            record["source_image"] = f"images/{p.id}_source.png"
            p.source.save(path.parent / record["source_image"])
        records.append(record)
    path.write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    return path


def load_preference_pairs(path: str | Path) -> list[PreferencePair]:
    """Pairs from an HPDv3-style file, put back in the positions they were written with ("position")."""
    path = Path(path)
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e.msg}); expected an HPDv3-style list of pairs") from None
    out = []
    for i, r in enumerate(records):
        try:
            chosen, rejected = load_image(path.parent / r["path1"]), load_image(path.parent / r["path2"])
            # Real HPDv3 files always list the preferred image first; without our "position" field the order shown
            # is decided by a hash of the pair, so that half the winners come second and a judge that always
            # picks the first image scores 0.5, not 1.0.
            default = (
                "A" if hashlib.sha256(f"{r['path1']}|{r['path2']}".encode()).digest()[0] % 2 == 0 else "B"
            )
            winner = r.get("position", default)
            a, b = (chosen, rejected) if winner == "A" else (rejected, chosen)
            source = load_image(path.parent / r["source_image"]) if r.get("source_image") else None
            rubric = (
                as_rubric(r["rubric"], f"{path} pair {i}'s rubric")
                if "rubric" in r
                else Rubric(prompt=r["prompt"], criteria=[])
            )
            out.append(
                PreferencePair(
                    id=r.get("id", f"pair-{i:05d}"),
                    task=r.get("task", "edit" if source is not None else "t2i"),
                    prompt=r["prompt"],
                    category=r.get("category", ""),
                    corruption=r.get("corruption", ""),
                    image_a=a,
                    image_b=b,
                    winner=winner,
                    rubric=rubric,
                    source=source,
                    labels=pair_labels(r.get("labels"), rubric, f"{path} pair {i}"),
                )
            )
        except (KeyError, TypeError) as e:
            raise ValueError(
                f"{path}: pair {i} lacks an HPDv3 field ({e}); need prompt, path1, path2"
            ) from None
    return out


# ---------------------------------------------------------------------------------------------------------------
# Suites


#: The data generators a suite may name as `data.generator`. Suite files are shared like datasets, so they pick
#: one of arr's own generators by name and never name a Python callable for arr to import and call.
GENERATORS: dict[str, Callable[..., Path]] = {
    "shapes_geneval": write_geneval_metadata,
    "shapes_edit": write_edit_benchmark,
    "shapes_pairs": write_preference_pairs,
}


def suite_generator(data: dict[str, Any], where: str | Path) -> Callable[[Path], Path]:
    """The suite's `data.generator`, a GENERATORS name, bound to its `data.args`: a function of the output file.

    Anything else (an unknown name, a "module:function" path, arguments the generator does not take) is a
    one-line ValueError, raised before anything runs."""
    name = data.get("generator")
    if not isinstance(name, str) or name not in GENERATORS:
        raise ValueError(
            f"suite {where}: unknown data generator {name!r}; expected one of {sorted(GENERATORS)}"
        )
    fn = GENERATORS[name]
    args = data.get("args") or {}
    if not isinstance(args, dict):
        raise ValueError(f"suite {where}: data.args must be a mapping, got {type(args).__name__}")
    params = [p for p in inspect.signature(fn).parameters if p != "path"]
    unknown = sorted(set(map(str, args)) - set(params))
    if unknown:
        raise ValueError(f"suite {where}: generator {name!r} takes {params}; unknown args {unknown}")
    return functools.partial(fn, **args)


def load_suite(path: str | Path) -> dict[str, Any]:
    """Read and validate a suite YAML (unknown keys are an error, as in recipes)."""
    path = Path(path)
    suite = read_suite(path, SUITE_KEYS)
    for key in ("name", "task", "data", "judge"):
        if key not in suite:
            raise ValueError(f"suite {path}: missing key {key!r}")
    data = suite["data"]
    if not isinstance(data, dict) or "generator" not in data or "file" not in data:
        raise ValueError(f"suite {path}: 'data' needs 'generator' (one of {sorted(GENERATORS)}) and 'file'")
    suite_generator(data, path)
    return suite


def prepare_suite(path: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Generate the suite's data into `out_dir` (deterministic) and return the suite with `data_path` set."""
    suite = load_suite(path)
    data = suite["data"]
    generate = suite_generator(data, path)
    suite["data_path"] = str(generate(Path(out_dir) / str(data["file"])))
    return suite


__all__ = [
    "GENERATORS",
    "edit_from_record",
    "edit_record",
    "edit_summary",
    "geneval_record",
    "geneval_summary",
    "load_edit_benchmark",
    "load_geneval_metadata",
    "load_preference_pairs",
    "load_suite",
    "prepare_suite",
    "spec_from_geneval_record",
    "suite_generator",
    "write_edit_benchmark",
    "write_geneval_metadata",
    "write_preference_pairs",
]
