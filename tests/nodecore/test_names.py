"""nodecore.names (the torch-free tables) agree with the registries, and importing nodecore loads nothing heavy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import nodecore
from nodecore import names

REPO_ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "sklearn", "matplotlib", "scipy", "pyarrow")


def test_the_tables_match_the_registries() -> None:
    from nodecore.architectures import ACTIVATIONS
    from nodecore.checkpoints import MODEL_KINDS
    from nodecore.datasets import DATASET_TYPES
    from nodecore.neuralode import SENSITIVITIES
    from nodecore.root_finders import ROOT_FINDERS
    from nodecore.solvers import SOLVERS

    assert names.SOLVER_NAMES == tuple(SOLVERS)
    assert names.ROOT_FINDER_NAMES == tuple(ROOT_FINDERS)
    assert names.ACTIVATION_NAMES == tuple(ACTIVATIONS)
    assert names.DATASET_TYPES == DATASET_TYPES
    assert names.MODEL_KINDS is MODEL_KINDS and names.SENSITIVITIES is SENSITIVITIES


@pytest.mark.parametrize("dataset_type", names.DATASET_TYPES)
@pytest.mark.parametrize("n_points", [3, 256])
def test_dataset_shape_is_what_generate_points_draws(dataset_type: str, n_points: int) -> None:
    from nodecore.datasets import generate_points

    X, y = generate_points(n_points, dataset_type, seed=0)
    assert names.dataset_shape(dataset_type, n_points) == (X.shape[1], int(y.max()) + 1)


def test_dataset_shape_names_the_valid_types() -> None:
    with pytest.raises(ValueError, match="unknown dataset type 'bogus'; valid types: moons, circles"):
        names.dataset_shape("bogus", 10)


def _imported_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return set(done.stdout.split())


def test_importing_nodecore_and_the_pipeline_entry_point_loads_nothing_heavy() -> None:
    """A fully cached rerun imports the flow module and checks manifests: torch and friends cost seconds."""
    assert _imported_after("import nodecore, nodecore.names, nodecore.files, tasks.config, flows.train_flow") == set()
    assert "torch" in _imported_after("from nodecore import NeuralODE")  # a name, loaded on first use


def test_the_stages_and_nodecores_own_engine_do_not_import_torchdiffeq_or_scipy() -> None:
    """torchdiffeq imports SciPy's integrators (about 0.35 s in every stage worker and flow process): only the
    torchdiffeq backend needs it, and it loads it when first used."""
    stages = "import tasks.generate, tasks.field, tasks.train, tasks.evaluate, tasks.trajectories, tasks.render"
    code = f"{stages}\nassert 'torchdiffeq' not in sys.modules"
    assert "scipy" not in _imported_after(code)
    backend = ("import torch; from nodecore import NeuralODE\n"
               "NeuralODE(torch.nn.Linear(2, 2), solver='tsit5', backend='torchdiffeq')(torch.zeros(1, 2))\n"
               "assert 'torchdiffeq' in sys.modules")
    assert "scipy" in _imported_after(backend)


def test_public_names_load_on_first_use() -> None:
    from nodecore.neuralode import NeuralODE

    assert nodecore.NeuralODE is NeuralODE
    assert nodecore.numerics.odeint is nodecore.odeint  # submodules too
    assert set(nodecore.__all__) <= set(dir(nodecore))
    namespace: dict = {}
    exec("from nodecore import *", namespace)
    assert set(nodecore.__all__) <= set(namespace)
    with pytest.raises(AttributeError, match="module 'nodecore' has no attribute 'NoSuchThing'"):
        nodecore.NoSuchThing  # noqa: B018
