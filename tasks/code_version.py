"""Code versions for cache keys: a stage's own source plus every nodecore (or shared tasks) module it reaches.

Prefect's ``TASK_SOURCE`` hashes only the task function's own source, so a change inside nodecore would
not invalidate a cached stage. Here a stage's version digests its module's source and, transitively, the
sources of the nodecore and ``tasks`` modules it imports (found by reading ``import`` statements; the
caching and retry machinery excepted), plus the nodecore version string. A change to
``nodecore/plotting.py`` therefore invalidates the render stage but not training.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import nodecore

NODECORE_DIR = Path(nodecore.__file__).parent
TASKS_DIR = Path(__file__).resolve().parent
# What a stage's output depends on: the library, and any tasks module a stage imports from another.
# The caching and retry machinery itself is left out: changing it does not change what a stage computes. So is
# the pipeline's config layer: config values enter every key as inputs, so editing a description or a
# default there changes the key only where it changes a value.
TRACKED_PACKAGES = {"nodecore": NODECORE_DIR, "tasks": TASKS_DIR}
PUBLIC_NAMES = nodecore._HOME  # nodecore's public names and the modules that define them
UNTRACKED_MODULES = frozenset({"tasks", "tasks.cache", "tasks.code_version", "tasks.faults", "tasks.retry",
                               "tasks.config", "tasks.grid", "tasks.slots"})
# An import statement at any indentation (imports inside functions count): ``from X import a, (b, c)`` or
# ``import X, Y as Z``. A regular expression, not ``ast.parse``: parsing every reached file cost about 0.25 s per
# stage, which a cached rerun pays for each stage it checks. Text in a docstring that reads like an import can
# only add a dependency (more invalidation), never hide one.
_IMPORT = re.compile(r"^[ \t]*(?:from[ \t]+(?P<module>[\w.]+)[ \t]+import[ \t]+(?P<names>\([^)]*\)|[^\n]*)"
                     r"|import[ \t]+(?P<modules>[^\n]*))", re.MULTILINE)


def _names(listed: str) -> list[str]:
    """``a, b as c`` or ``(a,\n b)`` (comments already removed) -> ``["a", "b"]``."""
    return [part.split()[0] for part in listed.strip("()").split(",") if part.split()]


def _tracked(name: str) -> bool:
    return name.split(".")[0] in TRACKED_PACKAGES and name not in UNTRACKED_MODULES


# What a run has parsed so far: a stage's version is asked for twice per task run (the cache key and the stage's own
# check), and scanning the imports of its ~50 files cost about 10 ms each time. A file's imports are scanned again
# only when its bytes or the tracked packages' file names changed; its bytes are read each time (no timestamps:
# two edits within one clock tick of the file system would look the same).
_SCANS: dict[Path, tuple[bytes, tuple, list[Path]]] = {}  # file -> (its bytes, the tree's names, files it imports)


def _tree() -> tuple:
    """Every file and folder name of the tracked packages: which import names resolve to a file (:func:`_module_file`)
    changes only with them."""
    listing, pending, seen = [], list(TRACKED_PACKAGES.values()), set()
    while pending:
        folder = pending.pop()
        if (real := os.path.realpath(folder)) in seen:  # a symlinked folder is followed once (a loop ends)
            continue
        seen.add(real)
        try:
            with os.scandir(folder) as scan:
                entries = sorted((e.name, e.is_dir()) for e in scan if e.name != "__pycache__")
        except OSError as err:  # a folder that vanished or cannot be read: no module resolves inside it
            listing.append((folder, repr(err)))
            continue
        listing.append((folder, tuple(entries)))
        pending.extend(folder / name for name, is_folder in entries if is_folder)
    return tuple(listing)


def _imported_files(source_file: Path, tree: tuple) -> tuple[bytes, list[Path]]:
    """``source_file``'s bytes as read now, and the tracked source files it imports; scanned again only when its bytes
    or the tracked packages' names (``tree``, :func:`_tree`) changed."""
    source = source_file.read_bytes()
    scanned = _SCANS.get(source_file)
    if scanned is not None and scanned[0] == source and scanned[1] == tree:
        return source, scanned[2]
    text = source.decode().replace("\r\n", "\n").replace("\r", "\n")  # universal newlines, as read_text()
    files = [f for f in map(_module_file, _scan_imports(text)) if f is not None]
    _SCANS[source_file] = (source, tree, files)
    return source, files


def _scan_imports(source: str) -> set[str]:
    """Names like ``nodecore.training`` or ``tasks.train`` that the Python ``source`` imports (tracked ones only)."""
    # Comments out (a ")" in one would end a parenthesised list early), continuation lines joined, and one
    # statement per line: each step can only add text that reads like an import, never remove one.
    text = re.sub(r"#[^\n]*", "", source).replace("\\\n", " ").replace(";", "\n")
    found: set[str] = set()
    for match in _IMPORT.finditer(text):
        if match["modules"] is not None:
            found.update(name for name in _names(match["modules"]) if _tracked(name))
            continue
        module = match["module"]
        if module.split(".")[0] in TRACKED_PACKAGES:
            if _tracked(module):
                found.add(module)
            for name in _names(match["names"]):
                # `from nodecore import training` imports a submodule; `from nodecore import NeuralODE` the module
                # that defines it (nodecore's names load on first use, see nodecore/__init__.py).
                if module == "nodecore" and name in PUBLIC_NAMES:
                    submodule = PUBLIC_NAMES[name]
                else:
                    submodule = f"{module}.{name}"
                if _tracked(submodule) and _module_file(submodule) is not None:
                    found.add(submodule)
    return found


def _module_file(name: str) -> Path | None:
    package, *parts = name.split(".")
    root = TRACKED_PACKAGES[package]
    if not parts:
        return root / "__init__.py"
    candidate = root.joinpath(*parts)
    for path in (candidate.with_suffix(".py"), candidate / "__init__.py"):
        if path.is_file():
            return path
    return None


def _reached(source_file: Path) -> tuple[bytes, dict[Path, bytes]]:
    """``source_file``'s bytes, and every nodecore (and shared tasks) file reached from its imports, transitively,
    with its bytes: each file read once."""
    tree = _tree()
    source, pending = _imported_files(source_file, tree)
    pending, reached = list(pending), {}
    while pending:
        path = pending.pop()
        if path in reached:
            continue
        reached[path], imported = _imported_files(path, tree)
        pending.extend(imported)
    return source, reached


def nodecore_dependencies(source_file: Path) -> list[Path]:
    """Every nodecore (and shared tasks) source file reached from ``source_file``'s imports, transitively, sorted."""
    return sorted(_reached(source_file)[1])


def code_digest(source_file: Path) -> str:
    """SHA-256 over ``source_file``, the nodecore files it reaches and ``nodecore.__version__``.

    Every file is read again at each call (a long-lived worker sees code changes), once; only the scan of a file's
    imports is remembered while its bytes stay the same (about 1 ms a call, against 10 ms scanning everything).
    """
    source, reached = _reached(source_file)
    digest = hashlib.sha256(nodecore.__version__.encode())
    for path, blob in [(source_file, source), *sorted(reached.items())]:
        digest.update(str(path.name).encode())
        digest.update(blob)
    return digest.hexdigest()
