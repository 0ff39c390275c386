"""The model card of a checkpoint: `checkpoints/step_N/README.md`, what someone handed the folder needs to know.

It says which base model the LoRA adapts, how to load it (diffusers' `load_lora_weights`, or arr's commands for the
shapes world), the held-out scores logged up to that step, the recipe's main settings and which files are arr's
resume state. Hub-style YAML front matter (base_model, library_name, tags) lets the folder be uploaded as it is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: The recipe keys the card lists (the rest is in the run's config.yaml).
CARD_SETTINGS = (
    "policy",
    "model_name_or_path",
    "objective",
    "learning_rate",
    "lr_scheduler_type",
    "lora_rank",
    "lora_alpha",
    "prompts_per_step",
    "group_size",
    "num_sampling_steps",
    "eta",
    "guidance_scale",
    "reward_mode",
    "judge_backend",
    "judge_model",
    "dataset",
    "seed",
)
MOVING_AVERAGE_DIR = "moving_average"


def run_settings(run_config: dict[str, Any]) -> dict[str, Any]:
    """The run's settings as one flat mapping (a recipe's config is flat; `RPOTrainer`'s default nests them)."""
    flat: dict[str, Any] = {}
    for key, value in run_config.items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _scores_table(evals: Sequence[dict[str, Any]]) -> str:
    """Held-out metrics (rows) at each evaluated step (columns)."""
    if not evals:
        return "No held-out evaluation was logged up to this step.\n"
    keys: dict[str, None] = {}
    for row in evals:
        for k, v in row.items():
            if k.startswith("eval") and isinstance(v, (int, float)) and not isinstance(v, bool):
                keys[k] = None
    head = "| metric | " + " | ".join(f"step {r['step']}" for r in evals) + " |"
    lines = [head, "|---" * (len(evals) + 1) + "|"]
    for k in keys:
        lines.append(f"| `{k}` | " + " | ".join(_fmt(r[k]) if k in r else "" for r in evals) + " |")
    return "\n".join(lines) + "\n"


def _usage(settings: dict[str, Any], path: str, moving_average: bool) -> str:
    base = settings.get("model_name_or_path")
    if settings.get("policy") == "shapes":
        editing = base == "edit" or settings.get("dataset") == "shapes_edit"
        model = {"t2i": "shapes-t2i", "edit": "shapes-edit"}.get(str(base), f"shapes:{base}")
        if editing:
            commands = [
                f'arr shapes edit examples/source.png "make the red circle green" --policy {base} --lora {path}',
                f"arr eval eval/shapes_edit.yaml --policy {model} --lora {path} --out runs/eval/lora",
            ]
        else:
            commands = [
                f'arr shapes sample "a red circle and a blue square" --policy {base} --lora {path}',
                f"arr eval eval/shapes_geneval.yaml --policy {model} --lora {path} --out runs/eval/lora",
            ]
        text = "The shapes world's models are arr's own; sample or evaluate them with the LoRA:\n\n```bash\n"
        text += "\n".join(commands) + "\n```\n"
    else:
        text = (
            "```python\nimport torch\nfrom diffusers import DiffusionPipeline\n\n"
            f'pipe = DiffusionPipeline.from_pretrained("{base or "BASE_MODEL"}", torch_dtype=torch.bfloat16)\n'
            f'pipe.load_lora_weights("{path}")\n```\n\n'
            f"or evaluate it with arr: `arr eval SUITE.yaml --policy {base or 'BASE_MODEL'} --lora {path}`.\n"
        )
    if moving_average:
        text += (
            f"\nThe moving average of the LoRA, which sampled the training images, is in `{MOVING_AVERAGE_DIR}/` in "
            f"the same format (`--lora {path}/{MOVING_AVERAGE_DIR}`).\n"
        )
    return text


def model_card(
    run_config: dict[str, Any],
    step: int,
    evals: Sequence[dict[str, Any]],
    path: str,
    *,
    lora_file: bool = True,
    moving_average: bool = False,
) -> str:
    """The README.md text of checkpoint `path` at `step`: `evals` are the metrics rows with an evaluation up to
    `step`; `lora_file` says whether the folder holds the diffusers-format file."""
    settings = run_settings(run_config)
    base = settings.get("model_name_or_path")
    if settings.get("policy") == "shapes":  # arr's own model: no Hub base model, no diffusers pipeline
        front = ["---", "library_name: arr"]
        title = f"# LoRA for the shapes-world model `{base}`"
    else:
        front = ["---", f"base_model: {base}" if base else None, "library_name: diffusers"]
        title = f"# LoRA for {base}" if base else "# LoRA"
    front += ["tags:", "- lora", "- arr", "- rubric-policy-optimization", "---"]
    rank, alpha = settings.get("lora_rank"), settings.get("lora_alpha")
    intro = (
        f"A LoRA (rank {rank}, alpha {alpha}) trained for {step} steps with arr's Rubric Policy Optimization: "
        f"the `{settings.get('objective', 'policy_gradient')}` update on rewards from rubric judgments by the "
        f"`{settings.get('judge_backend', '?')}` judge"
        + (f" (`{settings['judge_model']}`)" if settings.get("judge_model") else "")
        + ".\n"
    )
    parts = ["\n".join(line for line in front if line is not None), "", title, "", intro]
    if lora_file:
        parts += ["## Use", "", _usage(settings, path, moving_average)]
    parts += ["## Held-out scores", "", _scores_table(evals)]
    listed = {k: settings[k] for k in CARD_SETTINGS if settings.get(k) is not None}
    parts += ["## Recipe", "", "| setting | value |", "|---|---|"]
    parts += [f"| `{k}` | {_fmt(v)} |" for k, v in listed.items()]
    parts += ["", "Every setting is in the run's `config.yaml`, two folders up.", "", "## Files", ""]
    if lora_file:
        parts.append(
            "- `pytorch_lora_weights.safetensors`: the LoRA in diffusers' format (rank, alpha and targets in its header)."
        )
    if moving_average:
        parts.append(
            f"- `{MOVING_AVERAGE_DIR}/pytorch_lora_weights.safetensors`: the moving average, same format."
        )
    parts.append(
        "- `lora.safetensors`, `sampling_lora.safetensors`, accelerate's state (`optimizer.bin`, `scheduler.bin`, "
        "`random_states_*.pkl`, and under FSDP the sharded network and optimizer) and `trainer_state.json`: arr's "
        "state to resume training (`--resume_from_checkpoint`)."
    )
    return "\n".join(parts) + "\n"


def write_model_card(folder: Path, text: str) -> Path:
    path = Path(folder) / "README.md"
    path.write_text(text, encoding="utf-8")
    return path


__all__ = ["CARD_SETTINGS", "MOVING_AVERAGE_DIR", "model_card", "run_settings", "write_model_card"]
