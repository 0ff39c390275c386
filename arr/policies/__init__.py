"""Flow-matching policies with an SDE sampler and exact transition log-probabilities.

`make_policy("sd3" | "flux" | "qwen_image" | "shapes", **kwargs)` builds one by short name or dotted path
("package.module:Class"); each family module is imported only when asked for, so `import arr.policies` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from arr.policies.base import Conditioning, FlowMatchingPolicy, FlowPolicy, Trajectory, Transition

# Short name -> "module:Class", imported lazily.
POLICIES: dict[str, str] = {
    "sd3": "arr.policies.sd3:SD3Policy",
    "flux": "arr.policies.flux:FluxPolicy",
    "qwen_image": "arr.policies.qwen_image:QwenImagePolicy",
    "shapes": "arr.policies.shapes:ShapesPolicy",
}


def policy_class(name: str) -> type:
    """The policy class for a registry name or a dotted path ("package.module:Class")."""
    target = POLICIES.get(name, name)
    if ":" not in target:
        raise ValueError(
            f"unknown policy family {name!r}; expected one of {sorted(POLICIES)} or 'module:Class'"
        )
    module_name, cls_name = target.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ValueError(f"policy family {name!r}: cannot import {module_name} ({e})") from None
    try:
        return getattr(module, cls_name)
    except AttributeError:
        raise ValueError(f"policy family {name!r}: {module_name} has no class {cls_name}") from None


def make_policy(family: str, **kwargs: Any) -> FlowPolicy:
    """Create a policy: `make_policy("flux", model_id=...)` loads real weights via the class's from_pretrained
    when `model_id` is given; otherwise the keyword arguments go to the constructor (tiny models in tests)."""
    cls = policy_class(family)
    if "model_id" in kwargs:
        return cls.from_pretrained(**kwargs)
    return cls(**kwargs)


__all__ = [
    "POLICIES",
    "Conditioning",
    "FlowMatchingPolicy",
    "FlowPolicy",
    "Trajectory",
    "Transition",
    "make_policy",
    "policy_class",
]
