"""Runge–Kutta solvers as objects: a tableau plus a tiny class, stepped by one loop (``numerics.integrate``).

A package only so that torchdyn's import path ``torchdyn.numerics.solvers.root`` has a home (:mod:`.root`); the
solvers themselves are all here.

Every solver takes one step with :meth:`RungeKutta.step` (torchdyn's signature, public for hypersolvers and
multiple shooting). The loop uses the faster internal methods below, which combine all earlier stages of a
Runge–Kutta stage in a single product and keep the tableau's tensors cached per dtype and device.

Every state update is ``y + h * (Σ a_j k_j)``: the weighted sum of the stages first, then one addition to the
state. A fused ``addmv(y, K, a, alpha=h)`` is not used for it: CPU BLAS ``gemv`` adds each column into ``y`` in
turn, so every nonzero weight costs a rounding at the state's magnitude (about sqrt(5) times the round-off of one
addition per dopri5 step, which dominates float32 solves with many short steps).
"""

from __future__ import annotations

import array
import math
import operator
from dataclasses import dataclass, field
from typing import Callable, ClassVar

import torch
from torch import Tensor, nn

from nodecore.numerics import tableaus
from nodecore.numerics.stats import StepCounts
from nodecore.numerics.tableaus import ButcherTableau

Field = Callable[[Tensor, Tensor], Tensor]


@dataclass
class _Coefficients:
    """A tableau's numbers as tensors of one dtype and device, built once.

    For a complex state the weights are complex (``addmv`` wants one dtype) and the nodes ``c`` real: times
    stay real, in the real dtype of the state's precision.
    """

    c: Tensor  # [s], real
    a: list[Tensor]  # a[i]: [i]
    b: Tensor  # [s]
    b_error: Tensor | None  # [s]
    dense: Tensor | None  # [s + extra, p]
    extra_c: list[float]
    extra_a: list[Tensor]
    error3: Tensor | None = None  # DOP853's 3rd-order estimator
    is_complex: bool = False
    a_rows: list[Tensor] = field(default_factory=list)  # a[i] as a [1, i] row: the graph-mode stage products
    b_row: Tensor | None = None  # [1, s]
    no_time: Tensor | None = None  # 0-dim NaN, real: the time handed to a field that never reads it

    def __post_init__(self) -> None:
        self.a_rows = [row.view(1, -1) for row in self.a]
        self.b_row = self.b.view(1, -1)
        self.no_time = torch.full((), math.nan, dtype=self.c.dtype, device=self.c.device)


@dataclass
class Attempt:
    """One tried step: its end state, all stage derivatives and (adaptive solvers) its scaled error.

    Attributes:
        y1: the state at ``t + h``.
        stages: ``[s, N]`` stage derivatives, flattened (in no-grad mode a buffer the next attempt reuses).
        error_norm: 0-dim tensor; times ``error_factor`` it is the error ratio, the RMS of the error over
            ``atol + rtol * max(|y0|, |y1|)`` (None: no error estimate). Kept apart so that the one host
            sync per step reads a finished tensor and the last multiplication happens on the host.
        error_factor: ``|h| / sqrt(n)``, ``n`` the number of entries measured.
        last: the derivative at ``(t + h, y1)`` when the method is first-same-as-last, else None.
    """

    y1: Tensor
    stages: Tensor
    error_norm: Tensor | None
    last: Tensor | None
    error_factor: float = 0.0

    @property
    def error_ratio(self) -> float:
        """The error ratio as a float (a host sync); the step is accepted when it is at most 1."""
        return float(self.error_norm) * self.error_factor


class Workspace:
    """Preallocated storage of one no-grad solve, double-buffered.

    Each buffer holds the ``s`` stage derivatives ``[s, N]`` and the stage inputs (plus the non-FSAL end state)
    ``[s + 1, N]``, with the views every stage needs made once. The loop swaps buffers when it accepts a step,
    so the accepted step's state and stages stay intact while the next step is tried.
    """

    def __init__(self, stages: int, like: Tensor, coefficients: _Coefficients) -> None:
        n, shape, a = like.numel(), like.shape, coefficients.a
        self.coefficients = coefficients  # the solver's tableau in like's dtype and device
        self.stages = [torch.empty(stages, n, dtype=like.dtype, device=like.device) for _ in range(2)]
        states = [torch.empty(stages + 1, n, dtype=like.dtype, device=like.device) for _ in range(2)]
        self.shaped_rows = [[K[i].view(shape) for i in range(stages)] for K in self.stages]
        # The stage times, as 0-dim views of one buffer rewritten at every attempt: a field that keeps ``t``
        # beyond its call must copy it (no-grad solves only; with a graph every time is a fresh tensor).
        self.times = torch.full((stages,), math.nan, dtype=real_dtype(like.dtype), device=like.device)
        self.time_views = list(self.times.unbind())
        # mats[i]: [N, i] view of the first i stage rows; mats[stages]: all of them.
        self.mats = [[K[:i].t() for i in range(stages + 1)] for K in self.stages]
        self.flat_inputs = [[Y[i] for i in range(stages + 1)] for Y in states]
        self.inputs = [[Y[i].view(shape) for i in range(stages + 1)] for Y in states]
        # Per buffer, what stage i >= 1 needs, in one tuple: (a_i, mats[i], flat input, input, row, time).
        self.plans = [
            [(a[i], self.mats[b][i], self.flat_inputs[b][i], self.inputs[b][i], self.shaped_rows[b][i],
              self.time_views[i]) for i in range(1, stages)]
            for b in range(2)
        ]
        # The flat view of each shaped stage input (a state the loop hands back): reshaping costs an op.
        self.flat_of = {id(Y): (Y, flat) for b in range(2) for Y, flat in zip(self.inputs[b], self.flat_inputs[b])}
        # Error control: ``|y| + atol/rtol`` of each buffer's end state (the next step's start reuses it) and of a
        # start state from outside (slot 2, the initial one), each with the key it was computed for; then the
        # error and its scale.
        real = real_dtype(like.dtype)
        self.scaled_abs = [torch.empty(n, dtype=real, device=like.device) for _ in range(3)]
        self.shaped_scaled_abs = [buffer.view(shape) for buffer in self.scaled_abs]
        self.scaled_abs_key: list[tuple | None] = [None, None, None]
        self.writes = [0, 0]  # attempts that wrote each buffer: what a kept end state's key checks
        self.error = torch.empty(n, dtype=like.dtype, device=like.device)
        self.scale = torch.empty(n, dtype=real, device=like.device)
        self._constants: dict[float, Tensor] = {}
        self._outside_flat: tuple[Tensor, Tensor] | None = None  # (state, its flat view): the initial state's
        self.current = 0
        self._busy = False
        # False when the field is known to ignore its time argument: the stage times are then not computed.
        self.stage_times = True

    @property
    def busy(self) -> bool:
        """Whether a solve is using this workspace. Handing it back (False) drops what refers to that solve's
        own tensors (its initial state), so that the cached workspace keeps none alive."""
        return self._busy

    @busy.setter
    def busy(self, value: bool) -> None:
        self._busy = value
        self._outside_flat = None
        self.scaled_abs_key = [None, None, None]

    def swap(self) -> None:
        self.current ^= 1

    def flat(self, y: Tensor) -> Tensor:
        """``y.reshape(-1)``, without an op when ``y`` is one of this workspace's states or was seen last."""
        found = self.flat_of.get(id(y)) or self._outside_flat
        if found is not None and found[0] is y:
            return found[1]
        flat = y.reshape(-1)
        self._outside_flat = (y, flat)
        return flat

    def constant(self, value: float) -> Tensor:
        """``value`` as a cached 0-dim tensor of the real dtype: an in-place op with a Python number wraps it
        in a fresh tensor every time, which costs as much as the op."""
        found = self._constants.get(value)
        if found is None:
            if len(self._constants) >= 16:
                self._constants.clear()
            found = self._constants[value] = torch.tensor(value, dtype=self.scale.dtype, device=self.scale.device)
        return found

    def scaled_abs_of(self, y: Tensor, offset: float, size: int | None, *, shaped: bool = False) -> Tensor:
        """``|y| + offset`` over the first ``size`` entries of flat ``y`` (all when None; ``shaped``: shaped like
        ``y``), kept from the attempt that produced ``y`` when its buffer was not written since, else computed
        into slot 2 and kept there for this solve."""
        slot = self.current ^ 1  # the buffer of the state the current attempt starts from
        kept = self.scaled_abs_key[slot]
        if kept is None or kept[0] is not y or kept[1] != self.writes[slot] or kept[2:] != (offset, size):
            slot, kept = 2, self.scaled_abs_key[2]
            version = None if y.is_inference() else y._version  # inference tensors have no version counter
            if kept is None or kept[0] is not y or kept[1:] != (version, offset, size):
                if size is None:
                    torch.abs(y, out=self.shaped_scaled_abs[2]).add_(self.constant(offset))
                else:
                    torch.abs(self.flat(y)[:size], out=self.scaled_abs[2][:size]).add_(self.constant(offset))
                self.scaled_abs_key[2] = (y, version, offset, size)
        if shaped:
            return self.shaped_scaled_abs[slot]
        return self.scaled_abs[slot] if size is None else self.scaled_abs[slot][:size]

    def transposed(self, stages: Tensor) -> Tensor:
        """``stages.t()``, without an op when ``stages`` is one of this workspace's stage buffers."""
        for K, mats in zip(self.stages, self.mats):
            if stages is K:
                return mats[-1]
        return stages.t()


class RungeKutta(nn.Module):
    """An explicit Runge–Kutta method given by :attr:`tableau`.

    An ``nn.Module`` like torchdyn's solvers, so that solvers with learned parts (hypersolvers) expose their
    parameters; a subclass that overrides :meth:`step` is stepped through it (at constant steps, or, when the
    subclass is adaptive, under error control from the ``x_err`` its step returns).

    Args:
        dtype: accepted for torchdyn compatibility (``Euler(dtype=torch.float64)``); the coefficients follow
            the state's dtype and device in any case.
    """

    tableau: ClassVar[ButcherTableau]

    def __init__(self, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.dtype = dtype
        self._cache: dict[tuple[torch.dtype, torch.device], _Coefficients] = {}
        self._workspaces: dict[tuple, Workspace] = {}

    # --- what the method is -----------------------------------------------------------------------------
    @property
    def order(self) -> int:
        return self.tableau.order

    @property
    def adaptive(self) -> bool:
        return self.tableau.adaptive

    @property
    def stepping_class(self) -> str:
        """torchdyn's name for the kind: ``'adaptive'`` or ``'fixed'``."""
        return "adaptive" if self.adaptive else "fixed"

    @property
    def error_exponent(self) -> float:
        """The step-size controller's exponent ``1 / (q + 1)``, ``q`` the embedded method's order."""
        return 1.0 / ((self.tableau.error_order or self.tableau.order) + 1)

    @property
    def has_dense_output(self) -> bool:
        return self.tableau.dense is not None

    def coefficients(self, like: Tensor) -> _Coefficients:
        """The tableau as tensors of ``like``'s dtype and device (cached)."""
        key = (like.dtype, like.device)
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = self._build(like)
        return found

    def _build(self, like: Tensor) -> _Coefficients:
        tb = self.tableau

        def vec(values: tuple[float, ...]) -> Tensor:
            return torch.tensor(values, dtype=torch.float64).to(like.dtype).to(like.device)

        return _Coefficients(
            c=torch.tensor(tb.c, dtype=torch.float64).to(real_dtype(like.dtype)).to(like.device),
            a=[vec(row) for row in tb.a],
            b=vec(tb.b),
            b_error=None if tb.b_error is None else vec(tb.b_error),
            dense=None if tb.dense is None else torch.tensor(tb.dense, dtype=torch.float64).to(like.dtype).to(like.device),
            extra_c=list(tb.extra_c),
            extra_a=[vec(row) for row in tb.extra_a],
            is_complex=like.is_complex(),
        )

    def workspace(self, like: Tensor) -> Workspace:
        """A free workspace for a no-grad solve of states like ``like``, kept for the next solve (mark it
        ``busy`` while in use; a nested solve of the same shape gets a fresh one)."""
        key = (like.shape, like.dtype, like.device)
        ws = self._workspaces.get(key)
        if ws is None or ws.busy:
            ws = Workspace(self.tableau.stages, like, self.coefficients(like))
            if len(self._workspaces) < 8:
                self._workspaces.setdefault(key, ws)
        ws.busy = True
        ws.current = 0
        return ws

    # --- one step, torchdyn's public signature --------------------------------------------------------------
    def step(
        self, f: Field, x: Tensor, t: Tensor | float, dt: Tensor | float, k1: Tensor | None = None, args: object = None
    ) -> tuple:
        """One step of size ``dt`` from ``(t, x)``.

        Returns torchdyn's tuples: ``(None, x_new, None)`` for fixed-step methods and
        ``(f_new, x_new, x_err, stages)`` for adaptive ones, ``x_err`` the unscaled error estimate and
        ``f_new`` the derivative at the new point (None unless first-same-as-last).
        """
        h = float(dt)
        attempt = self.attempt(f, x, float(t), h, k1, StepCounts(), need_error=False)
        if not self.adaptive:
            return None, attempt.y1, None
        co = self.coefficients(x)
        err = (h * torch.mv(attempt.stages.t(), co.b_error)).view_as(x)  # the embedded estimate, unscaled
        return attempt.last, attempt.y1, err, attempt.stages

    # --- the fast internals the loop uses -------------------------------------------------------------------
    def attempt(
        self,
        f: Field,
        y: Tensor,
        t: float,
        h: float,
        k0: Tensor | None,
        counts: StepCounts,
        *,
        need_error: bool = True,
        atol: float = 0.0,
        rtol: float = 0.0,
        error_size: int | None = None,
        workspace: Workspace | None = None,
        stage_times: bool = True,
    ) -> Attempt:
        """Evaluate all stages of one step of size ``h`` from ``(t, y)`` and, if asked, its error ratio.

        Args:
            k0: ``f(t, y)`` when already known (first-same-as-last), else None.
            error_size: measure the error on the first ``error_size`` entries of the flat state only (the
                adjoint's seminorm); all of it when None.
            workspace: preallocated stage storage for no-grad solves (then ``y1`` and ``last`` live in it
                until the workspace is swapped twice); None builds a graph-friendly step.
            stage_times: False when ``f`` never reads its time argument: the stage times are then not computed
                and ``f`` gets a placeholder (NaN). A workspace's own ``stage_times`` decides for no-grad steps.
        """
        if workspace is not None:
            return self._attempt_in(workspace, workspace.coefficients, f, y, t, h, k0, counts, need_error, atol, rtol,
                                    error_size)
        co = self.coefficients(y)
        shape, flat = y.shape, y.reshape(-1)
        a_rows = co.a_rows
        n_stages = len(a_rows)
        times = co.c.mul(h).add_(t).unbind() if stage_times else (co.no_time,) * n_stages
        # The graph this records is what backward walks, so each stage costs few, cheap ops: stage 1 is one add,
        # later ones one [1, i] @ [i, N] product over the earlier stages stacked as rows (a plain copy, and its
        # backward hands each stage a contiguous gradient row), added to the state (not a fused addmm: see the
        # module docstring). Field outputs shaped like the state are used as they are, without views.
        if k0 is None:
            k0 = f(times[0], y)
            counts.nfe += 1
        k, stages = k0, [k0.reshape(-1)]  # stages: flat [N] each
        y_stage, mm, stack = y, torch.mm, torch.stack
        for i in range(1, n_stages):
            if i == 1:
                y_stage = torch.add(y, k if k.shape == shape else stages[0].view(shape), alpha=h * self.tableau.a[1][0])
            else:
                y_stage = torch.add(y, mm(a_rows[i], stack(stages)).view(shape), alpha=h)
            k = f(times[i], y_stage)
            stages.append(k.reshape(-1))
        counts.nfe += n_stages - 1
        K = stack(stages)
        if self.tableau.fsal:
            y1, last = y_stage, k if k.shape == shape else stages[-1].view(shape)
        else:
            y1, last = torch.add(y, mm(co.b_row, K).view(shape), alpha=h), None
        norm = None
        if need_error and co.b_error is not None:
            with torch.no_grad():  # no detach needed: nothing here is recorded
                norm = self.error_norm(K.t(), flat, y1.view(-1), atol, rtol, error_size)
        return Attempt(y1=y1, stages=K, error_norm=norm, last=last, error_factor=_factor(h, flat, error_size))

    def _attempt_in(self, ws: Workspace, co: _Coefficients, f: Field, y: Tensor, t: float, h: float,
                    k0: Tensor | None, counts: StepCounts, need_error: bool, atol: float, rtol: float,
                    error_size: int | None) -> Attempt:
        """:meth:`attempt` without a graph: one ``mv`` and one ``add`` per stage, written into preallocated rows."""
        b = ws.current
        ws.writes[b] += 1
        rows, mats, inputs, flat_inputs = ws.shaped_rows[b], ws.mats[b], ws.inputs[b], ws.flat_inputs[b]
        flat = ws.flat(y)
        if ws.stage_times:
            torch.mul(co.c, h, out=ws.times).add_(t)
        if k0 is None:
            rows[0].copy_(f(ws.time_views[0], y))
            counts.nfe += 1
        else:
            rows[0].copy_(k0)
        mv, add = torch.mv, torch.add
        for a_i, mat, flat_in, stage_in, row, t_i in ws.plans[b]:
            add(flat, mv(mat, a_i, out=flat_in), alpha=h, out=flat_in)  # y + h (K a): see the module docstring
            row.copy_(f(t_i, stage_in))
        counts.nfe += len(ws.plans[b])
        K = ws.stages[b]
        if self.tableau.fsal:
            y1, last = inputs[-2], rows[-1]
        else:
            torch.add(flat, torch.mv(mats[-1], co.b, out=flat_inputs[-1]), alpha=h, out=flat_inputs[-1])
            y1, last = inputs[-1], None
        norm = None
        if need_error and co.b_error is not None:
            y1_flat = flat_inputs[-2 if self.tableau.fsal else -1]
            if type(self).error_norm is RungeKutta.error_norm:
                norm = self._error_norm_in(ws, co, mats[-1], y, flat, y1, y1_flat, atol, rtol, error_size)
            else:
                norm = self.error_norm(mats[-1], flat, y1_flat, atol, rtol, error_size)
        return Attempt(y1=y1, stages=K, error_norm=norm, last=last, error_factor=_factor(h, flat, error_size))

    def _error_norm_in(self, ws: Workspace, co: _Coefficients, stages_t: Tensor, y: Tensor, y0: Tensor, y1: Tensor,
                       y1_flat: Tensor, atol: float, rtol: float, size: int | None) -> Tensor:
        """:meth:`error_norm` in the workspace's buffers, the same numbers in fewer ops: ``|y0| + atol/rtol`` comes
        from the attempt that produced ``y0`` (``max`` commutes with adding a constant, exactly), and this
        attempt's ``|y1| + atol/rtol`` stays for the next step."""
        b, offset = ws.current, atol / rtol
        start = ws.scaled_abs_of(y, offset, size)
        err, scale, end = ws.error, ws.scale, ws.scaled_abs[b]
        if size is not None:
            stages_t, y0, y1_flat, err, scale, end = (stages_t[:size], y0[:size], y1_flat[:size], err[:size],
                                                      scale[:size], end[:size])
        torch.addmv(y0, stages_t, co.b_error, beta=0, alpha=1.0 / rtol, out=err)
        torch.abs(y1_flat, out=end).add_(ws.constant(offset))
        torch.maximum(start, end, out=scale)
        ws.scaled_abs_key[b] = (y1, ws.writes[b], offset, size)
        return torch.linalg.vector_norm(err.div_(scale))

    def error_norm(self, stages_t: Tensor, y0: Tensor, y1: Tensor, atol: float, rtol: float,
                   size: int | None) -> Tensor:
        """``|| Σ e_i k_i / (atol + rtol max(|y0|, |y1|)) ||``, 0-dim; times ``|h| / sqrt(n)`` it is Hairer's
        RMS error ratio.

        Args:
            stages_t: ``[N, s]`` stage derivatives, transposed; y0, y1: flat ``[N]`` states.
            size: measure the first ``size`` entries only (None: all).
        """
        co = self.coefficients(y0)
        if size is not None:
            stages_t, y0, y1 = stages_t[:size], y0[:size], y1[:size]
        # err / (atol + rtol m) = (err / rtol) / (atol / rtol + m): 1/rtol rides on the addmv (beta=0 ignores y0).
        err = torch.addmv(y0, stages_t, co.b_error, beta=0, alpha=1.0 / rtol)
        scale = torch.maximum(y0.abs(), y1.abs()).add_(atol / rtol)
        return torch.linalg.vector_norm(err.div_(scale))

    def dense_weights(self, thetas: list[float], like: Tensor) -> Tensor:
        """``[S, m]`` stage weights ``P_i(θ)`` of the interpolant at each ``θ`` in ``thetas``."""
        return self._dense_rows(thetas, like).view(len(thetas), -1).t()

    def _dense_rows(self, thetas: list[float], like: Tensor) -> Tensor:
        """``[m * S]`` the stage weights ``P_i(θ)``, ``θ`` by ``θ`` (row-major ``[m, S]``)."""
        # A few dozen products: on the host, then one tensor (cheaper than building powers on the device).
        degree = len(self.tableau.dense[0])
        weights = []
        for th in thetas:
            powers = [th ** (j + 1) for j in range(degree)]
            weights.extend(sum(map(operator.mul, row, powers)) for row in self.tableau.dense)
        return _host_tensor(weights, like)

    def dense_stages(self, f: Field, y0: Tensor, t: float, h: float, stages: Tensor, counts: StepCounts) -> Tensor:
        """``[S, N]`` all the stages the interpolant of an accepted step needs: ``stages`` plus, for methods
        with extra dense-output stages (DOP853), those, evaluated here and counted in ``counts.nfe``."""
        co = self.coefficients(y0)
        if not co.extra_c:
            return stages
        flat = y0.reshape(-1)
        rows = [stages[i] for i in range(stages.shape[0])]
        for c, a in zip(co.extra_c, co.extra_a):
            y_stage = torch.add(flat, torch.mv(torch.stack(rows, 1), a), alpha=h).view(y0.shape)
            rows.append(f(time_tensor(t + c * h, y0), y_stage).reshape(-1))
            counts.nfe += 1
        return torch.stack(rows)

    def interpolate(self, f: Field, y0: Tensor, t: float, h: float, stages: Tensor, thetas: list[float],
                    counts: StepCounts, *, workspace: Workspace | None = None) -> list[Tensor]:
        """The dense-output states ``y(t + θh)`` for each ``θ`` in ``thetas`` within an accepted step.

        ``workspace``: the no-grad solve's, whose views of ``y0`` and ``stages`` save a few ops.
        """
        K = self.dense_stages(f, y0, t, h, stages, counts)
        if workspace is None:
            flat, K_t = y0.reshape(-1), K.t()
        else:
            flat, K_t = workspace.flat(y0), workspace.transposed(K)
        m = len(thetas)
        W = self._dense_rows(thetas, y0)  # [m * S]: row-major [m, S]
        if m == 1:
            return [torch.add(flat, torch.mv(K_t, W), alpha=h).view(y0.shape)]
        # [m, N]: a row each; the weighted stages first, then the state (see the module docstring)
        return list(torch.add(flat, torch.mm(W.view(m, -1), K), alpha=h).view(m, *y0.shape).unbind())


_REAL_OF_COMPLEX = {torch.complex32: torch.float16, torch.complex64: torch.float32, torch.complex128: torch.float64}


def real_dtype(dtype: torch.dtype) -> torch.dtype:
    """The real dtype of ``dtype``'s precision (``complex64 -> float32``); a real dtype is its own."""
    return _REAL_OF_COMPLEX.get(dtype, dtype)  # not dtype.to_real(): the project supports torch >= 2.1


def time_tensor(t: float, like: Tensor) -> Tensor:
    """``t`` (a number) as the 0-dim time tensor handed to the field: real, in the precision of ``like``.

    Filled on ``like``'s device from the host number (no host-to-device copy, so no wait for a GPU's queue; on the
    CPU also half the cost of ``torch.tensor``), rounded to that precision as ``torch.tensor`` rounds it (within
    the precision's range: beyond it ``torch.full`` raises where ``torch.tensor`` gives inf).
    """
    return torch.full((), float(t), dtype=real_dtype(like.dtype), device=like.device)


# Python floats straight into a CPU tensor's memory: a third of the cost of torch.tensor(list).
_ARRAY_TYPECODES = {torch.float32: "f", torch.float64: "d"}


def _host_tensor(values: list[float], like: Tensor) -> Tensor:
    """``values`` as a 1-D tensor of ``like``'s dtype and device.

    On a CUDA device through page-locked memory and an asynchronous copy: a copy from pageable memory would wait
    for everything queued on the device first (a host sync at every interpolated step).
    """
    code = _ARRAY_TYPECODES.get(like.dtype)
    if code is not None and values:
        host = torch.frombuffer(array.array(code, values), dtype=like.dtype)
    else:
        host = torch.tensor(values, dtype=like.dtype)
    if like.device.type == "cpu":
        return host
    if like.device.type == "cuda":
        return host.pin_memory().to(like.device, non_blocking=True)
    return host.to(like.device)


def _scale(y0: Tensor, y1: Tensor, atol: float, rtol: float) -> Tensor:
    return torch.maximum(y0.abs(), y1.abs()).mul_(rtol).add_(atol)


def _factor(h: float, flat: Tensor, size: int | None) -> float:
    return abs(h) / math.sqrt(flat.numel() if size is None else size)


class Euler(RungeKutta):
    """Explicit Euler, order 1, fixed step."""

    tableau = tableaus.EULER


class Midpoint(RungeKutta):
    """Explicit midpoint, order 2, fixed step."""

    tableau = tableaus.MIDPOINT


class RungeKutta4(RungeKutta):
    """The classic fourth-order Runge–Kutta method, fixed step (torchdyn's ``'rk4'``)."""

    tableau = tableaus.RK4


class RungeKutta38(RungeKutta):
    """Kutta's 3/8 rule, order 4, fixed step (torchdiffeq's ``'rk4'``)."""

    tableau = tableaus.RK4_38


class AdaptiveHeun(RungeKutta):
    """Heun's method with an embedded Euler error estimate: 2(1), adaptive."""

    tableau = tableaus.HEUN_EULER


class BogackiShampine32(RungeKutta):
    """Bogacki–Shampine 3(2), adaptive, first same as last, cubic Hermite dense output."""

    tableau = tableaus.BOGACKI_SHAMPINE32


class DormandPrince45(RungeKutta):
    """Dormand–Prince 5(4), adaptive, with Shampine's 4th-order dense output."""

    tableau = tableaus.DORMAND_PRINCE45


class Tsitouras45(RungeKutta):
    """Tsitouras 5(4), adaptive, with Tsitouras' 4th-order interpolant (torchdyn's default solver)."""

    tableau = tableaus.TSITOURAS45


class DormandPrince853(RungeKutta):
    """DOP853: Dormand–Prince 8(5,3), adaptive, with Hairer's 7th-order continuous extension.

    The error estimate combines the 5th- and 3rd-order estimators as Hairer's ``dop853.f`` does, and the step
    size follows its order-7 rule (exponent 1/8, not the 1/6 of the embedded order 5); dense output costs 3
    more field evaluations on each step that interpolates.
    """

    tableau = tableaus.DORMAND_PRINCE853

    @property
    def error_exponent(self) -> float:
        return 1.0 / 8.0

    def _build(self, like: Tensor) -> _Coefficients:
        co = super()._build(like)
        co.error3 = torch.tensor(tableaus.DOP853_E3, dtype=torch.float64).to(like.dtype).to(like.device)
        return co

    def error_norm(self, stages_t: Tensor, y0: Tensor, y1: Tensor, atol: float, rtol: float,
                   size: int | None) -> Tensor:
        """dop853.f's ``e5² / sqrt(e5² + 0.01 e3²)`` of the scaled 5th- and 3rd-order estimates (0 when both are 0)."""
        co = self.coefficients(y0)
        if size is not None:
            stages_t, y0, y1 = stages_t[:size], y0[:size], y1[:size]
        scale = _scale(y0, y1, atol, rtol)
        e5, e3 = torch.mv(stages_t, co.b_error).div_(scale), torch.mv(stages_t, co.error3).div_(scale)
        if co.is_complex:  # |e|^2, real
            e5, e3 = torch.view_as_real(e5), torch.view_as_real(e3)
        e5, e3 = e5.square().sum(), e3.square().sum()
        denom = (e5 + 0.01 * e3).sqrt_()
        # NaN stays NaN (the step is rejected).
        return torch.where(denom == 0, torch.zeros_like(e5), e5 / denom)
