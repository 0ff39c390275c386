"""Checkpoints and the run directory: atomic saves, finding the newest loadable checkpoint, pruning, and metrics
rows after a resume.

A checkpoint is `checkpoints/step_N/`, written by `accelerator.save_state` into a `.tmp_step_N` folder (every
process writes its part there) and renamed into place once complete, so a crash leaves either the old checkpoint or
the new one. It holds:

- `lora.safetensors` (peft names) and, when one is kept, `sampling_lora.safetensors` (the moving average that
  samples), written by the trainer's save hook in place of the whole network, whose frozen base is the pretrained
  model;
- accelerate's state: `optimizer.bin`, `scheduler.bin`, `random_states_<rank>.pkl` (torch files that accelerate
  loads with `weights_only=True`); under FSDP the sharded network and optimizer (`pytorch_model_fsdp_0/`,
  `optimizer_0/`, torch.distributed.checkpoint folders, one shard per process);
- for use outside arr, the LoRA in diffusers' format (`pytorch_lora_weights.safetensors`, `moving_average/`
  likewise) and a model card `README.md`;
- `trainer_state.json`, written last: the step, data position and timings, and a manifest of every other file with
  its size and, for files up to `HASH_LIMIT`, its SHA-256. Only folders holding it count as checkpoints, and a
  checkpoint whose files do not match it (a truncated or damaged file) is not loaded.

Checkpoints of arr's first layout (`optimizer.pt`, `rng.safetensors`, `rng.json`, no manifest) still load
(`read_legacy_checkpoint`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arr.jsonl import read_jsonl, write_text_atomic
from arr.rpo.config import ConfigError

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "step_"
STATE_FILE = "trainer_state.json"
LORA_FILE = "lora.safetensors"
SAMPLING_LORA_FILE = "sampling_lora.safetensors"
# The checkpoint layout trainer_state.json declares; the first layout had no such key.
CHECKPOINT_FORMAT = 2
# Files up to this size are hashed into the manifest; larger ones (FSDP's shards of the frozen base) are checked by
# size, which is what a cut write changes, without reading gigabytes at every save and resume.
HASH_LIMIT = 256 * 1024 * 1024
LEGACY_FILES = (LORA_FILE, "optimizer.pt", "rng.safetensors", "rng.json")
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


class CheckpointError(ConfigError):
    """A checkpoint that cannot be resumed: a file cut short (a full disk, an interrupted copy) or damaged; the
    message names the file."""


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
    """The checkpoint to resume from: for 'latest', the newest complete one whose files are intact (a damaged one is
    skipped with a warning naming its bad file; None when `folder` holds no checkpoint: a fresh run); else the
    checkpoint folder named, absolute or inside `folder`, which must exist and be intact."""
    if which == "latest":
        problems = []
        for path in reversed(complete_checkpoints(folder)):
            problem = verify_checkpoint(path)
            if problem is None:
                if problems:
                    logger.warning("resuming from %s, the newest checkpoint that is intact", path)
                return path
            logger.warning("skipping checkpoint %s: %s; trying the one before it", path, problem)
            problems.append(problem)
        if problems:
            raise CheckpointError(f"no intact checkpoint in {folder}; the newest: {problems[0]}")
        return None
    path = Path(which)
    if not path.is_absolute() and not path.exists():
        path = folder / which
    if not (path / STATE_FILE).is_file():
        raise ConfigError(f"resume_from_checkpoint={which!r}: no complete checkpoint at {path}")
    problem = verify_checkpoint(path)
    if problem is not None:
        raise CheckpointError(
            f"resume_from_checkpoint={which!r}: {problem}; resume from another checkpoint (or 'latest', which "
            "takes the newest intact one) or delete this one"
        )
    return path


def temporary_path(folder: Path, step: int) -> Path:
    """Where every process writes its part of checkpoint `step` before it is renamed into place (the same name on
    every process and node, so it carries no process id)."""
    return folder / f".tmp_{CHECKPOINT_PREFIX}{step}"


def clear_temporary(path: Path) -> None:
    """An empty temporary checkpoint folder (a crashed save may have left a partial one); main process only."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def finish_checkpoint(folder: Path, step: int, tmp: Path, state: dict[str, Any]) -> Path:
    """Seal `tmp` (the manifest and `state` into trainer_state.json, flushed to disk) and rename it to `step_N`;
    main process only, after every process wrote its part."""
    state = {**state, "format": CHECKPOINT_FORMAT, "files": manifest(tmp)}
    for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
        with open(path, "rb") as f:  # data reaches the disk before the state file that vouches for it
            os.fsync(f.fileno())
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
    with open(tmp / STATE_FILE, "rb") as f:
        os.fsync(f.fileno())
    final = checkpoint_path(folder, step)
    if final.exists():  # re-saving a step: move the old copy aside first, never half-delete it in place
        old = folder / f".old_{final.name}_{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    return final


def manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """Every file under `folder` (relative path) with its size, and its SHA-256 up to `HASH_LIMIT` bytes."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != STATE_FILE):
        size = path.stat().st_size
        entry: dict[str, Any] = {"size": size}
        if size <= HASH_LIMIT:
            entry["sha256"] = _sha256(path)
        out[path.relative_to(folder).as_posix()] = entry
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_state(path: Path) -> dict[str, Any]:
    """A checkpoint's trainer_state.json."""
    return json.loads((path / STATE_FILE).read_text())


def is_legacy(state: dict[str, Any]) -> bool:
    """Whether a checkpoint whose trainer_state.json holds `state` is of arr's first layout (optimizer.pt and RNG
    files, no manifest)."""
    return "format" not in state


def verify_checkpoint(path: Path) -> str | None:
    """None if the checkpoint at `path` is intact, else what is wrong, naming the file."""
    try:
        state = read_state(path)
    except (OSError, ValueError) as e:
        return f"{path / STATE_FILE} is unreadable ({e})"
    if is_legacy(state):
        return _verify_legacy(path)
    for name, entry in state.get("files", {}).items():
        file = path / name
        if not file.is_file():
            return f"{file} is missing"
        size = file.stat().st_size
        if size != entry["size"]:
            return f"{file} has {size} bytes, {entry['size']} were written (a cut or damaged write)"
        if "sha256" in entry and _sha256(file) != entry["sha256"]:
            return f"{file} does not match the SHA-256 recorded when it was written (the file is damaged)"
    return None


def _verify_legacy(path: Path) -> str | None:
    """A first-layout checkpoint has no manifest: each file must load."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    names = [*LEGACY_FILES, *([SAMPLING_LORA_FILE] if (path / SAMPLING_LORA_FILE).is_file() else [])]
    for name in names:
        file = path / name
        try:
            if name.endswith(".safetensors"):
                load_file(file)
            elif name.endswith(".json"):
                json.loads(file.read_text())
            else:
                torch.load(file, map_location="cpu", weights_only=True)
        except (OSError, ValueError, RuntimeError, EOFError, SafetensorError) as e:
            return f"{file} does not load ({type(e).__name__}: {str(e)[:120]})"
    return None


@dataclass
class LegacyCheckpoint:
    """A first-layout checkpoint's LoRA and optimizer state, read to `device` (its trainer_state.json is
    `read_state`'s, its moving average is read where it is loaded, its RNG files `load_legacy_rng_state`'s)."""

    path: Path
    lora: dict[str, torch.Tensor]
    optimizer: dict[str, Any]


def read_legacy_checkpoint(path: Path, device: torch.device | str) -> LegacyCheckpoint:
    """Read a checkpoint of arr's first layout (`is_legacy`)."""
    from safetensors.torch import load_file

    return LegacyCheckpoint(
        path=path,
        lora=load_file(path / LORA_FILE, device=str(device)),
        optimizer=torch.load(path / "optimizer.pt", map_location=device, weights_only=True),
    )


def load_legacy_rng_state(folder: Path) -> None:
    """Restore the RNG states a first-layout checkpoint saved (torch's as safetensors, numpy's and Python's as
    JSON)."""
    from safetensors.torch import load_file

    tensors = load_file(folder / "rng.safetensors")
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda_"))]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    data = json.loads((folder / "rng.json").read_text())
    name, keys, pos, has_gauss, gauss = data["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, py_gauss = data["python"]
    random.setstate((version, tuple(internal), py_gauss))


def prune_checkpoints(folder: Path, keep: int) -> None:
    """Delete all but the newest `keep` complete checkpoints."""
    for old in complete_checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def clear_stale(folder: Path, step: int) -> list[Path]:
    """On resume from `step`: remove what no longer belongs to the run, and return it. That is the temporary folders
    of saves that were killed (`.tmp_step_N`, `.old_step_N_*`; under FSDP each can hold a copy of the whole model),
    and the checkpoints after `step`, which a continuation that this run replaces wrote (as `truncate_metrics` drops
    its metrics rows); left in place, a later `latest` would resume that continuation. Main process only."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    later = {p for p in complete_checkpoints(folder) if int(p.name[len(CHECKPOINT_PREFIX) :]) > step}
    for path in sorted(folder.iterdir()):
        if path.is_dir() and (path.name.startswith((".tmp_", ".old_")) or path in later):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


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
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_PREFIX",
    "LORA_FILE",
    "REPORT_FILES",
    "RUN_OUTPUTS",
    "SAMPLING_LORA_FILE",
    "STATE_FILE",
    "TRACKER_PROJECT",
    "CheckpointError",
    "LegacyCheckpoint",
    "checkpoint_path",
    "clear_run",
    "clear_stale",
    "clear_temporary",
    "complete_checkpoints",
    "finish_checkpoint",
    "is_legacy",
    "load_legacy_rng_state",
    "manifest",
    "prune_checkpoints",
    "read_legacy_checkpoint",
    "read_state",
    "resolve_checkpoint",
    "run_outputs",
    "temporary_path",
    "truncate_metrics",
    "verify_checkpoint",
]
