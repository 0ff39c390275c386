"""The `arr` command line's plumbing: `--help` everywhere, fast top-level help, both option spellings, one meaning
for `--model`, one judge-backend option set shared by commands and recipes."""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from arr.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent


def _subcommands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """Every (command path, parser) below `parser`, nested subcommands included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action._name_parser_map.items():
                yield (*path, name), sub
                yield from _subcommands(sub, (*path, name))


COMMANDS = [path for path, _ in _subcommands(build_parser())]


def test_the_walk_finds_the_nested_commands():
    assert {("train",), ("shapes", "pretrain"), ("eval", "preference"), ("rubric", "generate")} <= set(
        COMMANDS
    )


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_help_works_on_every_subcommand(run_cli, path):
    code, out, err = run_cli(*path, "--help")
    assert code == 0, err
    assert out.startswith("usage: arr " + " ".join(path)), out[:200]


def test_train_help_lists_recipe_keys_once_each(run_cli):
    code, out, _ = run_cli("train", "--help")
    assert code == 0
    for key in (
        "--max_steps",
        "--judge_backend",
        "--judge_dtype",
        "--judge_max_concurrency",
        "--judge_timeout",
    ):
        assert f"  {key} " in out, key
    assert "-h, --help" in out
    assert ", --max-steps" not in out and "  --max-steps" not in out  # both spellings work; help shows one


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@pytest.mark.slow  # a subprocess (well under a second)
def test_top_level_help_is_fast():
    before = _children_cpu_seconds()
    r = subprocess.run([sys.executable, "-m", "arr", "--help"], capture_output=True, text=True)
    cpu = _children_cpu_seconds() - before
    assert r.returncode == 0 and "COMMAND" in r.stdout
    assert cpu < 1.0, f"`arr --help` took {cpu:.2f} CPU seconds"


@pytest.mark.slow  # a subprocess (well under a second)
def test_building_the_parser_imports_no_model_library():
    code = (
        "import sys; from arr.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'transformers', 'diffusers', 'trl', 'numpy') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


def _option_strings(parser: argparse.ArgumentParser):
    for action in parser._actions:
        for s in action.option_strings:
            if s.startswith("--") and ("-" in s[2:] or "_" in s[2:]):
                yield s


@pytest.mark.parametrize("path", [(), *COMMANDS], ids=lambda p: " ".join(p) or "arr")
def test_every_long_option_takes_both_spellings(path):
    parser = build_parser()
    for name in path:
        parser = dict(_subcommands(parser))[(name,)]
    for declared in _option_strings(parser):
        for spelling in ("--" + declared[2:].replace("-", "_"), "--" + declared[2:].replace("_", "-")):
            assert parser._respell([spelling, "--x=1"])[0] == declared, (path, spelling)
            assert parser._respell([spelling + "=v"]) == [declared + "=v"]


def test_both_spellings_parse_alike():
    parser = build_parser()
    common = ["--prompt", "p", "--rubric", "r.json", "img.png"]
    dashed = parser.parse_args(
        ["judge", "--base-url", "http://h/v1", "--api-key-env", "K", "--no-swap", *common]
    )
    snake = parser.parse_args(["judge", "--base_url", "http://h/v1", "--api_key_env=K", "--no_swap", *common])
    assert vars(dashed) == vars(snake)
    assert dashed.base_url == "http://h/v1" and dashed.api_key_env == "K" and dashed.no_swap
    demo = parser.parse_known_args(["demo", "--output-dir", "a", "--num_processes", "1", "--max_steps", "3"])
    assert demo[0].output_dir == "a" and demo[0].num_processes == "1" and demo[1] == ["--max_steps", "3"]
    # After `--` nothing is an option any more, so nothing is respelled.
    assert parser.parse_args(["judge", *common[:4], "--", "--no_swap"]).images == ["--no_swap"]


def test_help_shows_one_spelling(run_cli):
    _, out, _ = run_cli("judge", "--help")
    assert "--base-url" in out and "--base_url" not in out


def test_recipe_overrides_take_both_spellings():
    from arr.rpo.recipe import parse_recipe

    recipe = ROOT / "recipes/shapes_t2i_rpo.yaml"
    a = parse_recipe([str(recipe), "--max-steps", "7", "--judge-timeout", "5"])
    b = parse_recipe([str(recipe), "--max_steps", "7", "--judge_timeout", "5"])
    assert a.rpo.max_steps == b.rpo.max_steps == 7 and a.judge.judge_timeout == b.judge.judge_timeout == 5.0


def test_shapes_model_option_is_deprecated_for_policy(run_cli, tmp_path):
    parser = build_parser()
    assert parser.parse_args(["shapes", "sample", "p", "--policy", "x"]).policy == "x"
    code, out, err = run_cli("shapes", "sample", "a red circle", "--model", "t2i", "--n", "1", "--steps", "2",
                             "--out", tmp_path / "g.png")  # fmt: skip
    assert code == 0, err
    assert "--model is deprecated; use --policy" in err and json.loads(out)["n"] == 1


def test_eval_deprecated_spellings_map_to_the_shared_options(capsys):
    parser = build_parser()
    args = parser.parse_args(
        ["eval", "edit", "s.yaml", "--policy", "p", "--judge", "hf", "--judge-concurrency", "4"]
    )
    err = capsys.readouterr().err
    assert args.backend == "hf" and args.max_concurrency == 4
    assert "--judge is deprecated; use --backend" in err and "use --max-concurrency" in err
    args = parser.parse_args(["eval", "preference", "s.yaml"])
    assert args.backend is None  # the suite's judge unless one is given


def test_command_and_recipe_give_the_backend_the_same_settings(tmp_path):
    from arr.backends.options import backend_kwargs
    from arr.cli.common import backend_kwargs as cli_backend_kwargs
    from arr.rpo.build import build_judge
    from arr.rpo.recipe import JudgeArguments

    args = build_parser().parse_args(
        [
            "judge",
            "--backend",
            "openai",
            "--model",
            "m",
            "--base-url",
            "http://h:1/v1",
            "--max-concurrency",
            "3",
            "--timeout",
            "2.5",
            "--prompt",
            "p",
            "--rubric",
            "r.json",
            "i.png",
        ]  # fmt: skip
    )
    cli = cli_backend_kwargs(args)
    assert cli == {"model": "m", "base_url": "http://h:1/v1", "max_concurrency": 3, "timeout": 2.5}
    assert cli == backend_kwargs(
        "openai", model="m", base_url="http://h:1/v1", max_concurrency=3, timeout=2.5
    )
    judge = build_judge(
        JudgeArguments(
            judge_backend="openai",
            judge_model="m",
            judge_base_url="http://h:1/v1",
            judge_max_concurrency=3,
            judge_timeout=2.5,
            judge_cache=str(tmp_path / "c.sqlite"),
        ),  # fmt: skip
        "unused",
    )
    backend = judge.backend
    assert (backend.model, backend.base_url, backend.max_concurrency, backend.timeout) == (
        "m",
        "http://h:1/v1",
        3,
        2.5,
    )


def test_recipe_sets_the_hf_judge_like_the_command_line(tmp_path, tiny_vlm_path):
    from arr.rpo.build import build_judge
    from arr.rpo.recipe import parse_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"judge_backend: hf\njudge_model: {tiny_vlm_path}\njudge_dtype: float32\njudge_device: cpu\n"
        "judge_mode: generate\njudge_trust_remote_code: true\n"
    )
    args = parse_recipe([str(recipe), "--judge_cache", str(tmp_path / "c.sqlite")]).judge
    backend = build_judge(args, str(tmp_path)).backend
    assert backend.mode == "generate" and str(backend.dtype) == "torch.float32"
    # The same folder without trust_remote_code is refused: the option really reaches the backend.
    recipe.write_text(f"judge_backend: hf\njudge_model: {tiny_vlm_path}\njudge_device: cpu\n")
    from arr.rpo.config import ConfigError

    with pytest.raises(ConfigError, match="trust_remote_code"):
        build_judge(parse_recipe([str(recipe)]).judge, str(tmp_path))


def test_a_setting_the_backend_does_not_take_is_an_error(run_cli, tmp_path):
    from arr.rpo.build import build_judge
    from arr.rpo.config import ConfigError
    from arr.rpo.recipe import JudgeArguments

    examples = ROOT / "examples"
    code, _, err = run_cli("judge", "--timeout", "3", "--prompt", "p", "--rubric", examples / "rubric.json",
                           examples / "good.png")  # fmt: skip
    assert code == 2 and "--timeout is a setting of the openai backend, not of --backend=pixel" in err
    with pytest.raises(
        ConfigError, match="judge_dtype is a setting of the hf backend, not of judge_backend=openai"
    ):
        build_judge(
            JudgeArguments(judge_backend="openai", judge_model="m", judge_dtype="float16"), str(tmp_path)
        )
    with pytest.raises(ConfigError, match="judge_backend=hf needs judge_model"):
        build_judge(JudgeArguments(judge_backend="hf"), str(tmp_path))


@pytest.mark.parametrize("recipe", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_a_runs_saved_config_is_a_recipe_again(recipe, tmp_path):
    """config.yaml (what `arr train RUN/config.yaml --resume_from_checkpoint latest` reads) parses back to the
    same recipe: the alias-free loader accepts what the trainer writes, new judge keys included."""
    import yaml

    from arr.rpo.recipe import parse_recipe

    parsed = parse_recipe([str(recipe)])
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump(parsed.to_dict(), sort_keys=False))  # as the trainer writes it
    assert parse_recipe([str(saved)]).to_dict() == parsed.to_dict()


def test_shapes_pretrain_forwards_its_arguments_in_either_spelling(run_cli, monkeypatch):
    import arr.shapes.pretrain

    seen = []
    monkeypatch.setattr(arr.shapes.pretrain, "main", lambda argv: seen.append(argv) or 0)
    code, _, _ = run_cli(
        "shapes", "pretrain", "--batch_size", "2", "--max-minutes=1", "--model", '{"a_b": 1}'
    )
    assert code == 0 and seen == [["--batch-size", "2", "--max-minutes=1", "--model", '{"a_b": 1}']]
