"""The pipeline's one typed configuration: every default lives here (or in :mod:`nodecore.names`, which it reads).

Prefect validates these models as flow parameters and renders them as the run form in the UI; the CLI
(``python flows/train_flow.py --help``) exposes every field as an option. Both ways in refuse the same bad
values here, before any stage runs: every float is finite, every seed fits numpy's, the artifacts folder is
named, presigned links live no longer than S3 allows, and the dataset's classes fit every model kind of the grid.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from nodecore.names import (
    ACTIVATION_NAMES,
    DATASET_TYPES,
    DEFAULT_ATOL,
    DEFAULT_ATOL_ADJOINT,
    DEFAULT_MAX_STEPS,
    DEFAULT_RTOL,
    DEFAULT_RTOL_ADJOINT,
    MODEL_KINDS,
    ROOT_FINDER_NAMES,
    SENSITIVITIES,
    SOLVER_NAMES,
    dataset_shape,
)

SolverName = Literal[SOLVER_NAMES]  # type: ignore[valid-type]
DatasetType = Literal[DATASET_TYPES]  # type: ignore[valid-type]
Activation = Literal[ACTIVATION_NAMES]  # type: ignore[valid-type]
SensitivityName = Literal[SENSITIVITIES]  # type: ignore[valid-type]
ModelKind = Literal[MODEL_KINDS]  # type: ignore[valid-type]
RootFinderName = Literal[ROOT_FINDER_NAMES]  # type: ignore[valid-type]
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
MAX_SEED = 2**32 - 1  # numpy's (and so scikit-learn's) seed limit
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
MIN_LINK_EXPIRY_SECONDS, MAX_LINK_EXPIRY_SECONDS = 1, 604_800  # 7 days: the longest S3 accepts for a SigV4 URL
DEFAULT_LINK_EXPIRY_SECONDS = 86_400  # a day: a report read the day it was made; a cached rerun gives fresh links


def check_link_expiry(seconds: int) -> int:
    """``seconds`` if it is a valid lifetime for a presigned link, within S3's SigV4 limits.

    Raises:
        ValueError: naming the value and the valid range.
    """
    if not MIN_LINK_EXPIRY_SECONDS <= seconds <= MAX_LINK_EXPIRY_SECONDS:
        raise ValueError(f"a link expiry of {seconds!r} seconds is out of range; give {MIN_LINK_EXPIRY_SECONDS} to "
                         f"{MAX_LINK_EXPIRY_SECONDS} seconds ({MAX_LINK_EXPIRY_SECONDS} = 7 days, the longest S3 "
                         "accepts for a presigned URL)")
    return seconds


class _Config(BaseModel):
    # allow_inf_nan=False: ``gt=0`` alone admits inf, which fails deep inside a stage.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


def _fits_node(dim: int, classes: int) -> bool:
    """Whether a 'node' model, whose class scores are its final state, can classify ``classes`` in ``dim``-D."""
    return classes <= dim


class DatasetConfig(_Config):
    """The toy dataset: a training set and a held-out test set drawn with another seed."""

    dataset_type: DatasetType = Field("moons", description="toy dataset generator")
    n_train: int = Field(512, ge=2, description="training points")
    n_test: int = Field(2048, ge=1, description="held-out test points")
    noise: float = Field(0.1, ge=0, description="noise added to the points, as torchdyn defines it per type")
    seed: Seed = Field(0, description="seed of the training set")
    test_seed: Seed = Field(1, description="seed of the test set")

    def dim_and_classes(self) -> tuple[int, int]:
        """``(features, classes)`` of the generated data (the larger split decides how many classes appear)."""
        return dataset_shape(self.dataset_type, max(self.n_train, self.n_test))


class ModelConfig(_Config):
    """The vector field (an MLP) and the depth grid it is integrated over."""

    hidden: int = Field(16, ge=1, description="hidden width of the vector field")
    layers: int = Field(1, ge=1, description="hidden layers of the vector field")
    activation: Activation = Field("tanh", description="activation of the vector field")
    depth_variant: bool = Field(False, description="feed the depth t to the field (DepthCat)")
    t_end: float = Field(1.0, gt=0, description="integrate over depth [0, t_end]")
    t_points: int = Field(5, ge=2, description="depths in t_span where the state is returned")
    init_seed: Seed = Field(0, description="seed of the initial weights")
    augment_dims: int = Field(2, ge=1, description="dimensions an 'anode' model adds to the state")
    deq_hidden: int = Field(32, ge=1, description="hidden units of a 'deq' model")
    root_finder: RootFinderName = Field("anderson", description="root finder of a 'deq' model")
    deq_tol: float = Field(1e-4, gt=0, description="fixed-point tolerance of a 'deq' model")
    deq_max_iter: int = Field(50, ge=1, description="fixed-point iteration cap of a 'deq' model")


class SolverConfig(_Config):
    """How every grid cell integrates and differentiates; the solver itself is a grid axis."""

    sensitivity: SensitivityName = Field("adjoint", description="gradient method")
    atol: float = Field(DEFAULT_ATOL, gt=0, description="absolute tolerance (adaptive solvers)")
    rtol: float = Field(DEFAULT_RTOL, gt=0, description="relative tolerance (adaptive solvers)")
    atol_adjoint: float = Field(DEFAULT_ATOL_ADJOINT, gt=0, description="adjoint absolute tolerance")
    rtol_adjoint: float = Field(DEFAULT_RTOL_ADJOINT, gt=0, description="adjoint relative tolerance")
    step_size: Optional[float] = Field(None, gt=0, description="constant step; fixed solvers step on t_span if unset")
    max_steps: int = Field(DEFAULT_MAX_STEPS, ge=1, description="cap on solver steps per solve")
    seminorm: bool = Field(True, description=("adjoint: leave the parameter gradients out of the backward step-size "
                                              "control (far fewer steps; NeuralODE's own default is off, torchdyn's)"))
    interpolator: Literal["dense", "step"] = Field(
        "dense", description=("output depths: 'dense' reads them off the adaptive solver's dense output, 'step' "
                              "steps onto each (NeuralODE's own default, torchdyn's)"))


class TrainingConfig(_Config):
    """The optimisation loop."""

    epochs: int = Field(200, ge=0, description="training epochs")
    lr: float = Field(0.01, gt=0, description="Adam learning rate")
    batch_size: Optional[int] = Field(None, ge=1, description="mini-batch size; full batch if unset")
    checkpoint_every: int = Field(25, ge=1, description="write a resumable checkpoint every N epochs")
    log_every: int = Field(25, ge=1, description="log progress every N epochs")


class OutputConfig(_Config):
    """Trajectory integration and plots."""

    trajectory_points: int = Field(50, ge=2, description="depths of the fine grid for trajectories")
    trajectory_samples: int = Field(512, ge=1, description="test points whose trajectories are kept")
    plot_samples: int = Field(300, ge=1, description="trajectories drawn per plot")


class RunConfig(_Config):
    """Where artifacts go and how stages are retried."""

    artifacts_dir: str = Field("artifacts", description="root folder of cached artifacts (not empty)")
    refresh: bool = Field(False, description="recompute every stage, ignoring cached artifacts")
    retries: int = Field(2, ge=0, description="retries of a transiently failing stage")
    retry_delay_seconds: float = Field(2.0, ge=0, description="first retry delay (doubles each retry)")
    executor: Literal["threads", "processes", "dask", "deployments"] = Field(
        "threads", description=("where grid cells run: threads of this process, a pool of worker processes (one "
                                "per core), a Dask cluster, or work pools"))
    stage_processes: Optional[int] = Field(
        None, ge=0, description=("worker processes that run the CPU trainings' epochs and draw the plots for "
                                 "executor=threads, so that they use every core (in threads of one process they "
                                 "take turns): 0 keeps them in this process's threads; default one per core, at "
                                 "most one per pending cell, plus one"))
    dask_address: Optional[str] = Field(
        None, description="Dask scheduler address for executor=dask; a LocalCluster when unset")
    dask_workers: int = Field(2, ge=1, description="workers of the LocalCluster for executor=dask")
    cpu_pools: list[str] = Field(["cpu"], min_length=1,
                                 description="work pools for CPU cells (executor=deployments), used in turn")
    gpu_pool: str = Field("gpu", description="work pool for cuda:N cells (executor=deployments)")
    cell_timeout_seconds: Optional[float] = Field(
        None, gt=0, description=("cancel and re-dispatch a cell that has not finished after this long, e.g. "
                                 "because its host died (executor=deployments; up to run.retries times)"))
    link_expiry_seconds: int = Field(
        DEFAULT_LINK_EXPIRY_SECONDS,
        json_schema_extra={"minimum": MIN_LINK_EXPIRY_SECONDS, "maximum": MAX_LINK_EXPIRY_SECONDS},
        description=("lifetime in seconds of the presigned https links to a remote store's files (s3://) in the "
                     f"report and the Prefect UI: {MIN_LINK_EXPIRY_SECONDS} to {MAX_LINK_EXPIRY_SECONDS} (7 days); "
                     "a store that cannot sign URLs keeps its plain URLs"))

    @field_validator("artifacts_dir")
    @classmethod
    def _names_a_folder(cls, value: str) -> str:
        if not value.strip():
            raise ValueError(f"{value!r} names no folder (the run would write into the current folder); "
                             "give a folder such as 'artifacts' or '/shared/nodecore'")
        return value

    @field_validator("link_expiry_seconds")
    @classmethod
    def _link_expiry_in_range(cls, value: int) -> int:
        return check_link_expiry(value)


class PipelineConfig(_Config):
    """Everything one run of the training flow needs."""

    dataset: DatasetConfig = DatasetConfig()
    model: ModelConfig = ModelConfig()
    solver: SolverConfig = SolverConfig()
    training: TrainingConfig = TrainingConfig()
    output: OutputConfig = OutputConfig()
    run: RunConfig = RunConfig()
    solvers: list[SolverName] = Field(["dopri5", "rk4", "tsit5"], min_length=1, description="grid axis: solvers")
    devices: list[str] = Field(["auto"], min_length=1, description="grid axis: 'auto', 'cpu', 'cuda' or 'cuda:N'")
    models: list[ModelKind] = Field(["node"], min_length=1, validate_default=True, description=(
        "grid axis: 'node' (the tutorial's Neural ODE), 'anode' (augmented, linear readout), 'deq' "
        "(equilibrium model; one cell per device, the solver axis does not apply)"))
    seeds: list[Seed] = Field([], description=(
        "grid axis: seeds of the initial weights (model.init_seed), each with its own field stage and cells, "
        "e.g. for error bars over initialisations; cell names show the seed ('dopri5@cpu#s1') when more than one "
        "is given; empty: just model.init_seed"))

    @field_validator("solvers", "devices", "models", "seeds")
    @classmethod
    def _unique(cls, values: list[Any]) -> list[Any]:
        if len(set(values)) != len(values):
            raise ValueError(f"duplicate entries in {values}")
        return values

    def grid_seeds(self) -> list[int]:
        """The seed axis: :attr:`seeds`, or just ``model.init_seed`` when it is empty."""
        return list(self.seeds) or [self.model.init_seed]

    def cell_seed(self, seed: int | None) -> int:
        """The init seed of a cell whose grid seed is ``seed``: None (a grid of one seed) is that one seed."""
        return self.grid_seeds()[0] if seed is None else seed

    def seeded_model(self, seed: int | None) -> ModelConfig:
        """:attr:`model` with the init seed of a cell whose grid seed is ``seed`` (see :meth:`cell_seed`).

        It is :attr:`model` itself where the seeds agree, so a grid that does not sweep seeds has the stage
        inputs (and cache keys) it had before the axis existed.
        """
        init_seed = self.cell_seed(seed)
        if init_seed == self.model.init_seed:
            return self.model
        return self.model.model_copy(update={"init_seed": init_seed})

    @field_validator("devices")
    @classmethod
    def _device_names(cls, values: list[str]) -> list[str]:
        for value in values:
            if not DEVICE_PATTERN.match(value):
                raise ValueError(f"unknown device {value!r}; valid devices: 'auto', 'cpu', 'cuda', 'cuda:N'")
        return values

    @field_validator("models")
    @classmethod
    def _classes_fit_node(cls, values: list[str], info: ValidationInfo) -> list[str]:
        """A 'node' model reads its class scores from the final state: no more classes than state dimensions."""
        dataset = info.data.get("dataset")  # absent when the dataset itself was invalid
        if "node" not in values or dataset is None:
            return values
        dim, classes = dataset.dim_and_classes()
        if not _fits_node(dim, classes):
            n_samples = max(dataset.n_train, dataset.n_test)
            fitting = [name for name in DATASET_TYPES if _fits_node(*dataset_shape(name, n_samples))]
            raise ValueError(
                f"dataset.dataset_type {dataset.dataset_type!r} has {classes} classes, but a 'node' model reads "
                f"one class score per dimension of its {dim}-D state; with it use models 'anode' or 'deq' (linear "
                f"readouts), or for 'node' a dataset_type with no more classes than dimensions: {', '.join(fitting)}")
        return values
