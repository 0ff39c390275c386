"""Every ```python block in docs/*.md and README.md runs as written, on its own.

Each block runs in a fresh namespace, so a reader can paste any one of them into a new interpreter: its imports
and inputs must be in the block. A page listed in SCRIPT_PAGES is the exception, and says so in its text: its
blocks run in order as one script. A block whose first line is `# requires: MODULE` is skipped, with that reason,
only while MODULE cannot be imported (e.g. an optional dependency).
"""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
REQUIRES = re.compile(r"\A# requires: ([\w.]+)")
# serve.md's client examples call the server its first block starts, and its last block stops it.
SCRIPT_PAGES = {"serve.md"}
CLI_SECTION = re.compile(
    r"<!-- command-line reference: begin -->(.*?)<!-- command-line reference: end -->", re.DOTALL
)


def blocks(page: Path) -> list[str]:
    return BLOCK.findall(page.read_text(encoding="utf-8"))


PAGES = [*sorted(DOCS.glob("*.md")), DOCS.parent / "README.md"]
SINGLE = [(page, i, b) for page in PAGES if page.name not in SCRIPT_PAGES for i, b in enumerate(blocks(page))]
SCRIPTS = [page for page in PAGES if page.name in SCRIPT_PAGES]


def run(code: str, where: str) -> None:
    exec(compile(code, where, "exec"), {"__name__": "docs_example"})  # noqa: S102 - running our own docs is the point


def run_script(code: str, namespace: dict, where: str) -> None:
    exec(compile(code, where, "exec"), namespace)  # noqa: S102


def skip_unless_importable(page: Path, index: int, code: str) -> None:
    required = REQUIRES.match(code)
    if required is None:
        return
    try:
        importlib.import_module(required.group(1))
    except ModuleNotFoundError as e:
        pytest.skip(f"{page.name} block {index} needs {required.group(1)}, not importable ({e})")


def cli_subcommands() -> set[str]:
    from arr.cli import build_parser

    (sub,) = (a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


def test_docs_have_examples():
    assert {p.name for p in PAGES} >= {"api.md", "serve.md"}
    api = (DOCS / "api.md").read_text(encoding="utf-8")
    for name in (
        "arr.Criterion",
        "arr.Rubric",
        "arr.RubricJudge",
        "arr.load_backend",
        "arr.rpo.RPOConfig",
        "arr.rpo.RPOTrainer",
        "arr.diagnostics.alignment",
        "command line",
    ):
        assert name in api, f"docs/api.md has no section for {name}"
    for page in PAGES:
        assert blocks(page), f"{page.name} has no python example"


def test_api_reference_covers_every_cli_subcommand():
    (section,) = CLI_SECTION.findall((DOCS / "api.md").read_text(encoding="utf-8"))
    commands = cli_subcommands()
    assert commands >= {
        "demo",
        "train",
        "judge",
        "rubric",
        "eval",
        "align",
        "serve",
        "reward-model",
        "shapes",
    }
    missing = sorted(c for c in commands if f"`arr {c}" not in section)
    assert not missing, f"docs/api.md's command-line section does not describe: {missing}"


@pytest.mark.parametrize(("page", "index", "code"), SINGLE, ids=[f"{p.name}-{i}" for p, i, _ in SINGLE])
def test_example_runs_on_its_own(page, index, code, tmp_path, monkeypatch):
    skip_unless_importable(page, index, code)
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    run(code, f"{page.name}[block {index}]")


@pytest.mark.parametrize("page", SCRIPTS, ids=lambda p: p.name)
def test_script_page_runs_in_order(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    codes = blocks(page)
    assert codes
    for i, code in enumerate(codes):
        skip_unless_importable(page, i, code)
        run_script(code, namespace, f"{page.name}[block {i}]")
