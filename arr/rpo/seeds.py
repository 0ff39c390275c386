"""Seeds derived from (run seed, step, index): every random draw of a run is a pure function of what it is for.

A group's sampling noise, a minibatch's order and the forward objective's noise levels each come from their own
generator seeded by `seed_for(...)`, so results do not depend on how groups are split over processes, on chunking
or on resuming. The salts below keep streams that would otherwise share their integers apart.
"""

from __future__ import annotations

# FNV-1a (64-bit) offset basis and prime: a fixed hash, the same in every process and Python version.
_FNV_OFFSET = 1469598103934665603
_FNV_PRIME = 1099511628211

# The LoRA's initial weights: seeded identically on every process, so ranks start from the same adapter.
LORA_INIT_SALT = 0xA11
# The shuffled order of the training records in each epoch.
DATA_ORDER_SALT = 0xDA7A
# The held-out evaluation's noise per prompt: fixed for the whole run, so evaluations compare like with like.
EVAL_NOISE_SALT = 0xE7A1
# The forward objective's noise levels and noise per group, kept apart from the group's sampling noise, which is
# seeded with the same (seed, step, group index) and no salt.
FORWARD_DRAWS_SALT = 1_000_003
# The policy gradient's random subset of each sample's transitions (timestep_sample_fraction < 1).
TIMESTEP_SUBSET_SALT = 1_000_033


def seed_for(*parts: int) -> int:
    """A 63-bit seed from integers, stable across processes and Python versions."""
    h = _FNV_OFFSET
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFFFFFFFFFF)) * _FNV_PRIME) & 0x7FFFFFFFFFFFFFFF
    return h


__all__ = [
    "DATA_ORDER_SALT",
    "EVAL_NOISE_SALT",
    "FORWARD_DRAWS_SALT",
    "LORA_INIT_SALT",
    "TIMESTEP_SUBSET_SALT",
    "seed_for",
]
