"""`arr eval`: evaluate editing and text-to-image models on benchmarks, and judges on labelled pairs.

    arr eval eval/shapes_edit.yaml --policy shapes-edit --backend pixel --out runs/eval/shapes_edit
    arr eval eval/shapes_geneval.yaml --policy shapes-t2i --lora runs/demo/checkpoints/step_200 --out runs/eval/rpo
    arr eval eval/gedit_bench.yaml --policy Qwen/Qwen-Image-Edit --backend openai --model Qwen/Qwen2.5-VL-72B-Instruct \
        --base-url http://127.0.0.1:8000/v1 --out runs/eval/gedit
    arr eval preference eval/shapes_pairs.yaml --backend pixel --out runs/eval/shapes_pairs
    arr eval preference eval/mmrb2_sample.yaml --backend hf --model Qwen/Qwen2.5-VL-7B-Instruct \
        --rubrics rubrics.jsonl --guide guide.json

`arr eval SUITE.yaml` is short for `arr eval edit SUITE.yaml`, which runs editing suites (arr/evaluation/editing.py)
and text-to-image suites (`task: t2i`, arr/evaluation/t2i.py) alike: it writes samples.jsonl, summary.json and
report.html to --out, resumes an interrupted run in the same --out, and prints the summary.
`arr eval preference` writes results.json and report.html to --out and prints the results as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from arr.cli.common import (
    CLIError,
    DeprecatedAlias,
    add_backend_options,
    backend_from_args,
    cache_from_args,
    emit_json,
    finite_float,
    judge_from_args,
    positive_int,
    writable_dir,
)


class _AnyName:
    """The subcommand names as argparse's `choices`, letting any word through its check; `_SuiteOrCommand` routes
    a word that names no subcommand to `edit`."""

    def __init__(self, names: dict) -> None:
        self.names = names

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str)

    def __iter__(self):
        return iter(self.names)


class _SuiteOrCommand(argparse._SubParsersAction):
    """`arr eval SUITE.yaml ...` is `arr eval edit SUITE.yaml ...`: a first word that names no subcommand is a suite."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.choices = _AnyName(self._name_parser_map)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if values and values[0] not in self._name_parser_map:
            values = ["edit", *values]
        super().__call__(parser, namespace, values, option_string)


def _judge_alias(p: argparse.ArgumentParser) -> None:
    """`--judge` was this command's name for `--backend`; the backend defaults to the suite's judge here."""
    p.add_argument(
        "--judge",
        dest="backend",
        action=DeprecatedAlias,
        replacement="--backend",
        why="the judge backend option has one name in every command",
    )
    p.set_defaults(backend=None)


def register(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    """Add `arr eval` (`arr eval SUITE.yaml` / `edit`, and `preference`) to the `arr` parser."""
    p = sub.add_parser(name, help=help, description=help)
    esub = p.add_subparsers(
        dest="eval_command", metavar="SUITE.yaml | edit | preference", required=True, action=_SuiteOrCommand
    )
    _register_edit(esub)
    pref = esub.add_parser(
        "preference",
        help="preference accuracy, position-flip rate, ties and cost of a judge on labelled pairs",
        description="Judge every pair in both image orders under each configuration (plain, rubric, rubric+guide).",
    )
    pref.add_argument("suite", help="suite YAML (e.g. eval/shapes_pairs.yaml, eval/mmrb2_sample.yaml)")
    add_backend_options(pref)
    _judge_alias(pref)
    pref.add_argument(
        "--configs", default="plain,rubric,rubric+guide", help="comma-separated: plain, rubric, rubric+guide"
    )
    pref.add_argument("--guide", help="rubric guide (guide.json from `arr rubric generate`) for rubric+guide")
    pref.add_argument(
        "--rubrics", help="prompt rubrics (JSONL from `arr rubric prompts`); default: the data's own"
    )
    pref.add_argument(
        "--generate-rubrics",
        action="store_true",
        help="write missing prompt rubrics zero-shot with the judge's writer (cached in OUT/rubrics.jsonl)",
    )
    pref.add_argument("--limit", type=positive_int(), help="use at most this many pairs")
    pref.add_argument(
        "--batch-size", type=positive_int(), default=64, help="pairs per judge batch (default 64)"
    )
    pref.add_argument("--data-dir", help="where generated suites write their data (default: OUT/data)")
    pref.add_argument("--out", help="output folder (default: runs/eval/<suite name>)")
    pref.set_defaults(run=_run_preference)


def _run_preference(args: argparse.Namespace) -> int:
    from arr.backends.base import JudgeUnavailableError
    from arr.evaluation.preference import CONFIGS, evaluate_preference
    from arr.evaluation.preference_benchmarks import load_preference_suite
    from arr.evaluation.preference_report import write_report
    from arr.rubrics import RubricParseError

    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    bad = [c for c in configs if c not in CONFIGS]
    if bad:
        raise CLIError(f"--configs: unknown {bad}; choose from {list(CONFIGS)}")
    suite_path = Path(args.suite)
    cache = cache_from_args(args)
    out = writable_dir(args.out or Path("runs") / "eval" / suite_path.stem, "--out")
    try:
        suite, pairs, ties = load_preference_suite(
            suite_path, Path(args.data_dir or out / "data"), args.limit
        )
    except ValueError as e:
        raise CLIError(str(e)) from None
    if not pairs:
        raise CLIError(f"suite {suite_path} has no pairs with a winner")
    if args.backend is None:
        args.backend = suite.get("judge", "pixel")
    if args.backend == "pixel" and suite.get("judge_kwargs") and args.model is None:
        from arr.backends import load_backend

        backend = load_backend("pixel", **suite["judge_kwargs"])
    else:
        backend = backend_from_args(args)

    rubrics = None
    guide = None
    try:
        if args.rubrics:
            from arr.rubrics.generate import load_prompt_rubrics

            rubrics = load_prompt_rubrics(args.rubrics)
        if args.guide:
            from arr.rubrics.generate import RubricGuide

            guide = RubricGuide.load_categories(args.guide)
    except RubricParseError as e:
        raise CLIError(str(e)) from None
    if args.generate_rubrics:
        from arr.rubrics.generate import RubricGenerator

        missing = sorted(
            {p.prompt for p in pairs if p.prompt not in (rubrics or {}) and not p.rubric.criteria}
        )
        by_task = {}
        for p in pairs:
            by_task.setdefault(p.prompt, p.task)
        generator = RubricGenerator(backend)
        rubrics = dict(rubrics or {})
        for task in ("t2i", "edit"):
            wanted = [q for q in missing if by_task[q] == task]
            made = generator.prompt_rubrics(wanted, task=task, cache=out / "rubrics.jsonl")
            rubrics.update({q: r for q, r in zip(wanted, made, strict=True) if r is not None})

    try:
        result = evaluate_preference(
            pairs, backend, configs, rubrics=rubrics, guide=guide, cache=cache, batch_size=args.batch_size
        )
    except JudgeUnavailableError as e:
        raise CLIError(f"{e}; check that the server runs and --base-url points at it") from None
    result["suite"] = {
        "name": suite.get("name", suite_path.stem),
        "path": str(suite_path),
        "ties_skipped": ties,
    }
    json_path, html_path = write_report(result, out, f"Judge evaluation: {result['suite']['name']}")
    result["outputs"] = {"json": str(json_path), "html": str(html_path)}
    emit_json(result)
    return 0


def _register_edit(esub: argparse._SubParsersAction) -> None:
    edit = esub.add_parser(
        "edit",
        help="evaluate an editing or text-to-image model on a benchmark suite (GEdit-Bench, ImgEdit, MagicBrush, "
        "Emu Edit, shapes editing; GenEval-style text-to-image suites)",
        description="Edit every sample of an editing SUITE.yaml (or generate every prompt of a text-to-image one) "
        "with --policy, score it with the suite's judge protocol and metrics, and write samples.jsonl, summary.json "
        "and report.html to --out (resumable).",
    )
    edit.add_argument(
        "suite",
        help="suite YAML (eval/shapes_edit.yaml, eval/gedit_bench.yaml, eval/shapes_geneval.yaml, ...)",
    )
    edit.add_argument(
        "--policy",
        required=True,
        help="shapes-edit | shapes-t2i | shapes:NAME_OR_FOLDER | FAMILY:MODEL_ID (qwen_image:..., flux:...) | "
        "a diffusers pipeline id",
    )
    edit.add_argument(
        "--policy-kwargs", default="{}", help="JSON: policy settings or pipeline call arguments"
    )
    edit.add_argument("--policy-device", help="device of the editing model (default: cuda if available)")
    edit.add_argument("--policy-dtype", default="bfloat16", help="torch dtype of real editing models")
    edit.add_argument(
        "--lora",
        help="LoRA to apply: an RPO checkpoint folder (RUN/checkpoints/step_N, or its moving_average/) or a "
        "diffusers LoRA folder",
    )
    edit.add_argument(
        "--lora-alpha",
        type=finite_float,
        help="LoRA alpha (default: the one recorded in the LoRA file, or RUN/config.yaml's)",
    )
    add_backend_options(edit)
    _judge_alias(edit)
    edit.add_argument(
        "--judge-concurrency",
        dest="max_concurrency",
        type=positive_int(),
        action=DeprecatedAlias,
        replacement="--max-concurrency",
        why="the same setting in every command, recipe and the library",
    )
    edit.add_argument("--no-judge", action="store_true", help="compute the reference metrics only")
    edit.add_argument(
        "--clip", help="CLIP model id or folder for CLIP-I / CLIP-T / CLIP-dir (default: the suite's)"
    )
    edit.add_argument("--dino", help="DINO model id or folder for the DINO metric (default: the suite's)")
    edit.add_argument("--limit", type=positive_int(), help="evaluate at most this many samples")
    edit.add_argument(
        "--batch-size", type=positive_int(), default=8, help="samples edited and judged together (default 8)"
    )
    edit.add_argument(
        "--seed", type=int, default=0, help="base seed; each sample's seed derives from it and its id"
    )
    edit.add_argument("--data-dir", help="where generated suites write their data (default: OUT/data)")
    edit.add_argument("--out", help="output folder (default: runs/eval/<suite name>)")
    edit.add_argument("--no-progress", action="store_true", help="no progress bar")
    edit.add_argument(
        "--self-contained",
        action="store_true",
        help="inline the report's images in report.html, so it is one file to share",
    )
    edit.set_defaults(run=_run_edit)


def _edit_suite(args: argparse.Namespace) -> tuple[Path, Path, dict, list, dict]:
    """Check the options and load the suite: (suite path, output folder, suite, samples, policy kwargs)."""
    from arr.evaluation.edit_benchmarks import load_edit_suite

    try:
        policy_kwargs = json.loads(args.policy_kwargs)
    except json.JSONDecodeError as e:
        raise CLIError(f"--policy-kwargs is not JSON ({e.msg}): {args.policy_kwargs!r}") from None
    if not isinstance(policy_kwargs, dict):
        raise CLIError(f"--policy-kwargs must be a JSON object, got {args.policy_kwargs!r}")
    suite_path = Path(args.suite)
    if not suite_path.is_file():
        raise CLIError(f"suite {suite_path} not found (and {args.suite!r} is no `arr eval` subcommand)")
    out = writable_dir(args.out or Path("runs") / "eval" / suite_path.stem, "--out")
    try:
        suite, samples = load_edit_suite(suite_path, Path(args.data_dir or out / "data"), args.limit)
    except ValueError as e:
        raise CLIError(str(e)) from None
    if not samples:
        raise CLIError(f"suite {suite_path} has no samples")
    return suite_path, out, suite, samples, policy_kwargs


def _edit_judge(args: argparse.Namespace, suite: dict) -> Any:
    """The suite's judge protocol over the chosen backend (the suite's own judge unless --backend is given)."""
    from arr.evaluation.edit_judges import make_edit_judge

    if args.no_judge:
        return None
    if args.backend is None:
        args.backend = suite.get("judge", "pixel")
    if args.backend == "pixel":
        from arr.backends import load_backend

        backend = load_backend("pixel", **(suite.get("judge_kwargs") or {}))
    else:
        backend = backend_from_args(args)
    try:
        return make_edit_judge(suite.get("protocol", "viescore"), backend)
    except ValueError as e:
        raise CLIError(str(e)) from None


def _edit_metrics_and_editor(args: argparse.Namespace, suite: dict, policy_kwargs: dict) -> tuple[Any, Any]:
    """The suite's reference metrics (None when it has none) and the editing model under evaluation."""
    from arr.evaluation.edit_metrics import EditMetrics
    from arr.evaluation.editors import build_editor

    metric_config = dict(suite.get("metrics") or {})
    for name in ("clip", "dino"):
        if getattr(args, name):
            metric_config[name] = getattr(args, name)
    try:
        metrics = EditMetrics.from_config(metric_config) if metric_config.get("names") else None
        editor = build_editor(
            args.policy, args.policy_device, args.policy_dtype, args.lora, args.lora_alpha, **policy_kwargs
        )
    except ValueError as e:
        raise CLIError(str(e)) from None
    return metrics, editor


def _suite_task(path: str) -> str | None:
    """The `task` a suite file declares (None when it cannot be read: the suite loader then names the problem)."""
    import yaml

    try:
        suite = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return suite.get("task") if isinstance(suite, dict) else None


def _emit_results(summary: dict[str, Any], out: Path) -> int:
    """Print an evaluation's summary as JSON, with where its files are."""
    summary["outputs"] = {
        "summary": str(out / "summary.json"),
        "samples": str(out / "samples.jsonl"),
        "html": str(out / "report.html"),
    }
    emit_json(summary)
    return 0


def _run_edit(args: argparse.Namespace) -> int:
    from arr.backends.chat import JudgeUnavailableError
    from arr.evaluation.editing import evaluate_edits

    if _suite_task(args.suite) == "t2i":
        return _run_t2i(args)
    suite_path, out, suite, samples, policy_kwargs = _edit_suite(args)
    judge = _edit_judge(args, suite)
    metrics, editor = _edit_metrics_and_editor(args, suite, policy_kwargs)
    if judge is None and metrics is None:
        raise CLIError(f"suite {suite_path} has no metrics: it needs a judge (drop --no-judge)")
    info = {
        "suite": suite.get("name", suite_path.stem),
        "suite_path": str(suite_path),
        "schema": suite["schema_resolved"],
        "source": suite["source"],
    }
    try:
        summary = evaluate_edits(
            samples,
            editor,
            out,
            judge,
            metrics,
            info=info,
            batch_size=args.batch_size,
            seed=args.seed,
            progress=not args.no_progress,
            self_contained_report=args.self_contained,
        )
    except ValueError as e:
        raise CLIError(str(e)) from None
    except JudgeUnavailableError as e:
        raise CLIError(
            f"{e}; finished samples are saved in {out}: run the same command again to resume"
        ) from None
    return _emit_results(summary, out)


def _t2i_scorer(args: argparse.Namespace, suite: dict, prompts: list) -> Any:
    """The judge of a text-to-image suite: the suite's own (pixel for the shapes world) unless --backend is given."""
    from arr.backends import load_backend
    from arr.evaluation.t2i_suites import RubricT2IScorer

    if args.backend is None:
        args.backend = suite.get("judge", "pixel")
    if args.backend == "pixel":
        unchecked = [
            p.id for p in prompts if p.rubric is not None and any(c.check is None for c in p.rubric.criteria)
        ]
        if unchecked:
            raise CLIError(
                f"suite {args.suite}: prompt {unchecked[0]} (and {len(unchecked) - 1} more) is not a shapes-world "
                "prompt, which the pixel judge cannot check; use a VLM judge (--backend hf or openai)"
            )
        backend = load_backend("pixel", **(suite.get("judge_kwargs") or {}))
    else:
        backend = backend_from_args(args)
    return RubricT2IScorer(judge_from_args(args, backend=backend))


def _run_t2i(args: argparse.Namespace) -> int:
    """`arr eval SUITE.yaml` for a text-to-image suite (task: t2i)."""
    from arr.backends.chat import JudgeUnavailableError
    from arr.evaluation.editors import build_generator
    from arr.evaluation.t2i import evaluate_t2i
    from arr.evaluation.t2i_suites import load_t2i_suite

    for flag, given in (("--no-judge", args.no_judge), ("--clip", args.clip), ("--dino", args.dino)):
        if given:
            raise CLIError(f"{flag} is for editing suites; {args.suite} is a text-to-image suite")
    try:
        policy_kwargs = json.loads(args.policy_kwargs)
    except json.JSONDecodeError as e:
        raise CLIError(f"--policy-kwargs is not JSON ({e.msg}): {args.policy_kwargs!r}") from None
    if not isinstance(policy_kwargs, dict):
        raise CLIError(f"--policy-kwargs must be a JSON object, got {args.policy_kwargs!r}")
    suite_path = Path(args.suite)
    out = writable_dir(args.out or Path("runs") / "eval" / suite_path.stem, "--out")
    try:
        suite, prompts = load_t2i_suite(suite_path, Path(args.data_dir or out / "data"), args.limit)
    except ValueError as e:
        raise CLIError(str(e)) from None
    if not prompts:
        raise CLIError(f"suite {suite_path} has no prompts")
    scorer = _t2i_scorer(args, suite, prompts)
    try:
        generator = build_generator(
            args.policy,
            device=args.policy_device,
            torch_dtype=args.policy_dtype,
            lora=args.lora,
            lora_alpha=args.lora_alpha,
            **policy_kwargs,
        )
    except ValueError as e:
        raise CLIError(str(e)) from None
    info = {"suite": suite.get("name", suite_path.stem), "suite_path": str(suite_path), "schema": "geneval"}
    info["source"] = suite["source"]
    try:
        summary = evaluate_t2i(
            prompts,
            generator,
            scorer,
            out,
            samples_per_prompt=int(suite.get("samples_per_prompt", 1)),
            info=info,
            batch_size=args.batch_size,
            seed=args.seed,
            progress=not args.no_progress,
            self_contained_report=args.self_contained,
        )
    except ValueError as e:
        raise CLIError(str(e)) from None
    except JudgeUnavailableError as e:
        raise CLIError(
            f"{e}; finished images are saved in {out}: run the same command again to resume"
        ) from None
    return _emit_results(summary, out)
