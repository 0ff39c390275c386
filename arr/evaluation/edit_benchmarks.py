"""Editing benchmarks as lists of `EditSample`: GEdit-Bench, ImgEdit-Bench (basic), MagicBrush, Emu Edit, shapes.

Each loader reads the benchmark the way users get it (a Hub dataset id through `datasets.load_dataset`, or for
ImgEdit the extracted `Benchmark/singleturn` folder with its `basic_edit.json`) or a local folder in exactly the same
schema (what the tests and the `eval/data/*_sample` fixtures use). Schemas, as published:

- GEdit-Bench (`stepfun-ai/GEdit-Bench`, split `train`): key, task_type, instruction, instruction_language
  ("en" / "cn"), input_image (Image), input_image_raw (Image), Intersection_exist (bool).
- ImgEdit-Bench basic set (`basic_edit.json`): {"<key>": {"id": "<image path relative to the folder>",
  "prompt": "<instruction>", "edit_type": "add" | "remove" | "replace" | "adjust" | ...}}.
- MagicBrush (`osunlp/MagicBrush`, splits `train` / `dev`; the test set is a separate download): img_id,
  turn_index, source_img, mask_img, instruction, target_img (the ground-truth edit).
- Emu Edit (`facebook/emu_edit_test_set`, splits `validation` / `test`): instruction, image, task, split, idx,
  hash, input_caption, output_caption.
- shapes (`arr.shapes.benchmarks.write_edit_benchmark`): GEdit-like records.jsonl plus the exact scenes, so the
  pixel judge can score every edit.

A row that cannot be used (no or undecodable image, empty instruction) becomes an `EditSample` with `error` set:
the evaluation reports it in its summary and skips it instead of stopping.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from arr.jsonl import iter_jsonl
from arr.suites import read_suite

SUITE_KEYS = {
    "name",
    "task",
    "schema",
    "data",
    "protocol",
    "judge",
    "judge_kwargs",
    "metrics",
    "generation",
    "samples_per_prompt",
    "metric",
    "notes",
}
SCHEMAS = ("gedit", "imgedit", "magicbrush", "emu_edit", "shapes")


@dataclass
class EditSample:
    """One benchmark item. `category` is the benchmark's own grouping (GEdit task_type, ImgEdit edit_type, Emu
    task; MagicBrush: "turn_<n>"); `target` is the ground-truth edit where the benchmark has one."""

    id: str
    instruction: str
    source: Image.Image | None
    category: str = ""
    language: str = "en"
    target: Image.Image | None = None
    input_caption: str | None = None
    output_caption: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


# ---- image and text fields --------------------------------------------------------------------------------------


def _decode_image(value: Any, base: Path | None = None) -> Image.Image:
    """A PIL image from a datasets Image cell ({"bytes", "path"} undecoded, or PIL) or a file path."""
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, dict):
        if value.get("bytes"):
            data = value["bytes"]
        elif value.get("path"):
            data = Path(value["path"]).read_bytes()
        else:
            raise ValueError("empty image cell")
        image = Image.open(io.BytesIO(data))
    elif isinstance(value, (str, Path)):
        path = Path(value) if base is None else base / value
        image = Image.open(path)
    elif value is None:
        raise ValueError("no image")
    else:
        raise ValueError(f"unsupported image cell of type {type(value).__name__}")
    image.load()
    return image.convert("RGB")


def _image_field(
    row: dict[str, Any], column: str, base: Path | None = None
) -> tuple[Image.Image | None, str | None]:
    try:
        return _decode_image(row.get(column), base), None
    except (OSError, ValueError) as e:  # PIL raises OSError subclasses for truncated or unknown data
        return None, f"{column}: {e}"


def _instruction(value: Any) -> tuple[str, str | None]:
    if not isinstance(value, str) or not value.strip():
        return "", f"instruction {value!r} is empty or not text"
    return value.strip(), None


def _sample(
    sample_id: str,
    row: dict[str, Any],
    image_column: str,
    instruction_column: str,
    base: Path | None = None,
    **kwargs: Any,
) -> EditSample:
    source, image_error = _image_field(row, image_column, base)
    instruction, text_error = _instruction(row.get(instruction_column))
    errors = [e for e in (image_error, text_error) if e]
    return EditSample(
        id=sample_id,
        instruction=instruction,
        source=source,
        error="; ".join(errors) or None,
        **kwargs,
    )


def _hf_rows(source: str, split: str, image_columns: tuple[str, ...]) -> list[dict[str, Any]]:
    """Rows of a Hub dataset or a local folder in the same layout, image columns left undecoded (decoded per row,
    so one corrupt image is one skipped row, not a failed load)."""
    from datasets import Image as ImageFeature
    from datasets import load_dataset

    try:
        ds = load_dataset(source, split=split)
    except Exception as e:  # datasets raises many types for a missing or unreachable dataset
        raise ValueError(f"cannot load dataset {source!r} (split {split!r}): {e}") from None
    for column in image_columns:
        if column in ds.column_names:
            ds = ds.cast_column(column, ImageFeature(decode=False))
    return list(ds)


def _require(rows: list[dict[str, Any]], columns: tuple[str, ...], source: str, schema: str) -> None:
    if rows:
        missing = [c for c in columns if c not in rows[0]]
        if missing:
            raise ValueError(
                f"{source}: not in the {schema} schema: columns {missing} missing (has {sorted(rows[0])})"
            )


# ---- loaders ---------------------------------------------------------------------------------------------------


def load_gedit(source: str, split: str = "train", image_column: str = "input_image") -> list[EditSample]:
    """GEdit-Bench: `category` = task_type, `language` = instruction_language ("en" / "cn")."""
    rows = _hf_rows(source, split, ("input_image", "input_image_raw"))
    _require(
        rows, ("key", "task_type", "instruction", "instruction_language", image_column), source, "GEdit-Bench"
    )
    out = []
    for i, row in enumerate(rows):
        language = str(row.get("instruction_language") or "en")
        sample_id = f"{row.get('key') or i}_{language}"
        out.append(
            _sample(
                sample_id,
                row,
                image_column,
                "instruction",
                category=str(row.get("task_type") or ""),
                language=language,
                extra={"intersection": bool(row.get("Intersection_exist", False))},
            )
        )
    return out


def load_imgedit(source: str, split: str = "basic") -> list[EditSample]:
    """ImgEdit-Bench basic set: a folder with `basic_edit.json` (or a path to that file), images relative to it."""
    path = Path(source)
    file = path / "basic_edit.json" if path.is_dir() else path
    if not file.is_file():
        raise ValueError(
            f"ImgEdit-Bench: {file} not found; extract Benchmark.tar of sysuyy/ImgEdit and point data.path at the "
            "folder that holds basic_edit.json"
        )
    try:
        records = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not JSON ({e.msg})") from None
    if not isinstance(records, dict):
        raise ValueError(f"{file}: expected a JSON object {{key: {{id, prompt, edit_type}}}}")
    out = []
    for key, record in records.items():
        record = record if isinstance(record, dict) else {}
        out.append(
            _sample(
                str(key),
                record,
                "id",
                "prompt",
                base=file.parent,
                category=str(record.get("edit_type") or ""),
            )
        )
    return out


def load_magicbrush(source: str, split: str = "dev") -> list[EditSample]:
    """MagicBrush: `target` = target_img (the ground-truth edit), `category` = "turn_<turn_index>"."""
    rows = _hf_rows(source, split, ("source_img", "mask_img", "target_img"))
    _require(rows, ("img_id", "turn_index", "source_img", "instruction", "target_img"), source, "MagicBrush")
    out = []
    for row in rows:
        sample = _sample(
            f"{row.get('img_id')}_{row.get('turn_index')}",
            row,
            "source_img",
            "instruction",
            category=f"turn_{row.get('turn_index')}",
        )
        sample.target, target_error = _image_field(row, "target_img")
        if target_error:
            sample.error = "; ".join(e for e in (sample.error, target_error) if e)
        out.append(sample)
    return out


def load_emu_edit(source: str, split: str = "test") -> list[EditSample]:
    """Emu Edit test set: `category` = task, with the input and output captions for the CLIP metrics."""
    rows = _hf_rows(source, split, ("image",))
    _require(
        rows, ("instruction", "image", "task", "idx", "input_caption", "output_caption"), source, "Emu Edit"
    )
    out = []
    for row in rows:
        sample = _sample(
            f"{row.get('split') or split}_{row.get('idx')}",
            row,
            "image",
            "instruction",
            category=str(row.get("task") or ""),
            input_caption=row.get("input_caption"),
            output_caption=row.get("output_caption"),
        )
        if not sample.error and not all(
            isinstance(row.get(k), str) for k in ("input_caption", "output_caption")
        ):
            sample.error = "input_caption / output_caption missing"
        out.append(sample)
    return out


def load_shapes(source: str, split: str = "") -> list[EditSample]:
    """Shapes-world records.jsonl (arr.shapes.benchmarks): GEdit fields plus the exact edit in `extra["edit"]`."""
    from arr.shapes.benchmarks import edit_from_record
    from arr.shapes.scene import render

    path = Path(source)
    out = []
    for n, record in iter_jsonl(path, strict=True):
        sample = _sample(
            str(record.get("key") or f"line_{n}"),
            record,
            "input_image",
            "instruction",
            base=path.parent,
            category=str(record.get("task_type") or ""),
            language=str(record.get("instruction_language") or "en"),
        )
        try:
            edit = edit_from_record(record, where=f"{path}:{n}")
            sample.extra["edit"] = edit
            sample.target = render(edit.target)
        except ValueError as e:
            sample.error = "; ".join(x for x in (sample.error, str(e)) if x)
        out.append(sample)
    return out


LOADERS: dict[str, Callable[..., list[EditSample]]] = {
    "gedit": load_gedit,
    "imgedit": load_imgedit,
    "magicbrush": load_magicbrush,
    "emu_edit": load_emu_edit,
    "shapes": load_shapes,
}


# ---- suites ----------------------------------------------------------------------------------------------------


def read_edit_suite(path: str | Path) -> dict[str, Any]:
    """Read and validate an editing suite YAML (unknown keys are an error, as in recipes)."""
    path = Path(path)
    suite = read_suite(path, SUITE_KEYS)
    if suite.get("task") != "edit":
        raise ValueError(
            f"suite {path}: task is {suite.get('task')!r}; `arr eval SUITE` runs editing suites (task: edit)"
        )
    data = suite.get("data")
    if not isinstance(data, dict) or not ("path" in data or "generator" in data):
        raise ValueError(
            f"suite {path}: 'data' needs 'path' (Hub id or folder) or 'generator' (a shapes-world generator)"
        )
    if "generator" in data:
        from arr.shapes.benchmarks import suite_generator

        suite_generator(data, path)  # an unknown generator is refused when the suite is read
    return suite


def suite_schema(suite: dict[str, Any]) -> str:
    """The loader to use: shapes-world generated data reads as "shapes" whatever schema it mimics."""
    schema = "shapes" if "generator" in suite["data"] else str(suite.get("schema", ""))
    if schema not in LOADERS:
        raise ValueError(f"suite {suite.get('name')!r}: unknown schema {schema!r}; expected one of {SCHEMAS}")
    return schema


def generate_suite_data(data: dict[str, Any], data_dir: Path, where: Path) -> Path:
    """Run a suite's `data.generator` (one of arr's own, deterministic) into `data_dir`, once."""
    from arr.shapes.benchmarks import suite_generator

    generate = suite_generator(data, where)
    target = data_dir / str(data.get("file", "records.jsonl"))
    args = data.get("args", {})
    stamp = target.with_name(target.name + ".args.json")
    # Regenerating on resume would rewrite identical files; the stamp proves they were made with these arguments.
    if target.is_file() and stamp.is_file() and json.loads(stamp.read_text(encoding="utf-8")) == args:
        return target
    out = Path(generate(target))
    stamp.write_text(json.dumps(args), encoding="utf-8")
    return out


def load_edit_suite(
    path: str | Path, data_dir: str | Path, limit: int | None = None
) -> tuple[dict[str, Any], list[EditSample]]:
    """The suite and its samples (at most `limit`); generated suites write their data into `data_dir` first.

    A relative `data.path` that exists next to the suite file is read from there; anything else is a Hub id.
    """
    path = Path(path)
    suite = read_edit_suite(path)
    data = suite["data"]
    schema = suite_schema(suite)
    if "generator" in data:
        source = str(generate_suite_data(data, Path(data_dir), path))
    else:
        source = str(data["path"])
        local = path.parent / source
        if not Path(source).is_absolute() and local.exists():
            source = str(local)
    split = data.get("split")
    loader = LOADERS[schema]
    samples = loader(source, split) if split is not None else loader(source)
    if limit is not None:
        samples = samples[:limit]
    seen: set[str] = set()
    for s in samples:
        if s.id in seen:
            raise ValueError(f"suite {path}: sample id {s.id!r} appears twice; ids key the resumable results")
        seen.add(s.id)
    suite["source"] = source
    suite["schema_resolved"] = schema
    return suite, samples


# ---- fixtures: tiny shapes-world data in each benchmark's schema --------------------------------------------------

EMU_TASKS = {"recolor": "texture", "remove": "remove", "add": "add", "move": "local"}
IMGEDIT_TYPES = {"recolor": "adjust", "remove": "remove", "add": "add", "move": "action"}
_CN = {"recolor": "改变颜色", "remove": "移除物体", "add": "添加物体", "move": "移动物体"}


def _scene_caption(scene: Any) -> str:
    if not scene.objects:
        return "an empty black image"
    parts = [f"a {o.color} {o.shape}" for o in scene.objects]
    return ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1]


def _png(image: Image.Image) -> dict[str, Any]:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


@dataclass
class _FixtureEdits:
    """A fixture's edits as benchmark cells; with `corrupt`, the second-to-last row has no image and the last an
    empty instruction (both must be reported and skipped)."""

    edits: list[Any]
    corrupt: bool

    @property
    def bad_image(self) -> int:
        return len(self.edits) - 2 if self.corrupt else -1

    def source(self, i: int) -> dict[str, Any] | None:
        from arr.shapes.scene import render

        return None if i == self.bad_image else _png(render(self.edits[i].source))

    def text(self, i: int) -> str:
        return "" if self.corrupt and i == len(self.edits) - 1 else self.edits[i].text


def _write_imgedit_fixture(directory: Path, fx: _FixtureEdits) -> Path:
    """basic_edit.json and the images it names, relative to `directory`."""
    from arr.shapes.scene import render

    directory.mkdir(parents=True, exist_ok=True)
    records = {}
    for i, e in enumerate(fx.edits):
        rel = f"{IMGEDIT_TYPES[e.kind]}/{i:06d}.png"
        if i != fx.bad_image:
            (directory / rel).parent.mkdir(parents=True, exist_ok=True)
            render(e.source).save(directory / rel)
        records[str(i + 1)] = {"id": rel, "prompt": fx.text(i), "edit_type": IMGEDIT_TYPES[e.kind]}
    (directory / "basic_edit.json").write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    return directory


def _gedit_rows(fx: _FixtureEdits) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    from datasets import Image as ImageFeature
    from datasets import Value

    image = ImageFeature()
    features = {
        "key": Value("string"),
        "task_type": Value("string"),
        "instruction": Value("string"),
        "instruction_language": Value("string"),
        "input_image": image,
        "input_image_raw": image,
        "Intersection_exist": Value("bool"),
    }
    rows = [
        {
            "key": f"{i:04x}",
            "task_type": e.task_type,
            # One Chinese row, so that per-language tables have two languages.
            "instruction": fx.text(i) if i != 1 else _CN[e.kind],
            "instruction_language": "cn" if i == 1 else "en",
            "input_image": fx.source(i),
            "input_image_raw": fx.source(i),
            "Intersection_exist": i % 2 == 0,
        }
        for i, e in enumerate(fx.edits)
    ]
    return "train", features, rows


def _magicbrush_rows(fx: _FixtureEdits) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    from datasets import Image as ImageFeature
    from datasets import Value

    from arr.shapes.scene import render

    image = ImageFeature()
    features = {
        "img_id": Value("string"),
        "turn_index": Value("int32"),
        "source_img": image,
        "mask_img": image,
        "instruction": Value("string"),
        "target_img": image,
    }
    rows = []
    for i, e in enumerate(fx.edits):
        mask = Image.new("RGB", render(e.source).size, (0, 0, 0))
        rows.append(
            {
                "img_id": str(100000 + i),
                "turn_index": 1 + i % 2,
                "source_img": fx.source(i),
                "mask_img": _png(mask),
                "instruction": fx.text(i),
                "target_img": _png(render(e.target)),
            }
        )
    return "dev", features, rows


def _emu_edit_rows(fx: _FixtureEdits) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    from datasets import Image as ImageFeature
    from datasets import Value

    features = {
        "instruction": Value("string"),
        "image": ImageFeature(),
        "task": Value("string"),
        "split": Value("string"),
        "idx": Value("int64"),
        "hash": Value("string"),
        "input_caption": Value("string"),
        "output_caption": Value("string"),
    }
    rows = [
        {
            "instruction": fx.text(i),
            "image": fx.source(i),
            "task": EMU_TASKS[e.kind],
            "split": "test",
            "idx": i,
            "hash": hashlib.sha256(e.text.encode()).hexdigest()[:16],
            "input_caption": _scene_caption(e.source),
            "output_caption": _scene_caption(e.target),
        }
        for i, e in enumerate(fx.edits)
    ]
    return "test", features, rows


# Hub-style benchmarks: schema -> (split, column features, rows), written as one parquet shard.
_PARQUET_FIXTURES = {"gedit": _gedit_rows, "magicbrush": _magicbrush_rows, "emu_edit": _emu_edit_rows}


def write_fixture(
    schema: str, directory: str | Path, n: int = 8, seed: int = 0, corrupt: bool = True
) -> Path:
    """Write `n` shapes-world edits in `schema`'s exact layout under `directory` (plus, with `corrupt`, one row
    without an image and one with an empty instruction). Returns the folder to point `data.path` at."""
    from arr.shapes.edits import sample_edit

    directory = Path(directory)
    rng = random.Random(seed)
    fx = _FixtureEdits([sample_edit(rng, "heldout") for _ in range(n)], corrupt)
    if schema == "imgedit":
        return _write_imgedit_fixture(directory, fx)
    if schema not in _PARQUET_FIXTURES:
        raise ValueError(
            f"no fixture writer for schema {schema!r}; expected gedit, imgedit, magicbrush or emu_edit"
        )
    from datasets import Dataset, Features

    split, features, rows = _PARQUET_FIXTURES[schema](fx)
    out = directory / "data" / f"{split}-00000-of-00001.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_list(rows, features=Features(features)).to_parquet(str(out))
    return directory


__all__ = [
    "LOADERS",
    "SCHEMAS",
    "EditSample",
    "generate_suite_data",
    "load_edit_suite",
    "load_emu_edit",
    "load_gedit",
    "load_imgedit",
    "load_magicbrush",
    "load_shapes",
    "read_edit_suite",
    "suite_schema",
    "write_fixture",
]
