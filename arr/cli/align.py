"""`arr align`: alignment metrics of two feature files, or a run's alignment curves.

    arr align A.npy B.npy [--metric all] [--topk 10] [--no-normalize]     # prints JSON
    arr align --run runs/demo [--out runs/demo/alignment.png]              # PNG + correlation with eval_score

A.npy and B.npy hold [N, D] features of the same N inputs in the same order (any widths).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from arr.cli.common import CLIError, DeprecatedAlias, emit_json, positive_int, writable_file


def register(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    p = sub.add_parser(name, help=help, description=help)
    p.add_argument(
        "features", nargs="*", metavar="FEATURES.npy", help="two [N, D] .npy files of paired features"
    )
    p.add_argument(
        "--metric",
        action="append",
        help="a metric (repeat, or comma-separate) or 'all' (default): mutual_knn, cycle_knn, edit_distance_knn, "
        "cka, unbiased_cka, cknna",
    )
    p.add_argument(
        "--topk", type=positive_int(), default=10, help="neighbours for the kNN metrics (default 10)"
    )
    p.add_argument("--no-normalize", action="store_true", help="do not L2-normalise rows first")
    p.add_argument(
        "--run", dest="run_dir", metavar="RUN_DIR", help="plot this run's align/* curves with its eval_score"
    )
    p.add_argument(
        "--out", metavar="PNG", help="--run: where to write the plot (default RUN_DIR/alignment.png)"
    )
    p.add_argument(
        "--output", dest="out", action=DeprecatedAlias, replacement="--out", why="`--out` in every command"
    )
    p.set_defaults(run=_run)


def _load(path: str) -> Any:
    import numpy as np

    p = Path(path)
    if p.suffix != ".npy":
        raise CLIError(
            f"{path}: expected a .npy file of [N, D] features (numpy.save), got {p.suffix or 'no suffix'}"
        )
    try:
        x = np.load(p, allow_pickle=False)
    except FileNotFoundError:
        raise CLIError(f"{path}: no such file") from None
    except ValueError as e:  # not a .npy file, or an object array
        raise CLIError(f"{path}: cannot read as a numeric .npy array ({e})") from None
    if x.ndim != 2:
        raise CLIError(f"{path}: expected [N, D] features, got shape {x.shape}")
    return x


def _jsonable(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _run(args: argparse.Namespace) -> int:
    if args.run_dir:
        if args.features:
            raise CLIError("give either two feature files or --run RUN_DIR, not both")
        return _run_curves(args)
    if len(args.features) != 2:
        raise CLIError(
            f"expected two feature files (A.npy B.npy) or --run RUN_DIR, got {len(args.features)} files"
        )
    from arr.diagnostics.alignment import alignment_metrics

    metrics = [m.strip() for arg in (args.metric or ["all"]) for m in arg.split(",") if m.strip()]
    a, b = (_load(p) for p in args.features)
    try:
        values = alignment_metrics(
            a, b, "all" if "all" in metrics else metrics, args.topk, normalize=not args.no_normalize
        )
    except (ValueError, TypeError) as e:
        raise CLIError(str(e)) from None
    result = {
        "a": args.features[0],
        "b": args.features[1],
        "n": int(a.shape[0]),
        "dims": [int(a.shape[1]), int(b.shape[1])],
        "topk": args.topk,
        "normalize": not args.no_normalize,
        "metrics": {k: _jsonable(v) for k, v in values.items()},
    }
    emit_json(result)
    return 0


def _run_curves(args: argparse.Namespace) -> int:
    from arr.diagnostics.curves import correlations, plot_alignment, read_metrics

    try:
        rows = read_metrics(args.run_dir)
        png = writable_file(args.out or Path(args.run_dir) / "alignment.png", "--out", "alignment.png")
        out = plot_alignment(rows, png, title=f"alignment: {args.run_dir}")
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e)) from None
    corr = {
        k: {"n": v["n"], "pearson": _jsonable(v["pearson"]), "spearman": _jsonable(v["spearman"])}
        for k, v in correlations(rows).items()
    }
    emit_json({"png": str(out), "correlation_with_eval_score": corr})
    return 0
