"""RPOConfig: every field documented (help text and the class docstring's Parameters section), every float field
refuses NaN and infinity, and each check names the field that is actually wrong."""

from __future__ import annotations

import dataclasses
import re
import typing

import pytest

from arr.rpo import ConfigError, RPOConfig

FIELDS = dataclasses.fields(RPOConfig)
# Resolved types: `Field.type` is a string until an argument parser resolves the annotations in place.
TYPES = typing.get_type_hints(RPOConfig)


def type_name(name: str) -> str:
    """ "str" for `str` and for `str | None`."""
    args = typing.get_args(TYPES[name])
    return (args[0] if args else TYPES[name]).__name__


def test_every_field_has_help_and_a_typed_docstring_entry():
    doc = RPOConfig.__doc__
    params = doc[doc.index("Parameters:") :]
    for f in FIELDS:
        assert f.metadata.get("help"), f"{f.name} has no help text"
        entry = re.search(rf"^\s+{f.name} \(`([^`]+)`.*defaults to `([^`]+)`", params, re.MULTILINE)
        assert entry, f"{f.name} is not documented in the Parameters section"
        assert entry.group(1) == type_name(f.name), (f.name, entry.group(1))
        documented = entry.group(2)
        if isinstance(f.default, float):
            assert float(documented) == f.default, (f.name, documented)
        else:
            assert documented == (f'"{f.default}"' if isinstance(f.default, str) else str(f.default)), f.name
    # Grouped by stage, in the order the fields are declared.
    order = [m.group(1) for m in re.finditer(r"^        (\w+) \(`", params, re.MULTILINE)]
    assert order == [f.name for f in FIELDS]
    assert [m.group(1) for m in re.finditer(r"> (.+)", params)] == [
        "Run", "Sampling", "Reward", "Loss", "Optimisation", "Evaluation, logging and checkpoints",
    ]  # fmt: skip


FLOAT_FIELDS = [f.name for f in FIELDS if TYPES[f.name] is float]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("name", FLOAT_FIELDS)
def test_non_finite_floats_are_refused_by_name(name, value):
    assert len(FLOAT_FIELDS) >= 19  # every float field, not a hand-picked few
    with pytest.raises(ConfigError, match=rf"^RPOConfig\.{name}=.*must be a finite number"):
        RPOConfig(**{name: value})


@pytest.mark.parametrize(
    ("kwargs", "field", "rule"),
    [
        ({"forward_beta": 0.0}, "forward_beta", "must be > 0"),
        ({"forward_timesteps": 0}, "forward_timesteps", "must be >= 1"),
        ({"forward_t_min": -0.1}, "forward_t_min", r"must be in \[0, 1\)"),
        ({"lora_rank": 0}, "lora_rank", ">= 1"),
        ({"lora_alpha": 0}, "lora_alpha", "must be > 0"),
        ({"num_minibatches": 0}, "num_minibatches", "must be >= 1"),
        ({"num_inner_epochs": 0}, "num_inner_epochs", "must be >= 1"),
        ({"train_batch_size": 0}, "train_batch_size", "must be positive"),
        ({"sample_batch_size": 0}, "sample_batch_size", "must be positive"),
        ({"adam_epsilon": -1e-8}, "adam_epsilon", "must be >= 0"),
        ({"weight_decay": -0.01}, "weight_decay", "must be >= 0"),
        ({"adam_beta1": 1.0}, "adam_beta1", r"must be in \[0, 1\)"),
        ({"adam_beta2": -0.5}, "adam_beta2", r"must be in \[0, 1\)"),
        ({"max_grad_norm": 0.0}, "max_grad_norm", "must be positive"),
        ({"save_total_limit": 0}, "save_total_limit", "must be >= 1"),
        ({"warmup_steps": -1}, "warmup_steps", "must be >= 0"),
        ({"eval_num_sampling_steps": 0}, "eval_num_sampling_steps", "must be positive"),
        ({"nan_policy": "ignore"}, "nan_policy", "must be one of"),
        ({"objective": "dpo"}, "objective", r"registered objective, one of \['forward', 'policy_gradient'\]"),
    ],
)
def test_each_check_names_the_wrong_field(kwargs, field, rule):
    with pytest.raises(ConfigError, match=rf"^RPOConfig\.{field}=.*{rule}"):
        RPOConfig(**kwargs)


def test_valid_edge_values_pass():
    RPOConfig(weight_decay=0.0, adam_epsilon=0.0, warmup_steps=0, save_total_limit=1, nan_policy="skip_step")
    RPOConfig(objective="forward", eta=0.0, shared_noise=False, forward_t_min=0.0)
