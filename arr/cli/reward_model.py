"""`arr reward-model`: train a Bradley-Terry image reward model on preference pairs and measure its accuracy.

    arr reward-model train --pairs DATA/pairs.json --out runs/rm [--eval-pairs HELD/pairs.json] [--epochs 60]
    arr reward-model eval runs/rm --pairs HELD/pairs.json

DATA is an HPDv3-style pairs.json (path1 preferred; see arr/shapes/benchmarks.py), e.g. shapes pairs from
`python -c "from arr.shapes.benchmarks import write_preference_pairs as w; w('/tmp/p/pairs.json', 100, 'train', task='t2i')"`.
Without --eval-pairs, --eval-fraction of the pairs (default 0.2) is held out. The model, its config, `training.json`
(history, accuracies) are written to OUT.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from arr.cli.common import CLIError, emit_json, finite_float, positive_int, writable_dir


def register(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    """Add `arr reward-model` (train, eval) to the `arr` parser."""
    p = sub.add_parser(name, help=help, description=help)
    rsub = p.add_subparsers(dest="reward_model_command", metavar="COMMAND", required=True)
    t = rsub.add_parser("train", help="train a Bradley-Terry reward model on HPDv3-style preference pairs")
    t.add_argument("--pairs", required=True, help="HPDv3-style pairs.json (path1 = preferred)")
    t.add_argument("--out", required=True, help="output folder (config, safetensors weights, training.json)")
    t.add_argument("--eval-pairs", help="held-out pairs.json; default: hold out --eval-fraction of --pairs")
    t.add_argument(
        "--eval-fraction", type=finite_float, default=0.2, help="held-out share when no --eval-pairs (0.2)"
    )
    t.add_argument("--task", choices=("t2i", "edit"), help="default: edit when the pairs have source images")
    t.add_argument("--limit", type=positive_int(), help="use at most this many training pairs")
    t.add_argument("--epochs", type=positive_int(), default=80)
    t.add_argument("--batch-size", type=positive_int(), default=32)
    t.add_argument("--learning-rate", type=finite_float, default=3e-4)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument(
        "--no-text-init", action="store_true", help="random text encoder (default: the shapes t2i one)"
    )
    t.set_defaults(run=_run_train)
    e = rsub.add_parser("eval", help="preference accuracy of a trained reward model on labelled pairs")
    e.add_argument("model", help="folder written by `arr reward-model train`")
    e.add_argument("--pairs", required=True, help="HPDv3-style pairs.json")
    e.set_defaults(run=_run_eval)


def _load(path: str):
    from arr.images import ImageLoadError
    from arr.shapes.benchmarks import load_preference_pairs

    if not Path(path).is_file():
        raise CLIError(f"pairs file not found: {path}")
    try:
        return load_preference_pairs(path)
    except (ValueError, ImageLoadError, OSError) as e:
        raise CLIError(f"cannot read pairs {path}: {e}") from None


def _run_train(args: argparse.Namespace) -> int:
    from arr.reward_models.bradley_terry import (
        BradleyTerryConfig,
        BradleyTerryTrainer,
        PairwiseRewardModel,
        PairwiseRewardModelConfig,
    )

    pairs = _load(args.pairs)
    writable_dir(args.out, "--out")
    if args.eval_pairs:
        train, held = pairs, _load(args.eval_pairs)
    else:
        if not 0.0 <= args.eval_fraction < 1.0:
            raise CLIError(f"--eval-fraction must be in [0, 1), got {args.eval_fraction}")
        order = list(range(len(pairs)))
        random.Random(args.seed).shuffle(order)
        n_held = int(round(args.eval_fraction * len(pairs)))
        held = [pairs[i] for i in order[:n_held]]
        train = [pairs[i] for i in order[n_held:]]
    if args.limit is not None:
        train = train[: args.limit]
    if not train:
        raise CLIError(f"{args.pairs}: no training pairs left")
    task = args.task or ("edit" if all(p.source is not None for p in train) else "t2i")
    try:
        import torch

        torch.manual_seed(args.seed)
        config = PairwiseRewardModelConfig(task=task, text_init=None if args.no_text_init else "t2i")
        model = PairwiseRewardModel(config)
        bt = BradleyTerryConfig(
            epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate, seed=args.seed
        )
        result = BradleyTerryTrainer(model, bt, train, held).train()
    except ValueError as e:
        raise CLIError(str(e)) from None
    out = model.save_pretrained(args.out)
    info = {
        "pairs": args.pairs,
        "train_pairs": len(train),
        "eval_pairs": len(held),
        "task": task,
        "train_accuracy": result.train_accuracy,
        "heldout": result.eval,
        "config": vars(args) | {"run": None},
        "history": result.history,
    }
    (out / "training.json").write_text(json.dumps(info, indent=1, default=str) + "\n")
    summary = {"out": str(out), "train_pairs": len(train), "train_accuracy": round(result.train_accuracy, 4)}
    if result.eval:
        summary |= {"eval_pairs": len(held), "heldout_accuracy": round(result.eval["accuracy"], 4)}
    emit_json(summary)
    return 0


def _run_eval(args: argparse.Namespace) -> int:
    from arr.reward_models.bradley_terry import PairwiseRewardModel, preference_accuracy

    try:
        model = PairwiseRewardModel.from_pretrained(args.model)
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e)) from None
    result = preference_accuracy(model, _load(args.pairs))
    emit_json({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()})
    return 0
