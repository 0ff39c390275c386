"""Data files never run code: suites pick arr's own data generators and judge backends by registry name, and
registries refuse a Python path from a data file before importing anything.

Each case uses a harmless marker command (`touch MARKER`) where the old behaviour would have run it, and proves that
nothing ran: the marker file does not exist afterwards.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from arr.backends import BACKENDS, load_backend
from arr.backends.pixel import PixelBackend
from arr.evaluation.edit_benchmarks import load_edit_suite, read_edit_suite
from arr.evaluation.preference_benchmarks import load_preference_suite
from arr.policies import make_policy, policy_class
from arr.policies.shapes import ShapesPolicy
from arr.registry import resolve
from arr.shapes.benchmarks import GENERATORS, load_suite, prepare_suite

VALID_GENERATORS = str(sorted(GENERATORS)).replace("[", r"\[").replace("]", r"\]")


def _suite(tmp_path: Path, task: str, data: dict, **extra) -> Path:
    path = tmp_path / "suite.yaml"
    schema = {"edit": "gedit", "t2i": "geneval", "pairs": "hpdv3"}[task]
    suite = {"name": "hostile", "task": task, "schema": schema, "data": data, "judge": "pixel", **extra}
    path.write_text(yaml.safe_dump(suite), encoding="utf-8")
    return path


def _pager(marker: Path) -> dict:
    """pydoc.pipepager(text, cmd) hands `cmd` to a shell: the generator a hostile suite would name."""
    return {
        "generator": "pydoc:pipepager",
        "file": "records.jsonl",
        "args": {"text": "x", "cmd": f"touch {marker}"},
    }


# Each loader of suite files, called the way `arr eval` and the library call it.
LOADERS = {
    "edit": lambda path, out: load_edit_suite(path, out),
    "edit (read only)": lambda path, out: read_edit_suite(path),
    "shapes": lambda path, out: prepare_suite(path, out),
    "shapes (read only)": lambda path, out: load_suite(path),
    "pairs": lambda path, out: load_preference_suite(path, out),
}
TASKS = {
    "edit": "edit",
    "edit (read only)": "edit",
    "shapes": "t2i",
    "shapes (read only)": "t2i",
    "pairs": "pairs",
}


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_a_suite_cannot_name_a_python_callable_as_generator(tmp_path, loader):
    marker = tmp_path / "MARKER"
    path = _suite(tmp_path, TASKS[loader], _pager(marker))
    with pytest.raises(
        ValueError, match=rf"unknown data generator 'pydoc:pipepager'; expected one of {VALID_GENERATORS}"
    ) as e:
        LOADERS[loader](path, tmp_path / "data")
    assert "\n" not in str(e.value)
    assert not marker.exists()
    assert not (tmp_path / "data" / "records.jsonl").exists()


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_a_suite_cannot_name_a_python_path_as_judge(tmp_path, loader):
    data = {"generator": "shapes_edit", "file": "records.jsonl", "args": {"n": 2}}
    path = _suite(tmp_path, TASKS[loader], data, judge="os:system")
    with pytest.raises(
        ValueError, match=r"unknown judge 'os:system'; expected one of \['hf', 'openai', 'pixel'\]"
    ):
        LOADERS[loader](path, tmp_path / "data")
    assert not (tmp_path / "data").exists()  # refused before any data was generated


def test_generator_arguments_are_checked_before_anything_runs(tmp_path):
    path = _suite(
        tmp_path, "edit", {"generator": "shapes_edit", "file": "r.jsonl", "args": {"n": 2, "cmd": "x"}}
    )
    with pytest.raises(
        ValueError, match=r"generator 'shapes_edit' takes \['n', 'split', 'seed'\]; unknown args \['cmd'\]"
    ):
        load_edit_suite(path, tmp_path / "data")
    assert not (tmp_path / "data").exists()


def test_named_generators_write_the_data(tmp_path):
    path = _suite(
        tmp_path, "edit", {"generator": "shapes_edit", "file": "records.jsonl", "args": {"n": 3, "seed": 1}}
    )
    suite, samples = load_edit_suite(path, tmp_path / "data")
    assert len(samples) == 3 and all(s.error is None and s.extra["edit"] for s in samples)
    assert Path(suite["source"]) == tmp_path / "data" / "records.jsonl"


# ---- registries -------------------------------------------------------------------------------------------------


def test_a_path_to_a_function_is_not_a_backend_and_is_never_called(tmp_path):
    marker = tmp_path / "MARKER"
    with pytest.raises(ValueError, match=r"^os:system is not a judge backend class") as e:
        load_backend("os:system", command=f"touch {marker}")
    assert "\n" not in str(e.value) and "['hf', 'openai', 'pixel']" in str(e.value)
    assert not marker.exists()
    with pytest.raises(ValueError, match="is not a policy family class"):
        make_policy("os:system", command=f"touch {marker}")
    assert not marker.exists()


def test_a_path_to_another_class_is_refused():
    with pytest.raises(ValueError, match="arr.judge:RubricJudge is not a judge backend class"):
        load_backend("arr.judge:RubricJudge")
    with pytest.raises(ValueError, match="is not a policy family class"):
        policy_class("arr.backends.pixel:PixelBackend")


def test_a_users_own_class_path_works_in_code():
    assert isinstance(load_backend("arr.backends.pixel:PixelBackend"), PixelBackend)
    assert policy_class("arr.policies.shapes:ShapesPolicy") is ShapesPolicy


def test_without_import_paths_only_registry_names_pass_and_nothing_is_imported(tmp_path, monkeypatch):
    marker = tmp_path / "MARKER"
    (tmp_path / "arr_test_hostile_module.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).touch()\nclass Backend: ...\n", encoding="utf-8"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(
        ValueError, match=r"unknown judge backend 'arr_test_hostile_module:Backend'; expected one of"
    ):
        resolve(BACKENDS, "arr_test_hostile_module:Backend", "judge backend", allow_import_path=False)
    assert not marker.exists() and "arr_test_hostile_module" not in sys.modules
    with pytest.raises(ValueError, match=r"expected one of \['hf', 'openai', 'pixel'\]"):
        load_backend("arr.backends.pixel:PixelBackend", allow_import_path=False)
    with pytest.raises(ValueError, match="expected one of"):
        policy_class("arr.policies.shapes:ShapesPolicy", allow_import_path=False)
    assert isinstance(load_backend("pixel", allow_import_path=False), PixelBackend)
    assert policy_class("shapes", allow_import_path=False) is ShapesPolicy
