"""The models under evaluation behind one call each: `edit(sources, instructions, seeds) -> images` for editing
benchmarks, `generate(prompts, seeds) -> images` for text-to-image suites.

`build_editor(spec)` turns `arr eval --policy SPEC` into an editor (`build_generator(spec)` into a generator):
- `shapes-edit` / `shapes-t2i`: the shipped shapes editing / text-to-image model (arr/shapes/assets); `shapes:NAME`
  or `shapes:FOLDER` or a folder with `shapes_config.json`: a shipped name or a shapes model written by
  `arr.shapes.models.save_pretrained`.
- `FAMILY:MODEL_ID` with a family of `arr.policies.POLICIES` (`qwen_image:Qwen/Qwen-Image-Edit`,
  `flux:black-forest-labs/FLUX.1-dev`): our FlowPolicy adapter, sampled with the ODE (eta 0).
- anything else: a diffusers pipeline id or folder (`Qwen/Qwen-Image-Edit-2509`, `black-forest-labs/FLUX.1-dev`),
  called as users call it: `pipe(prompt=..., generator=..., **policy_kwargs)` (editing: `image=...` too), one image
  at a time so every source keeps its own size.
`lora` is a LoRA folder: an RPO checkpoint `RUN/checkpoints/step_N` (or its `moving_average/`) or any diffusers LoRA;
policies load it with `load_lora_weights`, pipelines with diffusers' own `load_lora_weights`, and either way a LoRA
that loads nothing is an error. Each sample's noise depends only on its seed, so results do not depend on batching
and a resumed run regenerates exactly what it lost.
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


class Generator(Protocol):
    """A text-to-image model under evaluation."""

    name: str

    def fingerprint(self) -> str: ...

    def generate(self, prompts: Sequence[str], seeds: Sequence[int]) -> list[Image.Image]: ...


class PolicyEditor:
    """Any `FlowPolicy` (shapes, SD3, FLUX, Qwen-Image adapters): encode, sample the ODE, decode; it edits or
    generates as its model does."""

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
        return self._sample(list(instructions), list(sources), seeds)

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], seeds: Sequence[int]) -> list[Image.Image]:
        return self._sample(list(prompts), None, seeds)

    def _sample(
        self, prompts: list[str], sources: list[Image.Image] | None, seeds: Sequence[int]
    ) -> list[Image.Image]:
        cond = self.policy.encode(prompts, sources)
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        traj = self.policy.sample(cond, eta=self.eta, generators=generators, **self.sample_kwargs)
        return self.policy.decode(traj.final)


class DiffusersEditor:
    """A diffusers pipeline, called per image: an editing one (QwenImageEditPipeline, FluxKontextPipeline, ...)
    edits, a text-to-image one generates."""

    def __init__(self, pipeline: Any, name: str, **call_kwargs: Any) -> None:
        self.pipeline, self.name, self.call_kwargs = pipeline, name, call_kwargs
        self.lora: str | None = None  # stamp of loaded LoRA weights (see load_pipeline_lora)

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
        settings = {**self.call_kwargs, "lora": self.lora} if self.lora else self.call_kwargs
        return f"diffusers:{self.name}:{json.dumps(settings, sort_keys=True, default=str)}"

    def edit(
        self, sources: Sequence[Image.Image], instructions: Sequence[str], seeds: Sequence[int]
    ) -> list[Image.Image]:
        return [
            self._call(seed, image=source, prompt=instruction)
            for source, instruction, seed in zip(sources, instructions, seeds, strict=True)
        ]

    def generate(self, prompts: Sequence[str], seeds: Sequence[int]) -> list[Image.Image]:
        return [self._call(seed, prompt=prompt) for prompt, seed in zip(prompts, seeds, strict=True)]

    def _call(self, seed: int, **inputs: Any) -> Image.Image:
        device = getattr(self.pipeline, "device", torch.device("cpu"))
        generator = torch.Generator(device=device).manual_seed(int(seed))
        return self.pipeline(generator=generator, **inputs, **self.call_kwargs).images[0]


def load_lora(policy: Any, checkpoint: str | Path, alpha: float | None = None) -> str:
    """Add the LoRA in `checkpoint` to `policy` (see `FlowPolicy.load_lora_weights`); returns a stamp of its weights
    and alpha for the evaluation's fingerprint."""
    from arr.policies.lora import lora_stamp

    return lora_stamp(policy.load_lora_weights(checkpoint, alpha))


def load_pipeline_lora(pipeline: Any, lora: str | Path) -> str:
    """Load a LoRA folder or file into a diffusers pipeline with its own `load_lora_weights`; returns a stamp.

    diffusers only warns when a file matches none of the pipeline's modules, which would score the base model
    under the LoRA's name: here that is an error."""
    from arr.policies.lora import LORA_WEIGHTS_NAME, lora_stamp, read_lora_weights

    path = Path(lora)
    if path.is_dir() and not (path / LORA_WEIGHTS_NAME).is_file():
        raise ValueError(
            f"--lora {lora}: no {LORA_WEIGHTS_NAME} there; a diffusers pipeline loads that file (RPO checkpoints "
            "hold one)"
        )
    weights = read_lora_weights(path)  # the file diffusers picks, for the stamp
    before = sum(len(v) for v in pipeline.get_list_adapters().values())
    pipeline.load_lora_weights(str(lora))
    if sum(len(v) for v in pipeline.get_list_adapters().values()) == before:
        raise ValueError(
            f"--lora {lora}: the pipeline loaded no LoRA layers from it (a LoRA of another model?)"
        )
    return lora_stamp(weights)


SHAPES_DEFAULTS = {"num_steps": 20, "guidance_scale": 1.5}  # arr.shapes.sample's defaults
SHAPES_SHIPPED = {"shapes-edit": "edit", "shapes-t2i": "t2i"}


def build_editor(
    spec: str,
    device: str | None = None,
    torch_dtype: str = "bfloat16",
    lora: str | Path | None = None,
    lora_alpha: float | None = None,
    task: str = "edit",
    **kwargs: Any,
) -> Any:
    """The model for `arr eval --policy SPEC` (see the module docstring), an `Editor` for `task` "edit" and a
    `Generator` for "t2i"; `kwargs` are policy settings (shapes / FlowPolicy: num_steps, guidance_scale, ...) or
    pipeline call arguments (diffusers). `lora` is a LoRA folder (an RPO checkpoint, or diffusers LoRA weights)."""
    from arr.policies import POLICIES
    from arr.shapes.models import CONFIG_NAME

    family, _, model_id = spec.partition(":")
    if spec in SHAPES_SHIPPED or family == "shapes" or (Path(spec) / CONFIG_NAME).is_file():
        return _with_lora(_shapes_editor(spec, family, model_id, device, task, kwargs), lora, lora_alpha)
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
        editor.lora = load_pipeline_lora(editor.pipeline, lora)
        editor.name = f"{spec}+{lora}"
    return editor


def build_generator(spec: str, **kwargs: Any) -> Generator:
    """A text-to-image model for `arr eval --policy SPEC` on a text-to-image suite (`build_editor`'s arguments)."""
    return build_editor(spec, task="t2i", **kwargs)


def _shapes_editor(
    spec: str, family: str, model_id: str, device: str | None, task: str, kwargs: dict[str, Any]
) -> PolicyEditor:
    from arr.policies.shapes import ShapesPolicy

    model = SHAPES_SHIPPED.get(spec) or (model_id if family == "shapes" else spec)
    settings = {**SHAPES_DEFAULTS, **kwargs}
    try:
        policy = ShapesPolicy.from_pretrained(model, device=device or "cpu", **settings)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot load the shapes model {model!r}: {e}") from None
    if policy.model.task != task:
        kind = {"edit": "an editing", "t2i": "a text-to-image"}
        raise ValueError(
            f"shapes model {model!r} is {kind.get(policy.model.task, policy.model.task)} model; this suite needs "
            f"{kind.get(task, task)} model (e.g. --policy {'shapes-edit' if task == 'edit' else 'shapes-t2i'})"
        )
    return PolicyEditor(policy, spec)


def _with_lora(editor: PolicyEditor, lora: str | Path | None, alpha: float | None) -> PolicyEditor:
    if lora is not None:
        editor.lora = load_lora(editor.policy, lora, alpha)
        editor.name = f"{editor.name}+{lora}"
    return editor


__all__ = [
    "DiffusersEditor",
    "Editor",
    "Generator",
    "PolicyEditor",
    "build_editor",
    "build_generator",
    "load_lora",
    "load_pipeline_lora",
]
