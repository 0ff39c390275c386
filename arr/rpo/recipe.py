"""Training recipes: a YAML file plus `--key value` overrides, parsed with TRL's parser into dataclasses.

    arr train recipes/shapes_t2i_rpo.yaml --max_steps 4 --learning_rate 1e-4

Resolution order is dataclass defaults -> preset (`rpo_preset`, arr/rpo/presets.py) -> YAML -> command line (as in
TRL scripts, with the preset filling only the keys neither sets); an unknown key in either is an error. Callables
stay out of recipes: the policy, judge and data are named by registry names and plain values.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from arr.rpo.config import ConfigError, RPOConfig


@dataclass
class PolicyArguments:
    """Which diffusion policy to train."""

    policy: str = field(
        default="shapes",
        metadata={
            "help": "policy family: shapes | sd3 | flux | qwen_image (a registered name; Python code passes its own policy to RPOTrainer)"
        },
    )
    model_name_or_path: str = field(
        default="t2i", metadata={"help": "a Hub id or folder; for shapes, the shipped model name (t2i, edit)"}
    )
    lora_target_modules: str = field(
        default="",
        metadata={"help": "comma-separated LoRA target module names (empty: the policy family's default)"},
    )
    torch_dtype: str = field(
        default="float32", metadata={"help": "weights dtype: float32 | bfloat16 | float16"}
    )
    true_cfg_scale: float = field(
        default=1.0,
        metadata={
            "help": "flux, qwen_image: classifier-free guidance with a negative prompt, a second transformer call "
            "per step (the pipelines' true_cfg_scale); 1 turns it off. FLUX's guidance_scale is its embedded "
            "guidance; sd3 and shapes use guidance_scale for CFG"
        },
    )
    integer_timesteps: bool = field(
        default=False,
        metadata={
            "help": "feed the transformer int(1000 sigma) / 1000 instead of sigma, as the authors' release did "
            "(DanceGRPO's integer timesteps); the diffusers pipelines feed sigma"
        },
    )


@dataclass
class JudgeArguments:
    """The judge that gives the reward (and the held-out evaluation score)."""

    judge_backend: str = field(
        default="pixel",
        metadata={"help": "hf | openai | pixel (a registered name; Python code passes its own backend)"},
    )
    judge_model: str | None = field(
        default=None, metadata={"help": "hf: model id/folder; openai: served name"}
    )
    # A YAML list or a string. In this order TRL's parser reads the option as one string (`--judge_base_url A,B`),
    # while the recipe's own value, list or string, is kept as written.
    judge_base_url: list[str] | str | None = field(
        default=None,
        metadata={
            "help": "openai: the server, e.g. http://127.0.0.1:8000/v1; or several servers of the judge model "
            "that share the requests (a YAML list, URLs separated by commas, or a file with one URL per line)"
        },
    )
    judge_api_key_env: str | None = field(
        default=None, metadata={"help": "openai: env var holding the API key"}
    )
    judge_max_concurrency: int | None = field(
        default=None, metadata={"help": "openai: requests in flight at once (default: the backend's, 8)"}
    )
    judge_timeout: float | None = field(
        default=None, metadata={"help": "openai: seconds per HTTP attempt before a retry (default: 60)"}
    )
    judge_dtype: str | None = field(
        default=None, metadata={"help": "hf: torch dtype of the judge (auto, bfloat16, float32, ...)"}
    )
    judge_device: str | None = field(
        default=None, metadata={"help": "hf: device of the judge (auto, cpu, cuda)"}
    )
    judge_mode: str | None = field(
        default=None,
        metadata={"help": "hf: 'probs' (choice-token probabilities) or 'generate' (reasoned answers)"},
    )
    judge_trust_remote_code: bool = field(
        default=False, metadata={"help": "hf: allow the judge model folder's own code"}
    )
    judge_swap: bool = field(
        default=True, metadata={"help": "judge pairs in both orders (ties if inconsistent)"}
    )
    judge_cache: str | None = field(
        default=None, metadata={"help": "judgment cache path (default: <output_dir>/judge_cache.sqlite)"}
    )
    reward: str = field(
        default="rubric",
        metadata={
            "help": "rubric (the judge with each prompt's rubric) | plain (the judge with no rubric) | "
            "reward_model (a trained scorer from `arr reward-model train`: set reward_model)"
        },
    )
    reward_model: str | None = field(
        default=None, metadata={"help": "reward=reward_model: the folder written by `arr reward-model train`"}
    )


@dataclass
class DataArguments:
    """Where training and evaluation prompts (and their rubrics) come from."""

    dataset: str = field(
        default="shapes",
        metadata={
            "help": "'shapes' / 'shapes_edit' (built-in world) or a JSONL file / Hub dataset of prompt records "
            "(editing records add 'source_image': a path relative to the JSONL file, or an image column)"
        },
    )
    train_split: str = field(default="train", metadata={"help": "split for training prompts"})
    eval_split: str = field(default="heldout", metadata={"help": "split for held-out evaluation prompts"})
    num_train_prompts: int = field(default=2000, metadata={"help": "training prompts drawn (shapes world)"})
    category_multipliers: str = field(
        default="",
        metadata={
            "help": "shapes world: scale GenEval's category mix for training prompts, e.g. 'counting=2' "
            "(evaluation keeps the mix)"
        },
    )


@dataclass
class DiagnosticsArguments:
    """Optional diagnostics logged during training, and the run report."""

    align_every: int = field(
        default=0,
        metadata={"help": "log policy-judge representation alignment (align/*) every N steps; 0: off"},
    )
    align_num_prompts: int = field(
        default=64, metadata={"help": "probe prompts for the alignment diagnostic"}
    )
    align_metrics: str = field(
        default="mutual_knn,cknna", metadata={"help": "comma-separated alignment metrics, or 'all'"}
    )
    report_self_contained: bool = field(
        default=False,
        metadata={
            "help": "inline report.html's images, so the report is one file to share (default: PNG files in "
            "report_files/ beside it)"
        },
    )


@dataclass
class PresetArguments:
    """A named set of recipe values that fills every key the recipe and command line leave unset."""

    rpo_preset: str = field(
        default="",
        metadata={
            "help": "paper: RPO as the authors' released code runs it (arr/rpo/presets.py lists the keys it sets); "
            "empty: none. Explicit keys win; `arr train RECIPE --print_config` shows the resolved values"
        },
    )


# Recipes are a page of `key: value` lines; the cap only stops a wrong file (a dataset, a model) from being parsed.
MAX_RECIPE_BYTES = 1 << 20


class _RecipeLoader(yaml.SafeLoader):
    """YAML without anchors and aliases: a recipe has no use for them, and aliases are how a few lines expand into
    gigabytes when the values are walked or printed ("billion laughs")."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.YAMLError(
                f"line {mark.line + 1}: aliases (*name) are not allowed in recipes; write the value out"
            )
        return super().compose_node(parent, index)


def load_recipe_file(path: Path) -> dict[str, Any]:
    """The mapping in a recipe file, refusing what is not one with a one-line `ConfigError`."""
    if not path.is_file():
        raise ConfigError(f"recipe not found: {path}")
    size = path.stat().st_size
    if size > MAX_RECIPE_BYTES:
        raise ConfigError(
            f"recipe {path} is {size:,} bytes; a recipe is a short YAML file of key: value lines "
            f"(limit {MAX_RECIPE_BYTES:,} bytes)"
        )
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_RecipeLoader)  # noqa: S506 - a SafeLoader
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"recipe {path} is not UTF-8 text (byte {e.start}); re-encode it as UTF-8"
        ) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"recipe {path} is not valid YAML: {_one_line(str(e))}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must be a YAML mapping of key: value, got {type(data).__name__}")
    return data


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


RECIPE_TYPES = (
    RPOConfig,
    PolicyArguments,
    JudgeArguments,
    DataArguments,
    DiagnosticsArguments,
    PresetArguments,
)


@dataclass
class Recipe:
    rpo: RPOConfig
    policy: PolicyArguments
    judge: JudgeArguments
    data: DataArguments
    diagnostics: DiagnosticsArguments = field(default_factory=DiagnosticsArguments)
    preset: PresetArguments = field(default_factory=PresetArguments)

    def to_dict(self) -> dict[str, Any]:
        """A flat mapping that is itself a valid recipe (saved as the run's config.yaml): every resolved value."""
        out: dict[str, Any] = {}
        for part in (self.preset, self.policy, self.judge, self.data, self.diagnostics, self.rpo):
            out.update(asdict(part))
        return out

    def to_yaml(self) -> str:
        """`to_dict` as YAML, in declaration order (what `arr train RECIPE --print_config` prints)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def parse_recipe(argv: Sequence[str]) -> Recipe:
    """Parse `[RECIPE.yaml] [--key value ...]` into the recipe's dataclasses, with its preset (if any) filling the keys
    that neither the recipe nor the command line set."""
    args = list(argv)
    data: dict[str, Any] = {}
    if args and not args[0].startswith("-"):
        path = Path(args[0])
        data = load_recipe_file(path)
        known = {f for t in RECIPE_TYPES for f in t.__dataclass_fields__}
        # str(): YAML keys may be numbers or booleans (`1: 2`), which neither sort with strings nor name a field.
        unknown = sorted(str(k) for k in set(data) - known - {"env"})
        if unknown:
            raise ConfigError(
                f"recipe {path}: unknown keys {_one_line(str(unknown))}; see `arr train --help` for valid keys"
            )
        for key, value in data.items():
            _check_type(path, key, value)
        args = ["--config", str(path), *args[1:]]
    recipe = _parse(args, {})
    if recipe.preset.rpo_preset:
        from arr.rpo.presets import preset_fill

        recipe = _parse(args, preset_fill(recipe.preset.rpo_preset, {*data, *_command_line_keys(args)}))
    return recipe


def _command_line_keys(args: Sequence[str]) -> set[str]:
    """The recipe keys given on the command line (`--key value`, `--key=value`, `--key-name value`)."""
    keys = set()
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg == "--config":
            skip = True
        elif arg.startswith("--"):
            keys.add(arg[2:].split("=", 1)[0].replace("-", "_"))
    return keys


def _parse(args: list[str], defaults: dict[str, Any]) -> Recipe:
    """One pass of TRL's parser over `args`, with `defaults` replacing the dataclasses' (a preset's values)."""
    from trl import TrlParser

    class RecipeParser(TrlParser):
        def error(self, message: str) -> typing.NoReturn:
            # argparse would print its usage block and exit; a one-line error names the argument instead.
            raise ConfigError(f"{message}; see `arr train --help` for valid keys")

    parser = RecipeParser(RECIPE_TYPES)
    if defaults:
        parser.set_defaults_with_config(**defaults)
    try:
        rpo, policy, judge, data, diagnostics, preset = parser.parse_args_and_config(list(args))
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:  # HfArgumentParser: "Some specified arguments are not used ..."
        raise ConfigError(f"{_one_line(str(e))}; see `arr train --help` for valid keys") from None
    if diagnostics.align_every < 0:
        raise ConfigError(f"align_every={diagnostics.align_every}: must be >= 0 (0 turns the diagnostic off)")
    if diagnostics.align_every > 0 and diagnostics.align_num_prompts > rpo.eval_num_prompts:
        raise ConfigError(
            f"align_num_prompts={diagnostics.align_num_prompts} exceeds eval_num_prompts={rpo.eval_num_prompts}: "
            "the alignment probe uses held-out prompts; lower align_num_prompts or raise eval_num_prompts"
        )
    return Recipe(rpo, policy, judge, data, diagnostics, preset)


_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "str": (str,),
}


def _check_type(path: Path, key: str, value: Any) -> None:
    """One-line errors for wrongly typed recipe values (argparse would print its whole usage text instead)."""
    for t in RECIPE_TYPES:
        if key not in t.__dataclass_fields__:
            continue
        # Resolved hints, not `field.type`: that is a string here (postponed annotations) until an argument parser
        # has seen the dataclass, which replaces it with the type in place (a second parse in one process).
        hint = typing.get_type_hints(t)[key]
        members = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        optional = type(None) in typing.get_args(hint)
        base = getattr(members[0], "__name__", str(members[0])) if len(members) == 1 else str(hint)
        if value is None and optional:
            return
        allowed = _TYPES.get(base)
        if allowed is None:
            return
        if isinstance(value, bool) and base != "bool" or not isinstance(value, allowed):
            raise ConfigError(
                f"recipe {path}: {key} must be {base}, got {_one_line(repr(value), 80)} ({type(value).__name__})"
            )
