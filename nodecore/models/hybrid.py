"""torchdyn's ``torchdyn.models.hybrid``: :class:`HybridNeuralDE`, a recurrent model whose latent state jumps at
each observation and flows continuously between them (ODE-RNN, ODE-GRU, ODE-LSTM).

torchdyn's module cannot be imported (1.0.6 and master: it imports ``LSDEFunc``, which torchdyn removed in 2020),
so its class is matched to the code as written, with three of its bugs fixed (see :class:`HybridNeuralDE`).
torchdyn's other class there, ``LatentNeuralSDE``, cannot run in torchdyn either; nodecore's
(:mod:`nodecore.models.latent_sde`) computes what it intends, and is importable from here as from torchdyn's module.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from nodecore._checks import choice
from nodecore.errors import InputShapeError
from nodecore.models.latent_sde import LatentNeuralSDE

__all__ = ["HybridNeuralDE", "LatentNeuralSDE"]


class HybridNeuralDE(nn.Module):
    """A sequence model that alternates a discrete jump (reading an observation) with a continuous flow.

    For a sequence ``x`` ``[T, B, *features]`` the latent ``h`` ``[B, H]`` starts at zero and, for each
    observation in turn, jumps, ``h = jump(x_t, h)``, then flows, ``h = flow(h)``; the flowed states, stacked to
    ``Y`` ``[T, B, H]``, go through ``out`` whole. torchdyn's order and semantics, as its code reads:

    * ``jump`` an ``nn.LSTMCell`` (or a subclass) is called ``jump(x_t, (h, c)) -> (h, c)``, with its cell state
      ``c`` (also starting at zero) carried from jump to jump and never flowed; any other jump (``nn.RNNCell``,
      ``nn.GRUCell``, your own module) is called ``jump(x_t, h) -> h`` and must have a ``hidden_size``.
    * ``flow`` maps ``h`` to the state one flow later; there is no observation time, so every gap is the flow's
      own span. torchdyn calls it and uses what it returns; here a flow may also return the trajectory
      ``[S, B, H]`` or torchdyn's ``(t_eval, trajectory)`` pair, as a ``NeuralODE`` does, and ``h`` is then
      its last state (torchdyn's class fails on both).
    * ``Y[t]`` is the state after the ``t``-th observation *read*: with ``reverse=True`` the sequence is read last
      observation first (``x.flip(0)``) and ``Y`` is in reading order.

    Fixed from torchdyn: ``reverse=True`` raised ``UnboundLocalError`` there (it flipped a variable not yet
    defined), an ``nn.LSTMCell`` subclass was called as a plain cell, and the latent was float32 whatever the
    input's dtype (a float64 model failed).

    Args:
        flow: ``h [B, H] -> h [B, H]`` (or a trajectory ending there), e.g. a ``NeuralODE`` on ``H`` features.
        jump: the update at an observation, as above.
        out: applied to ``Y`` ``[T, B, H]`` (e.g. an ``nn.Linear``; ``nn.Identity()`` for the latents).
        last_output: return ``out(Y)[-1]`` (``[B, ...]``, the output after the last observation read) rather than
            the whole ``out(Y)`` (``[T, B, ...]``).
        reverse: read the sequence from its last observation to its first.

    Raises:
        TypeError: ``flow``, ``jump`` or ``out`` is not callable, or ``jump`` has no positive integer
            ``hidden_size``.
        ValueError: ``last_output`` or ``reverse`` is not a bool.
    """

    def __init__(self, flow: nn.Module | Callable[..., object], jump: nn.Module | Callable[..., object],
                 out: nn.Module | Callable[[Tensor], Tensor], last_output: bool = True, reverse: bool = False) -> None:
        super().__init__()
        for name, part in (("flow", flow), ("jump", jump), ("out", out)):
            if not callable(part):
                raise TypeError(f"HybridNeuralDE's {name} must be a module or callable, got {type(part).__name__}")
        hidden = getattr(jump, "hidden_size", None)
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise TypeError("HybridNeuralDE's jump must have a positive integer hidden_size (the latent's width, as "
                            f"nn.RNNCell, nn.GRUCell and nn.LSTMCell do), got {hidden!r}")
        self.flow, self.jump, self.out = flow, jump, out
        self.last_output = choice("last_output", last_output, (True, False), plural="values")
        self.reverse = choice("reverse", reverse, (True, False), plural="values")

    def forward(self, x: Tensor) -> Tensor:
        """``out(Y)`` for a sequence ``x`` ``[T, B, *features]`` (``T >= 1``): ``[T, B, ...]``, or its last entry
        ``[B, ...]`` when ``last_output``.

        Raises:
            InputShapeError: ``x`` is not a tensor ``[T, B, *features]`` with ``T, B >= 1``.
            TypeError: ``flow`` returned something other than a state shaped like ``h`` or a trajectory ending in one.
        """
        if not isinstance(x, Tensor) or x.ndim < 3 or x.shape[0] == 0 or x.shape[1] == 0:
            got = f"shape {list(x.shape)}" if isinstance(x, Tensor) else f"a {type(x).__name__}"
            raise InputShapeError(f"HybridNeuralDE needs a sequence x of shape [T, B, features] with T, B >= 1 "
                                  f"(time first), got {got}; one sequence of shape [T, features] is x[:, None]")
        dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
        h = torch.zeros(x.shape[1], self.jump.hidden_size, dtype=dtype, device=x.device)
        c = h  # the LSTM cell state; unused by other jumps
        lstm = isinstance(self.jump, nn.LSTMCell)
        states = []
        for x_t in x.flip(0) if self.reverse else x:
            if lstm:
                h, c = self.jump(x_t, (h, c))
            else:
                h = self.jump(x_t, h)
            h = _end_state(self.flow(h), h)
            states.append(h)
        y = self.out(torch.stack(states))
        return y[-1] if self.last_output else y


def _end_state(flowed: object, h: Tensor) -> Tensor:
    """The state a flow reached from ``h`` (``[B, H]``): its output, or the last state of a trajectory it returned."""
    if isinstance(flowed, tuple) and len(flowed) == 2 and isinstance(flowed[1], Tensor):
        flowed = flowed[1]  # torchdyn's and nodecore's NeuralODE: (t_eval, trajectory)
    if isinstance(flowed, Tensor):
        if flowed.shape == h.shape:
            return flowed
        if flowed.ndim == h.ndim + 1 and flowed.shape[0] >= 1 and flowed.shape[1:] == h.shape:
            return flowed[-1]
    got = f"shape {list(flowed.shape)}" if isinstance(flowed, Tensor) else f"a {type(flowed).__name__}"
    raise TypeError(f"HybridNeuralDE's flow must map the latent of shape {list(h.shape)} to the same shape (or to a "
                    f"trajectory [S, {', '.join(map(str, h.shape))}] ending there), got {got}")
