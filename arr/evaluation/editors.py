"""Editing models behind one call, `edit(sources, instructions, seeds) -> images`, for the benchmark runner.

`build_editor(spec)` turns `arr eval --policy SPEC` into an editor:
- `shapes-edit`: the shipped shapes editing model (arr/shapes/assets/edit); `shapes:FOLDER` or a folder with
  `shapes_config.json`: a shapes model written by `arr.shapes.models.save_pretrained`.
- `FAMILY:MODEL_ID` with a family of `arr.policies.POLICIES` (`qwen_image:Qwen/Qwen-Image-Edit`,
  `flux:black-forest-labs/FLUX.1-Kontext-dev`): our FlowPolicy adapter, sampled with the ODE (eta 0).
- anything else: a diffusers pipeline id or folder (`Qwen/Qwen-Image-Edit-2509`,
  `black-forest-labs/FLUX.1-Kontext-dev`), called as users call it: `pipe(image=..., prompt=..., generator=...,
  **policy_kwargs)`, one image at a time so every source keeps its own size.
Each sample's noise depends only on its seed, so results do not depend on batching and a resumed run regenerates
exactly what it lost.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image


class Editor(Protocol):
    name: str

    def fingerprint(self) -> str: ...

    def edit(
        self, sources: Sequence[Image.Image], instructions: Sequence[str], seeds: Sequence[int]
    ) -> list[Image.Image]: ...


class PolicyEditor:
    """Any `FlowPolicy` (shapes, Qwen-Image-Edit, FLUX-Kontext adapters): encode, sample the ODE, decode."""

    def __init__(self, policy: Any, name: str, eta: float = 0.0, **sample_kwargs: Any) -> None:
        self.policy, self.name, self.eta, self.sample_kwargs = policy, name, float(eta), sample_kwargs
        self.lora: str | None = None  # stamp of loaded LoRA weights (see load_lora)

    def fingerprint(self) -> str:
        settings = {
            "eta": self.eta,
            "num_steps": getattr(self.policy, "num_steps", None),
            "guidance_scale": getattr(self.policy, "guidance_scale", None),
            "lora": self.lora,
            **self.sample_kwargs,
        }
        return f"policy:{self.name}:{json.dumps(settings, sort_keys=True, default=str)}"

    @torch.no_grad()
    def edit(
        self, sources: Sequence[Image.Image], instructions: Sequence[str], seeds: Sequence[int]
    ) -> list[Image.Image]:
        cond = self.policy.encode(list(instructions), list(sources))
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        traj = self.policy.sample(cond, eta=self.eta, generators=generators, **self.sample_kwargs)
        return self.policy.decode(traj.final)


class DiffusersEditor:
    """A diffusers editing pipeline (QwenImageEditPipeline, FluxKontextPipeline, ...), called per image."""

    def __init__(self, pipeline: Any, name: str, **call_kwargs: Any) -> None:
        self.pipeline, self.name, self.call_kwargs = pipeline, name, call_kwargs

    @classmethod
    def from_pretrained(
        cls, model_id: str, torch_dtype: str = "bfloat16", device: str = "cuda", **call_kwargs: Any
    ) -> DiffusersEditor:
        from diffusers import DiffusionPipeline

        dtype = getattr(torch, torch_dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(
                f"--policy-dtype {torch_dtype!r} is not a torch dtype; use bfloat16, float16 or float32"
            )
        try:
            pipe = DiffusionPipeline.from_pretrained(model_id, torch_dtype=dtype).to(device)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot load the diffusers pipeline {model_id!r}: {e}") from None
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe, model_id, **call_kwargs)

    def fingerprint(self) -> str:
        return f"diffusers:{self.name}:{json.dumps(self.call_kwargs, sort_keys=True, default=str)}"

    def edit(
        self, sources: Sequence[Image.Image], instructions: Sequence[str], seeds: Sequence[int]
    ) -> list[Image.Image]:
        device = getattr(self.pipeline, "device", torch.device("cpu"))
        out = []
        for source, instruction, seed in zip(sources, instructions, seeds, strict=True):
            generator = torch.Generator(device=device).manual_seed(int(seed))
            result = self.pipeline(image=source, prompt=instruction, generator=generator, **self.call_kwargs)
            out.append(result.images[0])
        return out


def load_lora(policy: Any, checkpoint: str | Path, alpha: float | None = None) -> str:
    """Load an RPO checkpoint's LoRA (`checkpoints/step_N/lora.safetensors`) into `policy`; returns a stamp for the
    fingerprint. The rank and target modules are read from the weights; alpha from the run's config.yaml beside
    `checkpoints/` unless given."""
    import hashlib

    import yaml
    from safetensors.torch import load_file

    path = Path(checkpoint)
    file = path / "lora.safetensors" if path.is_dir() else path
    if not file.is_file():
        raise ValueError(
            f"--lora {checkpoint}: no lora.safetensors there (expected an RPO checkpoints/step_N folder)"
        )
    state = load_file(str(file))
    a_keys = [k for k in state if ".lora_A." in k]
    if not a_keys:
        raise ValueError(f"--lora {file}: no LoRA weights (no '.lora_A.' keys)")
    rank = int(state[a_keys[0]].shape[0])
    targets = sorted({k.split(".lora_A.")[0] for k in a_keys})
    if alpha is None:
        config = file.parent.parent.parent / "config.yaml"
        try:
            alpha = float(yaml.safe_load(config.read_text(encoding="utf-8"))["lora_alpha"])
        except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
            raise ValueError(
                f"--lora {file}: cannot read lora_alpha from {config}; pass it with --lora-alpha"
            ) from None
    policy.add_lora(rank, alpha, targets)
    policy.load_lora_state_dict(state)
    return f"lora:{hashlib.sha256(file.read_bytes()).hexdigest()[:16]}:r{rank}:a{alpha:g}"


SHAPES_DEFAULTS = {"num_steps": 20, "guidance_scale": 1.5}  # arr.shapes.sample's defaults


def build_editor(
    spec: str,
    device: str | None = None,
    torch_dtype: str = "bfloat16",
    lora: str | Path | None = None,
    lora_alpha: float | None = None,
    **kwargs: Any,
) -> Editor:
    """An editor for `arr eval --policy SPEC` (see the module docstring); `kwargs` are policy settings
    (shapes / FlowPolicy: num_steps, guidance_scale, ...) or pipeline call arguments (diffusers). `lora` is an RPO
    checkpoint folder (FlowPolicy editors) or LoRA weights diffusers' `load_lora_weights` reads (pipelines)."""
    from arr.policies import POLICIES
    from arr.shapes.models import CONFIG_NAME

    family, _, model_id = spec.partition(":")
    shapes_folder = Path(spec) / CONFIG_NAME
    if spec == "shapes-edit" or family == "shapes" or shapes_folder.is_file():
        from arr.policies.shapes import ShapesPolicy

        model = "edit" if spec == "shapes-edit" else (model_id if family == "shapes" else spec)
        settings = {**SHAPES_DEFAULTS, **kwargs}
        try:
            policy = ShapesPolicy.from_pretrained(model, device=device or "cpu", **settings)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot load the shapes editing model {model!r}: {e}") from None
        if policy.model.task != "edit":
            raise ValueError(
                f"shapes model {model!r} is a text-to-image model; --policy needs an editing model"
            )
        return _with_lora(PolicyEditor(policy, spec), lora, lora_alpha)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if model_id and family in POLICIES:
        from arr.policies import make_policy

        dtype = getattr(torch, torch_dtype, None)
        try:
            policy = make_policy(family, model_id=model_id, torch_dtype=dtype, device=device, **kwargs)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot load policy {family!r} from {model_id!r}: {e}") from None
        return _with_lora(PolicyEditor(policy, spec), lora, lora_alpha)
    editor = DiffusersEditor.from_pretrained(spec, torch_dtype=torch_dtype, device=device, **kwargs)
    if lora is not None:
        editor.pipeline.load_lora_weights(str(lora))
        editor.name = f"{spec}+{lora}"
    return editor


def _with_lora(editor: PolicyEditor, lora: str | Path | None, alpha: float | None) -> PolicyEditor:
    if lora is not None:
        editor.lora = load_lora(editor.policy, lora, alpha)
        editor.name = f"{editor.name}+{lora}"
    return editor


__all__ = ["DiffusersEditor", "Editor", "PolicyEditor", "build_editor", "load_lora"]
