"""AlignmentProbe: log how aligned the policy's representation is with the judge's while RPO trains.

Does training against a judge pull the policy toward the judge's view of the world? Every `align_every` steps the
probe samples a fixed set of prompts with fixed seeds (ODE, so the images depend only on the weights), and
compares two feature sets of those final samples:

- policy: the pooled (token-mean) image-stream hidden states of chosen transformer blocks, read with forward
  hooks while the policy's velocity is evaluated on the final sample noised to a fixed small sigma (fixed noise);
- judge: the judge backend's `features(images)` (the hf backend's pooled vision features, the pixel backend's
  detected-attribute vector), one layer or several.

It logs `align/<metric>` (the maximum over (policy layer, judge layer) pairs, as the Platonic Representation
paper reports model alignment), `align/<metric>_layer` (the pair, "policy_layer|judge_layer") and
`align_seconds` into the step's metrics row, so they reach metrics.jsonl, the trackers and report.html.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from arr.data import PromptRecord, as_record
from arr.diagnostics.alignment import KNN_METRICS, METRICS, Features, max_alignment
from arr.rpo.trainer import RPOTrainer, TrainerCallback

JudgeFeatures = Callable[[Sequence[Image.Image]], Any]

# Module-list attributes that hold a diffusion transformer's blocks (SD3/FLUX/Qwen-Image double-stream blocks,
# then FLUX's single-stream blocks), in forward order.
BLOCK_LISTS: tuple[str, ...] = ("transformer_blocks", "single_transformer_blocks")


def transformer_blocks(transformer: nn.Module) -> dict[str, nn.Module]:
    """{"transformer_blocks.3": block, ...} of a diffusers transformer (a peft wrapper is looked through)."""
    blocks: dict[str, nn.Module] = {}
    for list_name in BLOCK_LISTS:
        for name, module in transformer.named_modules():
            if (name == list_name or name.endswith("." + list_name)) and isinstance(module, nn.ModuleList):
                blocks.update({f"{list_name}.{i}": b for i, b in enumerate(module)})
                break
    return blocks


def _pool(output: Any) -> Tensor:
    """[B, D] from a block's output: its image stream (the last tensor of a tuple), averaged over tokens."""
    if isinstance(output, (tuple, list)):
        tensors = [t for t in output if isinstance(t, Tensor)]
        if not tensors:
            raise TypeError(f"a probed block returned {type(output).__name__} without tensors")
        output = tensors[-1]
    if not isinstance(output, Tensor):
        raise TypeError(
            f"a probed block returned {type(output).__name__}, expected a tensor or a tuple of them"
        )
    x = output.detach().float()
    if x.dim() == 3:  # [B, tokens, D]
        return x.mean(dim=1)
    if x.dim() == 4:  # [B, C, H, W]
        return x.mean(dim=(2, 3))
    return x.reshape(x.shape[0], -1)


def judge_layers(output: Any) -> dict[str, Any]:
    """Judge features as {layer name: [N, D]}: a mapping, an [N, D] array, an [L, N, D] array or a list."""
    if isinstance(output, Mapping):
        return dict(output)
    if isinstance(output, (np.ndarray, Tensor)):
        if output.ndim == 2:
            return {"judge": output}
        if output.ndim == 3:
            return {f"judge.{i}": output[i] for i in range(output.shape[0])}
    if isinstance(output, (list, tuple)) and output:
        return {f"judge.{i}": x for i, x in enumerate(output)}
    shape = getattr(output, "shape", None)
    raise TypeError(
        f"judge features must be [N, D], [L, N, D], a list of [N, D] or a {{name: [N, D]}} mapping; got "
        f"{type(output).__name__}{'' if shape is None else f' of shape {tuple(shape)}'}"
    )


def backend_features(trainer: RPOTrainer) -> JudgeFeatures:
    """The judge backend's `features` method, looking through wrappers (`.inner`, `.backend`)."""
    return judge_features_of(getattr(trainer.reward, "judge", None))


def judge_features_of(judge: Any) -> JudgeFeatures:
    """`judge`'s `features` method, looking through wrappers (`.inner`, `.backend`); TypeError if it has none (a
    remote judge behind an OpenAI-compatible server shows no image features)."""
    obj: Any = judge
    seen = []
    while obj is not None and len(seen) < 8:
        seen.append(type(obj).__name__)
        fn = getattr(obj, "features", None)
        if callable(fn):
            return fn
        obj = getattr(obj, "backend", None) or getattr(obj, "inner", None)
    raise TypeError(
        f"the judge ({' -> '.join(seen) or 'none'}) has no features(images) method; pass "
        "AlignmentProbe(judge_features=...) with a function from PIL images to [N, D] features"
    )


class AlignmentProbe(TrainerCallback):
    """Trainer callback that logs policy-judge representation alignment every `align_every` steps.

    Args:
        records: the probe prompts (PromptRecords, dataset rows or plain prompt strings); default: the first
            `num_prompts` of the trainer's eval set (its train set when it has none).
        num_prompts: probe size N when `records` is not given. The kNN metrics need N > topk; chance-level
            mutual_knn is about topk / N.
        align_every: steps between measurements (on logged steps); the step-0 evaluation gets one too.
        metrics: metric names from `arr.diagnostics.alignment.METRICS` ("all" for every one).
        topk: neighbours for the kNN metrics.
        sigma: the noise level at which the policy reads the final sample (1 = pure noise).
        layers: which blocks to read, as indices into `transformer_blocks` or names like
            "single_transformer_blocks.3"; default: every block.
        num_sampling_steps: ODE steps of the probe's samples; default: the trainer's `num_sampling_steps`.
        seed: seeds the probe's initial and read-out noise (fixed for the whole run).
        judge_features: images -> features; default: the judge backend's `features`.
    """

    def __init__(
        self,
        records: Sequence[Any] | None = None,
        *,
        num_prompts: int = 64,
        align_every: int = 20,
        metrics: str | Sequence[str] = ("mutual_knn", "cknna"),
        topk: int = 10,
        sigma: float = 0.1,
        layers: Sequence[int | str] | None = None,
        num_sampling_steps: int | None = None,
        seed: int = 0,
        judge_features: JudgeFeatures | None = None,
    ) -> None:
        names = (
            list(METRICS) if metrics == "all" else [metrics] if isinstance(metrics, str) else list(metrics)
        )
        unknown = [m for m in names if m not in METRICS]
        if unknown or not names:
            raise ValueError(
                f"AlignmentProbe metrics {unknown or names} unknown; expected some of {list(METRICS)}"
            )
        if align_every < 1:
            raise ValueError(f"AlignmentProbe align_every must be >= 1 step, got {align_every}")
        if not 0.0 <= sigma < 1.0:
            raise ValueError(f"AlignmentProbe sigma must lie in [0, 1) (1 is pure noise), got {sigma}")
        n = len(records) if records is not None else num_prompts
        need = topk + 1 if any(m in KNN_METRICS for m in names) else 4
        if n < max(need, 4):
            raise ValueError(
                f"AlignmentProbe needs more than topk={topk} probe prompts (and at least 4), got {n}; "
                "raise num_prompts or lower topk"
            )
        self.records = None if records is None else [_to_record(r) for r in records]
        self.num_prompts = num_prompts
        self.align_every = align_every
        self.metrics = names
        self.topk = topk
        self.sigma = float(sigma)
        self.layers = None if layers is None else list(layers)
        self.num_sampling_steps = num_sampling_steps
        self.seed = seed
        self.judge_features = judge_features
        self.seconds = 0.0
        self.last: dict[str, Any] = {}

    # ---- trainer hooks -------------------------------------------------------------------------------------

    def on_evaluate(self, trainer: RPOTrainer, step: int, metrics: dict[str, Any]) -> None:
        if step == 0:  # the baseline before any update (later steps are handled by on_step_end)
            metrics.update(self.measure(trainer))

    def on_step_end(self, trainer: RPOTrainer, step: int, metrics: dict[str, Any]) -> None:
        if step % self.align_every == 0:
            metrics.update(self.measure(trainer))

    # ---- measurement ---------------------------------------------------------------------------------------

    def probe_records(self, trainer: RPOTrainer) -> list[PromptRecord]:
        if self.records is None:
            pool = trainer.eval_records or trainer.train_records
            if len(pool) < self.num_prompts:
                raise ValueError(
                    f"AlignmentProbe wants {self.num_prompts} probe prompts but the trainer's "
                    f"{'eval' if trainer.eval_records else 'train'} set has {len(pool)}; pass records= or lower "
                    "num_prompts"
                )
            self.records = list(pool[: self.num_prompts])
        return self.records

    @torch.no_grad()
    def policy_features(self, trainer: RPOTrainer) -> tuple[dict[str, Tensor], list[Image.Image]]:
        """({block name: [N, D] pooled hidden states}, the N probe images) under the policy's current weights."""
        policy = trainer.policy
        if not hasattr(policy, "velocity") or not hasattr(policy, "transformer"):
            raise TypeError(
                f"AlignmentProbe needs a FlowMatchingPolicy (velocity() and .transformer), got {type(policy).__name__}"
            )
        blocks = self._blocks(policy.transformer)
        records = self.probe_records(trainer)
        args = trainer.args
        steps = self.num_sampling_steps or args.num_sampling_steps
        captured: dict[str, list[Tensor]] = {name: [] for name in blocks}
        images: list[Image.Image] = []
        batch = max(1, args.sample_batch_size)
        for start in range(0, len(records), batch):
            chunk = records[start : start + batch]
            cond = policy.encode(
                [r.prompt for r in chunk],
                source_images=[r.source_image for r in chunk] if chunk[0].source_image is not None else None,
            )
            seeds = [self._seed(start + i) for i in range(len(chunk))]
            with trainer.accelerator.autocast():
                traj = policy.sample(
                    cond,
                    group_size=1,
                    num_steps=steps,
                    eta=0.0,
                    guidance_scale=args.guidance_scale,
                    generators=[torch.Generator("cpu").manual_seed(s) for s in seeds],
                )
            final = traj.final
            images.extend(policy.decode(final))
            noise = torch.stack(
                [
                    torch.randn(final.shape[1:], generator=torch.Generator("cpu").manual_seed(s + 1))
                    for s in seeds
                ]
            ).to(final.device, final.dtype)
            noised = (1.0 - self.sigma) * final + self.sigma * noise  # the flow-matching interpolation
            sigma = torch.full((len(chunk),), self.sigma, device=final.device, dtype=torch.float32)
            handles = [
                block.register_forward_hook(_recorder(captured[name])) for name, block in blocks.items()
            ]
            try:
                with trainer.accelerator.autocast():
                    # Guidance 1: only the conditional branch, whose features describe this prompt's image.
                    policy.velocity(noised, sigma, traj.cond, 1.0, traj.extras)
            finally:
                for h in handles:
                    h.remove()
        return {name: torch.cat(parts) for name, parts in captured.items()}, images

    def measure(self, trainer: RPOTrainer) -> dict[str, Any]:
        """Compute the metrics now; returns the keys added to the metrics row."""
        t0 = time.perf_counter()
        features = self.judge_features or backend_features(trainer)
        policy_layers, images = self.policy_features(trainer)
        judge = judge_layers(features(images))
        best = max_alignment(
            {k: Features(v, name=k) for k, v in policy_layers.items()}, judge, self.metrics, self.topk
        )
        out: dict[str, Any] = {}
        for m, (value, pl, jl) in best.items():
            out[f"align/{m}"] = value
            out[f"align/{m}_layer"] = f"{pl}|{jl}"
        seconds = time.perf_counter() - t0
        self.seconds += seconds
        out["align_seconds"] = seconds
        self.last = out
        return out

    # ---- helpers -------------------------------------------------------------------------------------------

    def _seed(self, index: int) -> int:
        # Two seeds per probe sample (initial noise, read-out noise), fixed for the run and independent of batching.
        return (self.seed * 1_000_003 + 2 * index) & 0x7FFFFFFFFFFFFFFF

    def _blocks(self, transformer: nn.Module) -> dict[str, nn.Module]:
        blocks = transformer_blocks(transformer)
        if not blocks:
            raise TypeError(
                f"{type(transformer).__name__} has no {' / '.join(BLOCK_LISTS)} to probe; pass layers=[names] of "
                "its modules"
            )
        if self.layers is None:
            return blocks
        chosen: dict[str, nn.Module] = {}
        modules = dict(transformer.named_modules())
        for layer in self.layers:
            name = f"{BLOCK_LISTS[0]}.{layer}" if isinstance(layer, int) else str(layer)
            module = blocks.get(name) or modules.get(name)
            if module is None:
                raise ValueError(
                    f"AlignmentProbe layer {layer!r} is not a block of {type(transformer).__name__}; "
                    f"blocks: {', '.join(blocks)}"
                )
            chosen[name] = module
        return chosen


def _recorder(store: list[Tensor]) -> Callable[..., None]:
    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        store.append(_pool(output))

    return hook


def _to_record(row: Any) -> PromptRecord:
    if isinstance(row, str):
        from arr.rubrics import Rubric

        # A bare prompt: the probe never judges it, so an empty rubric is enough.
        return PromptRecord(prompt=row, rubric=Rubric(prompt=row, criteria=[]))
    return as_record(row)


__all__ = ["AlignmentProbe", "backend_features", "judge_layers", "transformer_blocks"]
