"""nodecore: continuous-depth deep learning (Neural ODEs) on PyTorch.

One public surface over small modules. Importing nodecore never imports Prefect, and imports nothing heavy
until a name is used: ``nodecore.NeuralODE`` (or ``from nodecore import NeuralODE``) loads its module on first
access, so code that needs only :mod:`nodecore.names` or :mod:`nodecore.files` does not pay for torch.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from nodecore._version import __version__

# Each public name and the module it comes from.
_SOURCES: dict[str, tuple[str, ...]] = {
    "nodecore.architectures": ("ACTIVATIONS", "MLPFieldSpec", "build_field"),
    "nodecore.checkpoints": (
        "Checkpoint", "build_model", "load_checkpoint", "load_model", "load_weights", "model_config",
        "save_checkpoint",
    ),
    "nodecore.dataset_io": (
        "SCHEMA_VERSION", "DatasetFormatError", "content_digest", "file_digest", "read_dataset", "write_dataset",
    ),
    "nodecore.datasets": ("DATASET_TYPES", "ToyDataset", "resolve_params"),
    "nodecore.deq": ("DEQ", "ConvergenceError", "DEQCell", "DEQClassifier", "DEQStats"),
    "nodecore.errors": (
        "CorruptFileError", "InputShapeError", "NonFiniteError", "SolverError", "StabilityWarning",
        "StepSizeUnderflowError", "TooManyStepsError",
    ),
    "nodecore.classifiers": ("ODEClassifier",),
    "nodecore.fields": ("Augmenter", "DataControl", "DepthAware", "DepthCat", "VectorField"),
    "nodecore.galerkin": ("GALERKIN_BASES", "GalerkinLinear"),
    "nodecore.neuralode": ("BACKENDS", "ORDERS", "SENSITIVITIES", "NeuralODE"),
    "nodecore.models": ("CNF", "GNF", "HNN", "LNN", "LatentNeuralSDE", "NeuralSDE", "autograd_trace", "hutch_trace"),
    "nodecore.numerics": ("odeint", "odeint_hybrid", "odeint_mshooting", "odeint_symplectic", "root_find"),
    "nodecore.problems": ("MultipleShootingLayer", "ODEProblem"),
    "nodecore.solvers": ("SOLVER_NAMES", "SOLVERS", "Solver", "get_solver"),
    "nodecore.root_finders": ("ROOT_FINDER_NAMES", "ROOT_FINDERS", "RootFinder", "RootResult", "get_root_finder"),
    "nodecore.plotting": (
        "plot_decision_boundary", "plot_state_space", "plot_trajectories_depth", "plot_vector_field",
        "save_figure", "vector_field_limits",
    ),
    "nodecore.stats": ("SolveStats",),
    "nodecore.systems": ("LOSSES", "DampedPendulum", "HybridField", "LotkaVolterra", "fit_trajectories"),
    "nodecore.training": ("EpochStats", "History", "Metrics", "accuracy", "evaluate", "logits", "train"),
}
_HOME = {name: module for module, names in _SOURCES.items() for name in names}


def __getattr__(name: str) -> Any:
    """Load a public name's module on first use (PEP 562); a submodule such as ``nodecore.numerics`` too."""
    module = _HOME.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
    elif not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})


__all__ = [
    "__version__",
    "BACKENDS",
    "odeint",
    "odeint_hybrid",
    "odeint_mshooting",
    "odeint_symplectic",
    "root_find",
    "CNF",
    "GNF",
    "HNN",
    "LNN",
    "LatentNeuralSDE",
    "NeuralSDE",
    "autograd_trace",
    "hutch_trace",
    "MultipleShootingLayer",
    "DataControl",
    "ODEProblem",
    "accuracy",
    "ACTIVATIONS",
    "Augmenter",
    "build_field",
    "build_model",
    "Checkpoint",
    "content_digest",
    "ConvergenceError",
    "CorruptFileError",
    "DampedPendulum",
    "DATASET_TYPES",
    "DatasetFormatError",
    "DepthAware",
    "DepthCat",
    "DEQ",
    "DEQCell",
    "DEQClassifier",
    "DEQStats",
    "EpochStats",
    "evaluate",
    "file_digest",
    "fit_trajectories",
    "GALERKIN_BASES",
    "GalerkinLinear",
    "get_root_finder",
    "get_solver",
    "History",
    "HybridField",
    "InputShapeError",
    "load_checkpoint",
    "load_model",
    "load_weights",
    "logits",
    "LOSSES",
    "LotkaVolterra",
    "Metrics",
    "MLPFieldSpec",
    "model_config",
    "NeuralODE",
    "NonFiniteError",
    "ODEClassifier",
    "ORDERS",
    "plot_decision_boundary",
    "plot_state_space",
    "plot_trajectories_depth",
    "plot_vector_field",
    "read_dataset",
    "resolve_params",
    "ROOT_FINDER_NAMES",
    "ROOT_FINDERS",
    "RootFinder",
    "RootResult",
    "save_checkpoint",
    "save_figure",
    "SCHEMA_VERSION",
    "SENSITIVITIES",
    "Solver",
    "SOLVER_NAMES",
    "SolverError",
    "SOLVERS",
    "SolveStats",
    "StabilityWarning",
    "StepSizeUnderflowError",
    "TooManyStepsError",
    "ToyDataset",
    "train",
    "vector_field_limits",
    "VectorField",
    "write_dataset",
]
