"""nodecore: continuous-depth deep learning (Neural ODEs) on PyTorch.

One public surface over small modules. Importing nodecore never imports Prefect.
"""

from nodecore._version import __version__
from nodecore.dataset_io import (
    SCHEMA_VERSION,
    DatasetFormatError,
    content_digest,
    file_digest,
    read_dataset,
    write_dataset,
)
from nodecore.datasets import DATASET_TYPES, ToyDataset, resolve_params
from nodecore.errors import NonFiniteError, SolverError, StepSizeUnderflowError, TooManyStepsError
from nodecore.fields import Augmenter, DepthCat, VectorField
from nodecore.neuralode import SENSITIVITIES, NeuralODE
from nodecore.solvers import SOLVER_NAMES, SOLVERS, Solver, get_solver
from nodecore.stats import SolveStats

__all__ = [
    "__version__",
    "Augmenter",
    "content_digest",
    "DATASET_TYPES",
    "DatasetFormatError",
    "DepthCat",
    "file_digest",
    "get_solver",
    "NeuralODE",
    "NonFiniteError",
    "read_dataset",
    "resolve_params",
    "SCHEMA_VERSION",
    "SENSITIVITIES",
    "Solver",
    "SOLVER_NAMES",
    "SOLVERS",
    "SolveStats",
    "SolverError",
    "StepSizeUnderflowError",
    "ToyDataset",
    "TooManyStepsError",
    "VectorField",
    "write_dataset",
]
