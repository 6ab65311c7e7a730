"""The layers point one way: nodecore <- pipeline config (tasks.config, tasks.grid) <- tasks <- flows <- deployments.

Read from the source with ``ast`` (every import statement, at any depth, including imports inside functions),
so a lazy import cannot hide a dependency that runs upward.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("nodecore", "config", "tasks", "flows", "deployments")  # lowest first
CONFIG_MODULES = {"tasks.config", "tasks.grid"}  # the pipeline's config layer, below the stage tasks
ALLOWED_THIRD_PARTY_IN_CONFIG = {"pydantic", "nodecore"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str | None:
    if module in CONFIG_MODULES:
        return "config"
    top = module.split(".")[0]
    return top if top in LAYERS else None


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) for every absolute import in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def _sources() -> list[Path]:
    return sorted(p for package in ("nodecore", "tasks", "flows", "deployments") for p in (REPO / package).rglob("*.py"))


def _target(module: str, names: list[str]) -> list[str]:
    """The modules an import reaches: ``from tasks import config`` reaches ``tasks.config``."""
    targets = [module]
    targets += [f"{module}.{name}" for name in names if f"{module}.{name}" in CONFIG_MODULES]
    return targets


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_imports_a_higher_layer(path: Path) -> None:
    importer = _module_name(path)
    level = LAYERS.index(_layer(importer))
    upward = []
    for module, names in _imports(path):
        for target in _target(module, names):
            layer = _layer(target)
            if layer is not None and LAYERS.index(layer) > level and target != "tasks":
                upward.append(target)
    assert not upward, f"{importer} (layer {LAYERS[level]!r}) imports higher layers: {sorted(set(upward))}"


@pytest.mark.parametrize("path", sorted(p for p in _sources() if _module_name(p) in CONFIG_MODULES),
                         ids=lambda p: p.name)
def test_the_config_layer_needs_no_prefect_and_no_stage_code(path: Path) -> None:
    """Config and grid can be read by any layer (and by a tool with no Prefect) without pulling in stages."""
    for module, _ in _imports(path):
        top = module.split(".")[0]
        if top in ("tasks", "flows", "deployments", "prefect"):
            assert module in CONFIG_MODULES, f"{_module_name(path)} imports {module}"


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_uses_another_packages_private_names(path: Path) -> None:
    importer = _module_name(path)
    for module, names in _imports(path):
        if module.split(".")[0] not in LAYERS or module.split(".")[0] == importer.split(".")[0]:
            continue
        private = [name for name in names if name.startswith("_") and name != "__version__"]
        assert not private, f"{importer} imports private names of {module}: {private}"
        assert not any(part.startswith("_") for part in module.split(".")), f"{importer} imports {module}"


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The control: the rule above would catch what the project had before (tasks importing flows)."""
    stage = REPO / "tasks" / "train.py"
    imports = _imports(stage)
    assert any(module == "nodecore.training" for module, _ in imports)  # the parser reads this file
    fake = tmp_path / "stage.py"
    fake.write_text("def f():\n    from flows.config import PipelineConfig\n")
    assert [_layer(t) for m, n in _imports(fake) for t in _target(m, n)] == ["flows"]


NUMERICS_MAY_IMPORT = {"nodecore.numerics", "nodecore.errors", "nodecore._checks", "nodecore._compile"}


@pytest.mark.parametrize("path", sorted((REPO / "nodecore" / "numerics").rglob("*.py")),
                         ids=lambda p: str(p.relative_to(REPO)))
def test_the_numerics_engine_is_nodecores_lowest_layer(path: Path) -> None:
    """nodecore.numerics imports only itself, nodecore's errors, its argument checks and whether torch.compile is
    tracing (leaf modules that import nothing of nodecore; plus torch and NumPy)."""
    upward = [
        module for module, _ in _imports(path)
        if module.split(".")[0] == "nodecore" and not any(module == m or module.startswith(m + ".")
                                                         for m in NUMERICS_MAY_IMPORT)
    ]
    assert not upward, f"{path.relative_to(REPO)} imports {upward}"
