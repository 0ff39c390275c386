"""Checkpoints and the run directory: atomic saves, loading, pruning, RNG state, and metrics rows after a resume.

A checkpoint is `checkpoints/step_N/`: the LoRA (`lora.safetensors`, peft names), the moving average that samples
(`sampling_lora.safetensors`, when one is kept), optimizer and scheduler state (`optimizer.pt`, loadable with
`weights_only=True`), RNG states (`rng.safetensors`, `rng.json`) and `trainer_state.json`: what resuming reads.
Beside them the trainer exports the LoRA for use outside arr (`pytorch_lora_weights.safetensors` in diffusers'
format, `moving_average/` likewise, and a model card `README.md`). It is all written into a `.tmp_step_N_PID` folder
and renamed into place once complete, so a crash leaves either the old checkpoint or the new one; only folders
holding `trainer_state.json` count.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arr.jsonl import read_jsonl, write_text_atomic
from arr.rpo.config import ConfigError

CHECKPOINT_PREFIX = "step_"
logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
# The trackers' project name; TensorBoard writes its event files to output_dir/TRACKER_PROJECT.
TRACKER_PROJECT = "rpo"
# What a run writes into its output directory; `clear_run` removes these. The judgment cache stays: its entries
# are keyed by everything that decides a judgment, so they are valid for any run.
# The images of report.html live in REPORT_FILES beside it.
REPORT_FILES = "report_files"
RUN_OUTPUTS = (
    "checkpoints",
    "metrics.jsonl",
    "config.yaml",
    "report.html",
    REPORT_FILES,
    "samples",
    TRACKER_PROJECT,
)


def checkpoint_path(folder: Path, step: int) -> Path:
    return folder / f"{CHECKPOINT_PREFIX}{step}"


def complete_checkpoints(folder: Path) -> list[Path]:
    """The complete checkpoints in `folder`, oldest first."""
    if not folder.is_dir():
        return []
    found = [
        p
        for p in folder.iterdir()
        if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and (p / STATE_FILE).is_file()
    ]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def resolve_checkpoint(folder: Path, which: str) -> Path | None:
    """'latest' (None when there is none: a fresh run) or a checkpoint folder, absolute or inside `folder`; a
    checkpoint asked for by name must exist."""
    if which == "latest":
        found = complete_checkpoints(folder)
        return found[-1] if found else None
    path = Path(which)
    if not path.is_absolute() and not path.exists():
        path = folder / which
    if not (path / STATE_FILE).is_file():
        raise ConfigError(f"resume_from_checkpoint={which!r}: no complete checkpoint at {path}")
    return path


def write_checkpoint(
    folder: Path,
    step: int,
    *,
    lora: dict[str, torch.Tensor],
    sampling_lora: dict[str, torch.Tensor] | None,
    optimizer: dict[str, Any],
    state: dict[str, Any],
    export: Callable[[Path], None] | None = None,
) -> Path:
    """Write `folder/step_N` atomically: a temporary folder renamed into place once complete. `export(tmp)` writes
    the files for use outside arr (diffusers-format LoRA, model card) into the same temporary folder."""
    from safetensors.torch import save_file

    final = checkpoint_path(folder, step)
    tmp = folder / f".tmp_{CHECKPOINT_PREFIX}{step}_{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file(lora, tmp / "lora.safetensors")
    if sampling_lora is not None:
        # Under peft names, so the moving average loads as a LoRA of its own (e.g. with `arr eval --lora`).
        save_file(sampling_lora, tmp / "sampling_lora.safetensors")
    torch.save(optimizer, tmp / "optimizer.pt")
    save_rng_state(tmp)
    if export is not None:
        export(tmp)
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
    with open(tmp / STATE_FILE, "rb") as f:
        os.fsync(f.fileno())
    if final.exists():  # re-saving a step: move the old copy aside first, never half-delete it in place
        old = folder / f".old_{final.name}_{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    return final


class CheckpointError(ConfigError):
    """A checkpoint file that cannot be read (cut short by a full disk or a copy, or corrupted); names the file."""


@dataclass
class LoadedCheckpoint:
    """A checkpoint's contents, read to `device`: everything a resume needs, read before any of it is applied."""

    path: Path
    state: dict[str, Any]
    lora: dict[str, torch.Tensor]
    sampling_lora: dict[str, torch.Tensor] | None
    optimizer: dict[str, Any]
    rng_tensors: dict[str, torch.Tensor]
    rng_state: dict[str, Any]


def _read(file: Path, load: Callable[[Path], Any]) -> Any:
    """`load(file)`, with an unreadable file reported by name."""
    from safetensors import SafetensorError

    try:
        return load(file)
    except (OSError, ValueError, RuntimeError, EOFError, SafetensorError) as e:
        why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"checkpoint file {file} cannot be read ({why}): it was cut short or corrupted; resume from another "
            "checkpoint (--resume_from_checkpoint PATH) or delete this one"
        ) from None


def read_checkpoint(path: Path, device: torch.device | str) -> LoadedCheckpoint:
    from safetensors.torch import load_file

    ema = path / "sampling_lora.safetensors"
    return LoadedCheckpoint(
        path=path,
        state=_read(path / STATE_FILE, lambda f: json.loads(f.read_text())),
        lora=_read(path / "lora.safetensors", lambda f: load_file(f, device=str(device))),
        sampling_lora=_read(ema, lambda f: load_file(f, device=str(device))) if ema.is_file() else None,
        optimizer=_read(
            path / "optimizer.pt", lambda f: torch.load(f, map_location=device, weights_only=True)
        ),
        rng_tensors=_read(path / "rng.safetensors", load_file),
        rng_state=_read(path / "rng.json", lambda f: json.loads(f.read_text())),
    )


def read_resume_checkpoint(folder: Path, which: str, device: torch.device | str) -> LoadedCheckpoint | None:
    """The checkpoint to resume from, read: for 'latest', the newest one that reads whole (an unreadable newer one is
    skipped with a warning that names its file); a checkpoint asked for by path must read."""
    path = resolve_checkpoint(folder, which)
    if path is None:
        return None
    if which != "latest":
        return read_checkpoint(path, device)
    first_error: CheckpointError | None = None
    for candidate in reversed(complete_checkpoints(folder)):
        try:
            ckpt = read_checkpoint(candidate, device)
        except CheckpointError as e:
            logger.warning("%s; trying the checkpoint before it", e)
            first_error = first_error or e
            continue
        if first_error is not None:
            logger.warning("resuming from %s, the newest checkpoint that reads whole", candidate)
        return ckpt
    raise first_error or CheckpointError(f"no readable checkpoint in {folder}")


def prune_checkpoints(folder: Path, keep: int) -> None:
    """Delete all but the newest `keep` complete checkpoints."""
    for old in complete_checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def save_rng_state(folder: Path) -> None:
    """RNG states without pickle: torch's as safetensors, numpy's and Python's as JSON."""
    from safetensors.torch import save_file

    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    save_file(tensors, folder / "rng.safetensors")
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    (folder / "rng.json").write_text(
        json.dumps(
            {
                "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
                "python": [version, list(internal), py_gauss],
            }
        )
    )


def set_rng_state(tensors: dict[str, torch.Tensor], data: dict[str, Any]) -> None:
    """Restore the RNG states `save_rng_state` wrote (read by `read_checkpoint`)."""
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda_"))]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    name, keys, pos, has_gauss, gauss = data["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, py_gauss = data["python"]
    random.setstate((version, tuple(internal), py_gauss))


def load_rng_state(folder: Path) -> None:
    from safetensors.torch import load_file

    set_rng_state(
        _read(folder / "rng.safetensors", load_file),
        _read(folder / "rng.json", lambda f: json.loads(f.read_text())),
    )


def truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop rows logged after the checkpoint's step (they are logged again); a fresh run starts empty.

    Written beside and renamed: a crash mid-rewrite must not lose the rows logged before the checkpoint."""
    if not path.exists():
        return
    keep = [row for row in read_jsonl(path) if step > 0 and row.get("step", 0) <= step]
    write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in keep))


def run_outputs(output_dir: Path) -> list[str]:
    """What of another run `output_dir` holds: its metrics, config, report or complete checkpoints."""
    found = [
        name for name in ("metrics.jsonl", "config.yaml", "report.html") if (output_dir / name).is_file()
    ]
    if complete_checkpoints(output_dir / "checkpoints"):
        found.append("checkpoints")
    return found


def clear_run(output_dir: Path) -> None:
    """Remove what a run wrote into `output_dir` (`RUN_OUTPUTS`), keeping anything else there."""
    for name in RUN_OUTPUTS:
        path = output_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


__all__ = [
    "CHECKPOINT_PREFIX",
    "REPORT_FILES",
    "RUN_OUTPUTS",
    "TRACKER_PROJECT",
    "CheckpointError",
    "LoadedCheckpoint",
    "checkpoint_path",
    "clear_run",
    "complete_checkpoints",
    "load_rng_state",
    "prune_checkpoints",
    "read_checkpoint",
    "read_resume_checkpoint",
    "resolve_checkpoint",
    "run_outputs",
    "save_rng_state",
    "set_rng_state",
    "truncate_metrics",
    "write_checkpoint",
]
