"""Unit tests of tasks.code_version: which nodecore code each stage's cache key covers."""

from __future__ import annotations

import ast
import gc
import shutil
import threading
import time
from pathlib import Path

import pytest

import nodecore
from tasks.code_version import NODECORE_DIR, code_digest, nodecore_dependencies

TASKS_DIR = Path(__file__).resolve().parents[2] / "tasks"


def _names(stage_file: str) -> set[str]:
    return {path.name for path in nodecore_dependencies(TASKS_DIR / stage_file)}


def test_render_depends_on_plotting() -> None:
    deps = nodecore_dependencies(TASKS_DIR / "render.py")
    assert NODECORE_DIR / "plotting.py" in deps and NODECORE_DIR / "trajectory_io.py" in deps
    assert deps == sorted(set(deps))


def test_generate_depends_on_the_dataset_code_only() -> None:
    names = _names("generate.py")
    assert {"static_datasets.py", "dataset_io.py"} <= names
    assert not names & {"plotting.py", "neuralode.py", "training.py", "solvers.py"}


def test_training_does_not_depend_on_plotting() -> None:
    names = _names("train.py")
    assert {"training.py", "neuralode.py", "registry.py", "checkpoints.py"} <= names
    assert "plotting.py" not in names


def test_dependencies_are_followed_transitively(tmp_path: Path) -> None:
    stage = tmp_path / "stage.py"
    stage.write_text("from nodecore import checkpoints\n")  # `from nodecore import <module>` counts
    names = {path.name for path in nodecore_dependencies(stage)}
    assert {"checkpoints.py", "neuralode.py", "registry.py", "architectures.py"} <= names  # via checkpoints
    stage.write_text("import nodecore.plotting\nfrom nodecore.files import atomic_write\n")
    assert {"plotting.py", "files.py"} <= {path.name for path in nodecore_dependencies(stage)}
    stage.write_text("import numpy\nfrom . import nodecore\n")
    assert nodecore_dependencies(stage) == []


def test_any_spelling_of_an_import_is_found(tmp_path: Path) -> None:
    """Imports are read as text (fast): a comment, a continuation, a semicolon or a public name hide nothing."""
    stage = tmp_path / "stage.py"
    cases = {
        "from nodecore import (  # a comment (with parentheses)\n    plotting,\n)\n": "plotting.py",
        "import numpy, \\\n    nodecore.stats\n": "stats.py",
        "x = 1; import nodecore.deq\n": "deq.py",
        "def build():\n    from nodecore import NeuralODE  # a name, loaded on first use\n": "neuralode.py",
    }
    for source, expected in cases.items():
        stage.write_text(source)
        assert expected in {path.name for path in nodecore_dependencies(stage)}, source


def test_the_text_scan_finds_every_import_the_parser_finds() -> None:
    """Over every module of nodecore and tasks: nothing ``ast`` sees as an import is missed."""
    from tasks.code_version import _module_file, _scan_imports, _tracked

    def parsed(path: Path) -> set[str]:
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names if _tracked(alias.name)}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and _tracked(node.module):
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names
                          if _tracked(f"{node.module}.{a.name}") and _module_file(f"{node.module}.{a.name}")}
        return found

    for path in [*NODECORE_DIR.rglob("*.py"), *TASKS_DIR.glob("*.py")]:
        assert parsed(path) <= _scan_imports(path.read_text()), path


def test_code_digest_follows_the_stage_source_and_the_nodecore_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    render = TASKS_DIR / "render.py"
    digest = code_digest(render)
    assert digest == code_digest(render) and len(digest) == 64
    copy = tmp_path / "render.py"
    shutil.copy(render, copy)
    assert code_digest(copy) == digest  # the file's name and bytes, not its location
    copy.write_text(render.read_text() + "\n# edited\n")
    assert code_digest(copy) != digest
    monkeypatch.setattr(nodecore, "__version__", nodecore.__version__ + "+changed")
    assert code_digest(render) != digest


def test_a_digest_follows_every_edit_of_a_file_it_reaches_and_a_new_module(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The scans of a run's files are remembered (a stage's version is asked for twice per task run): an edit that
    keeps the size, made at once (within one tick of the file system's clock), and a module that appears still
    change the digest."""
    import tasks.code_version as code_version

    package = tmp_path / "nodecore"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from nodecore import b\n")
    (package / "b.py").write_text("X = 1\n")
    monkeypatch.setitem(code_version.TRACKED_PACKAGES, "nodecore", package)
    stage = tmp_path / "stage.py"
    stage.write_text("import nodecore.a\nimport nodecore.c\n")  # nodecore.c does not exist yet
    first = code_digest(stage)
    scans = []
    scan = code_version._scan_imports
    monkeypatch.setattr(code_version, "_scan_imports", lambda source: scans.append(source) or scan(source))
    assert code_digest(stage) == first and scans == []  # remembered: nothing scanned again
    (package / "b.py").write_text("X = 2\n")  # same size, same instant
    second = code_digest(stage)
    assert second != first and scans == ["X = 2\n"]  # only the edited file scanned again
    (package / "c.py").write_text("from nodecore import b\n")
    assert code_digest(stage) not in (first, second)
    assert {path.name for path in nodecore_dependencies(stage)} == {"__init__.py", "a.py", "b.py", "c.py"}


class _Finalized:
    """Cyclic garbage whose finalizer lets other threads run: collected inside ast.parse, it switches threads."""

    def __del__(self) -> None:
        time.sleep(0.0001)


def test_code_digest_is_safe_from_many_threads() -> None:
    """Stages compute their keys at once in the flow's thread pool; CPython 3.11's ast.parse is not thread-safe.

    Without the lock in tasks.code_version, concurrent parses failed with "SystemError: AST constructor
    recursion depth mismatch" (seen in flow runs; here provoked by frequent collections of garbage whose
    finalizers release the GIL in the middle of a parse).
    """
    expected = {name: code_digest(TASKS_DIR / name) for name in ("render.py", "train.py", "generate.py")}
    errors: list[BaseException] = []
    done = threading.Event()

    def churn() -> None:
        try:
            for _ in range(3):
                for name, digest in expected.items():
                    assert code_digest(TASKS_DIR / name) == digest
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    def litter() -> None:
        while not done.is_set():
            first, second = _Finalized(), _Finalized()
            first.other, second.other = second, first  # type: ignore[attr-defined]
            time.sleep(0.0005)

    threads = [threading.Thread(target=churn) for _ in range(3)]
    litterer = threading.Thread(target=litter)
    thresholds = gc.get_threshold()
    gc.set_threshold(50)
    try:
        litterer.start()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        done.set()
        litterer.join()
        gc.set_threshold(*thresholds)
    assert not errors, errors


def test_shared_tasks_modules_are_followed_but_the_cache_machinery_is_not(tmp_path) -> None:
    from pathlib import Path

    from tasks.code_version import nodecore_dependencies

    stage = tmp_path / "stage.py"
    stage.write_text("from tasks.train import train_cell\nfrom tasks.cache import stage_task\nimport tasks.faults\n")
    names = {f"{p.parent.name}/{p.name}" for p in nodecore_dependencies(stage)}
    assert "tasks/train.py" in names and "nodecore/training.py" in names
    assert not names & {"tasks/cache.py", "tasks/faults.py", "tasks/code_version.py", "tasks/retry.py"}
    assert Path(stage) not in nodecore_dependencies(stage)
