"""Energy-based vector fields: Hamiltonian, Lagrangian and gradient networks, and a conservative stable flow.

Each wraps a network that returns one scalar per sample (an energy, Hamiltonian or Lagrangian, ``[B]`` or
``[B, 1]``) and differentiates it with autograd inside ``forward``, with grad enabled even when the caller's is
not. Under grad mode the derivatives keep their graph (``create_graph``), so the fields train, with autograd or
the adjoint; outside it the output is detached. Samples must not interact in the network (no batch norm), since
one backward pass over the batch sum gives every sample's gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["GNF", "HNN", "LNN", "ConservativeLinearSNF"]

Net = nn.Module | Callable[[Tensor], Tensor]


def _check_net(name: str, net: object) -> None:
    if not callable(net):
        raise TypeError(f"{name} must be an nn.Module or callable x [B, D] -> [B, 1], got {type(net).__name__}")


def _check_state(model: str, x: object, *, pairs: bool) -> None:
    """``x`` a tensor ``[B, D]`` (``[B, 2n]`` when ``pairs``)."""
    if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] == 0 or (pairs and x.shape[1] % 2):
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        layout = "[B, 2n] (positions, then their conjugates)" if pairs else "[B, D]"
        raise ValueError(f"{model}'s state must be {layout}, got {got}")


def _leaf(x: Tensor) -> Tensor:
    """``x`` itself when it requires grad (gradients flow back through it), else a leaf alias that does."""
    return x if x.requires_grad else x.detach().requires_grad_(True)


def _scalar_sum(model: str, what: str, value: object, batch: int) -> Tensor:
    """The batch sum of a net's per-sample scalar output, checked to be ``[B]`` or ``[B, 1]``."""
    if not isinstance(value, Tensor) or tuple(value.shape) not in ((batch,), (batch, 1)):
        got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(
            f"{model}'s {what} must return one scalar per sample, shape [{batch}] or [{batch}, 1], got {got}"
        )
    return value.sum()


def _gradient(scalar: Tensor, x: Tensor, *, create_graph: bool) -> Tensor:
    """``∂scalar/∂x``, shaped like ``x``; zeros where ``scalar`` does not depend on ``x``."""
    if not scalar.requires_grad:
        return torch.zeros_like(x)
    (grad,) = torch.autograd.grad(scalar, x, create_graph=create_graph, retain_graph=True, allow_unused=True)
    return torch.zeros_like(x) if grad is None else grad


class HNN(nn.Module):
    """A Hamiltonian neural network: ``d[q, p]/dt = [∂H/∂p, -∂H/∂q]`` with ``H = net([q, p])``.

    ``H`` is conserved along exact solutions (the field is the symplectic gradient of ``H``).

    Args:
        net: the Hamiltonian, ``[B, 2n] -> [B]`` or ``[B, 1]``.

    Raises:
        TypeError: ``net`` not callable.
    """

    def __init__(self, net: Net) -> None:
        super().__init__()
        _check_net("HNN's net", net)
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        """``[q, p]`` ``[B, 2n]`` -> ``[∂H/∂p, -∂H/∂q]`` ``[B, 2n]``.

        Raises:
            ValueError: a state that is not ``[B, 2n]``; a net that does not return one scalar per sample.
        """
        _check_state("HNN", x, pairs=True)
        n = x.shape[1] // 2
        tracked = torch.is_grad_enabled()
        with torch.enable_grad():
            x = _leaf(x)
            energy = _scalar_sum("HNN", "net", self.net(x), x.shape[0])
            grad = _gradient(energy, x, create_graph=tracked)
        return torch.cat([grad[:, n:], -grad[:, :n]], 1)


class GNF(nn.Module):
    """A gradient neural flow: ``dx/dt = -∂E/∂x`` with ``E = energy(x)``, so ``E`` decreases along solutions.

    Args:
        energy: the energy, ``[B, D] -> [B]`` or ``[B, 1]``.

    Raises:
        TypeError: ``energy`` not callable.
    """

    def __init__(self, energy: Net) -> None:
        super().__init__()
        _check_net("GNF's energy", energy)
        self.energy = energy

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``[B, D]`` -> ``-∂E/∂x`` ``[B, D]``.

        Raises:
            ValueError: a state that is not ``[B, D]``; an energy that does not return one scalar per sample.
        """
        _check_state("GNF", x, pairs=False)
        tracked = torch.is_grad_enabled()
        with torch.enable_grad():
            x = _leaf(x)
            energy = _scalar_sum("GNF", "energy", self.energy(x), x.shape[0])
            grad = _gradient(energy, x, create_graph=tracked)
        return -grad


class LNN(nn.Module):
    """A Lagrangian neural network: ``d[q, q']/dt = [q', q'']`` with ``q''`` from the Euler-Lagrange equations.

    With ``L = net([q, q'])``, ``d/dt ∂L/∂q' = ∂L/∂q`` gives
    ``q'' = (∂²L/∂q'²)^+ (∂L/∂q - ∂²L/∂q'∂q q')`` (``^+`` the pseudo-inverse, as a singular
    ``∂²L/∂q'²`` has no inverse). Costs ``n + 1`` backward passes over the batch per evaluation.

    Args:
        net: the Lagrangian, ``[B, 2n] -> [B]`` or ``[B, 1]``.

    Raises:
        TypeError: ``net`` not callable.
    """

    def __init__(self, net: Net) -> None:
        super().__init__()
        _check_net("LNN's net", net)
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        """``[q, q']`` ``[B, 2n]`` -> ``[q', q'']`` ``[B, 2n]``.

        Raises:
            ValueError: a state that is not ``[B, 2n]``; a net that does not return one scalar per sample.
        """
        _check_state("LNN", x, pairs=True)
        n = x.shape[1] // 2
        tracked = torch.is_grad_enabled()
        with torch.enable_grad():
            x = _leaf(x)
            lagrangian = _scalar_sum("LNN", "net", self.net(x), x.shape[0])
            grad = _gradient(lagrangian, x, create_graph=True)  # the Hessian rows differentiate it again
            # Row i: the derivative of ∂L/∂q'_i with respect to [q, q'], for every sample at once: [B, n, 2n].
            rows = torch.stack([_gradient(grad[:, n + i].sum(), x, create_graph=tracked) for i in range(n)], 1)
            velocity = x[:, n:]
            force = grad[:, :n] - (rows[:, :, :n] @ velocity.unsqueeze(-1)).squeeze(-1)
            acceleration = (torch.linalg.pinv(rows[:, :, n:], rtol=1e-15) @ force.unsqueeze(-1)).squeeze(-1)
            out = torch.cat([velocity, acceleration], 1)
        return out if tracked else out.detach()


class ConservativeLinearSNF(nn.Module):
    """A conservative stable neural flow: ``dx/dt = S(x)^T ∂E/∂x`` with ``S = (M - M^T) / 2``, ``M = J(x)``.

    ``S`` is skew-symmetric, so ``dE/dt = (∂E/∂x)^T S^T ∂E/∂x = 0``: ``E`` is conserved along exact solutions
    (a Hamiltonian network is the case of a constant canonical ``S``).

    Args:
        energy: the energy, ``[B, D] -> [B]`` or ``[B, 1]``.
        J: the interconnection network, ``[B, D] -> [B, D, D]`` or ``[B, D * D]`` (reshaped).

    Raises:
        TypeError: ``energy`` or ``J`` not callable.
    """

    def __init__(self, energy: Net, J: Net) -> None:
        super().__init__()
        _check_net("ConservativeLinearSNF's energy", energy)
        _check_net("ConservativeLinearSNF's J", J)
        self.energy = energy
        self.J = J

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``[B, D]`` -> ``S(x)^T ∂E/∂x`` ``[B, D]``.

        Raises:
            ValueError: a state that is not ``[B, D]``; an energy that does not return one scalar per sample; a
                ``J`` whose output does not have ``B * D * D`` entries.
        """
        _check_state("ConservativeLinearSNF", x, pairs=False)
        batch, dim = x.shape
        tracked = torch.is_grad_enabled()
        with torch.enable_grad():
            x = _leaf(x)
            energy = _scalar_sum("ConservativeLinearSNF", "energy", self.energy(x), batch)
            grad = _gradient(energy, x, create_graph=tracked)
            m = self.J(x)
            if not isinstance(m, Tensor) or m.numel() != batch * dim * dim or m.shape[0] != batch:
                got = tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__
                raise ValueError(
                    f"ConservativeLinearSNF's J must return [{batch}, {dim}, {dim}] or [{batch}, {dim * dim}] "
                    f"(one D x D matrix per sample), got {got}"
                )
            m = m.reshape(batch, dim, dim)
            skew = (m - m.transpose(1, 2)) / 2
            out = (skew.transpose(1, 2) @ grad.unsqueeze(-1)).squeeze(-1)
        return out if tracked else out.detach()
