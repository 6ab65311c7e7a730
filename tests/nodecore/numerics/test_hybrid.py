"""odeint_hybrid on a bouncing ball against its closed form (bounce times, apex heights, the whole trajectory),
and the rules of the hybrid solve: j_span, priority, which event jumps, gradients with frozen event times,
stochastic events, and the errors on bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from nodecore.errors import TooManyStepsError
from nodecore.numerics import EventCallback, StochasticEventCallback, odeint_hybrid
from nodecore.numerics.solvers.templates import DiffEqSolver

F64 = torch.float64
G, E, H0 = 9.81, 0.8, 1.0  # gravity, restitution, drop height


class Falling(nn.Module):
    """``x' = v, v' = -g`` on ``[x, v]``."""

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        return torch.cat([x[..., 1:2], -G * torch.ones_like(x[..., :1])], -1)


class Ground(EventCallback):
    """At the ground (``x <= 0``) the velocity flips and loses a factor ``E``."""

    def check_event(self, t: Tensor, x: Tensor) -> Tensor:
        return (x[..., 0] <= 0).any()

    def jump_map(self, t: Tensor, x: Tensor) -> Tensor:
        return torch.cat([x[..., :1], -E * x[..., 1:2]], -1)


def bounce_times(n: int) -> list[float]:
    """The first ``n`` analytic impact times of a ball dropped from rest at ``H0``."""
    times, speed = [math.sqrt(2 * H0 / G)], math.sqrt(2 * G * H0)
    for _ in range(n - 1):
        speed *= E
        times.append(times[-1] + 2 * speed / G)
    return times


def exact(t: float) -> tuple[float, float]:
    """The analytic ``(x, v)`` at ``t`` (between bounces)."""
    impacts, speed = [0.0] + bounce_times(12), math.sqrt(2 * G * H0)
    if t < impacts[1]:
        return H0 - G * t * t / 2, -G * t
    k = max(i for i, s in enumerate(impacts) if s <= t)
    u, dt = E**k * speed, t - impacts[k]
    return u * dt - G * dt * dt / 2, u - G * dt


def jumps_of(t_eval: Tensor) -> list[int]:
    """Row indices ``i`` with ``t_eval[i] == t_eval[i + 1]``: the row before each jump."""
    return [i for i in range(len(t_eval) - 1) if t_eval[i] == t_eval[i + 1]]


X0 = torch.tensor([[H0, 0.0]], dtype=F64)


@pytest.mark.parametrize("solver", ["tsit5", "dopri5", "rk4"])
@pytest.mark.parametrize("event_tol", [1e-6, 1e-8])
def test_bounce_times_match_the_closed_form(solver: str, event_tol: float):
    t_span = torch.linspace(0, 3, 31, dtype=F64)
    t_eval, sol = odeint_hybrid(Falling(), X0, t_span, 100, solver, [Ground()], atol=1e-8, rtol=1e-8,
                                event_tol=event_tol)
    before = jumps_of(t_eval)
    found, analytic = [float(t_eval[i]) for i in before], bounce_times(6)
    assert len(found) == 6  # six bounces before t = 3
    assert 0 <= analytic[0] - found[0] <= event_tol  # the jump happens at the bracket's left end, just before
    assert max(abs(a - b) for a, b in zip(found, analytic)) <= 3 * event_tol  # later ones inherit small shifts
    for i in before:
        pre, post = sol[i, 0], sol[i + 1, 0]
        assert 0 <= float(pre[0]) <= 10 * event_tol * abs(float(pre[1]))  # just above the ground
        torch.testing.assert_close(post, torch.stack([pre[0], -E * pre[1]]), rtol=0, atol=0)  # the jump map


def test_trajectory_and_apex_heights_match_the_closed_form():
    impacts = bounce_times(5)
    speeds = [E ** (k + 1) * math.sqrt(2 * G * H0) for k in range(4)]
    apexes = [impacts[k] + speeds[k] / G for k in range(4)]
    t_span = torch.tensor(sorted(set([0.0, 0.2, 0.7, 1.0, 1.5, 2.0, 2.5] + apexes)), dtype=F64)
    t_eval, sol = odeint_hybrid(Falling(), X0, t_span, 100, "tsit5", [Ground()], atol=1e-9, rtol=1e-9,
                                event_tol=1e-9)
    jump_rows = {i for i in jumps_of(t_eval)} | {i + 1 for i in jumps_of(t_eval)}
    on_span = [i for i in range(len(t_eval)) if i not in jump_rows]
    assert torch.equal(t_eval[on_span], t_span)  # every point of t_span, in order
    for i in on_span:
        x, v = exact(float(t_eval[i]))
        torch.testing.assert_close(sol[i, 0], torch.tensor([x, v], dtype=F64), rtol=0, atol=1e-7)
    for k, t_apex in enumerate(apexes):
        height = float(sol[on_span[t_span.tolist().index(t_apex)], 0, 0])
        assert height == pytest.approx(E ** (2 * (k + 1)) * H0, abs=1e-7)  # apex k: e^(2k) h0


def test_j_span_stops_the_solve_at_that_many_jumps():
    t_span = torch.linspace(0, 3, 31, dtype=F64)
    for j_span in (1, 3):
        t_eval, sol = odeint_hybrid(Falling(), X0, t_span, j_span, "tsit5", [Ground()], atol=1e-8, rtol=1e-8,
                                    event_tol=1e-7)
        assert len(jumps_of(t_eval)) == j_span
        assert float(t_eval[-1]) == pytest.approx(bounce_times(j_span)[-1], abs=1e-6)  # ends at the last jump
        assert float(sol[-1, 0, 1]) > 0  # with the state after it
    t_eval, sol = odeint_hybrid(Falling(), X0, t_span, 0, "tsit5", [Ground()])
    assert t_eval.tolist() == [0.0] and torch.equal(sol[0], X0)


def test_priority_decides_a_start_inside_the_event_set():
    rising = torch.tensor([[0.0, 3.0]], dtype=F64)  # on the ground, moving up: x <= 0 holds at t = 0
    t_span = torch.linspace(0, 1, 11, dtype=F64)
    kwargs = {"atol": 1e-8, "rtol": 1e-8, "event_tol": 1e-8}
    t_flow, _ = odeint_hybrid(Falling(), rising, t_span, 10, "tsit5", [Ground()], priority="flow", **kwargs)
    assert float(t_flow[jumps_of(t_flow)[0]]) == pytest.approx(2 * 3.0 / G, abs=1e-7)  # first lands after a flight
    t_jump, jump = odeint_hybrid(Falling(), rising, t_span, 10, "tsit5", [Ground()], priority="jump", **kwargs)
    # Jumps at once (now moving down, into the ground), and again at t = 0 (back up, slower): two jumps at t0,
    # rows (before, after) for each.
    assert t_jump[:4].tolist() == [0.0] * 4 and float(t_jump[4]) > 0
    expected = torch.tensor([[0.0, 3.0], [0.0, -E * 3.0], [0.0, -E * 3.0], [0.0, E * E * 3.0]], dtype=F64)
    torch.testing.assert_close(jump[:4, 0], expected, rtol=0, atol=1e-15)


class Threshold(EventCallback):
    """Fires when ``x[0] >= level``; its jump writes ``mark`` into ``x[1]`` and sends ``x[0]`` back by 10."""

    def __init__(self, level: float, mark: float) -> None:
        super().__init__()
        self.level, self.mark = level, mark

    def check_event(self, t: Tensor, x: Tensor) -> bool:
        return bool(x[0] >= self.level)

    def jump_map(self, t: Tensor, x: Tensor) -> Tensor:
        return torch.stack([x[0] - 10, torch.full_like(x[1], self.mark)])


def drift(t: Tensor, x: Tensor) -> Tensor:
    return torch.stack([torch.ones_like(x[0]), torch.zeros_like(x[1])])


def test_the_earliest_event_jumps_and_the_first_listed_breaks_ties():
    x0, t_span = torch.zeros(2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)
    t_eval, sol = odeint_hybrid(drift, x0, t_span, 1, "tsit5", [Threshold(0.5, 1.0), Threshold(0.3, 2.0)],
                                event_tol=1e-9)
    assert float(t_eval[-1]) == pytest.approx(0.3, abs=2e-9) and float(sol[-1, 1]) == 2.0  # later in the list, sooner
    t_eval, sol = odeint_hybrid(drift, x0, t_span, 1, "tsit5", [Threshold(0.3, 1.0), Threshold(0.3, 2.0)],
                                event_tol=1e-9)
    assert float(sol[-1, 1]) == 1.0  # both fire: the first in the list jumps


def test_return_all_eval_adds_the_accepted_steps():
    t_span = torch.linspace(0, 1.5, 4, dtype=F64)
    args = (Falling(), X0, t_span, 100, "dopri5", [Ground()])
    t_few, few = odeint_hybrid(*args, atol=1e-8, rtol=1e-8)
    t_all, every = odeint_hybrid(*args, atol=1e-8, rtol=1e-8, return_all_eval=True)
    assert len(t_all) > len(t_few) and bool((t_all.diff() >= 0).all())
    rows = [int(torch.nonzero(t_all == t)[0]) for t in t_span]
    torch.testing.assert_close(every[rows], few[[int(torch.nonzero(t_few == t)[0]) for t in t_span]])


def test_gradients_flow_through_flow_and_jump_with_the_event_time_held_fixed():
    v0 = torch.tensor(0.0, dtype=F64, requires_grad=True)
    h0 = torch.tensor(H0, dtype=F64, requires_grad=True)
    t_end = 0.8  # between the first and second bounce
    t_eval, sol = odeint_hybrid(Falling(), torch.stack([h0, v0])[None], torch.tensor([0.0, t_end], dtype=F64), 10,
                                "tsit5", [Ground()], atol=1e-10, rtol=1e-10, event_tol=1e-10)
    t_hit = float(t_eval[jumps_of(t_eval)[0]])
    d_x = torch.autograd.grad(sol[-1, 0, 0], (h0, v0), retain_graph=True)
    d_v = torch.autograd.grad(sol[-1, 0, 1], (h0, v0))
    # x(T) = x_hit - E v_hit (T - t_hit) - g/2 (T - t_hit)², x_hit = h0 + v0 t_hit - g t_hit²/2, v_hit = v0 - g t_hit
    assert [float(d) for d in d_x] == pytest.approx([1.0, t_hit - E * (t_end - t_hit)], abs=1e-9)
    assert [float(d) for d in d_v] == pytest.approx([0.0, -E], abs=1e-9)


class Clock(StochasticEventCallback):
    """A unit-rate clock ``c' = 1`` that fires when ``c`` reaches the threshold ``s`` and restarts."""

    def check_event(self, t: Tensor, x: Tensor) -> Tensor:
        return (x[:, 0] >= self.s).any()

    def jump_map(self, t: Tensor, x: Tensor) -> Tensor:
        self.initialize(x)
        return torch.zeros_like(x)


def test_stochastic_events_fire_at_their_drawn_thresholds():
    clock, x0 = Clock(), torch.zeros(1, 1, dtype=F64)
    torch.manual_seed(3)
    clock.initialize(x0)
    assert clock.s.shape == (1,) and clock.s.dtype == F64 and float(clock.s) > 0
    torch.manual_seed(3)
    assert torch.equal(torch.distributions.Exponential(1.0).sample((1,)).to(F64), clock.s)  # Exp(1) draws
    first = float(clock.s)
    t_eval, _ = odeint_hybrid(lambda t, x: torch.ones_like(x), x0, torch.tensor([0.0, first + 1.0], dtype=F64), 1,
                              "tsit5", [clock], event_tol=1e-9)
    assert float(t_eval[-1]) == pytest.approx(first, abs=1e-9)


def test_event_callback_bases():
    assert isinstance(EventCallback(), nn.Module)
    with pytest.raises(NotImplementedError, match="check_event"):
        EventCallback().check_event(torch.tensor(0.0), X0)
    with pytest.raises(NotImplementedError, match="jump_map"):
        EventCallback().jump_map(torch.tensor(0.0), X0)
    attr = pytest.importorskip("attr")

    @attr.s
    class Wall(EventCallback):  # torchdyn's callbacks are attrs classes; subclasses written that way work
        position = attr.ib(default=0.0)

        def check_event(self, t, x):
            return bool(x[0, 0] <= self.position)

        def jump_map(self, t, x):
            return torch.cat([x[:, :1], -x[:, 1:]], 1)

    t_eval, _ = odeint_hybrid(Falling(), X0, torch.tensor([0.0, 0.5], dtype=F64), 1, "tsit5", [Wall()],
                              event_tol=1e-8)
    assert float(t_eval[-1]) == pytest.approx(bounce_times(1)[0], abs=1e-7)


def test_bad_input_is_refused_with_a_clear_message():
    t_span, cbs = torch.tensor([0.0, 1.0], dtype=F64), [Ground()]
    with pytest.raises(ValueError, match="unknown priority 'first'; valid priorities: jump, flow"):
        odeint_hybrid(Falling(), X0, t_span, 3, "tsit5", cbs, priority="first")
    with pytest.raises(ValueError, match="j_span must be an integer >= 0, got -1"):
        odeint_hybrid(Falling(), X0, t_span, -1, "tsit5", cbs)
    with pytest.raises(ValueError, match="j_span must be an integer"):
        odeint_hybrid(Falling(), X0, t_span, 2.5, "tsit5", cbs)
    with pytest.raises(ValueError, match="event_tol"):
        odeint_hybrid(Falling(), X0, t_span, 3, "tsit5", cbs, event_tol=0.0)
    with pytest.raises(ValueError, match="unknown solver"):
        odeint_hybrid(Falling(), X0, t_span, 3, "leapfrog", cbs)
    with pytest.raises(TypeError, match="a list of callbacks"):
        odeint_hybrid(Falling(), X0, t_span, 3, "tsit5", Ground())
    with pytest.raises(ValueError, match=r"callbacks\[0\].*jump_map"):
        odeint_hybrid(Falling(), X0, t_span, 3, "tsit5", [object()])
    with pytest.raises(ValueError, match="increasing"):
        odeint_hybrid(Falling(), X0, t_span.flip(0), 3, "tsit5", cbs)

    class Batched(Ground):
        def check_event(self, t, x):
            return x[..., 0] <= 0  # one flag per sample: ambiguous

    with pytest.raises(ValueError, match=r"\.any\(\)"):
        odeint_hybrid(Falling(), X0.repeat(2, 1), t_span, 3, "tsit5", [Batched()])

    class Shrinking(Ground):
        def jump_map(self, t, x):
            return x[..., :1]

    with pytest.raises(ValueError, match="shaped like the state"):
        odeint_hybrid(Falling(), X0, t_span, 3, "tsit5", [Shrinking()])
    with pytest.raises(TooManyStepsError, match="max_steps=5"):
        odeint_hybrid(Falling(), X0, torch.linspace(0, 1, 20, dtype=F64), 3, "tsit5", cbs, max_steps=5)


class Dragged(nn.Module):
    """A falling ball with quadratic air drag, ``x' = v, v' = -g - c v|v|``: no polynomial solution, so the steps
    must adapt."""

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        v = x[..., 1:2]
        return torch.cat([v, -G - 0.5 * v * v.abs()], -1)


class OwnHeunEuler(DiffEqSolver):
    """Heun's step with Euler's as its error estimate, written as a solver of your own (torchdyn's template)."""

    def __init__(self) -> None:
        super().__init__(order=2, stepping_class="adaptive")

    def step(self, f, x, t, dt, k1=None, args=None):
        k1 = f(t, x) if k1 is None else k1
        k2 = f(t + dt, x + dt * k1)
        x_new = x + 0.5 * dt * (k1 + k2)
        return None, x_new, x_new - (x + dt * k1)


def test_an_adaptive_solver_of_your_own_is_error_controlled_between_events():
    """It steps as nodecore's own Heun–Euler pair does (the same method, the same error estimate), not at one
    constant step per interval."""
    t_span = torch.linspace(0, 2, 3, dtype=F64)
    runs = {}
    for name, solver in (("own", OwnHeunEuler()), ("nodecore", "adaptive_heun")):
        for tol in (1e-4, 1e-6):
            runs[name, tol] = odeint_hybrid(Dragged(), X0, t_span, 100, solver, [Ground()], atol=tol, rtol=tol,
                                            event_tol=1e-8, return_stats=True)
    for tol in (1e-4, 1e-6):
        (t_own, x_own, own), (t_ref, x_ref, ref) = runs["own", tol], runs["nodecore", tol]
        torch.testing.assert_close(t_own, t_ref, rtol=0, atol=1e-9)  # the same steps, to round-off
        torch.testing.assert_close(x_own, x_ref, rtol=0, atol=1e-8)
        assert (own.attempts, own.rejected) == (ref.attempts, ref.rejected)
    assert len(jumps_of(runs["own", 1e-6][0])) >= 2  # it bounces
    assert runs["own", 1e-6][2].attempts > 5 * runs["own", 1e-4][2].attempts > 5 * len(t_span)
