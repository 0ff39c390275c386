"""Labelled preference pairs in three public schemas, and the suites that name them.

    pairs, ties = load_pairs("hpdv3", "eval/data/shapes_pairs_sample/pairs.json")
    suite, pairs, ties = load_preference_suite("eval/mmrb2_sample.yaml")

Loaders read three public schemas (checked against the benchmarks' own files; what we assume is stated per loader)
from a local file or, where the benchmark publishes one, a Hugging Face Hub dataset through `datasets.load_dataset`:
`load_hpdv3`, `load_mmrb2`, `load_editreward_bench`. Small local fixtures in the same schemas live in eval/data/.
A pair's order as shown to the judge is fixed here (`image_a` first), so that every judge sees the same pairs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from PIL import Image

from arr.jsonl import read_jsonl
from arr.rubrics import Rubric, as_rubric
from arr.shapes.pairs import PreferencePair, pair_labels

SCHEMAS: tuple[str, ...] = ("hpdv3", "mmrb2", "editreward")


def _image(value: Any, root: Path, where: str) -> Image.Image:
    """An image from a dataset cell: a PIL image, a path (relative to `root`), or a `{"bytes"|"path"}` dict."""
    import io

    from arr.images import ImageLoadError, load_image

    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, dict):
        if value.get("bytes"):
            try:
                return Image.open(io.BytesIO(value["bytes"])).convert("RGB")
            except OSError as e:
                raise ValueError(f"{where}: image bytes could not be decoded ({e})") from None
        value = value.get("path")
    if isinstance(value, (str, Path)) and str(value):
        path = Path(value)
        try:
            return load_image(path if path.is_absolute() else root / path)
        except ImageLoadError as e:
            raise ValueError(f"{where}: {e}") from None
    raise ValueError(f"{where}: expected an image, a path or {{'bytes': ...}}, got {type(value).__name__}")


def _rows(source: str | Path, split: str, hub_kwargs: dict[str, Any] | None) -> tuple[list[Any], Path]:
    """Records from a local JSON/JSONL file, or rows of a Hub dataset (`hub:` prefix or a non-existing path)."""
    text = str(source)
    path = Path(text.removeprefix("hub:"))
    if not text.startswith("hub:") and path.exists():
        if path.suffix == ".jsonl":
            return read_jsonl(path, strict=True), path.parent
        try:
            return json.loads(path.read_text(encoding="utf-8")), path.parent
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
    if not text.startswith("hub:") and (path.suffix in (".json", ".jsonl") or "/" not in text):
        raise ValueError(
            f"pair file {text} does not exist (use hub:OWNER/NAME for a Hugging Face Hub dataset)"
        )
    try:
        from datasets import load_dataset
    except ImportError:
        raise ValueError("loading a Hub dataset needs the `datasets` package: pip install datasets") from None
    hub_id = text.removeprefix("hub:")
    try:
        dataset = load_dataset(hub_id, split=split, **(hub_kwargs or {}))
    except Exception as e:  # noqa: BLE001 - datasets raises many types (network, config, schema); all mean "cannot load"
        raise ValueError(
            f"cannot load Hub dataset {hub_id!r} (split {split!r}): {type(e).__name__}: {e}"
        ) from None
    return list(dataset), Path.cwd()


def _balanced_position(*key: str) -> str:
    """ "A" or "B" from a hash of the pair: files that always list the winner first get both positions, stably."""
    digest = hashlib.sha256("\x00".join(key).encode("utf-8")).digest()
    return "A" if digest[0] % 2 == 0 else "B"


def load_hpdv3(
    source: str | Path,
    split: str = "test",
    image_root: str | Path | None = None,
    limit: int | None = None,
    hub_kwargs: dict[str, Any] | None = None,
) -> list[PreferencePair]:
    """HPDv3 pairs: a JSON list of {"prompt", "path1" (preferred), "path2", "model1", "model2", "confidence", ...}.

    Assumed from HPDv3's test.json (MizzenAI/HPDv3): path1 is always the preferred image, paths relative to the
    dataset folder (`image_root`, default the file's folder). Because path1 always wins, the order shown to the
    judge is taken from our optional "position" field ("A": winner first) or, when absent, from a hash of the pair,
    so that half the pairs show the winner second. Our optional fields "id", "task", "category", "rubric",
    "source_image" and "labels" (per-criterion labels, {"chosen": {id: label}, "rejected": {...}}; the shapes
    fixtures) are read when present.
    """
    records, folder = _rows(source, split, hub_kwargs)
    root = Path(image_root) if image_root is not None else folder
    out: list[PreferencePair] = []
    for i, r in enumerate(records[:limit] if limit else records):
        where = f"{source} pair {i}"
        if not isinstance(r, dict) or not all(k in r for k in ("prompt", "path1", "path2")):
            raise ValueError(f"{where}: an HPDv3 pair needs prompt, path1 (preferred) and path2")
        chosen, rejected = _image(r["path1"], root, where), _image(r["path2"], root, where)
        winner = r.get("position") or _balanced_position(r["prompt"], str(r["path1"]), str(r["path2"]))
        if winner not in ("A", "B"):
            raise ValueError(f"{where}: position must be 'A' or 'B', got {winner!r}")
        a, b = (chosen, rejected) if winner == "A" else (rejected, chosen)
        source_image = _image(r["source_image"], root, where) if r.get("source_image") else None
        rubric = (
            as_rubric(r["rubric"], f"{where}'s rubric")
            if r.get("rubric")
            else Rubric(r["prompt"], [], task="edit" if source_image else "t2i")
        )
        out.append(
            PreferencePair(
                id=str(r.get("id", f"hpdv3-{i:05d}")),
                task=r.get("task") or ("edit" if source_image is not None else "t2i"),
                prompt=r["prompt"],
                category=str(r.get("category") or r.get("model2") or ""),
                corruption=str(r.get("corruption", "")),
                image_a=a,
                image_b=b,
                winner=winner,
                rubric=rubric,
                source=source_image,
                labels=pair_labels(r.get("labels"), rubric, where),
            )
        )
    return out


def load_mmrb2(
    source: str | Path, image_root: str | Path | None = None, limit: int | None = None
) -> list[PreferencePair]:
    """Multimodal RewardBench 2 pairs (t2i.json / edit.json of facebookresearch/MMRB2): `{"pairs": [...]}`.

    Each pair: {"id", "response_a": {"model_name", "response_content": [["image", path]]}, "response_b": ...,
    "chosen": "A"|"B", "human_annotations", "prompt_source", "prompt_metadata": {"category", ...},
    "prompt_content": [["image", path]..., ["text", prompt]]}. Image paths are relative to the folder the release
    scripts build (`image_root`, default the file's folder; the images come from the facebook/MMRB2_image Hub
    dataset, the JSON from the GitHub repository, so there is no single Hub id to load). A pair whose prompt holds
    images is an editing pair; the first prompt image is its source ("Image BASE"), later ones are not shown.
    Category: `prompt_metadata.category`, else `prompt_source`.
    """
    records, folder = _rows(source, "test", None)
    if isinstance(records, dict):
        records = records.get("pairs")
    if not isinstance(records, list):
        raise ValueError(f"{source}: expected an MMRB2 file {{'pairs': [...]}}")
    root = Path(image_root) if image_root is not None else folder
    out: list[PreferencePair] = []
    for i, r in enumerate(records[:limit] if limit else records):
        where = f"{source} pair {i} ({r.get('id', '?') if isinstance(r, dict) else '?'})"
        try:
            parts = r["prompt_content"]
            text = " ".join(str(v) for kind, v in parts if kind == "text").strip()
            prompt_images = [v for kind, v in parts if kind == "image"]

            def first_image(response: dict[str, Any]) -> Any:
                return next(v for kind, v in response["response_content"] if kind == "image")

            a = _image(first_image(r["response_a"]), root, where)
            b = _image(first_image(r["response_b"]), root, where)
            winner = r["chosen"]
        except (KeyError, TypeError, ValueError, StopIteration) as e:
            if isinstance(e, ValueError) and str(e).startswith(where):
                raise
            raise ValueError(f"{where}: not an MMRB2 pair ({type(e).__name__}: {e})") from None
        if winner not in ("A", "B"):
            raise ValueError(f"{where}: chosen must be 'A' or 'B', got {winner!r}")
        src = _image(prompt_images[0], root, where) if prompt_images else None
        meta = r.get("prompt_metadata") or {}
        out.append(
            PreferencePair(
                id=str(r.get("id", f"mmrb2-{i:05d}")),
                task="edit" if src is not None else "t2i",
                prompt=text,
                category=str(meta.get("category") or r.get("prompt_source") or ""),
                corruption="",
                image_a=a,
                image_b=b,
                winner=winner,
                rubric=Rubric(text, [], task="edit" if src is not None else "t2i"),
                source=src,
            )
        )
    return out


def load_editreward_bench(
    source: str | Path,
    subset: str | None = "2pair",
    split: str = "train",
    image_root: str | Path | None = None,
    limit: int | None = None,
    hub_kwargs: dict[str, Any] | None = None,
) -> tuple[list[PreferencePair], int]:
    """EditReward-Bench pairs (TIGER-Lab/EditReward-Bench); returns (pairs, ties skipped).

    Assumed from the benchmark's own evaluation script: rows with "id", "dataset" ("2pair", "3pair", "4pair"),
    "instruction", "source_image", "candidate_1", "candidate_2" (PIL images on the Hub, paths in local fixtures)
    and "ranking" ("A>B", "B>A" or "A=B"; A = candidate_1). Rows of other subsets are skipped when `subset` is set;
    human ties ("A=B") are skipped and counted, since accuracy here is about picking a known winner.
    Category: "category", else "comparison_type", else the subset.
    """
    records, folder = _rows(source, split, hub_kwargs)
    root = Path(image_root) if image_root is not None else folder
    out: list[PreferencePair] = []
    ties = 0
    for i, r in enumerate(records):
        if limit and len(out) >= limit:
            break
        where = f"{source} row {i}"
        if not isinstance(r, dict) or not all(
            k in r for k in ("instruction", "source_image", "candidate_1", "candidate_2", "ranking")
        ):
            raise ValueError(
                f"{where}: an EditReward-Bench row needs instruction, source_image, candidate_1, candidate_2, ranking"
            )
        if subset is not None and r.get("dataset", subset) != subset:
            continue
        ranking = str(r["ranking"]).replace(" ", "").upper()
        if ranking == "A=B":
            ties += 1
            continue
        if ranking not in ("A>B", "B>A"):
            raise ValueError(f"{where}: ranking must be 'A>B', 'B>A' or 'A=B', got {r['ranking']!r}")
        out.append(
            PreferencePair(
                id=str(r.get("id", f"editreward-{i:05d}")),
                task="edit",
                prompt=str(r["instruction"]),
                category=str(r.get("category") or r.get("comparison_type") or r.get("dataset") or ""),
                corruption="",
                image_a=_image(r["candidate_1"], root, where),
                image_b=_image(r["candidate_2"], root, where),
                winner="A" if ranking == "A>B" else "B",
                rubric=Rubric(str(r["instruction"]), [], task="edit"),
                source=_image(r["source_image"], root, where),
            )
        )
    return out, ties


def load_pairs(schema: str, source: str | Path, **kwargs: Any) -> tuple[list[PreferencePair], int]:
    """Pairs of any supported schema ("hpdv3", "mmrb2", "editreward"); returns (pairs, human ties skipped)."""
    if schema == "hpdv3":
        return load_hpdv3(source, **kwargs), 0
    if schema == "mmrb2":
        return load_mmrb2(source, **kwargs), 0
    if schema == "editreward":
        return load_editreward_bench(source, **kwargs)
    raise ValueError(f"unknown preference schema {schema!r}; expected one of {SCHEMAS}")


def load_preference_suite(
    path: str | Path, data_dir: str | Path | None = None, limit: int | None = None
) -> tuple[dict[str, Any], list[PreferencePair], int]:
    """Read a suite YAML and its pairs; returns (suite, pairs, human ties skipped).

    `data` is either {generator, file, args} (generated into `data_dir`, like eval/shapes_pairs.yaml), or
    {path} (relative to the YAML) or {hub, split?, subset?} for a Hub dataset. `schema` picks the loader.
    """
    from arr.shapes.benchmarks import SUITE_KEYS, prepare_suite, suite_generator
    from arr.suites import read_suite

    path = Path(path)
    suite = read_suite(path, SUITE_KEYS)
    schema = suite.get("schema", "hpdv3")
    data = suite.get("data")
    if not isinstance(data, dict):
        raise ValueError(f"suite {path}: 'data' must be a mapping with generator/file, path or hub")
    kwargs: dict[str, Any] = {"limit": limit}
    if "generator" in data:
        suite_generator(data, path)  # an unknown generator is refused before anything else
        if data_dir is None:
            raise ValueError(f"suite {path} generates its data: pass a data folder (--data-dir)")
        source: str | Path = prepare_suite(path, data_dir)["data_path"]
    elif "path" in data:
        source = (path.parent / str(data["path"])).resolve()
    elif "hub" in data:
        source = "hub:" + str(data["hub"])
        if schema in ("hpdv3", "editreward"):
            kwargs["split"] = data.get("split", "test" if schema == "hpdv3" else "train")
        if data.get("image_root"):
            kwargs["image_root"] = data["image_root"]
    else:
        raise ValueError(f"suite {path}: 'data' needs generator+file, path, or hub")
    if schema == "editreward" and "subset" in data:
        kwargs["subset"] = data["subset"]
    pairs, ties = load_pairs(schema, source, **kwargs)
    return suite, pairs, ties


__all__ = [
    "SCHEMAS",
    "load_editreward_bench",
    "load_hpdv3",
    "load_mmrb2",
    "load_pairs",
    "load_preference_suite",
]
