"""Deep equilibrium (implicit) models: ``z* = f(z*, x)`` found by a root finder, differentiated implicitly.

``DEQ(f)(x)`` solves for the equilibrium without recording the iterations (under ``torch.no_grad``), then
evaluates ``f`` once more with autograd attached. Its backward pass uses the implicit function theorem:
the gradient ``g`` reaching ``z*`` solves ``g = J^T g + grad_output`` (``J = df/dz`` at ``z*``), found by the
same root finders on the vector-Jacobian-product map. Memory is one evaluation of ``f`` whatever the
number of iterations.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from nodecore._checks import integer, number, positive
from nodecore._shapes import explained_shapes
from nodecore.errors import SolverError
from nodecore.root_finders import (
    DEFAULT_DAMPING,
    DEFAULT_MEMORY,
    DEFAULT_REGULARIZATION,
    ROOT_FINDER_NAMES,
    RootFinder,
    RootResult,
    get_root_finder,
)

# Defaults (the root finders' own options default in nodecore.root_finders).
DEFAULT_ROOT_FINDER = "anderson"
DEFAULT_TOL = 1e-5
DEFAULT_MAX_ITER = 50
DEFAULT_CONTRACTION = 0.9

StateShape = Callable[[Tensor], Sequence[int]]


class ConvergenceError(SolverError):
    """A DEQ's forward (equilibrium) or backward (implicit-gradient) solve missed its tolerance."""


@dataclass(frozen=True)
class DEQStats:
    """The last forward pass of a :class:`DEQ` and, once run, the backward pass that followed it.

    Residuals are the largest per-sample relative residual ``||f(z) - z|| / (||f(z)|| + eps)`` reached.
    Fields stay ``0`` / ``None`` until the pass they describe runs (backward fields keep them when the forward
    ran without autograd or no backward followed).

    Attributes:
        root_finder: name of the forward root finder.
        forward_iterations: evaluations of ``f`` by the forward solve (the extra evaluation with autograd
            attached is not counted).
        forward_residual: relative residual of the returned equilibrium.
        forward_converged: ``forward_residual <= tol``.
        backward_iterations: vector-Jacobian products made by the backward solve.
        backward_residual: relative residual of the implicit-gradient solve.
        backward_converged: ``backward_residual <= backward_tol``.
    """

    root_finder: str = ""
    forward_iterations: int = 0
    forward_residual: float | None = None
    forward_converged: bool = False
    backward_iterations: int = 0
    backward_residual: float | None = None
    backward_converged: bool | None = None


class _StatsRecord:
    """Where one forward pass and its backward pass write their statistics."""

    def __init__(self, stats: DEQStats) -> None:
        self.value = stats


class _ImplicitGradient(torch.autograd.Function):
    """Identity on ``z_out = f(z_in, x)`` whose backward replaces ``grad_output`` by the implicit gradient."""

    @staticmethod
    def forward(ctx, z_out: Tensor, z_in: Tensor, solve: Callable[[Tensor, Tensor, Tensor], Tensor]) -> Tensor:
        ctx.solve = solve
        ctx.save_for_backward(z_out, z_in)
        return z_out.clone()

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None, None]:
        z_out, z_in = ctx.saved_tensors
        return ctx.solve(z_out, z_in, grad_output), None, None


def _advice(finder: RootFinder, iterations_option: str) -> str:
    others = ", ".join(repr(name) for name in ROOT_FINDER_NAMES if name != finder.name)
    return (
        f"try more iterations ({iterations_option}), damping < 1, another root finder ({others}), or a more "
        "contractive f (smaller weights, spectral normalisation; DEQCell keeps ||W||_2 <= contraction < 1)"
    )


def _failure(result: RootResult) -> str:
    iterations = f"{result.iterations} iteration{'' if result.iterations == 1 else 's'}"
    if not result.finite:
        return (f"NaN or Inf appeared after {iterations} (the iteration diverged); best relative residual "
                f"{result.residual:.3g}")
    return f"relative residual {result.residual:.3g} after {iterations}"


class DEQ(nn.Module):
    """A deep equilibrium layer: ``DEQ(f)(x)`` returns ``z*`` with ``z* = f(z*, x)``.

    The state starts at zeros (or ``z0``) of the state shape, which is, in order of precedence:
    ``state_shape(x)`` when given, ``f.state_shape(x)`` when ``f`` defines it (as :class:`DEQCell` does),
    else ``x.shape``. Dimension 0 of the state indexes samples (a 1-D state is one sample): each converges
    to the tolerance on its own, so ``f`` must treat samples independently (no batch norm).

    The forward solve runs under ``torch.no_grad``; the output is ``f(z*, x)`` evaluated once more with
    autograd attached (equal to ``z*`` to the tolerance). Gradients follow the implicit function theorem
    (first order only). Read :attr:`stats` after a call.

    Args:
        f: an ``nn.Module`` taking ``(z [B, *S], x)`` and returning ``[B, *S]``.
        solver: a name from :data:`nodecore.root_finders.ROOT_FINDER_NAMES` (default ``'anderson'``).
        tol: forward tolerance on each sample's relative residual ``||f(z) - z|| / (||f(z)|| + eps)``.
        max_iter: cap on forward evaluations of ``f``.
        backward_solver, backward_tol, backward_max_iter: the same for the backward solve of
            ``g = J^T g + grad_output``; None takes the forward value.
        damping: step fraction in (0, 1] (fixed-point damping, Anderson mixing, Broyden step).
        memory: iterates (Anderson) or rank-one updates (Broyden) kept; fixed-point ignores it.
        regularization: Anderson's relative Tikhonov term; the other finders ignore it.
        state_shape: ``x -> shape`` of the state; see above.

    Raises:
        ValueError: unknown root finder (the message lists the valid ones) or a bad option.
    """

    def __init__(
        self,
        f: nn.Module,
        *,
        solver: str = DEFAULT_ROOT_FINDER,
        tol: float = DEFAULT_TOL,
        max_iter: int = DEFAULT_MAX_ITER,
        backward_solver: str | None = None,
        backward_tol: float | None = None,
        backward_max_iter: int | None = None,
        damping: float = DEFAULT_DAMPING,
        memory: int = DEFAULT_MEMORY,
        regularization: float = DEFAULT_REGULARIZATION,
        state_shape: StateShape | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(f, nn.Module):
            raise TypeError(
                f"f must be an nn.Module taking (z, x) (got {type(f).__name__}), so that its parameters are "
                "registered and get gradients"
            )
        self.f = f
        self.solver = get_root_finder(solver)
        self.backward_solver = get_root_finder(backward_solver) if backward_solver is not None else self.solver
        self.tol = positive("tol", tol)
        self.max_iter = integer("max_iter", max_iter, minimum=1)
        self.backward_tol = self.tol if backward_tol is None else positive("backward_tol", backward_tol)
        self.backward_max_iter = self.max_iter if backward_max_iter is None else integer(
            "backward_max_iter", backward_max_iter, minimum=1
        )
        self.damping = number("damping", damping, minimum=0, maximum=1, open_min=True)
        self.memory = integer("memory", memory, minimum=1)
        self.regularization = number("regularization", regularization, minimum=0)
        self.state_shape = state_shape
        self._stats = _StatsRecord(DEQStats())

    def extra_repr(self) -> str:
        return f"solver={self.solver.name}, tol={self.tol}, max_iter={self.max_iter}"

    def options(self) -> dict[str, object]:
        """The constructor's keyword arguments but ``f`` and ``state_shape``: ``DEQ(f, **deq.options())``."""
        return {
            "solver": self.solver.name,
            "tol": self.tol,
            "max_iter": self.max_iter,
            "backward_solver": self.backward_solver.name,
            "backward_tol": self.backward_tol,
            "backward_max_iter": self.backward_max_iter,
            "damping": self.damping,
            "memory": self.memory,
            "regularization": self.regularization,
        }

    @property
    def stats(self) -> DEQStats:
        """Iterations, residuals and convergence of the last forward pass and of its backward pass."""
        return self._stats.value

    def forward(self, x: Tensor, z0: Tensor | None = None) -> Tensor:
        """Find the equilibrium for ``x``.

        With autograd enabled the output is attached to the graph (through ``f``'s parameters, ``x`` and
        anything ``f`` captures), so that no gradient is silently dropped.

        Args:
            x: the input ``[B, ...]`` passed unchanged to ``f``, floating point.
            z0: initial guess ``[B, *S]`` (e.g. the previous equilibrium, to warm-start); zeros when None.
                No gradient flows to it (the equilibrium does not depend on it).

        Returns:
            ``z* [B, *S]``.

        Raises:
            ConvergenceError: the forward solve missed ``tol`` within ``max_iter`` (``stats`` still tells how
                far it got). The backward pass raises it when the implicit-gradient solve fails.
            ValueError, TypeError: bad ``x`` or ``z0``, or ``f`` returned the wrong shape.
        """
        z_init = self._initial_state(x, z0)
        shape = z_init.shape

        def step(z: Tensor) -> Tensor:
            fz = self.f(z, x)
            if not isinstance(fz, Tensor) or fz.shape != shape:
                got = tuple(fz.shape) if isinstance(fz, Tensor) else type(fz).__name__
                raise ValueError(
                    f"f(z, x) must return a tensor shaped like the state {tuple(shape)}, got {got}; the state "
                    "shape is state_shape(x), else f.state_shape(x), else x.shape (or pass z0)"
                )
            return fz

        with torch.no_grad(), explained_shapes("f(z, x)", {"the state z": z_init, "the input x": x}, self.f):
            result = self.solver.solve(
                step, z_init, tol=self.tol, max_iter=self.max_iter, damping=self.damping, memory=self.memory,
                regularization=self.regularization,
            )
        record = _StatsRecord(DEQStats(self.solver.name, result.iterations, result.residual, result.converged))
        self._stats = record
        if not result.converged:
            raise ConvergenceError(
                f"the DEQ forward solve ({self.solver.name}) did not converge: {_failure(result)}, tolerance "
                f"tol={self.tol:g} (max_iter={self.max_iter}); {_advice(self.solver, 'max_iter')}"
            )
        if not torch.is_grad_enabled():
            return step(result.z)
        z_in = result.z.detach().requires_grad_()
        z_out = step(z_in)
        return _ImplicitGradient.apply(z_out, z_in, functools.partial(self._implicit_gradient, record=record))

    def _implicit_gradient(self, z_out: Tensor, z_in: Tensor, grad_output: Tensor, *, record: _StatsRecord) -> Tensor:
        """Solve ``g = J^T g + grad_output`` with ``J = d z_out / d z_in`` at the equilibrium."""
        if torch.is_grad_enabled():
            raise RuntimeError("DEQ supports first-order gradients only; backward(create_graph=True) is not supported")

        def vjp_map(g: Tensor) -> Tensor:
            (vjp,) = torch.autograd.grad(z_out, z_in, g, retain_graph=True, allow_unused=True)
            return grad_output if vjp is None else vjp + grad_output

        result = self.backward_solver.solve(
            vjp_map, grad_output, tol=self.backward_tol, max_iter=self.backward_max_iter, damping=self.damping,
            memory=self.memory, regularization=self.regularization,
        )
        record.value = replace(
            record.value, backward_iterations=result.iterations, backward_residual=result.residual,
            backward_converged=result.converged,
        )
        if not result.converged:
            raise ConvergenceError(
                f"the DEQ backward solve ({self.backward_solver.name}) of g = J^T g + grad_output did not converge: "
                f"{_failure(result)}, tolerance backward_tol={self.backward_tol:g} "
                f"(backward_max_iter={self.backward_max_iter}); {_advice(self.backward_solver, 'backward_max_iter')}"
            )
        return result.z

    def _initial_state(self, x: Tensor, z0: Tensor | None) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(f"x must be floating point, got dtype {x.dtype}; convert it with x.float()")
        if z0 is not None:
            if not isinstance(z0, Tensor) or not z0.is_floating_point() or z0.ndim < 1:
                raise ValueError(f"z0 must be a floating-point tensor [B, *S], got {z0!r:.80}")
            return z0.detach()
        state_shape = self.state_shape or getattr(self.f, "state_shape", None)
        shape = tuple(state_shape(x)) if state_shape is not None else tuple(x.shape)
        if len(shape) < 1:
            raise ValueError(f"the state must have at least one dimension [B, *S], got shape {shape}")
        return torch.zeros(shape, dtype=x.dtype, device=x.device)


class DEQCell(nn.Module):
    """A contractive cell for :class:`DEQ`: ``f(z, x) = tanh(W' z + U x + b)``.

    ``W' = W * min(1, contraction / ||W||_2)``, so ``||W'||_2 <= contraction < 1``; as tanh is 1-Lipschitz,
    ``f`` is a contraction in ``z`` and the equilibrium exists, is unique, and every root finder's
    iteration (and the backward solve) converges.

    Args:
        in_dim: input features D.
        hidden: state size H.
        contraction: bound on the spectral norm of the recurrent weight, in (0, 1).

    Shapes: ``z [B, H]``, ``x [B, D]`` -> ``[B, H]``; :meth:`state_shape` gives ``(B, H)``.
    """

    def __init__(self, in_dim: int, hidden: int, *, contraction: float = DEFAULT_CONTRACTION) -> None:
        super().__init__()
        in_dim = integer("in_dim", in_dim, minimum=1)
        self.hidden = integer("hidden", hidden, minimum=1)
        self.contraction = number("contraction", contraction, minimum=0, maximum=1, open_min=True, open_max=True)
        self.inject = nn.Linear(in_dim, self.hidden)
        self.weight = nn.Parameter(torch.empty(self.hidden, self.hidden))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear's default; rescaled on use

    def extra_repr(self) -> str:
        return f"hidden={self.hidden}, contraction={self.contraction}"

    def recurrent_weight(self) -> Tensor:
        """``W' [H, H]``: the recurrent weight rescaled so that its spectral norm is at most ``contraction``."""
        norm = torch.linalg.matrix_norm(self.weight, ord=2)
        return self.weight * torch.clamp(self.contraction / norm, max=1.0)

    def state_shape(self, x: Tensor) -> tuple[int, ...]:
        """``(*x.shape[:-1], H)``: the state shape :class:`DEQ` starts from."""
        return (*x.shape[:-1], self.hidden)

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        """``tanh(z W'^T + x U^T + b)``, ``[B, H]``."""
        return torch.tanh(nn.functional.linear(z, self.recurrent_weight()) + self.inject(x))


class DEQClassifier(nn.Sequential):
    """A DEQ classifier: ``nn.Sequential(DEQ(DEQCell(in_dim, hidden)), nn.Linear(hidden, n_classes))``.

    ``model(x [B, in_dim])`` returns logits ``[B, n_classes]``; ``model.stats`` are the DEQ's. For other
    DEQ options (damping, memory, ...) compose the same ``nn.Sequential`` yourself.

    Args:
        in_dim, hidden, n_classes: input features, equilibrium state size, classes.
        contraction: :class:`DEQCell`'s spectral-norm bound.
        solver, tol, max_iter, backward_tol, backward_max_iter: passed to :class:`DEQ`.
    """

    def __init__(
        self,
        in_dim: int,
        hidden: int,
        n_classes: int,
        *,
        contraction: float = DEFAULT_CONTRACTION,
        solver: str = DEFAULT_ROOT_FINDER,
        tol: float = DEFAULT_TOL,
        max_iter: int = DEFAULT_MAX_ITER,
        backward_tol: float | None = None,
        backward_max_iter: int | None = None,
    ) -> None:
        n_classes = integer("n_classes", n_classes, minimum=1)
        deq = DEQ(
            DEQCell(in_dim, hidden, contraction=contraction), solver=solver, tol=tol, max_iter=max_iter,
            backward_tol=backward_tol, backward_max_iter=backward_max_iter,
        )
        super().__init__(deq, nn.Linear(hidden, n_classes))

    @property
    def deq(self) -> DEQ:
        """The equilibrium layer."""
        return self[0]

    @property
    def stats(self) -> DEQStats:
        """The DEQ layer's :class:`DEQStats` of the last call."""
        return self[0].stats
