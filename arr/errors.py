"""Errors raised by more than one layer of arr.

`ConfigError` is what a run's inputs get when they are wrong: a recipe value, a dataset row, a run directory. The
data layer raises it as well as the trainer, so it lives below both; `arr.rpo.ConfigError` is the same class.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """An invalid training configuration; the message names the field (or the input), the value and the fix."""


__all__ = ["ConfigError"]
