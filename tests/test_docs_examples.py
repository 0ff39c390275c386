"""Every ```python block in docs/*.md and README.md runs as written.

The blocks of a page run in order in one namespace, like a notebook. A block whose first line is
`# requires: MODULE` must be self-contained; it runs on its own and is skipped, with that reason, only while
MODULE cannot be imported (e.g. a feature that is still being written).
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
REQUIRES = re.compile(r"\A# requires: ([\w.]+)")


def blocks(page: Path) -> list[str]:
    return BLOCK.findall(page.read_text(encoding="utf-8"))


PAGES = [*sorted(DOCS.glob("*.md")), DOCS.parent / "README.md"]
GATED = [(page, i, b) for page in PAGES for i, b in enumerate(blocks(page)) if REQUIRES.match(b)]


def run(code: str, namespace: dict, where: str) -> None:
    exec(compile(code, where, "exec"), namespace)  # noqa: S102 - running our own documentation is the point


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


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    ran = 0
    for i, code in enumerate(blocks(page)):
        if REQUIRES.match(code):
            continue
        run(code, namespace, f"{page.name}[block {i}]")
        ran += 1
    assert ran > 0


@pytest.mark.parametrize(("page", "index", "code"), GATED, ids=[f"{p.name}-{i}" for p, i, _ in GATED])
def test_gated_examples_run(page, index, code, tmp_path, monkeypatch):
    module = REQUIRES.match(code).group(1)
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        pytest.skip(f"{page.name} block {index} needs {module}, not importable yet ({e})")
    monkeypatch.chdir(tmp_path)
    run(code, {"__name__": f"docs_{page.stem}_{index}"}, f"{page.name}[block {index}]")
