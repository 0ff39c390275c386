"""Rubric Policy Optimization: `RPOConfig` + `RPOTrainer` (accelerate), recipes, callbacks and checkpoints."""

from arr.data import PromptRecord
from arr.rpo.config import ConfigError, RPOConfig
from arr.rpo.trainer import RPOTrainer, TrainerCallback, TrainingStopped

__all__ = ["ConfigError", "PromptRecord", "RPOConfig", "RPOTrainer", "TrainerCallback", "TrainingStopped"]
