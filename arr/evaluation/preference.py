"""Judge evaluation on labelled preference pairs: accuracy, position bias, ties, per-category accuracy and cost.

    arr eval preference eval/shapes_pairs.yaml --judge pixel --out runs/eval/shapes_pairs

Every pair is asked in both image orders, each order on its own, so one run gives:
- `single_order_accuracy`: how often one question in one order picks the labelled winner (averaged over the two
  orders, i.e. a judge shown pairs in random order);
- `flip_rate`: the fraction of pairs whose verdict changes when the images are swapped (position bias; the paper
  reports 34.6% for a plain Qwen3-VL-8B judge, 10.3% with ARR and its rubric guide);
- `accuracy` (swap-consistent, what `RubricJudge(swap=True)` reports): the winner must be picked in both orders;
  a verdict that flips, or an exact tie, is a tie and is not correct. `tie_rate` counts those.
Failed questions (backend errors, unparseable answers, rubrics the judge cannot use) count against accuracy and
are reported as `failure_rate`. Each judge configuration is evaluated on the same pairs:
- `plain`: no criteria, no guide (the judge decides from the prompt alone);
- `rubric`: the pair's prompt-specific rubric (from the data, or generated zero-shot: `arr rubric prompts`);
- `rubric+guide`: the same rubric plus an ARR rubric guide as the system prompt (`arr rubric generate`).

Loaders read three public schemas (checked against the benchmarks' own files; what we assume is stated per loader)
from a local file or, where the benchmark publishes one, a Hugging Face Hub dataset through `datasets.load_dataset`:
`load_hpdv3`, `load_mmrb2`, `load_editreward_bench`. Small local fixtures in the same schemas live in eval/data/.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from arr.backends.base import JudgeBackend
from arr.judge import PairItem, PairJudgment, RubricJudge
from arr.rubrics import GuideCategory, Rubric
from arr.shapes.pairs import PreferencePair

CONFIGS: tuple[str, ...] = ("plain", "rubric", "rubric+guide")
SCHEMAS: tuple[str, ...] = ("hpdv3", "mmrb2", "editreward")


# ---- loading pairs ----------------------------------------------------------------------------------------------


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
        raw = path.read_text(encoding="utf-8")
        try:
            if path.suffix == ".jsonl":
                records: Any = [json.loads(line) for line in raw.splitlines() if line.strip()]
            else:
                records = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
        return records, path.parent
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
    so that half the pairs show the winner second. Our optional fields "id", "task", "category", "rubric" and
    "source_image" (the shapes fixtures) are read when present.
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
            Rubric.from_dict(r["rubric"])
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


# ---- metrics ----------------------------------------------------------------------------------------------------


def _pick(j: PairJudgment, swapped: bool) -> int | None:
    """The verdict as an index into the pair's own order (0 = image_a), or None for a tie."""
    if j.preferred is None:
        return None
    return 1 - j.preferred if swapped else j.preferred


def _rubric_for(
    pair: PreferencePair,
    config: str,
    rubrics: dict[str, Rubric] | None,
    guide: Sequence[GuideCategory] | None,
) -> Rubric | None:
    task = pair.task if pair.task in ("t2i", "edit") else "t2i"
    if config == "plain":
        return Rubric(pair.prompt, [], task=task)
    rubric = (rubrics or {}).get(pair.prompt)
    if rubric is None and pair.rubric.criteria:
        rubric = pair.rubric
    if rubric is None:
        return None
    guide_part = list(guide or []) if config == "rubric+guide" else []
    return Rubric(pair.prompt, list(rubric.criteria), guide_part, task)


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def evaluate_config(
    pairs: Sequence[PreferencePair],
    backend: JudgeBackend,
    config: str,
    rubrics: dict[str, Rubric] | None = None,
    guide: Sequence[GuideCategory] | None = None,
    cache: Any = None,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Metrics of one judge configuration on `pairs` (see the module docstring for their definitions)."""
    if config not in CONFIGS:
        raise ValueError(f"unknown judge configuration {config!r}; expected one of {CONFIGS}")
    if config == "rubric+guide" and not guide:
        raise ValueError(
            "configuration 'rubric+guide' needs a rubric guide (pass guide=, e.g. from guide.json)"
        )
    judge = RubricJudge(backend, cache=cache, swap=False)
    usage = getattr(backend, "token_usage", None)
    usage_before = usage.copy() if usage is not None else None
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for lo in range(0, len(pairs), batch_size):
        chunk = pairs[lo : lo + batch_size]
        items: list[PairItem] = []
        index: list[int] = []
        for k, p in enumerate(chunk):
            rubric = _rubric_for(p, config, rubrics, guide)
            if rubric is None:
                rows.append(
                    {
                        "id": p.id,
                        "category": p.category,
                        "winner": p.winner,
                        "error": "no rubric for this prompt",
                    }
                )
                continue
            items.append(PairItem(p.prompt, p.image_a, p.image_b, rubric, p.source))
            items.append(PairItem(p.prompt, p.image_b, p.image_a, rubric, p.source))
            index.append(k)
        judgments = judge.compare_many(items) if items else []
        for n, k in enumerate(index):
            p = chunk[k]
            j1, j2 = judgments[2 * n], judgments[2 * n + 1]
            row: dict[str, Any] = {"id": p.id, "category": p.category, "winner": p.winner}
            if not (j1.ok and j2.ok):
                row["error"] = "; ".join(e for e in (j1.error, j2.error) if e)
            else:
                row["picks"] = [_pick(j1, False), _pick(j2, True)]
            rows.append(row)
    seconds = time.perf_counter() - start

    def summarise(subset: list[dict[str, Any]]) -> dict[str, Any]:
        ok = [r for r in subset if "picks" in r]
        want = [0 if r["winner"] == "A" else 1 for r in ok]
        flips = sum(r["picks"][0] != r["picks"][1] for r in ok)
        consistent = [r["picks"][0] if r["picks"][0] == r["picks"][1] else None for r in ok]
        correct = sum(c is not None and c == w for c, w in zip(consistent, want, strict=True))
        single = sum(p == w for r, w in zip(ok, want, strict=True) for p in r["picks"])
        return {
            "n": len(subset),
            "accuracy": _rate(correct, len(subset)),
            "single_order_accuracy": _rate(single, 2 * len(subset)),
            "flip_rate": _rate(flips, len(ok)),
            "tie_rate": _rate(sum(c is None for c in consistent), len(ok)),
            "failure_rate": _rate(len(subset) - len(ok), len(subset)),
        }

    result = summarise(rows)
    by_cat: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_cat[r["category"] or "(none)"].append(r)
    result["categories"] = {c: summarise(v) for c, v in sorted(by_cat.items())}
    cost: dict[str, Any] = {**judge.stats.to_dict(), "seconds": seconds}
    cost["prompt_tokens"] = cost["completion_tokens"] = None
    if usage is not None and usage_before is not None:
        known = (usage.requests - usage.unknown) - (usage_before.requests - usage_before.unknown)
        if known:
            cost["prompt_tokens"] = usage.prompt_tokens - usage_before.prompt_tokens
            cost["completion_tokens"] = usage.completion_tokens - usage_before.completion_tokens
    result["cost"] = cost
    errors = [r["error"] for r in rows if "error" in r]
    if errors:
        result["first_error"] = errors[0][:300]
    return result


def evaluate_preference(
    pairs: Sequence[PreferencePair],
    backend: JudgeBackend,
    configs: Iterable[str] = CONFIGS,
    rubrics: dict[str, Rubric] | None = None,
    guide: Sequence[GuideCategory] | None = None,
    cache: Any = None,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Evaluate each judge configuration on the same pairs; configurations that cannot run are listed as skipped.

    "rubric+guide" without a guide is skipped; "rubric" configurations judge pairs without a rubric (none in the data
    and none in `rubrics`) as failures.
    """
    out: dict[str, Any] = {
        "n_pairs": len(pairs),
        "judge": {"backend": backend.name, "fingerprint": backend.fingerprint()},
        "configs": {},
        "skipped": {},
    }
    for config in configs:
        if config == "rubric+guide" and not guide:
            out["skipped"][config] = "no rubric guide given (run `arr rubric generate` and pass --guide)"
            continue
        out["configs"][config] = evaluate_config(pairs, backend, config, rubrics, guide, cache, batch_size)
    return out


def binomial_stderr(p: float, n: int) -> float:
    """Standard error of a rate p measured on n independent trials."""
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n else float("inf")


# ---- report -----------------------------------------------------------------------------------------------------


def svg_bar_chart(
    groups: dict[str, dict[str, float | None]], title: str, width: int = 560, height: int = 280
) -> str:
    """Grouped bars in [0, 1]: one group per key of `groups`, one bar per metric (missing values are left out)."""
    from arr.report import PALETTE

    metrics = list(dict.fromkeys(m for values in groups.values() for m in values))
    left, right, top, bottom = 44, 12, 28, 58
    plot_w, plot_h = width - left - right, height - top - bottom
    group_w = plot_w / max(len(groups), 1)
    bar_w = group_w * 0.8 / max(len(metrics), 1)
    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' font-family='sans-serif' "
        f"font-size='11'><text x='{width / 2}' y='16' text-anchor='middle' font-size='13'>{html.escape(title)}</text>"
    ]
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = top + plot_h * (1 - tick)
        parts.append(f"<line x1='{left}' x2='{width - right}' y1='{y:.1f}' y2='{y:.1f}' stroke='#e5e5e5'/>")
        parts.append(f"<text x='{left - 6}' y='{y + 4:.1f}' text-anchor='end'>{tick:g}</text>")
    for g, (name, values) in enumerate(groups.items()):
        x0 = left + g * group_w + group_w * 0.1
        for m, metric in enumerate(metrics):
            v = values.get(metric)
            if v is None:
                continue
            h = plot_h * min(max(v, 0.0), 1.0)
            x, y = x0 + m * bar_w, top + plot_h - h
            color = PALETTE[m % len(PALETTE)]
            parts.append(
                f"<rect x='{x:.1f}' y='{y:.1f}' width='{bar_w * 0.92:.1f}' height='{h:.1f}' fill='{color}'>"
                f"<title>{html.escape(name)} {html.escape(metric)}: {v:.3f}</title></rect>"
            )
            parts.append(
                f"<text x='{x + bar_w * 0.46:.1f}' y='{y - 3:.1f}' text-anchor='middle'>{v:.2f}</text>"
            )
        parts.append(
            f"<text x='{left + (g + 0.5) * group_w:.1f}' y='{top + plot_h + 16}' text-anchor='middle'>"
            f"{html.escape(name)}</text>"
        )
    for m, metric in enumerate(metrics):
        x = left + m * 120
        y = height - 14
        parts.append(f"<rect x='{x}' y='{y - 9}' width='10' height='10' fill='{PALETTE[m % len(PALETTE)]}'/>")
        parts.append(f"<text x='{x + 14}' y='{y}'>{html.escape(metric)}</text>")
    parts.append(
        f"<line x1='{left}' x2='{width - right}' y1='{top + plot_h}' y2='{top + plot_h}' stroke='#333'/>"
    )
    parts.append("</svg>")
    return "".join(parts)


def write_report(result: dict[str, Any], out_dir: str | Path, title: str) -> tuple[Path, Path]:
    """`results.json` and `report.html` (cards, bar chart, metrics and per-category tables) in `out_dir`."""
    from arr.report import cards, html_table, write_html

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "results.json"
    json_path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    def fmt(v: Any) -> Any:
        return "-" if v is None else v

    configs = result["configs"]
    rows = []
    for name, m in configs.items():
        cost = m["cost"]
        rows.append(
            {
                "configuration": name,
                "accuracy": fmt(m["accuracy"]),
                "single-order accuracy": fmt(m["single_order_accuracy"]),
                "flip rate": fmt(m["flip_rate"]),
                "tie rate": fmt(m["tie_rate"]),
                "failure rate": fmt(m["failure_rate"]),
                "judge calls": cost["calls"],
                "cached": cost["cached"],
                "seconds": round(cost["seconds"], 3),
                "tokens": "-"
                if cost["prompt_tokens"] is None
                else cost["prompt_tokens"] + cost["completion_tokens"],
            }
        )
    cat_rows = []
    for name, m in configs.items():
        for cat, c in m["categories"].items():
            cat_rows.append(
                {
                    "configuration": name,
                    "category": cat,
                    "n": c["n"],
                    "accuracy": fmt(c["accuracy"]),
                    "flip rate": fmt(c["flip_rate"]),
                }
            )
    chart = svg_bar_chart(
        {
            name: {
                "accuracy": m["accuracy"],
                "flip rate": m["flip_rate"],
                "tie rate": m["tie_rate"],
                "failure rate": m["failure_rate"],
            }
            for name, m in configs.items()
        },
        "Accuracy and position bias per judge configuration",
    )
    summary = {"pairs": str(result["n_pairs"]), "judge": result["judge"]["backend"]}
    for name, m in configs.items():
        if m["accuracy"] is not None:
            summary[f"accuracy ({name})"] = f"{m['accuracy']:.3f}"
    sections = [
        ("Summary", cards(summary)),
        ("Accuracy and flip rate", f"<div class='plots'>{chart}</div>"),
        ("Metrics", html_table(rows)),
    ]
    if result.get("skipped"):
        sections.append(
            ("Skipped", html_table([{"configuration": k, "why": v} for k, v in result["skipped"].items()]))
        )
    sections.append(("Per category", html_table(cat_rows)))
    sections.append(
        (
            "Definitions",
            "<p>accuracy: the labelled winner is picked in both image orders (a flip or a tie is not correct); "
            "single-order accuracy: one question in one order, averaged over both orders; flip rate: verdicts that "
            "change when the images are swapped; tie rate: swap-consistent ties (flips included); failures count "
            "against accuracy.</p>",
        )
    )
    html_path = write_html(out / "report.html", title, f"judge {result['judge']['fingerprint']}", sections)
    return json_path, html_path


# ---- suites -----------------------------------------------------------------------------------------------------


def load_preference_suite(
    path: str | Path, data_dir: str | Path | None = None, limit: int | None = None
) -> tuple[dict[str, Any], list[PreferencePair], int]:
    """Read a suite YAML and its pairs; returns (suite, pairs, human ties skipped).

    `data` is either {generator, file, args} (generated into `data_dir`, like eval/shapes_pairs.yaml), or
    {path} (relative to the YAML) or {hub, split?, subset?} for a Hub dataset. `schema` picks the loader.
    """
    from arr.shapes.benchmarks import SUITE_KEYS, prepare_suite
    from arr.suites import read_suite

    path = Path(path)
    suite = read_suite(path, SUITE_KEYS)
    schema = suite.get("schema", "hpdv3")
    data = suite.get("data")
    if not isinstance(data, dict):
        raise ValueError(f"suite {path}: 'data' must be a mapping with generator/file, path or hub")
    kwargs: dict[str, Any] = {"limit": limit}
    if "generator" in data:
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
    "CONFIGS",
    "SCHEMAS",
    "binomial_stderr",
    "evaluate_config",
    "evaluate_preference",
    "load_editreward_bench",
    "load_hpdv3",
    "load_mmrb2",
    "load_pairs",
    "load_preference_suite",
    "svg_bar_chart",
    "write_report",
]
