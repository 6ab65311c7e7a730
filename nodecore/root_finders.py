"""The one root-finder registry for equilibrium models: solve ``z = f(z)`` for a batch of states, by name.

A thin layer over :mod:`nodecore.numerics.fixed_point`, where the finders' mathematics lives (``broyden`` shares
its update with torchdyn's ``root_find`` in :mod:`nodecore.numerics.root`). This module only names them for
:class:`nodecore.deq.DEQ` and re-exports what it always exported.

Every finder has the same signature (see :class:`RootFinderFunction`) and returns a :class:`RootResult`; it never
raises on non-convergence (the caller decides, e.g. :class:`nodecore.deq.DEQ` raises ``ConvergenceError``).
Dimension 0 of the state indexes independent samples: each sample has its own residual and, for ``anderson``
and ``broyden``, its own acceleration coefficients, so ``f`` must treat samples independently (no batch norm
across the batch).

Convergence is measured per sample on the relative residual ``||f(z) - z|| / (||f(z)|| + EPS)``
(Euclidean norms over all non-batch dimensions); a solve converges when every sample's residual is
``<= tol``. Each finder returns, per sample, the iterate with the smallest residual it saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping, Protocol

from torch import Tensor

from nodecore._checks import choice
from nodecore.numerics.fixed_point import (
    DEFAULT_DAMPING,
    DEFAULT_MEMORY,
    DEFAULT_REGULARIZATION,
    EPS,
    Map,
    RootResult,
)
from nodecore.numerics.fixed_point import anderson_acceleration as anderson
from nodecore.numerics.fixed_point import fixed_point_iteration as fixed_point
from nodecore.numerics.fixed_point import limited_memory_broyden as broyden

__all__ = [
    "DEFAULT_DAMPING", "DEFAULT_MEMORY", "DEFAULT_REGULARIZATION", "EPS", "Map", "ROOT_FINDERS", "ROOT_FINDER_NAMES",
    "RootFinder", "RootFinderFunction", "RootResult", "anderson", "broyden", "fixed_point", "get_root_finder",
]


class RootFinderFunction(Protocol):
    """The signature every registered finder implements."""

    def __call__(
        self,
        f: Map,
        z0: Tensor,
        *,
        tol: float,
        max_iter: int,
        damping: float,
        memory: int,
        regularization: float,
    ) -> RootResult: ...


@dataclass(frozen=True)
class RootFinder:
    """A registered root finder.

    Attributes:
        name: the name users pass (``DEQ(f, solver=name)``).
        solve: the implementation, ``solve(f, z0, *, tol, max_iter, damping, memory, regularization)``.
        description: one line for ``--help`` and reports, including which options it uses.
    """

    name: str
    solve: RootFinderFunction
    description: str


ROOT_FINDERS: Mapping[str, RootFinder] = MappingProxyType({finder.name: finder for finder in (
    RootFinder("fixed_point", fixed_point, "plain fixed-point iteration, optional damping; linear convergence"),
    RootFinder(
        "anderson", anderson, "Anderson acceleration over the last `memory` iterates, mixing `damping`, "
        "Tikhonov `regularization`"
    ),
    RootFinder(
        "broyden", broyden, "limited-memory good Broyden (rank <= `memory`, then restart), step fraction `damping`"
    ),
)})
ROOT_FINDER_NAMES: tuple[str, ...] = tuple(ROOT_FINDERS)


def get_root_finder(name: str) -> RootFinder:
    """Look a root finder up by name.

    Raises:
        ValueError: the name is not registered; the message lists the valid names.
    """
    return ROOT_FINDERS[choice("root finder", name, ROOT_FINDER_NAMES)]
