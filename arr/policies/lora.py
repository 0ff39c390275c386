"""LoRA files in diffusers' format: what `pipe.load_lora_weights(folder)` reads, and what arr's policies load.

A LoRA is written as diffusers' own writer writes it (the family's loader mixin, e.g.
`FluxLoraLoaderMixin.save_lora_weights`, which is `FluxPipeline.save_lora_weights`): one
`pytorch_lora_weights.safetensors` whose keys are the transformer's peft names under the `transformer.` prefix, with
the adapter's `LoraConfig` (rank, alpha, target modules) in the file's `lora_adapter_metadata` header. The alpha in
the header is what makes a LoRA load at full strength: without it diffusers takes alpha = rank, which for arr's
r16/alpha32 default would apply the update at half its trained size.

`read_lora_weights` reads such a folder or file back (alpha from the header; a file written without one gets
diffusers' alpha = rank), and also arr's resume file `lora.safetensors`, whose alpha lives in the run's
`config.yaml`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

#: diffusers' file name for LoRA weights (`LORA_WEIGHT_NAME_SAFE`): the file `load_lora_weights(folder)` picks.
LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
#: The safetensors header entry where diffusers keeps the LoraConfig (`LORA_ADAPTER_METADATA_KEY`).
LORA_METADATA_KEY = "lora_adapter_metadata"
#: The component prefix of transformer LoRA keys in a pipeline's LoRA file.
TRANSFORMER_PREFIX = "transformer"
#: arr's resume copy of the LoRA inside a checkpoint (peft names, no prefix, no alpha).
RESUME_LORA_NAME = "lora.safetensors"


@dataclass
class LoraWeights:
    """A LoRA read from disk: `state` in peft names relative to the transformer (what `lora_state_dict` gives),
    `config` the `peft.LoraConfig` keyword arguments (r, lora_alpha, target_modules, ...), `path` the file read."""

    state: dict[str, Tensor]
    config: dict[str, Any]
    path: Path

    @property
    def rank(self) -> int:
        return int(self.config["r"])

    @property
    def alpha(self) -> float:
        return float(self.config["lora_alpha"])

    @property
    def base_model(self) -> str | None:
        """The model the LoRA was trained on, where the file records it."""
        return self.config.get("base_model_name_or_path")


def lora_config(transformer: nn.Module, adapter_name: str = "default", base_model: str | None = None) -> dict:
    """The adapter's LoraConfig as the few keyword arguments a loader needs (rank, alpha, targets, patterns).

    Only these: a full `LoraConfig.to_dict()` names fields that older peft versions do not know, and a LoRA file
    must load in the user's environment, not only in the one that trained it."""
    configs = getattr(transformer, "peft_config", None) or {}
    if adapter_name not in configs:
        raise ValueError(
            f"{type(transformer).__name__} has no LoRA adapter {adapter_name!r} (adapters: {sorted(configs)}); "
            "add one with add_lora first"
        )
    config = configs[adapter_name]
    out: dict[str, Any] = {
        "r": int(config.r),
        "lora_alpha": float(config.lora_alpha),
        "target_modules": sorted(config.target_modules)
        if not isinstance(config.target_modules, str)
        else config.target_modules,
        "rank_pattern": dict(config.rank_pattern or {}),
        "alpha_pattern": dict(config.alpha_pattern or {}),
    }
    if base_model:
        out["base_model_name_or_path"] = str(base_model)
    return out


def write_lora_file(
    folder: str | Path, state: dict[str, Tensor], config: dict[str, Any], loader: str
) -> Path:
    """Write `state` (peft names) as `folder/pytorch_lora_weights.safetensors` with the `save_lora_weights` of
    diffusers' LoRA loader `loader` (e.g. "FluxLoraLoaderMixin"), the LoraConfig `config` in its header; returns
    the file. The mixin, not its pipeline class: importing a pipeline imports its text encoders' code too."""
    import diffusers.loaders

    writer = getattr(diffusers.loaders, loader, None)
    if writer is None or not hasattr(writer, "save_lora_weights"):
        raise ValueError(f"diffusers.loaders has no LoRA loader {loader!r} with save_lora_weights")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    writer.save_lora_weights(
        str(folder), transformer_lora_layers=tensors, transformer_lora_adapter_metadata=dict(config)
    )
    return Path(folder) / LORA_WEIGHTS_NAME


def read_lora_weights(path: str | Path, alpha: float | None = None) -> LoraWeights:
    """The LoRA in `path`: a folder holding `pytorch_lora_weights.safetensors` (a checkpoint, its `moving_average/`,
    or any diffusers LoRA folder), such a file itself, or a folder holding only arr's resume file `lora.safetensors`
    (alpha then from the run's config.yaml two folders up, unless given). `alpha` overrides the recorded alpha."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    file = path
    if path.is_dir():
        file = path / LORA_WEIGHTS_NAME
        if not file.is_file() and (path / RESUME_LORA_NAME).is_file():
            return _read_resume_lora(path / RESUME_LORA_NAME, alpha)
    if not file.is_file():
        raise ValueError(
            f"LoRA {path}: no {LORA_WEIGHTS_NAME} there (expected a checkpoint folder RUN/checkpoints/step_N, its "
            "moving_average/ folder, or a diffusers LoRA folder or file)"
        )
    try:
        with safe_open(str(file), framework="pt") as f:
            header = f.metadata() or {}
            raw = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except (OSError, SafetensorError) as e:
        raise ValueError(f"LoRA {file}: not a readable safetensors file ({e})") from None
    prefix = f"{TRANSFORMER_PREFIX}."
    state = {k.removeprefix(prefix): v for k, v in raw.items() if k.startswith(prefix)}
    if not state:  # a bare transformer LoRA (transformer.save_lora_adapter without prefix, or peft names)
        state = dict(raw)
    config = _config_from_header(file, header, state)
    if alpha is not None:
        config["lora_alpha"] = float(alpha)
    return LoraWeights(state, config, file)


def _config_from_header(file: Path, header: dict[str, str], state: dict[str, Tensor]) -> dict[str, Any]:
    """The LoraConfig in diffusers' header entry (its `transformer.` keys), else rank and targets from the weights
    with alpha = rank, as diffusers assumes for a file without one."""
    import json

    if LORA_METADATA_KEY in header:
        try:
            packed = json.loads(header[LORA_METADATA_KEY])
        except json.JSONDecodeError as e:
            raise ValueError(f"LoRA {file}: its {LORA_METADATA_KEY} header is not JSON ({e.msg})") from None
        prefix = f"{TRANSFORMER_PREFIX}."
        config = {k.removeprefix(prefix): v for k, v in packed.items() if k.startswith(prefix)} or packed
        if "r" in config and "lora_alpha" in config:
            return config
    rank, targets = _shape_of(file, state)
    return {"r": rank, "lora_alpha": float(rank), "target_modules": targets}


def _shape_of(file: Path, state: dict[str, Tensor]) -> tuple[int, list[str]]:
    a_keys = [k for k in state if ".lora_A." in k]
    if not a_keys:
        raise ValueError(f"LoRA {file}: no LoRA weights in it (no '.lora_A.' keys)")
    return int(state[a_keys[0]].shape[0]), sorted({k.split(".lora_A.")[0] for k in a_keys})


def _read_resume_lora(file: Path, alpha: float | None) -> LoraWeights:
    """arr's resume file: peft names; rank and targets from the weights, alpha from the run's config.yaml."""
    import yaml
    from safetensors.torch import load_file

    state = load_file(str(file))
    rank, targets = _shape_of(file, state)
    if alpha is None:
        config_file = file.parent.parent.parent / "config.yaml"
        try:
            alpha = float(yaml.safe_load(config_file.read_text(encoding="utf-8"))["lora_alpha"])
        except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
            raise ValueError(
                f"LoRA {file}: cannot read lora_alpha from {config_file}; pass it with --lora-alpha"
            ) from None
    return LoraWeights(state, {"r": rank, "lora_alpha": float(alpha), "target_modules": targets}, file)


def lora_stamp(weights: LoraWeights) -> str:
    """A short identity of a LoRA's weights and alpha, for evaluation fingerprints."""
    import hashlib

    digest = hashlib.sha256(weights.path.read_bytes()).hexdigest()[:16]
    return f"lora:{digest}:r{weights.rank}:a{weights.alpha:g}"


__all__ = [
    "LORA_METADATA_KEY",
    "LORA_WEIGHTS_NAME",
    "RESUME_LORA_NAME",
    "TRANSFORMER_PREFIX",
    "LoraWeights",
    "lora_config",
    "lora_stamp",
    "read_lora_weights",
    "write_lora_file",
]
