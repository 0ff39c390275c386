"""Flow-matching policies with an SDE sampler and exact transition log-probabilities.

`FlowMatchingPolicy` (base.py) holds conditioning, sampling, transitions, CFG and LoRA once; `LatentFlowPolicy`
(latent.py) adds what the diffusers latent-space families share (VAE, latent packing, pipeline text encoding), and
each family module keeps only what differs.

`make_policy("sd3" | "flux" | "qwen_image" | "shapes", **kwargs)` builds one by short name or dotted path
("package.module:Class"); each family module is imported only when asked for, so `import arr.policies` stays light.
"""

from __future__ import annotations

from typing import Any

from arr.policies.base import Conditioning, FlowMatchingPolicy, FlowPolicy, Trajectory, Transition
from arr.policies.latent import LatentFlowPolicy
from arr.registry import resolve

# Short name -> "module:Class", imported lazily.
POLICIES: dict[str, str] = {
    "sd3": "arr.policies.sd3:SD3Policy",
    "flux": "arr.policies.flux:FluxPolicy",
    "qwen_image": "arr.policies.qwen_image:QwenImagePolicy",
    "shapes": "arr.policies.shapes:ShapesPolicy",
}


def policy_class(name: str, *, allow_import_path: bool = True) -> type:
    """The policy class for a registry name or a dotted path ("package.module:Class") to a FlowPolicy class;
    `allow_import_path=False` (a name from a data file, e.g. a recipe) accepts registry names only."""
    return resolve(POLICIES, name, "policy family", allow_import_path=allow_import_path, expected=FlowPolicy)


def make_policy(family: str, *, allow_import_path: bool = True, **kwargs: Any) -> FlowPolicy:
    """Create a policy: `make_policy("flux", model_id=...)` loads real weights via the class's from_pretrained
    when `model_id` is given; otherwise the keyword arguments go to the constructor (tiny models in tests)."""
    cls = policy_class(family, allow_import_path=allow_import_path)
    if "model_id" in kwargs:
        return cls.from_pretrained(**kwargs)
    return cls(**kwargs)


__all__ = [
    "POLICIES",
    "Conditioning",
    "FlowMatchingPolicy",
    "FlowPolicy",
    "LatentFlowPolicy",
    "Trajectory",
    "Transition",
    "make_policy",
    "policy_class",
]
