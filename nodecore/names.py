"""The names and defaults nodecore accepts, importable without torch.

A pipeline validates its configuration against these before any work starts (and before torch is
imported, which costs more than a cached rerun should). Each table is the one home of its values where
the library reads them from here; where a registry defines them (solvers, root finders, datasets,
activations), the test suite checks that the registry and this table agree.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

#: Solver names of :data:`nodecore.solvers.SOLVERS`, in its order.
SOLVER_NAMES: tuple[str, ...] = ("euler", "midpoint", "rk4", "rk4_38", "adaptive_heun", "bosh3", "dopri5", "tsit5",
                                 "dopri8")
#: Root-finder names of :data:`nodecore.root_finders.ROOT_FINDERS`.
ROOT_FINDER_NAMES: tuple[str, ...] = ("fixed_point", "anderson", "broyden")
#: Activation names of :data:`nodecore.architectures.ACTIVATIONS`.
ACTIVATION_NAMES: tuple[str, ...] = ("tanh", "relu", "softplus", "elu", "silu")
#: Model kinds a checkpoint can hold (:func:`nodecore.checkpoints.build_model`).
MODEL_KINDS: tuple[str, ...] = ("node", "anode", "deq")
#: Gradient methods of :class:`nodecore.NeuralODE`.
SENSITIVITIES: tuple[str, ...] = ("autograd", "adjoint", "interpolated_adjoint")

#: Labelled toy datasets (:data:`nodecore.datasets.DATASET_TYPES`) with their (features, classes) at default options.
DATASET_SHAPES: Mapping[str, tuple[int, int]] = MappingProxyType({
    "moons": (2, 2), "circles": (2, 2), "spirals": (2, 2), "gaussians": (2, 7), "gaussians_spiral": (2, 7),
    "spheres": (3, 2),
})
DATASET_TYPES: tuple[str, ...] = tuple(DATASET_SHAPES)

# NeuralODE's defaults, shared with the pipeline's config.
DEFAULT_SOLVER = "tsit5"
DEFAULT_ATOL = 1e-3
DEFAULT_RTOL = 1e-3
DEFAULT_ATOL_ADJOINT = 1e-4
DEFAULT_RTOL_ADJOINT = 1e-4
DEFAULT_MAX_STEPS = 10_000


def dataset_shape(dataset_type: str, n_points: int) -> tuple[int, int]:
    """``(features, classes present)`` of ``n_points`` drawn by :func:`nodecore.datasets.generate_points`.

    Its classes are balanced, so all of them appear once there are at least as many points.

    Raises:
        ValueError: an unknown ``dataset_type``, naming the valid ones.
    """
    try:
        dim, classes = DATASET_SHAPES[dataset_type]
    except KeyError:
        raise ValueError(f"unknown dataset type {dataset_type!r}; valid types: {', '.join(DATASET_TYPES)}") from None
    return dim, min(classes, n_points)
