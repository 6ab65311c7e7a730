"""nodecore: continuous-depth deep learning (Neural ODEs) on PyTorch.

One public surface over small modules. Importing nodecore never imports Prefect.
"""

from nodecore._version import __version__
from nodecore.architectures import ACTIVATIONS, MLPFieldSpec, build_field
from nodecore.checkpoints import (
    Checkpoint,
    build_model,
    load_checkpoint,
    load_model,
    load_weights,
    model_config,
    save_checkpoint,
)
from nodecore.dataset_io import (
    SCHEMA_VERSION,
    DatasetFormatError,
    content_digest,
    file_digest,
    read_dataset,
    write_dataset,
)
from nodecore.datasets import DATASET_TYPES, ToyDataset, resolve_params
from nodecore.deq import DEQ, ConvergenceError, DEQCell, DEQClassifier, DEQStats
from nodecore.errors import (
    CorruptFileError,
    InputShapeError,
    NonFiniteError,
    SolverError,
    StabilityWarning,
    StepSizeUnderflowError,
    TooManyStepsError,
)
from nodecore.classifiers import ODEClassifier
from nodecore.fields import Augmenter, DataControl, DepthAware, DepthCat, VectorField
from nodecore.galerkin import GALERKIN_BASES, GalerkinLinear
from nodecore.neuralode import BACKENDS, ORDERS, SENSITIVITIES, NeuralODE
from nodecore.models import CNF, GNF, HNN, LNN, NeuralSDE, autograd_trace, hutch_trace
from nodecore.numerics import odeint, odeint_hybrid, odeint_mshooting, odeint_symplectic, root_find
from nodecore.problems import MultipleShootingLayer, ODEProblem
from nodecore.solvers import SOLVER_NAMES, SOLVERS, Solver, get_solver
from nodecore.root_finders import ROOT_FINDER_NAMES, ROOT_FINDERS, RootFinder, RootResult, get_root_finder
from nodecore.plotting import (
    plot_decision_boundary,
    plot_state_space,
    plot_trajectories_depth,
    plot_vector_field,
    save_figure,
    vector_field_limits,
)
from nodecore.stats import SolveStats
from nodecore.systems import LOSSES, DampedPendulum, HybridField, LotkaVolterra, fit_trajectories
from nodecore.training import EpochStats, History, Metrics, accuracy, evaluate, logits, train

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
